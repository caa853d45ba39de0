"""Encrypted files: uploads, their ciphertext chunks, and the devices still to fetch them.

A file is written by one device in order, chunk after chunk, each chunk
numbered by the relay's count of those it holds (``files.chunks``): a chunk
out of order is refused (chunk writes go through a group commit that keeps
their order, ``txn_put_chunk_group``, so a client may send several at once), and one sent again (its answer was lost with the
connection) is taken as already there when its digest is the one stored.
Every write to a file goes through an ``UPDATE ... WHERE chunks = ?`` on its
row, so two nodes taking chunks of one file at once take turns and only one
of them wins each index.  ``file.finish`` checks the declared size and the
hash of the chunks (SHA-256 over the SHA-256 of each chunk, in order) and
only then marks the file finished: nothing reads an unfinished file.  The
quota counts the sizes uploads declared, finished or not, under the
account's lock (``devices._lock_account``), so two uploads begun at once on
two nodes cannot both pass it.  Chunks are bytes (BLOB / BYTEA), never
text the relay could read.
"""

import hashlib

from securechat.store.errors import FileRefused
from securechat.store.transactions.common import _first, _record
from securechat.store.transactions.devices import _lock_account

FILE_FIELDS = ("file_id", "owner", "owner_device", "size", "stored", "chunks", "ct_hash",
               "finished", "created", "expires")


def chunks_hash(digests):
    """The hash a finished file is checked against: hex SHA-256 over the raw SHA-256 of
    each chunk, in order (the client computes the same while it encrypts)."""
    outer = hashlib.sha256()
    for digest in digests:
        outer.update(bytes.fromhex(digest))
    return outer.hexdigest()


async def _file(txn, file_id):
    return _record(FILE_FIELDS, await _first(
        txn, f"SELECT {', '.join(FILE_FIELDS)} FROM files WHERE file_id = ?", (file_id,)))


async def txn_begin_file(txn, file_id, user, device, size, quota, max_uploads, keep_ms):
    """Start an upload of ``size`` bytes of ciphertext; ``FileRefused`` ``quota_exceeded``
    when the account's files would then pass ``quota`` bytes, ``too_many_uploads`` when
    it already has ``max_uploads`` unfinished ones."""
    await _lock_account(txn, user)
    used, unfinished = await _first(
        txn, "SELECT COALESCE(sum(size), 0), COALESCE(sum(CASE WHEN finished IS NULL "
             "THEN 1 ELSE 0 END), 0) FROM files WHERE owner = ?", (user,))
    if used + size > quota:
        raise FileRefused("quota_exceeded", f"your files on this relay would take {used + size} "
                          f"bytes, over your quota of {quota} bytes; wait until recipients "
                          "have fetched earlier files (or they expire)")
    if unfinished >= max_uploads:
        raise FileRefused("too_many_uploads", f"you have {unfinished} unfinished uploads "
                          "already; finish them or wait until they expire")
    await txn.execute(
        "INSERT INTO files (file_id, owner, owner_device, size, created, expires) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (file_id, user, device, size, txn.now_ms, txn.now_ms + keep_ms))
    return {"file_id": file_id, "size": size}


async def txn_put_chunk(txn, file_id, user, index, data, digest):
    """Store chunk ``index`` of the owner's unfinished upload; fire with the number of
    chunks stored.  A chunk already stored with the same digest is accepted again."""
    stored = await txn.execute(
        "UPDATE files SET chunks = chunks + 1, stored = stored + ? WHERE file_id = ? "
        "AND owner = ? AND chunks = ? AND finished IS NULL AND stored + ? <= size "
        "RETURNING chunks", (len(data), file_id, user, index, len(data)))
    if stored:
        await txn.execute("INSERT INTO file_chunks (file_id, idx, data, digest) "
                          "VALUES (?, ?, ?, ?)", (file_id, index, data, digest))
        return stored[0][0]
    row = await _file(txn, file_id)
    if row is None or row["owner"] != user:
        raise FileRefused("unknown_file", f"you have no upload {file_id}")
    if index < row["chunks"]:
        same = await _first(txn, "SELECT 1 FROM file_chunks WHERE file_id = ? AND idx = ? "
                                 "AND digest = ?", (file_id, index, digest))
        if same is not None:
            return row["chunks"]
    if row["finished"] is not None:
        raise FileRefused("file_complete", f"file {file_id} is finished; it takes no chunk")
    if index != row["chunks"]:
        raise FileRefused("chunk_out_of_order",
                          f"chunk {index} of file {file_id} is out of order: the relay has "
                          f"{row['chunks']} chunks, so the next is {row['chunks']}",
                          {"next": row["chunks"]})
    raise FileRefused("file_too_large", f"chunk {index} would take file {file_id} past the "
                      f"{row['size']} bytes declared at file.begin")


async def txn_put_chunk_group(txn, items):
    """Several ``txn_put_chunk`` calls (argument tuples) in one transaction, in order; one
    outcome per call, a FileRefused for one refused (a refusal writes nothing, so the
    others stand as if each had been alone)."""
    outcomes = []
    for item in items:
        try:
            outcomes.append(await txn_put_chunk(txn, *item))
        except FileRefused as refused:
            outcomes.append(refused)
    return outcomes


async def txn_finish_file(txn, file_id, user, size, ct_hash, users, room, keep_ms):
    """Mark the owner's upload finished when its stored size is ``size`` (the declared
    one) and its chunks hash to ``ct_hash``; its recipients become the current devices
    of ``users`` and the owner (or of ``room``'s members), the uploading device left
    out.  Finishing a finished file again with the same hash answers the same."""
    row = await _file(txn, file_id)
    if row is None or row["owner"] != user:
        raise FileRefused("unknown_file", f"you have no upload {file_id}")
    if row["finished"] is not None:
        if row["ct_hash"] != ct_hash:
            raise FileRefused("hash_mismatch", f"file {file_id} was finished with another hash")
        return {"file_id": file_id, "size": row["size"], "chunks": row["chunks"]}
    if size != row["size"] or row["stored"] != row["size"]:
        raise FileRefused("size_mismatch", f"file {file_id} declared {row['size']} bytes, the "
                          f"relay holds {row['stored']} and the finish says {size}")
    digests = [r[0] for r in await txn.execute(
        "SELECT digest FROM file_chunks WHERE file_id = ? ORDER BY idx", (file_id,))]
    if chunks_hash(digests) != ct_hash:
        raise FileRefused("hash_mismatch", f"the chunks of file {file_id} the relay holds do "
                          "not hash to the finish's hash; upload the file again")
    if room is not None:
        member = await _first(txn, "SELECT 1 FROM room_members WHERE room = ? AND user_id = ?",
                              (room, user))
        if member is None:
            raise FileRefused("not_member", f"you are not a member of {room}")
        whose = "SELECT user_id FROM room_members WHERE room = ?"
        args = (room,)
    else:
        whose = "SELECT ? " + "UNION SELECT ? " * len(users)
        args = (user, *users)
    await txn.execute(
        "INSERT INTO file_recipients (file_id, user_id, device_id) "
        f"SELECT ?, d.user_id, d.device_id FROM devices d WHERE d.listed AND d.user_id IN "
        f"({whose}) AND NOT (d.user_id = ? AND d.device_id = ?) ON CONFLICT DO NOTHING",
        (file_id, *args, user, row["owner_device"]))
    await txn.execute("UPDATE files SET ct_hash = ?, finished = ?, expires = ? "
                      "WHERE file_id = ?", (ct_hash, txn.now_ms, txn.now_ms + keep_ms, file_id))
    return {"file_id": file_id, "size": row["size"], "chunks": row["chunks"]}


async def _readable(txn, file_id, user, device):
    """The file row when ``user``/``device`` may read it: its owner's account, or one of
    its recipient devices; ``unknown_file`` otherwise (no hint whether it exists)."""
    row = await _file(txn, file_id)
    if row is not None and row["owner"] != user and await _first(
            txn, "SELECT 1 FROM file_recipients WHERE file_id = ? AND user_id = ? "
                 "AND device_id = ?", (file_id, user, device)) is None:
        row = None
    if row is None:
        raise FileRefused("unknown_file", f"no file {file_id} for you on this relay (it may "
                          "have expired, or every device of yours fetched it already)")
    return row


async def txn_file_info(txn, file_id, user, device):
    row = await _readable(txn, file_id, user, device)
    return {"file_id": file_id, "size": row["size"], "stored": row["stored"],
            "chunks": row["chunks"], "complete": row["finished"] is not None,
            "hash": row["ct_hash"]}


async def txn_get_chunk(txn, file_id, user, device, index):
    """Chunk ``index`` of a finished file ``user``/``device`` may read: ``(bytes, last)``."""
    row = await _readable(txn, file_id, user, device)
    if row["finished"] is None:
        raise FileRefused("file_incomplete", f"file {file_id} is not completely uploaded yet")
    if index >= row["chunks"]:
        raise FileRefused("no_such_chunk", f"file {file_id} has {row['chunks']} chunks "
                          f"(0 to {row['chunks'] - 1})")
    (data,) = await _first(txn, "SELECT data FROM file_chunks WHERE file_id = ? AND idx = ?",
                           (file_id, index))
    return bytes(data), index == row["chunks"] - 1


async def _delete_files(txn, where, args):
    """Delete the files ``where`` selects (a condition on ``files``), with their chunks
    and recipients; the number deleted."""
    ids = [r[0] for r in await txn.execute(f"SELECT file_id FROM files WHERE {where}", args)]
    for file_id in ids:
        for table in ("file_chunks", "file_recipients", "files"):
            await txn.execute(f"DELETE FROM {table} WHERE file_id = ?", (file_id,))
    return len(ids)


async def txn_file_done(txn, file_id, user, device):
    """A recipient device has the file: it leaves the recipients, and the file goes when
    it was the last one; fire with True when the file was deleted."""
    await _readable(txn, file_id, user, device)
    await txn.execute("DELETE FROM file_recipients WHERE file_id = ? AND user_id = ? "
                      "AND device_id = ?", (file_id, user, device))
    return bool(await _delete_files(
        txn, "file_id = ? AND finished IS NOT NULL AND NOT EXISTS "
             "(SELECT 1 FROM file_recipients r WHERE r.file_id = files.file_id)", (file_id,)))


EXPIRED_PER_PASS = 100
"""Files one expiry pass deletes at most (a pass holds one transaction)."""


async def txn_expire_files(txn):
    """Delete files past their expiry (unfinished or not fetched by every recipient)."""
    return await _delete_files(
        txn, f"file_id IN (SELECT file_id FROM files WHERE expires <= ? "
             f"ORDER BY expires LIMIT {EXPIRED_PER_PASS})", (txn.now_ms,))
