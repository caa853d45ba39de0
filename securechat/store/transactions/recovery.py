"""An account's recovery key: its public half and the identity seed it seals (a backup).

At most one row an account: setting a new one replaces the old in one
statement, so the old recovery key stops working the moment the new one is
committed.  Resetting the password key is here too: only a recovery proof
does it without the current password.
"""

from securechat.store.transactions.common import _first, _record


async def txn_set_recovery(txn, user, recovery_key, backup):
    """Make ``recovery_key`` and ``backup`` (base64) ``user``'s recovery; False (nothing
    written) when there is no such account (deleted meanwhile)."""
    if await _first(txn, "SELECT 1 FROM accounts WHERE user_id = ?", (user,)) is None:
        return False
    await txn.execute(
        "INSERT INTO recovery_keys (user_id, recovery_key, backup, created) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
        "recovery_key = excluded.recovery_key, backup = excluded.backup, "
        "created = excluded.created", (user, recovery_key, backup, txn.now_ms))
    return True


async def txn_get_recovery(txn, user):
    return _record(("recovery_key", "backup", "created"), await _first(
        txn, "SELECT recovery_key, backup, created FROM recovery_keys WHERE user_id = ?",
        (user,)))


async def txn_reset_password_key(txn, user, recovery_key, password_key):
    """Make ``password_key`` the account's, whatever it held (a key, or a legacy hash),
    while ``recovery_key`` is still its recovery key; False otherwise (replaced
    meanwhile, or no such account)."""
    return bool(await txn.execute(
        "UPDATE accounts SET password_key = ?, secret_hash = NULL WHERE user_id = ? "
        "AND EXISTS (SELECT 1 FROM recovery_keys r WHERE r.user_id = accounts.user_id "
        "AND r.recovery_key = ?) RETURNING user_id", (password_key, user, recovery_key)))
