"""Queue writes: the write group that stores envelopes (and applies the acks riding along).

One group commit (``SqlStore._writes``) is one transaction of
``txn_write_group``: the envelopes of every ``enqueue`` waiting, then the
acks waiting (``queue_reads.txn_ack_group``), so one fsync serves both.
Everything stored is numbered from one sequence (``seq_counter``): a queue
row per recipient device, or one history entry for a room message, which its
members' devices read through their ``room_cursors``.  The numbering, the
duplicate and unknown-device checks and the statement shapes live here
together because they are one tuned path: the relay's hot path (send and
room.send) runs through it for every message.
"""

import itertools

from securechat.store import hints
from securechat.store.errors import DuplicateEnvelope, StoreError
# ``common.ROWS_PER_INSERT`` is read where it is used, not imported by name: a test
# lowers it to make a small group span several statements.
from securechat.store.transactions import common
from securechat.store.transactions.common import _chunks, _first, _values, digest
from securechat.store.transactions.queue_reads import txn_ack_group


_LAST_SEQ = "(SELECT last_seq FROM seq_counter)"


async def _take_numbers(txn, count):
    """Move the sequence every stored envelope is numbered from by ``count``; its new last
    number, or None when the UPDATE rides with the next statement (PostgreSQL: a round
    trip less per write group), whose rows then carry it (see ``_insert_numbered``).

    One sequence for all devices, so that a device's queue rows and the room
    entries it reads come out in the order they were stored.  It moves before
    anything is inserted: its row lock orders concurrent writers on PostgreSQL.
    """
    rows = await txn.with_next(
        f"UPDATE seq_counter SET last_seq = last_seq + {count} RETURNING last_seq")
    return rows[0][0] if rows else None


async def _insert_numbered(txn, table, columns, rows, count, last, check=("true", ())):
    """Insert ``rows`` (a few multi-row INSERTs) whose ``seq`` column holds an offset into the
    ``count`` numbers the group took, ending at ``last``; the sequence's last number, or
    None as soon as a row did not go in (``ON CONFLICT DO NOTHING`` left out one breaking
    a unique index, or ``check``, SQL and its parameters, was false).

    With ``last`` unknown (the UPDATE rode along) the numbers are read from the
    counter inside the statement, and every inserted row returns the last one;
    otherwise only the count comes back, which costs SQLite less.
    """
    seq = columns.index("seq")
    for chunk in _chunks(rows):
        # The first number is a parameter, not part of the SQL text: a statement whose
        # text changed with every group would be parsed and planned again each time.
        # Once a chunk has returned the last number the next ones bind it too.
        first = f"{_LAST_SEQ} - {count - 1}" if last is None else "?"
        select = ", ".join(f"{first} + column{i + 1}" if i == seq else f"column{i + 1}"
                           for i in range(len(columns)))
        values, args = _values(chunk)
        condition, condition_args = check
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM ({values}) "
               f"AS numbered WHERE {condition} ON CONFLICT DO NOTHING")
        if last is None:
            returned = await txn.execute(f"{sql} RETURNING {_LAST_SEQ}", args + condition_args)
            inserted, last = len(returned), returned[0][0] if returned else None
        else:
            inserted = await txn.count(sql, (last - count + 1, *args, *condition_args))
        if inserted < len(chunk):
            return None
        check = ("true", ())
    return last


async def _devices_exist_check(txn, devices):
    """``_insert_numbered``'s check that all ``devices`` exist (counted in the INSERT), or
    None when one does not (looked up first when there are too many to name in one)."""
    devices = sorted(devices)
    if len(devices) > common.ROWS_PER_INSERT:
        return None if await _missing_devices(txn, devices) else ("true", ())
    return (f"(SELECT count(*) FROM devices WHERE {_devices_named(len(devices))}) = "
            f"{len(devices)}", tuple(itertools.chain.from_iterable(devices)))


def _queued_recipients(envelope):
    """The devices that get a queue row of ``envelope``: none for a room message, which its
    member devices read from the room's history (``room_cursors``)."""
    return () if envelope.get("history") else envelope["recipients"]


async def _ids_taken(txn, batches, outcomes):
    """The ids of the standing calls already queued for one of their recipient devices or
    kept in their room's history (the duplicates a failed insert ran into)."""
    per_device, per_room = {}, {}
    for batch, outcome in zip(batches, outcomes):
        if outcome is None:
            for envelope in batch:
                for recipient in _queued_recipients(envelope):
                    per_device.setdefault(tuple(recipient), set()).add(envelope["id"])
                if envelope.get("history"):
                    per_room.setdefault(envelope["history"], set()).add(envelope["id"])
    taken = set()
    for (user, device), ids in sorted(per_device.items()):
        for chunk in _chunks(sorted(ids)):
            taken.update(row[0] for row in await txn.execute(
                "SELECT envelope_id FROM queue WHERE user_id = ? AND device_id = ? "
                f"AND envelope_id IN ({', '.join('?' * len(chunk))})", (user, device, *chunk)))
    for room, ids in sorted(per_room.items()):
        for chunk in _chunks(sorted(ids)):
            taken.update(row[0] for row in await txn.execute(
                "SELECT envelope_id FROM room_history WHERE room = ? "
                f"AND envelope_id IN ({', '.join('?' * len(chunk))})", (room, *chunk)))
    return taken


def _queued_devices(envelopes):
    """The (user, device) pairs that get a queue row of one of ``envelopes``."""
    return {tuple(recipient) for envelope in envelopes
            for recipient in _queued_recipients(envelope)}


def _devices_named(count):
    """SQL matching the ``devices`` rows named by ``count`` (user, device) parameter pairs."""
    return ("(user_id, device_id) IN (SELECT column1, column2 FROM (VALUES "
            + ", ".join(["(?, ?)"] * count) + ") AS named)")


async def _missing_devices(txn, devices):
    """Those of ``devices`` (user, device) the store does not know."""
    known = set()
    for chunk in _chunks(sorted(devices)):
        known.update(tuple(row) for row in await txn.execute(
            "SELECT user_id, device_id FROM devices WHERE " + _devices_named(len(chunk)),
            tuple(itertools.chain.from_iterable(chunk))))
    return set(devices) - known


def _screen(batches):
    """Which calls fail before touching the database: an id used twice in the group."""
    outcomes = [None] * len(batches)
    owner = {}
    for index, batch in enumerate(batches):
        ids = [envelope["id"] for envelope in batch]
        repeated = next((i for i in ids if owner.setdefault(i, index) != index), None)
        if repeated is None and len(set(ids)) != len(ids):
            repeated = next(i for i in ids if ids.count(i) > 1)
        if repeated is not None:
            outcomes[index] = DuplicateEnvelope(repeated)
    return outcomes


def _refuse(batches, outcomes, missing, taken):
    """Fail the standing calls that name a device in ``missing`` or an id in ``taken``;
    how many were failed."""
    refused = 0
    for index, batch in enumerate(batches):
        if outcomes[index] is not None:
            continue
        absent = _queued_devices(batch) & missing
        repeated = next((e["id"] for e in batch if e["id"] in taken), None)
        if absent:
            outcomes[index] = StoreError("no device " + ", ".join(
                f"{user}/{device}" for user, device in sorted(absent)))
        elif repeated is not None:
            outcomes[index] = DuplicateEnvelope(repeated)
        else:
            continue
        refused += 1
    return refused


async def txn_write_group(txn, items):
    """The ``("enqueue", batch)`` and ``("ack", (user, device, ids, positions))`` calls
    of one group commit, in one transaction; one outcome per item, in order.

    Envelopes are stored before acks apply: an id acknowledged in the same
    group as it is sent again is still queued then, so the resend is refused
    as a duplicate (the safe side: that device already has it).
    """
    enqueues = [index for index, (kind, _) in enumerate(items) if kind == "enqueue"]
    acks = [index for index, (kind, _) in enumerate(items) if kind == "ack"]
    outcomes = [None] * len(items)
    for indexes, body in ((enqueues, txn_enqueue_group), (acks, txn_ack_group)):
        if indexes:
            results = await body(txn, [items[index][1] for index in indexes])
            for index, result in zip(indexes, results):
                outcomes[index] = result
    return outcomes


async def txn_write_group_announced(node, txn, items):
    """``txn_write_group``, whose commit also tells the other relay nodes what it stored
    (``hints.delivery``, sent with the commit: never before, never without it).

    Only a store with other nodes listening runs this (``SqlStore.announce_writes``):
    a lone node's write group stays as it is.
    """
    outcomes = await txn_write_group(txn, items)
    hint = hints.delivery(node, items, outcomes)
    if hint is not None:
        txn.announce(hint)
    return outcomes


async def txn_enqueue_group(txn, batches):
    """Store several ``enqueue`` calls in one transaction; one outcome per call.

    A call reusing an id still queued for one of its recipient devices (or
    kept in its room's history), or using one twice, gets DuplicateEnvelope;
    a call naming an unknown device a StoreError.  Nothing of a failed call
    is written, and the others are stored as if each had been alone, in
    order.  The database's unique indexes decide what is a duplicate: the
    rows are inserted with ``ON CONFLICT DO NOTHING``; if any was left out,
    the attempt is rolled back to a savepoint and made again without the
    calls whose ids were taken.
    """
    created = txn.now_ms
    outcomes = _screen(batches)
    while True:
        # No RELEASE afterwards: COMMIT ends the savepoint anyway, and each
        # statement saved is a round trip to PostgreSQL saved.
        await txn.with_next("SAVEPOINT enqueue")
        placed = await _place(txn, batches, outcomes, created)
        if placed is not None:
            break
        await txn.execute("ROLLBACK TO SAVEPOINT enqueue")
        missing = await _missing_devices(txn, _queued_devices(
            envelope for batch, outcome in zip(batches, outcomes) if outcome is None
            for envelope in batch))
        taken = set() if missing else await _ids_taken(txn, batches, outcomes)
        if not _refuse(batches, outcomes, missing, taken):
            raise StoreError("a unique index refused envelopes no query finds")
    return [outcome if outcome is not None else placed[index]
            for index, outcome in enumerate(outcomes)]


async def _place(txn, batches, outcomes, created):
    """Number and store the envelopes of the calls still standing: their ``(seq, pos)``
    by call index, or None when a recipient device does not exist or an id is already
    taken.

    A room message is one history entry, whatever the number of member
    devices (they read it through their ``room_cursors``); any other
    envelope is one queue row per recipient device.
    """
    standing = [(index, batch) for index, batch in enumerate(batches)
                if outcomes[index] is None]
    envelopes = [envelope for _, batch in standing for envelope in batch]
    if not envelopes:  # every standing call is empty: each is placed, with nothing
        return {index: [] for index, _ in standing}
    count = len(envelopes)
    last = await _take_numbers(txn, count)
    position = await _history_positions(txn, [e for e in envelopes if e.get("history")])
    placed, queue, kept, own = {}, [], [], _OwnEntries()
    offset = 0
    for index, batch in standing:
        places = []
        for envelope in batch:
            envelope_id, body = envelope["id"], envelope["body"]
            room = envelope.get("history")
            if room:
                pos = position[room]
                position[room] = pos + 1
                sender = (envelope["sender"], envelope["sender_device"])
                kept.append((room, pos, offset, envelope_id, body, digest(body), *sender,
                             created))
                own.add(room, sender, pos)
            else:
                pos = None
                body_digest = digest(body)
                queue.extend((user, device, offset, envelope_id, body, body_digest, created)
                             for user, device in envelope["recipients"])
            places.append((offset, pos))
            offset += 1
        placed[index] = places
    last = await _store_numbered(txn, count, last, kept, queue, _queued_devices(envelopes))
    if last is None:
        return None
    await own.skip(txn)
    first = last - count + 1
    return {index: [(first + offset, pos) for offset, pos in places]
            for index, places in placed.items()}


async def _store_numbered(txn, count, last, kept, queue, devices):
    """Insert a group's history entries and queue rows (for ``devices``), numbered from the
    ``count`` numbers it took (ending at ``last``, when known yet); the sequence's last
    number, or None when a device does not exist or an id is taken."""
    if kept:
        last = await _insert_numbered(txn, "room_history", (
            "room", "pos", "seq", "envelope_id", "body", "digest", "sender", "sender_device",
            "created"), kept, count, last)
        if last is None:
            return None
    if queue:
        check = await _devices_exist_check(txn, devices)
        if check is None:
            return None
        return await _insert_numbered(txn, "queue", (
            "user_id", "device_id", "seq", "envelope_id", "body", "digest", "created"),
            queue, count, last, check)
    if last is None:  # envelopes for nobody: numbered all the same
        (last,) = await _first(txn, f"SELECT {_LAST_SEQ}")
    return last


class _OwnEntries:
    """A sender's device never receives its own room message, so it never acknowledges it:
    its position moves past the message at once when nothing before it is pending (else
    the entry would stay needed, and unprunable, until the device acknowledges a later one).

    Consecutive messages of one device to one room are one run, moved over in
    one statement.
    """

    def __init__(self):
        self._runs = []  # [room, user, device, first pos, last pos]
        self._last = {}

    def add(self, room, sender, pos):
        run = self._last.get((room, sender))
        if run is not None and run[4] == pos - 1:
            run[4] = pos
            return
        run = [room, *sender, pos, pos]
        self._runs.append(run)
        self._last[(room, sender)] = run

    async def skip(self, txn):
        for room, user, device, first, last in self._runs:
            await txn.execute(
                "UPDATE room_cursors SET next_pos = ? WHERE user_id = ? AND device_id = ? "
                "AND room = ? AND next_pos = ?", (last + 1, user, device, room, first))


async def _history_positions(txn, envelopes):
    """The first free history position of each room the envelopes go to, taking as many
    positions as each room gets envelopes."""
    per_room = {}
    for envelope in envelopes:
        per_room[envelope["history"]] = per_room.get(envelope["history"], 0) + 1
    first = {}
    for room, count in sorted(per_room.items()):
        (last,) = await _first(
            txn, "INSERT INTO room_counters (room, next_pos) VALUES (?, ?) ON CONFLICT (room) "
                 "DO UPDATE SET next_pos = room_counters.next_pos + ? RETURNING next_pos",
            (room, count, count))
        first[room] = last - count + 1
    return first
