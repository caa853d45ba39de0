"""Accounts, their devices and signed device lists: who may log in and which devices they have.

A device publishing its identity keys also starts following its user's rooms
(``common._open_cursors``), so it reads what is sent to them from then on.
"""

from securechat.store.errors import KeyConflict, StaleVersion, UserExists
from securechat.store.transactions.common import _first, _open_cursors, _record
from securechat.store.transactions.keys import txn_key_counts
from securechat.store.transactions.queue import txn_queue_length


async def txn_create_account(txn, user, password_key, identity_key):
    if not await txn.execute(
            "INSERT INTO accounts (user_id, password_key, identity_key, created) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
            (user, password_key, identity_key, txn.now_ms)):
        raise UserExists(user)


async def txn_count_accounts(txn):
    return (await _first(txn, "SELECT count(*) FROM accounts"))[0]


async def txn_get_account(txn, user):
    return _record(("user", "password_key", "secret_hash", "identity_key", "created"),
                   await _first(txn, "SELECT user_id, password_key, secret_hash, identity_key, "
                                     "created FROM accounts WHERE user_id = ?", (user,)))


async def txn_move_to_password_key(txn, user, secret_hash, password_key):
    return bool(await txn.execute(
        "UPDATE accounts SET password_key = ?, secret_hash = NULL "
        "WHERE user_id = ? AND secret_hash = ? RETURNING user_id",
        (password_key, user, secret_hash)))


async def txn_replace_password_key(txn, user, old_key, new_key):
    return bool(await txn.execute(
        "UPDATE accounts SET password_key = ? WHERE user_id = ? AND password_key = ? "
        "RETURNING user_id", (new_key, user, old_key)))


async def txn_relay_id(txn, candidate):
    await txn.execute(
        "INSERT INTO relay_identity (only_row, relay_id) VALUES (1, ?) "
        "ON CONFLICT (only_row) DO NOTHING", (candidate,))
    return (await _first(txn, "SELECT relay_id FROM relay_identity"))[0]


# -- devices ------------------------------------------------------------------------


async def txn_set_device_keys(txn, user, device, device_keys, signature):
    await txn.execute(
        "INSERT INTO devices (user_id, device_id, device_keys, signature, created) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET "
        "device_keys = excluded.device_keys, signature = excluded.signature "
        "WHERE devices.device_keys IS NULL", (user, device, device_keys, signature, txn.now_ms))
    (stored,) = await _first(
        txn, "SELECT device_keys FROM devices WHERE user_id = ? AND device_id = ?",
        (user, device))
    if stored != device_keys:
        raise KeyConflict(f"device {device} already has other keys")
    await _open_cursors(txn, user, device=device)


async def txn_get_devices(txn, user):
    rows = await txn.execute(
        "SELECT device_id, device_keys, signature FROM devices WHERE user_id = ? "
        "AND device_keys IS NOT NULL ORDER BY device_id", (user,))
    return [_record(("device", "device_keys", "signature"), row) for row in rows]


async def txn_get_device_keys(txn, user, device):
    row = await _first(
        txn, "SELECT device_keys FROM devices WHERE user_id = ? AND device_id = ?",
        (user, device))
    return row[0] if row else None


async def txn_login_counts(txn, user, device):
    return {**await txn_key_counts(txn, user, device),
            "queued": await txn_queue_length(txn, user, device)}


async def txn_device_login_group(txn, pairs):
    """What each ``(user, device)`` of a group of device-key logins needs, in one
    transaction: ``{"device_keys", "counts"}`` (``txn_login_counts``), or None for a
    device that has published no keys."""
    found = []
    for user, device in pairs:
        device_keys = await txn_get_device_keys(txn, user, device)
        found.append(None if device_keys is None else {
            "device_keys": device_keys, "counts": await txn_login_counts(txn, user, device)})
    return found


async def txn_all_devices(txn):
    rows = await txn.execute(
        "SELECT user_id, device_id FROM devices WHERE device_keys IS NOT NULL "
        "ORDER BY user_id, device_id")
    return [tuple(row) for row in rows]


async def txn_set_device_list(txn, user, version, device_list, signature):
    if not await txn.execute(
            "INSERT INTO device_lists (user_id, version, device_list, signature) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "version = excluded.version, device_list = excluded.device_list, "
            "signature = excluded.signature WHERE device_lists.version < excluded.version "
            "RETURNING version", (user, version, device_list, signature)):
        raise StaleVersion(f"device list version {version} is not above the stored one")


async def txn_get_device_list(txn, user):
    return _record(("version", "device_list", "signature"), await _first(
        txn, "SELECT version, device_list, signature FROM device_lists WHERE user_id = ?",
        (user,)))
