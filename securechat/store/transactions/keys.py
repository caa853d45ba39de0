"""One-time and fallback keys: published by a device, each one-time key claimed exactly once.

Every transaction that adds or claims a device's one-time keys first takes
that device's lock (``_lock_device``), so concurrent claims on PostgreSQL take
turns and a handed-out key is never handed out again.
"""

from securechat.store.errors import KeyConflict
from securechat.store.transactions.common import _first, _record


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
