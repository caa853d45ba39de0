"""What the operator's admin API reads (``/admin/v1``): accounts, devices and rooms as
counts, names and times, never a key, a signature or a byte of anyone's content; and
the one thing it sets of its own, whether an account is disabled.

Lists come a page at a time in name order (``after``, ``limit``), so a relay with many
users answers in bounded memory.
"""

from securechat.store.transactions.common import _first, _record


async def txn_users_page(txn, after, limit):
    """Up to ``limit`` accounts named after ``after``: name, created, devices (current and
    pending), last seen (ms, None if never) and envelopes queued for its devices."""
    rows = await txn.execute(
        "SELECT a.user_id, a.created, "
        "(SELECT count(*) FROM devices d WHERE d.user_id = a.user_id "
        " AND d.device_keys IS NOT NULL), "
        "(SELECT max(d.last_seen) FROM devices d WHERE d.user_id = a.user_id), "
        "(SELECT count(*) FROM queue q WHERE q.user_id = a.user_id), a.disabled "
        "FROM accounts a WHERE a.user_id > ? ORDER BY a.user_id LIMIT ?", (after, limit))
    return [{**_record(("user", "created", "devices", "last_seen", "queued"), row[:5]),
             "disabled": bool(row[5])} for row in rows]


async def txn_user_detail(txn, user):
    """One account: created, its devices (id, name, listed, created, last seen, queued)
    and its rooms with its role in each; None when there is no such account."""
    account = await _first(txn, "SELECT created, disabled FROM accounts WHERE user_id = ?",
                           (user,))
    if account is None:
        return None
    devices = await txn.execute(
        "SELECT d.device_id, d.name, d.listed, d.created, d.last_seen, "
        "(SELECT count(*) FROM queue q WHERE q.user_id = d.user_id "
        " AND q.device_id = d.device_id) "
        "FROM devices d WHERE d.user_id = ? AND d.device_keys IS NOT NULL "
        "ORDER BY d.created, d.device_id", (user,))
    rooms = await txn.execute(
        "SELECT room, role FROM room_members WHERE user_id = ? ORDER BY room", (user,))
    return {"user": user, "created": account[0], "disabled": bool(account[1]),
            "devices": [{**_record(("device", "name", "listed", "created", "last_seen",
                                    "queued"), row), "listed": bool(row[2])}
                        for row in devices],
            "rooms": {room: role for room, role in rooms}}


async def _rooms(txn, where, args):
    rows = await txn.execute(
        "SELECT r.room, r.owner, r.created, "
        "(SELECT count(*) FROM room_members m WHERE m.room = r.room), "
        "(SELECT count(*) FROM room_history h WHERE h.room = r.room), "
        "r.invite_only, r.password_hash IS NOT NULL "
        f"FROM rooms r WHERE {where}", args)
    return [{**_record(("room", "owner", "created", "members", "history"), row[:5]),
             "invite_only": bool(row[5]), "password": bool(row[6])} for row in rows]


async def txn_rooms_page(txn, after, limit):
    """Up to ``limit`` rooms named after ``after``: owner, created, members, messages kept
    in its history, whether it is invite-only and whether it has a password."""
    return await _rooms(txn, "r.room > ? ORDER BY r.room LIMIT ?", (after, limit))


async def txn_room_detail(txn, room):
    """One room as ``txn_rooms_page`` gives it, with its members and their roles and how
    many bytes of ciphertext its history holds; None when there is no such room."""
    found = await _rooms(txn, "r.room = ?", (room,))
    if not found:
        return None
    members = await txn.execute(
        "SELECT user_id, role FROM room_members WHERE room = ? ORDER BY user_id", (room,))
    (size,) = await _first(
        txn, "SELECT COALESCE(sum(length(body)), 0) FROM room_history WHERE room = ?", (room,))
    return {**found[0], "members": {user: role for user, role in members},
            "history_bytes": size}


async def txn_stats(txn):
    """The relay's totals: accounts, devices (with keys), rooms, queued envelopes and room
    messages kept."""
    counts = {}
    for name, sql in (("accounts", "SELECT count(*) FROM accounts"),
                      ("devices", "SELECT count(*) FROM devices WHERE device_keys IS NOT NULL"),
                      ("rooms", "SELECT count(*) FROM rooms"),
                      ("queued", "SELECT count(*) FROM queue"),
                      ("room_messages", "SELECT count(*) FROM room_history")):
        (counts[name],) = await _first(txn, sql)
    return counts


async def txn_set_disabled(txn, user, disabled):
    """Disable (or enable again) ``user``'s account; False when there is no such account."""
    return bool(await txn.execute(
        "UPDATE accounts SET disabled = ? WHERE user_id = ? RETURNING user_id",
        (disabled, user)))


async def txn_disabled_users(txn):
    """The names of the disabled accounts (read once at start: the relay keeps them)."""
    return [row[0] for row in await txn.execute(
        "SELECT user_id FROM accounts WHERE disabled ORDER BY user_id")]


async def txn_create_invite(txn, token_hash, uses, expires_at):
    await txn.execute("INSERT INTO invites (token_hash, uses_left, expires_at, created) "
                      "VALUES (?, ?, ?, ?)", (token_hash, uses, expires_at, txn.now_ms))


async def txn_list_invites(txn):
    """Every invite not used up: its hash, uses left, expiry (ms or None) and creation."""
    rows = await txn.execute(
        "SELECT token_hash, uses_left, expires_at, created FROM invites WHERE uses_left > 0 "
        "ORDER BY created, token_hash")
    return [_record(("token_hash", "uses_left", "expires_at", "created"), row) for row in rows]


async def txn_revoke_invite(txn, hash_prefix):
    """Remove the invites whose hash starts with ``hash_prefix``; how many there were."""
    return await txn.count("DELETE FROM invites WHERE substr(token_hash, 1, ?) = ?",
                           (len(hash_prefix), hash_prefix))
