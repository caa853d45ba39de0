"""Accounts: who may log in, with which password key and identity key; the relay's own id.

An account is its name and the keys that prove it; its devices, their keys
and its signed device list are the ``devices`` aggregate.  The relay's id
lives here too (one row, made by the first start and read by every start):
the challenge every login signs names it.  A deleted account leaves its name
and the time in ``deleted_accounts`` until the name is registered again
(``account_deletion`` removes everything else of it).
"""

from securechat.store.errors import InvalidInvite, NameQuarantined, UserExists
from securechat.store.transactions.common import _first, _record


async def txn_create_account(txn, user, password_key, identity_key, quarantine_ms=0,
                             invite_hash=None):
    """Create the account; with ``invite_hash`` (the SHA-256 of an invite token) the
    invite gives one of its uses in the same transaction, so a refused registration uses
    nothing up and an invite is never used more often than it allows."""
    deleted_at = await txn_deleted_at(txn, user)
    if deleted_at is not None:
        if txn.now_ms < deleted_at + quarantine_ms:
            raise NameQuarantined(user, deleted_at + quarantine_ms)
        await txn.execute("DELETE FROM deleted_accounts WHERE user_id = ?", (user,))
    if invite_hash is not None and not await txn.execute(
            "UPDATE invites SET uses_left = uses_left - 1 WHERE token_hash = ? "
            "AND uses_left > 0 AND (expires_at IS NULL OR expires_at > ?) RETURNING uses_left",
            (invite_hash, txn.now_ms)):
        raise InvalidInvite()
    if not await txn.execute(
            "INSERT INTO accounts (user_id, password_key, identity_key, created) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
            (user, password_key, identity_key, txn.now_ms)):
        raise UserExists(user)


async def txn_deleted_at(txn, user):
    """When the account named ``user`` was deleted (ms), or None: never, or registered again."""
    row = await _first(txn, "SELECT deleted_at FROM deleted_accounts WHERE user_id = ?", (user,))
    return row[0] if row else None


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
