"""Encrypted files in the store, on SQLite and a real PostgreSQL server: chunks in order, the
quota, the finish's size and hash checks, who may read, and expiry."""

import hashlib

import pytest
import pytest_twisted

from securechat.store.errors import FileRefused
from securechat.store.transactions.files import chunks_hash
from tests.test_store_contract import database, device, raw_sql, store  # noqa: F401

MIB = 1024 * 1024
DAY = 24 * 3600 * 1000


def sha(data):
    return hashlib.sha256(data).hexdigest()


async def refused(code, d):
    """The FileRefused code a store call fails with (the test fails when it succeeds)."""
    with pytest.raises(FileRefused) as caught:
        await d
    assert caught.value.code == code, caught.value.message
    return caught.value


async def uploaded(store, file_id, chunks, user="alice", to=("bob",), room=None):
    """A finished upload of ``chunks`` (bytes each) by alice/A1."""
    size = sum(map(len, chunks))
    await store.begin_file(file_id, user, "A1", size, 10 * MIB, 8, DAY)
    for index, data in enumerate(chunks):
        await store.put_chunk(file_id, user, index, data, sha(data))
    return await store.finish_file(file_id, user, size, chunks_hash([sha(c) for c in chunks]),
                                   list(to), room, DAY)


@pytest_twisted.ensureDeferred
async def test_chunks_go_in_order_and_come_back_after_the_finish(store):  # noqa: F811
    """Chunks are taken in order only (a skipped index is chunk_out_of_order naming the next,
    a chunk sent again with its digest is accepted once); before the finish nothing is
    readable (file_incomplete); after it, each chunk comes back byte-equal, the last marked."""
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    chunks = [b"\x00first" * 100, b"second\xff" * 100, b"end"]
    size = sum(map(len, chunks))
    await store.begin_file("f" * 22, "alice", "A1", size, MIB, 8, DAY)
    assert await store.put_chunk("f" * 22, "alice", 0, chunks[0], sha(chunks[0])) == 1
    error = await refused("chunk_out_of_order",
                          store.put_chunk("f" * 22, "alice", 2, chunks[2], sha(chunks[2])))
    assert error.details == {"next": 1}
    assert await store.put_chunk("f" * 22, "alice", 0, chunks[0], sha(chunks[0])) == 1
    await refused("chunk_out_of_order", store.put_chunk("f" * 22, "alice", 0, b"other", sha(b"x")))
    await store.put_chunk("f" * 22, "alice", 1, chunks[1], sha(chunks[1]))
    await store.put_chunk("f" * 22, "alice", 2, chunks[2], sha(chunks[2]))
    await refused("file_incomplete", store.get_chunk("f" * 22, "alice", "A1", 0))
    info = await store.file_info("f" * 22, "alice", "A1")
    assert (info["chunks"], info["stored"], info["complete"]) == (3, size, False)
    await store.finish_file("f" * 22, "alice", size, chunks_hash([sha(c) for c in chunks]),
                            ["bob"], None, DAY)
    got = [await store.get_chunk("f" * 22, "bob", "B1", i) for i in range(3)]
    assert [data for data, _ in got] == chunks
    assert [last for _, last in got] == [False, False, True]
    await refused("no_such_chunk", store.get_chunk("f" * 22, "bob", "B1", 3))
    await refused("file_complete", store.put_chunk("f" * 22, "alice", 3, b"more", sha(b"more")))


@pytest_twisted.ensureDeferred
async def test_chunks_sent_at_once_are_stored_in_the_order_they_came(store):  # noqa: F811
    """Chunk writes submitted together (as a client sends several in flight) share a group
    commit in their order: 0, 1 and 2 are stored, 4 (sent before 3) alone is refused."""
    from twisted.internet import defer
    await device(store, "alice", "A1")
    chunks = [bytes([n]) * 100 for n in range(5)]
    await store.begin_file("n" * 22, "alice", "A1", 500, MIB, 8, DAY)
    order = [0, 1, 2, 4, 3]
    outcomes = await defer.DeferredList(
        [store.put_chunk("n" * 22, "alice", i, chunks[i], sha(chunks[i])) for i in order],
        consumeErrors=True)
    assert [ok for ok, _ in outcomes] == [True, True, True, False, True]
    assert outcomes[3][1].value.code == "chunk_out_of_order"
    assert (await store.file_info("n" * 22, "alice", "A1"))["chunks"] == 4


@pytest_twisted.ensureDeferred
async def test_a_finish_whose_size_or_hash_differs_is_refused_and_stays_unreadable(
        store):  # noqa: F811
    """A finish with another size (size_mismatch) or another hash (hash_mismatch) leaves the
    file unfinished: its recipient cannot read it (file_incomplete), and the right finish
    still works; a chunk past the declared size is file_too_large."""
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    await store.begin_file("g" * 22, "alice", "A1", 10, MIB, 8, DAY)
    await refused("file_too_large", store.put_chunk("g" * 22, "alice", 0, b"x" * 11, sha(b"x")))
    await store.put_chunk("g" * 22, "alice", 0, b"x" * 10, sha(b"x" * 10))
    right = chunks_hash([sha(b"x" * 10)])
    await refused("size_mismatch", store.finish_file("g" * 22, "alice", 9, right, ["bob"],
                                                     None, DAY))
    await refused("hash_mismatch", store.finish_file("g" * 22, "alice", 10, sha(b"no"),
                                                     ["bob"], None, DAY))
    await refused("file_incomplete", store.get_chunk("g" * 22, "alice", "A1", 0))
    assert (await store.finish_file("g" * 22, "alice", 10, right, ["bob"], None, DAY))[
        "chunks"] == 1
    assert (await store.get_chunk("g" * 22, "bob", "B1", 0))[0] == b"x" * 10


@pytest_twisted.ensureDeferred
async def test_the_quota_counts_every_upload_of_the_account(store):  # noqa: F811
    """An upload that would take the account's files past the quota is quota_exceeded,
    finished or not; another account's files do not count; too many unfinished uploads
    are too_many_uploads."""
    await device(store, "alice", "A1")
    await device(store, "carol", "C1")
    await store.begin_file("a" * 22, "alice", "A1", 600, 1000, 8, DAY)
    await refused("quota_exceeded", store.begin_file("b" * 22, "alice", "A1", 401, 1000, 8, DAY))
    await store.begin_file("c" * 22, "alice", "A1", 400, 1000, 8, DAY)
    await store.begin_file("d" * 22, "carol", "C1", 1000, 1000, 8, DAY)
    await refused("too_many_uploads", store.begin_file("e" * 22, "carol", "C1", 0, 10**9, 1, DAY))


@pytest_twisted.ensureDeferred
async def test_only_the_owner_and_recipient_devices_read_and_the_last_download_deletes(
        store, database):  # noqa: F811
    """A stranger gets unknown_file; each recipient device's file.done removes it from the
    recipients, and the last one deletes the file and its chunks from the database."""
    for user, dev in (("alice", "A1"), ("alice", "A2"), ("bob", "B1"), ("bob", "B2"),
                      ("eve", "E1")):
        await device(store, user, dev)
    await uploaded(store, "h" * 22, [b"secret"])
    await refused("unknown_file", store.get_chunk("h" * 22, "eve", "E1", 0))
    await refused("unknown_file", store.file_info("h" * 22, "eve", "E1"))
    await refused("unknown_file", store.file_done("h" * 22, "eve", "E1"))
    assert await store.file_done("h" * 22, "bob", "B1") is False
    await refused("unknown_file", store.get_chunk("h" * 22, "bob", "B1", 0))  # done
    assert await store.file_done("h" * 22, "bob", "B2") is False
    assert await store.file_done("h" * 22, "alice", "A2") is True  # the last recipient
    assert raw_sql(database, "SELECT count(*) FROM file_chunks") == [(0,)]
    assert raw_sql(database, "SELECT count(*) FROM files") == [(0,)]


@pytest_twisted.ensureDeferred
async def test_a_room_file_is_for_the_members_devices(store):  # noqa: F811
    """A file finished for a room may be read by its members' devices, not by others; a
    non-member cannot finish one for the room (not_a_member)."""
    for user, dev in (("alice", "A1"), ("bob", "B1"), ("eve", "E1")):
        await device(store, user, dev)
    await store.create_room("r", "alice", None)
    await store.add_member("r", "bob")
    await uploaded(store, "i" * 22, [b"room file"], to=(), room="r")
    assert (await store.get_chunk("i" * 22, "bob", "B1", 0))[0] == b"room file"
    await refused("unknown_file", store.get_chunk("i" * 22, "eve", "E1", 0))
    await store.begin_file("j" * 22, "eve", "E1", 1, MIB, 8, DAY)
    await store.put_chunk("j" * 22, "eve", 0, b"z", sha(b"z"))
    await refused("not_member", store.finish_file("j" * 22, "eve", 1, chunks_hash([sha(b"z")]),
                                                    [], "r", DAY))


@pytest_twisted.ensureDeferred
async def test_files_past_their_expiry_are_deleted(store, database):  # noqa: F811
    """expire_files deletes files (finished or not) whose keep time passed, with their
    chunks, and leaves younger ones."""
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    await uploaded(store, "k" * 22, [b"old"])
    await store.begin_file("l" * 22, "alice", "A1", 5, MIB, 8, DAY)
    await store.begin_file("m" * 22, "alice", "A1", 5, MIB, 8, 10 * DAY)
    raw_sql(database, "UPDATE files SET expires = 0 WHERE file_id IN (?, ?)",
            ("k" * 22, "l" * 22))
    assert await store.expire_files() == 2
    assert raw_sql(database, "SELECT file_id FROM files") == [("m" * 22,)]
    assert raw_sql(database, "SELECT count(*) FROM file_chunks") == [(0,)]
