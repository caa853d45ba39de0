"""Queue reads and acks: what a device has yet to receive, and how it says it received it.

A device is owed its queue rows and the entries of its rooms' histories from
its position in each (``room_cursors``), both numbered from the one sequence
``queue_writes`` takes from, so a page (``txn_fetch_queue``) is the two merged
in that order.  Acks live beside the reads because they are their other half:
an ack removes a queue row or moves the device's position in a room past an
entry, i.e. it changes what the next read returns.  They are applied in
bulk (``txn_ack_group``) inside the write group's transaction.
"""

import bisect

from securechat.store.transactions.common import _chunks, _first, _values, digest
from securechat.wire import BROADCAST_ROOM

UNICAST, ROOM, BROADCAST = range(3)
"""Where an ack's counts go in its ``(unicast, room, broadcast)`` outcome: a queue row (1:1
messages and the relay's membership notices), a room's entry, a broadcast's entry."""


_PENDING_ROOM_ENTRIES = (  # "+h.pos": compared, not looked up by, so that an index on
    # (room, seq) serves a page that starts after the previous one's last seq
    "FROM room_cursors c JOIN room_history h ON h.room = c.room AND +h.pos >= c.next_pos "
    "WHERE c.user_id = ? AND c.device_id = ? AND (c.until_pos IS NULL OR h.pos <= c.until_pos) "
    "AND NOT (h.sender = c.user_id AND h.sender_device = c.device_id)")
"""The room messages a device has yet to acknowledge: from its position in each of its
rooms (up to its user's removal), except those it sent itself."""


async def txn_fetch_queue_group(txn, reads):
    """Several ``fetch_queue`` calls ``(user, device, after_seq, limit)`` in one
    transaction; one page per call."""
    return [await txn_fetch_queue(txn, *read) for read in reads]


async def txn_fetch_queue(txn, user, device, after_seq, limit):
    """A page of what one device has yet to acknowledge: its queue rows and the pending
    entries of its rooms' histories, merged in ``seq`` order."""
    # Each side is limited on its own first: PostgreSQL would otherwise sort the
    # device's whole queue for every page.
    rows = await txn.execute(
        "SELECT * FROM (SELECT seq, envelope_id, body, digest, CAST(NULL AS TEXT), "
        "CAST(NULL AS INTEGER) FROM queue "
        "WHERE user_id = ? AND device_id = ? AND seq > ? ORDER BY seq LIMIT ?) AS queued "
        "UNION ALL SELECT * FROM (SELECT h.seq, h.envelope_id, h.body, h.digest, h.room, h.pos "
        + _PENDING_ROOM_ENTRIES + " AND h.seq > ? ORDER BY h.seq LIMIT ?) AS rooms "
        "ORDER BY 1 LIMIT ?",
        (user, device, after_seq, limit, user, device, after_seq, limit, limit))
    return [{"seq": seq, "id": envelope_id, "body": body, "intact": digest(body) == stored,
             "room": room, "pos": pos}
            for seq, envelope_id, body, stored, room, pos in rows]


async def txn_queue_length(txn, user, device):
    (queued,) = await _first(
        txn, "SELECT count(*) FROM queue WHERE user_id = ? AND device_id = ?", (user, device))
    (pending,) = await _first(txn, "SELECT count(*) " + _PENDING_ROOM_ENTRIES, (user, device))
    return queued + pending


async def txn_last_seq(txn):
    """The last number any write group took (every group up to it has committed)."""
    (last,) = await _first(txn, "SELECT last_seq FROM seq_counter")
    return last


async def txn_ack_group(txn, acks):
    """Several ``ack`` calls ``(user, device, ids, positions)`` in one transaction; for
    each, the ``(unicast, room, broadcast)`` counts of what it removed (the operator's
    metrics tell the kinds apart; the client hears their sum).

    A room message is acknowledged by moving the device's position in that
    room past it (and so past every earlier one: a device acknowledges in the
    order it receives); any other id removes the device's queue row.  Room
    entries the caller named by their place (``positions``, ``{room: [pos,
    ...]}``: what it pushed) need no lookup at all, only one cursor read per
    device and room, and cost no Python work per entry beyond a sort: they are
    most of what devices acknowledge.  Of the ``ids``, the queue goes first,
    and only the ids it did not hold are looked up in the rooms.  One
    statement of each kind for all the calls (per chunk): each is a round
    trip to PostgreSQL, and a group holds the acks of many devices.  An entry
    acknowledged twice in one group counts once, for the first call naming it.
    """
    first_call = {}
    for index in reversed(range(len(acks))):  # earlier calls overwrite later ones
        user, device, ids, _ = acks[index]
        first_call.update({(user, device, envelope_id): index for envelope_id in ids})
    entries = _AckedEntries()
    for index, (user, device, _, positions) in enumerate(acks):
        for room, places in (positions or {}).items():
            entries.add(index, (user, device, room), places)
    removed = [[0, 0, 0] for _ in acks]
    for chunk in _chunks(list(first_call)):
        values, args = _values(chunk)
        for row in await txn.execute(
                "DELETE FROM queue WHERE (user_id, device_id, envelope_id) IN "
                f"(SELECT column1, column2, column3 FROM ({values}) AS acked) "
                "RETURNING user_id, device_id, envelope_id", args):
            removed[first_call.pop(tuple(row))][UNICAST] += 1
    if first_call:  # what is left: ids of room entries (or unknown ones)
        await _room_entries_by_id(txn, first_call, entries)
    await entries.apply(txn, removed)
    return [tuple(counts) for counts in removed]


async def _room_entries_by_id(txn, first_call, entries):
    """Find the room entries among the acknowledged ids (``{(user, device, id): call
    index}``) and add their places to ``entries``.

    Cumulative, like TCP's acknowledgements: what the device skipped before
    an acknowledged entry counts as received, so a client must acknowledge in
    the order it receives (the reference client does: one envelope at a time,
    each acknowledged after it is stored).  Checking that every earlier entry
    was acknowledged would cost a scan from the device's position on every
    ack: a device that never acknowledges one entry would make each of its
    later acks scan the whole room backlog since, which a hostile client
    could use to load the relay.
    """
    for chunk in _chunks(list(first_call)):
        values, args = _values(chunk)
        for user, device, envelope_id, room, pos in await txn.execute(
                "SELECT c.user_id, c.device_id, h.envelope_id, c.room, h.pos "
                f"FROM ({values}) AS acked "
                "JOIN room_cursors c ON c.user_id = acked.column1 "
                "AND c.device_id = acked.column2 "
                "JOIN room_history h ON h.room = c.room AND h.envelope_id = acked.column3 "
                "WHERE h.pos >= c.next_pos", args):
            entries.add(first_call[(user, device, envelope_id)], (user, device, room), (pos,))


class _AckedEntries:
    """The room entries a group acknowledges, by device and room: each still pending is
    credited to the first call naming it, and the device's position in the room moves
    past the last of them (never back: a rejoin meanwhile has moved it to the room's end).

    Pending means from the device's position up to the end of its user's
    membership (``until_pos``): a removed member's acks of later entries
    neither count nor move it.
    """

    def __init__(self):
        self._calls = {}  # (user, device, room) -> [(call index, [pos, ...]), ...]

    def add(self, index, cursor, places):
        calls = self._calls.setdefault(cursor, [])
        if calls and calls[-1][0] == index:
            calls[-1][1].extend(places)
        else:
            calls.append((index, list(places)))

    async def apply(self, txn, removed):
        """Read the positions once per device and room, credit ``removed``, move them."""
        moves = []
        for chunk in _chunks(sorted(self._calls)):
            values, args = _values(chunk)
            for user, device, room, next_pos, until_pos in await txn.execute(
                    "SELECT c.user_id, c.device_id, c.room, c.next_pos, c.until_pos "
                    f"FROM ({values}) AS acked "
                    "JOIN room_cursors c ON c.user_id = acked.column1 "
                    "AND c.device_id = acked.column2 AND c.room = acked.column3", args):
                cursor = (user, device, room)
                kind = BROADCAST if room == BROADCAST_ROOM else ROOM
                end = _credit(self._calls[cursor], next_pos, until_pos, removed, kind)
                if end > next_pos:
                    moves.append((*cursor, end))
        for chunk in _chunks(moves):
            values, args = _values(chunk)
            await txn.execute(
                f"UPDATE room_cursors SET next_pos = moved.column4 FROM ({values}) AS moved "
                "WHERE room_cursors.user_id = moved.column1 AND room_cursors.device_id = "
                "moved.column2 AND room_cursors.room = moved.column3 "
                "AND room_cursors.next_pos < moved.column4", args)


def _credit(calls, next_pos, until_pos, removed, kind):
    """Credit the calls ``[(index, places), ...]`` of one device and room with the places
    in ``[next_pos, until_pos]``, each once, as ``kind``; the position after the last
    (``next_pos`` when none is pending)."""
    if len(calls) == 1:  # the usual case: counted by bisection, not place by place
        index, places = calls[0]
        places = sorted(set(places))
        first = bisect.bisect_left(places, next_pos)
        end = len(places) if until_pos is None else bisect.bisect_right(places, until_pos)
        if end <= first:
            return next_pos
        removed[index][kind] += end - first
        return places[end - 1] + 1
    seen, last = set(), next_pos - 1
    for index, places in sorted(calls, key=lambda call: call[0]):
        for pos in places:
            if pos >= next_pos and (until_pos is None or pos <= until_pos) and pos not in seen:
                seen.add(pos)
                removed[index][kind] += 1
                last = max(last, pos)
    return last + 1
