"""Devices and their keys: identity keys, signed device lists, one-time and fallback keys.

One aggregate, because every key belongs to a device row: a device exists
once it publishes its identity keys, and its one-time keys are counted and
locked through that row.  The account's signed device list decides which
devices are current (``listed``): a device listed by a published list, or
any device with keys of an account that has published none yet (the moment
between registering and its first list).  A device with keys in no list is
*pending* (being linked): it follows no room until a list takes it in.  A
current device follows its user's rooms (``common._open_cursors``), so it
reads what is sent to them from then on.  Publishing a list that leaves out
a listed device removes that device for good in the same transaction
(``txn_set_device_list``).  Every transaction that adds or claims a device's
one-time keys first takes that device's lock (``_lock_device``), so
concurrent claims on PostgreSQL take turns and a handed-out key is never
handed out again; each one-time key is claimed exactly once.  Uploading a
device's keys and publishing a list take the account's lock
(``_lock_account``), so the device limit and the list see one another.
"""

from securechat.store.errors import (
    DeviceRemoved, KeyConflict, StaleVersion, TooManyDevices, UnknownDevice)
from securechat.store.transactions.common import _first, _open_cursors, _record
from securechat.store.transactions.queue_reads import txn_queue_length

DEVICE_TABLES = ("room_cursors", "queue", "one_time_keys", "claimed_kids", "fallback_keys",
                 "devices")
"""Every table with rows of one device (by ``user_id`` and ``device_id``), its row last."""


async def _lock_account(txn, user):
    """Serialise the transactions that change which devices an account has (a row lock
    on PostgreSQL; SQLite runs one transaction at a time anyway)."""
    await txn.execute("UPDATE accounts SET created = created WHERE user_id = ?", (user,))


async def txn_set_device_keys(txn, user, device, device_keys, signature, max_devices=None):
    """Record a device's keys; fire with True when the device is current (its account
    has published no list yet), False when it is pending.  ``DeviceRemoved`` for a
    removed device's id; ``TooManyDevices`` for a new device of an account that already
    has more than ``max_devices`` with keys; ``KeyConflict`` for other keys than stored."""
    await _lock_account(txn, user)
    if await txn_removed_at(txn, user, device) is not None:
        raise DeviceRemoved(f"device {device} was removed from {user}'s account")
    stored = await _first(
        txn, "SELECT device_keys, listed FROM devices WHERE user_id = ? AND device_id = ?",
        (user, device))
    if stored is not None and stored[0] is not None:
        if stored[0] != device_keys:
            raise KeyConflict(f"device {device} already has other keys")
        return bool(stored[1])
    if max_devices is not None:
        (count,) = await _first(
            txn, "SELECT count(*) FROM devices WHERE user_id = ? AND device_keys IS NOT NULL",
            (user,))
        if count > max_devices:
            raise TooManyDevices(f"{user} already has {count} devices")
    listed = await _first(txn, "SELECT 1 FROM device_lists WHERE user_id = ?", (user,)) is None
    await txn.execute(
        "INSERT INTO devices (user_id, device_id, device_keys, signature, created, last_seen, "
        "listed) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET "
        "device_keys = excluded.device_keys, signature = excluded.signature, "
        "listed = excluded.listed WHERE devices.device_keys IS NULL",
        (user, device, device_keys, signature, txn.now_ms, txn.now_ms, listed))
    if listed:
        await _open_cursors(txn, user, device=device)
    return listed


async def txn_removed_at(txn, user, device):
    """When ``device`` was removed from ``user``'s account (ms), or None."""
    row = await _first(
        txn, "SELECT removed_at FROM removed_devices WHERE user_id = ? AND device_id = ?",
        (user, device))
    return row[0] if row else None


async def txn_get_devices(txn, user):
    rows = await txn.execute(
        "SELECT device_id, device_keys, signature, listed, created FROM devices "
        "WHERE user_id = ? AND device_keys IS NOT NULL ORDER BY device_id", (user,))
    return [{**_record(("device", "device_keys", "signature"), row[:3]),
             "listed": bool(row[3]), "created": row[4]} for row in rows]


async def txn_list_devices(txn, user):
    """The user's devices with published keys, for their owner's eyes: id, name (empty
    until renamed), created and last seen (ms; None before its first login since v10)."""
    rows = await txn.execute(
        "SELECT device_id, name, created, last_seen FROM devices WHERE user_id = ? "
        "AND device_keys IS NOT NULL ORDER BY created, device_id", (user,))
    return [_record(("device", "name", "created", "last_seen"), row) for row in rows]


async def txn_rename_device(txn, user, device, name):
    """Name one of ``user``'s own devices; False if ``user`` has no such device (a device
    of another account is never touched)."""
    return bool(await txn.execute(
        "UPDATE devices SET name = ? WHERE user_id = ? AND device_id = ? "
        "AND device_keys IS NOT NULL RETURNING device_id", (name, user, device)))


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
    transaction: ``{"device_keys", "counts", "pending_since"}`` (``txn_login_counts``;
    when the device was created if it is pending, else None), ``{"removed_at"}`` for a
    removed device, or None for a device that has published no keys.  Nothing is
    written here: a login is not verified yet when this runs (see ``txn_mark_seen``)."""
    found = []
    for user, device in pairs:
        row = await _first(
            txn, "SELECT device_keys, listed, created FROM devices "
                 "WHERE user_id = ? AND device_id = ? AND device_keys IS NOT NULL",
            (user, device))
        if row is None:
            removed_at = await txn_removed_at(txn, user, device)
            found.append(None if removed_at is None else {"removed_at": removed_at})
            continue
        found.append({"device_keys": row[0],
                      "counts": await txn_login_counts(txn, user, device),
                      "pending_since": None if row[1] else row[2]})
    return found


async def txn_mark_seen(txn, user, device):
    """Record that ``device`` was connected until now: written when its verified
    connection ends, so neither an unverified login nor the hot path writes it."""
    await txn.execute("UPDATE devices SET last_seen = ? WHERE user_id = ? AND device_id = ?",
                      (txn.now_ms, user, device))


async def txn_all_devices(txn):
    rows = await txn.execute(
        "SELECT user_id, device_id FROM devices WHERE listed ORDER BY user_id, device_id")
    return [tuple(row) for row in rows]


async def txn_set_device_list(txn, user, version, device_list, signature, listed,
                              link_window_ms):
    """Store ``user``'s signed list of the devices ``listed`` and make it the truth, in one
    transaction: devices it takes in become current (and follow the user's rooms); listed
    devices it leaves out are removed for good (``removed_devices``); pending devices it
    leaves out that are older than ``link_window_ms`` are dropped.  Fires with
    ``{"added", "removed", "dropped"}`` (sorted device ids)."""
    await _lock_account(txn, user)
    if not await txn.execute(
            "INSERT INTO device_lists (user_id, version, device_list, signature) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "version = excluded.version, device_list = excluded.device_list, "
            "signature = excluded.signature WHERE device_lists.version < excluded.version "
            "RETURNING version", (user, version, device_list, signature)):
        raise StaleVersion(f"device list version {version} is not above the stored one")
    have = {row["device"]: row for row in await txn_get_devices(txn, user)}
    unknown = sorted(set(listed) - set(have))
    if unknown:
        raise UnknownDevice(unknown[0])
    changes = {
        "added": sorted(d for d in listed if not have[d]["listed"]),
        "removed": sorted(d for d, row in have.items() if row["listed"] and d not in listed),
        "dropped": sorted(d for d, row in have.items() if not row["listed"] and d not in listed
                          and txn.now_ms - row["created"] > link_window_ms)}
    for device in changes["removed"] + changes["dropped"]:
        await _delete_device(txn, user, device)
    for device in changes["removed"]:
        await _record_removed(txn, user, device)
    for device in changes["added"]:
        await txn.execute("UPDATE devices SET listed = TRUE WHERE user_id = ? AND device_id = ?",
                          (user, device))
        await _open_cursors(txn, user, device=device)
    return changes


async def _delete_device(txn, user, device):
    """Everything the relay holds for ``device``: keys, queue, room cursors."""
    for table in DEVICE_TABLES:
        await txn.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?",
                          (user, device))


async def _record_removed(txn, user, device):
    await txn.execute(
        "INSERT INTO removed_devices (user_id, device_id, removed_at) VALUES (?, ?, ?)",
        (user, device, txn.now_ms))


async def txn_sweep_removed_devices(txn, since_ms):
    """Delete what is left of the devices removed since ``since_ms``: a send that checked
    a device list just before a removal commits its rows for the removed device after the
    removal's own delete, and nothing would ever deliver or delete them (the id never
    comes back).  Fires with how many rows went."""
    removed = 0
    for table in DEVICE_TABLES:
        removed += await txn.count(
            f"DELETE FROM {table} WHERE (user_id, device_id) IN "
            "(SELECT user_id, device_id FROM removed_devices WHERE removed_at >= ?)",
            (since_ms,))
    return removed


async def txn_remove_device(txn, user, device):
    """The relay's operator removes ``device`` from ``user``'s account (the owner's
    signed list may still name it: a device the list names and the relay has no keys
    of is encrypted to by nobody); False when the account has no such device."""
    await _lock_account(txn, user)
    if await txn_get_device_keys(txn, user, device) is None:
        return False
    await _delete_device(txn, user, device)
    await _record_removed(txn, user, device)
    return True


async def txn_get_device_list(txn, user):
    return _record(("version", "device_list", "signature"), await _first(
        txn, "SELECT version, device_list, signature FROM device_lists WHERE user_id = ?",
        (user,)))


# -- one-time and fallback keys -----------------------------------------------------


async def _lock_device(txn, user, device):
    """Serialise the transactions that touch one device's one-time keys (a row lock on PostgreSQL).

    Always take several in sorted order, so two transactions never deadlock.
    Fires with the device's one-time key counter, or None for an unknown device.
    """
    row = await _first(
        txn, "UPDATE devices SET next_otk = next_otk WHERE user_id = ? AND device_id = ? "
             "RETURNING next_otk", (user, device))
    return row[0] if row else None


async def _otk_count(txn, user, device):
    return (await _first(
        txn, "SELECT count(*) FROM one_time_keys WHERE user_id = ? AND device_id = ?",
        (user, device)))[0]


async def txn_add_one_time_keys(txn, user, device, keys):
    counter = await _lock_device(txn, user, device)
    if counter is None:
        raise KeyConflict(f"device {device} has no published identity keys")
    for kid, key, signature in keys:
        if await txn.execute(
                "SELECT 1 FROM claimed_kids WHERE user_id = ? AND device_id = ? AND kid = ?",
                (user, device, kid)):
            raise KeyConflict(f"one-time key {kid} was already handed out")
        counter += 1
        if await txn.execute(
                "INSERT INTO one_time_keys (user_id, device_id, kid, pos, key, signature) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id, kid) DO NOTHING "
                "RETURNING kid", (user, device, kid, counter, key, signature)):
            continue
        counter -= 1
        stored = await _first(
            txn, "SELECT key, signature FROM one_time_keys "
                 "WHERE user_id = ? AND device_id = ? AND kid = ?", (user, device, kid))
        if tuple(stored) != (key, signature):
            raise KeyConflict(f"one-time key {kid} is already published with another key")
    await txn.execute(
        "UPDATE devices SET next_otk = ? WHERE user_id = ? AND device_id = ?",
        (counter, user, device))
    return await _otk_count(txn, user, device)


async def txn_set_fallback_key(txn, user, device, kid, key, signature):
    await txn.execute(
        "INSERT INTO fallback_keys (user_id, device_id, kid, key, signature, used) "
        "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id) DO UPDATE SET "
        "kid = excluded.kid, key = excluded.key, signature = excluded.signature, used = 0",
        (user, device, kid, key, signature))


async def _claim_one_time_key(txn, user, device):
    """The device's oldest one-time key, removed and its kid remembered for ever.

    The caller holds the device's lock, so concurrent claims take turns and
    each sees the keys the previous one left.
    """
    row = await _first(
        txn, "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ? AND pos = ("
             "SELECT min(pos) FROM one_time_keys WHERE user_id = ? AND device_id = ?) "
             "RETURNING kid, key, signature", (user, device, user, device))
    if row is None:
        return None
    await txn.execute(
        "INSERT INTO claimed_kids (user_id, device_id, kid) VALUES (?, ?, ?)",
        (user, device, row[0]))
    return {**_record(("kid", "key", "signature"), row), "fallback": False}


async def _use_fallback_key(txn, user, device):
    row = await _first(
        txn, "UPDATE fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? "
             "RETURNING kid, key, signature", (user, device))
    return {**_record(("kid", "key", "signature"), row), "fallback": True} if row else None


async def txn_claim_keys(txn, pairs, fallback_only):
    claimed = {}
    for user, device in sorted(set(pairs)):
        if await _lock_device(txn, user, device) is None:
            continue
        one_time = None
        if (user, device) not in fallback_only:
            one_time = await _claim_one_time_key(txn, user, device)
        key = one_time or await _use_fallback_key(txn, user, device)
        if key is not None:
            claimed[(user, device)] = key
    return claimed


async def txn_key_counts(txn, user, device):
    row = await _first(
        txn, "SELECT used FROM fallback_keys WHERE user_id = ? AND device_id = ?", (user, device))
    return {"otk_count": await _otk_count(txn, user, device),
            "fallback_used": bool(row and row[0]), "has_fallback": row is not None}
