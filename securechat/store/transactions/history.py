"""Room history: the pages a member reads back (``room.history``) and retention pruning.

A room message is stored once, as a history entry (``queue_writes``), and
its member devices read it from there as they are owed it
(``queue_reads``); this module owns the entries' other two uses, reading
older ones back a page at a time and dropping those past the retention.
Pruning never drops an entry a device still has to receive: a cursor at or
before it (``room_cursors``) keeps it, as its queue row would have.
"""

from securechat.store.transactions.common import _record


async def txn_room_history(txn, room, before_pos, limit, max_bytes=None):
    """The newest ``limit`` entries before ``before_pos``; with ``max_bytes``, only as many
    of them as fit in it (at least one), found from the sizes first so that the bodies of
    a page are never all read to be dropped."""
    where, args = "room = ?", (room,)
    if before_pos is not None:
        where, args = "room = ? AND pos < ?", (room, before_pos)
    if max_bytes is not None:
        sizes = await txn.execute(
            f"SELECT LENGTH(body) FROM room_history WHERE {where} ORDER BY pos DESC LIMIT ?",
            (*args, limit))
        limit = _entries_within(sizes, max_bytes)
        if not limit:
            return []
    rows = await txn.execute(
        f"SELECT pos, envelope_id, body, created FROM room_history WHERE {where} "
        "ORDER BY pos DESC LIMIT ?", (*args, limit))
    return [_record(("pos", "id", "body", "created"), row) for row in reversed(rows)]


def _entries_within(sizes, max_bytes):
    """How many of the entries of ``sizes`` (rows of one length each) fit in ``max_bytes``
    together; the first always does."""
    total = 0
    for count, (size,) in enumerate(sizes):
        total += size
        if count and total > max_bytes:
            return count
    return len(sizes)


async def txn_prune_history(txn, older_than, keep_per_room):
    """Drop history entries past the retention that no device still has to receive; how
    many.  A device that has not received an entry keeps it from being dropped (the
    same storage its queue row would have taken)."""
    # The devices of removed members that have received all they were owed.
    await txn.execute(
        "DELETE FROM room_cursors WHERE until_pos IS NOT NULL AND next_pos > until_pos")
    removed = await _prune_history_where(txn, "h.created < ?", (older_than,))
    for room, newest in await txn.execute("SELECT room, next_pos FROM room_counters"):
        removed += await _prune_history_where(
            txn, "h.room = ? AND h.pos <= ?", (room, newest - keep_per_room))
    return removed


async def _prune_history_where(txn, condition, args):
    return await txn.count(
        "DELETE FROM room_history AS h WHERE " + condition + " AND NOT EXISTS ("
        "SELECT 1 FROM room_cursors c WHERE c.room = h.room AND c.next_pos <= h.pos "
        "AND (c.until_pos IS NULL OR h.pos <= c.until_pos))", args)
