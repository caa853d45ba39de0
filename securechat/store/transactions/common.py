"""What several aggregates share: the body digest, row helpers and the rooms a device follows.

``digest`` is stored beside every envelope body (``queue``) and checked when
it is read back (and by the tests); ``_record`` and ``_first`` shape the
rows most transactions read; ``_open_cursors`` starts devices following
rooms, both when a device publishes its keys (``accounts``) and when its user
joins a room (``rooms``).  The underscore names are internal to this package.
"""

import hashlib

from securechat.wire import BROADCAST_ROOM


def digest(body):
    """Hex SHA-256 of an envelope body: stored beside it to detect corruption at rest."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _record(names, row):
    return dict(zip(names, row)) if row is not None else None


async def _first(txn, sql, args=()):
    rows = await txn.execute(sql, args)
    return rows[0] if rows else None


async def _open_cursors(txn, user, room=None, device=None):
    """Start devices following rooms from the next message on: the user's devices with
    keys into ``room`` (a join; a rejoin starts afresh), or one new ``device`` into all
    its user's rooms and the broadcast room (kept where it is if it already follows)."""
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
        f"WHERE d.user_id = ? AND d.device_keys IS NOT NULL {devices} "
        f"ON CONFLICT (user_id, device_id, room) {conflict}", args)
