"""Rooms, their members and bans: who is in a room, with which role, and who is kept out.

Membership changes of one room are serialised by a lock on its row
(``_lock_room``); a member's devices follow the room's history through
``room_cursors``, opened on a join and ended on a leave here, which decide
what a leaver still gets and what pruning (``history``) may drop.
"""

from securechat.store.errors import Banned, RoomExists
from securechat.store.transactions.common import _first, _open_cursors, _record


async def txn_create_room(txn, room, owner, password_hash):
    created = txn.now_ms
    if not await txn.execute(
            "INSERT INTO rooms (room, owner, password_hash, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (room) DO NOTHING RETURNING room",
            (room, owner, password_hash, created)):
        raise RoomExists(room)
    await txn.execute(
        "INSERT INTO room_members (room, user_id, role, joined) VALUES (?, ?, 'owner', ?)",
        (room, owner, created))
    await _open_cursors(txn, owner, room=room)


async def txn_get_room(txn, room):
    info = _record(("room", "owner", "password_hash", "created", "invite_only"), await _first(
        txn, "SELECT room, owner, password_hash, created, invite_only FROM rooms WHERE room = ?",
        (room,)))
    if info is not None:
        info["invite_only"] = bool(info["invite_only"])  # SQLite keeps booleans as 0 and 1
    return info


async def txn_set_invite_only(txn, room, invite_only):
    return bool(await txn.execute(
        "UPDATE rooms SET invite_only = ? WHERE room = ? RETURNING room", (invite_only, room)))


async def _lock_room(txn, room):
    """Serialise the membership changes of one room (a row lock on PostgreSQL), so each
    sees the members every earlier one left: a join racing a kick either comes first
    (and is kicked) or sees the ban, and who hears of a join or a leave is who was in
    the room at that moment, however many happen at once."""
    await txn.execute("UPDATE rooms SET owner = owner WHERE room = ?", (room,))


async def txn_room_ban(txn, room, user):
    return _record(("role", "by", "created"), await _first(
        txn, "SELECT role, banned_by, created FROM room_bans WHERE room = ? AND user_id = ?",
        (room, user)))


async def _members(txn, room):
    rows = await txn.execute(
        "SELECT user_id FROM room_members WHERE room = ? ORDER BY user_id", (room,))
    return [row[0] for row in rows]


async def txn_add_member(txn, room, user):
    await _lock_room(txn, room)
    if await txn_room_ban(txn, room, user) is not None:
        raise Banned(room, user)
    if not await txn.execute(
            "INSERT INTO room_members (room, user_id, joined) VALUES (?, ?, ?) "
            "ON CONFLICT (room, user_id) DO NOTHING RETURNING user_id", (room, user, txn.now_ms)):
        return None
    await _open_cursors(txn, user, room=room)
    return await _members(txn, room)


async def txn_member_role(txn, room, user):
    row = await _first(
        txn, "SELECT role FROM room_members WHERE room = ? AND user_id = ?", (room, user))
    return row[0] if row else None


async def txn_set_member_role(txn, room, user, role):
    return bool(await txn.execute(
        "UPDATE room_members SET role = ? WHERE room = ? AND user_id = ? RETURNING role",
        (role, room, user)))


async def txn_remove_member(txn, room, user):
    """The user's devices still get what was sent while it was a member, nothing later.
    Fires with the members just before (the user among them), or None for a non-member."""
    await _lock_room(txn, room)
    members = await _members(txn, room)
    if await _remove_member(txn, room, user) is None:
        return None
    return members


async def _remove_member(txn, room, user):
    """Remove the member and end its devices' cursors; the role it had, or None."""
    row = await _first(
        txn, "DELETE FROM room_members WHERE room = ? AND user_id = ? RETURNING role",
        (room, user))
    if row is None:
        return None
    await txn.execute(
        "UPDATE room_cursors SET until_pos = COALESCE("
        "(SELECT next_pos FROM room_counters WHERE room = ?), 0) WHERE room = ? AND user_id = ?",
        (room, room, user))
    await txn.execute(
        "DELETE FROM room_cursors WHERE user_id = ? AND room = ? AND next_pos > until_pos",
        (user, room))
    return row[0]


async def txn_ban_member(txn, room, user, by):
    """Remove a member if it is one and keep it out (``txn_add_member`` refuses it) until
    unbanned; a non-member is banned as a member, and an earlier ban stays as it was.
    Fires with the members just before (the user among them if it was one): who is told."""
    await _lock_room(txn, room)
    members = await _members(txn, room)
    role = await _remove_member(txn, room, user)
    await txn.execute(
        "INSERT INTO room_bans (room, user_id, role, banned_by, created) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (room, user_id) DO NOTHING",
        (room, user, role or "member", by, txn.now_ms))
    return members


async def txn_room_bans(txn, room, after, limit):
    rows = await txn.execute(
        "SELECT user_id, role, banned_by, created FROM room_bans WHERE room = ? "
        "AND user_id > ? ORDER BY user_id LIMIT ?", (room, after or "", limit))
    return [_record(("user", "role", "by", "created"), row) for row in rows]


async def txn_unban_member(txn, room, user):
    return bool(await txn.execute(
        "DELETE FROM room_bans WHERE room = ? AND user_id = ? RETURNING user_id", (room, user)))


async def txn_room_members(txn, room):
    return await _members(txn, room)


async def txn_room_roles(txn, room):
    rows = await txn.execute(
        "SELECT user_id, role FROM room_members WHERE room = ? AND role <> 'member' "
        "ORDER BY user_id", (room,))
    return {row[0]: row[1] for row in rows}


async def txn_rooms_of(txn, user):
    rows = await txn.execute(
        "SELECT room FROM room_members WHERE user_id = ? ORDER BY room", (user,))
    return [row[0] for row in rows]


async def txn_leave_for_good(txn, room, user):
    """Take a deleted account out of ``room``.  A room it owned passes to its
    longest-standing admin, else its longest-standing member, who becomes its owner; a
    room it owned alone is dropped with its history and bans.  Fires with the new owner,
    None when the room is gone or the user did not own it."""
    await _lock_room(txn, room)
    if await _remove_member(txn, room, user) != "owner":
        return None
    heir = await _first(
        txn, "SELECT user_id FROM room_members WHERE room = ? "
             "ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined, user_id LIMIT 1",
        (room,))
    if heir is not None:
        await txn.execute("UPDATE rooms SET owner = ? WHERE room = ?", (heir[0], room))
        await txn.execute("UPDATE room_members SET role = 'owner' WHERE room = ? AND user_id = ?",
                          (room, heir[0]))
        return heir[0]
    for table in ("room_cursors", "room_history", "room_counters", "room_bans", "rooms"):
        await txn.execute(f"DELETE FROM {table} WHERE room = ?", (room,))
    return None
