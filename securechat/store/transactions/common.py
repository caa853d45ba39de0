"""What several aggregates share: the body digest, row and statement helpers, room cursors.

``digest`` is stored beside every envelope body (``queue_writes``) and
checked when it is read back (``queue_reads``, and the tests); ``_record``
and ``_first`` shape the rows most transactions read; ``_chunks`` and
``_values`` build the multi-row statements of both the write group and the
acks it applies; ``_open_cursors`` starts devices following rooms, both when
a device publishes its keys (``devices``) and when its user joins a room
(``rooms``).  The underscore names are internal to this package.
"""

import hashlib
import itertools

from securechat.wire import BROADCAST_ROOM


def digest(body):
    """Hex SHA-256 of an envelope body: stored beside it to detect corruption at rest."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _record(names, row):
    return dict(zip(names, row)) if row is not None else None


async def _first(txn, sql, args=()):
    rows = await txn.execute(sql, args)
    return rows[0] if rows else None


ROWS_PER_INSERT = 2000
"""Rows of one multi-row INSERT or DELETE.  Large, because every statement costs the
SQLite thread a turn at the interpreter lock and PostgreSQL a round trip; 2,000 rows
of up to 9 columns stay below SQLite's limit of 32,766 variables (SQLite 3.32+)."""


def _chunks(items):
    size = ROWS_PER_INSERT
    return [items[i:i + size] for i in range(0, len(items), size)]


def _values(rows):
    """``rows`` (tuples of one width) as SQL: ``"VALUES (?, ?), (?, ?) ..."`` and its
    parameters, flattened."""
    row = "(" + ", ".join("?" * len(rows[0])) + ")"
    return "VALUES " + ", ".join([row] * len(rows)), tuple(itertools.chain.from_iterable(rows))


async def _open_cursors(txn, user, room=None, device=None):
    """Start devices following rooms from the next message on: the user's current
    (listed) devices into ``room`` (a join; a rejoin starts afresh), or one device that
    just became current into all its user's rooms and the broadcast room (kept where it
    is if it already follows).  A pending device follows nothing."""
    if room is not None:
        rooms, args, devices = "SELECT ? AS room", (room, user), ""
        conflict = "DO UPDATE SET next_pos = excluded.next_pos, until_pos = NULL"
    else:
        rooms = "SELECT room FROM room_members WHERE user_id = ? UNION SELECT ?"
        args, devices = (user, BROADCAST_ROOM, user, device), "AND d.device_id = ?"
        conflict = "DO NOTHING"
    await txn.execute(
        "INSERT INTO room_cursors (user_id, device_id, room, next_pos) "
        "SELECT d.user_id, d.device_id, r.room, COALESCE(c.next_pos, 0) + 1 "
        f"FROM devices d JOIN ({rooms}) r ON true LEFT JOIN room_counters c ON c.room = r.room "
        f"WHERE d.user_id = ? AND d.listed {devices} "
        f"ON CONFLICT (user_id, device_id, room) {conflict}", args)
