"""An account's recovery key in the store, on SQLite and a real PostgreSQL server: one row an
account, replaced at once, the password reset it proves, gone with the account."""

import pytest_twisted

from securechat.store import make_store
from securechat.store.schema import (
    MIGRATIONS, SCHEMA_VERSION, STATEMENTS as SCHEMA_V1, VERSION_TABLE)
from tests.test_store_contract import database, raw_sql, store  # noqa: F401

RECOVERY_VERSION = max(v for v, statements in MIGRATIONS.items()
                       if any("recovery_keys" in s for s in statements))
"""The schema version that adds recovery keys (whatever number the merges gave it)."""


@pytest_twisted.ensureDeferred
async def test_a_recovery_key_is_set_read_and_replaced(store):  # noqa: F811
    """set_recovery stores the key and its backup; a second set replaces both (the first key
    is gone); an unknown user gets False and nothing stored; others' rows are untouched."""
    await store.create_account("alice", "pk", "idkey")
    await store.create_account("bob", "pk", "idkey")
    assert await store.get_recovery("alice") is None
    assert await store.set_recovery("alice", "rk1", "backup1") is True
    assert await store.set_recovery("bob", "rkb", "backupb") is True
    first = await store.get_recovery("alice")
    assert (first["recovery_key"], first["backup"]) == ("rk1", "backup1")
    assert await store.set_recovery("alice", "rk2", "backup2") is True
    second = await store.get_recovery("alice")
    assert (second["recovery_key"], second["backup"]) == ("rk2", "backup2")
    assert (await store.get_recovery("bob"))["recovery_key"] == "rkb"
    assert await store.set_recovery("nobody", "rk", "b") is False
    assert await store.get_recovery("nobody") is None


@pytest_twisted.ensureDeferred
async def test_a_password_reset_needs_the_current_recovery_key(store, database):  # noqa: F811
    """reset_password_key replaces the password key while the given recovery key is the
    account's, and is refused (False, nothing changed) for a replaced one or an account
    with none; it also ends a legacy hash (an account not moved to a password key)."""
    await store.create_account("alice", "pk1", "idkey")
    assert await store.reset_password_key("alice", "rk1", "pk2") is False
    await store.set_recovery("alice", "rk1", "backup")
    await store.set_recovery("alice", "rk2", "backup")
    assert await store.reset_password_key("alice", "rk1", "pk2") is False
    assert (await store.get_account("alice"))["password_key"] == "pk1"
    assert await store.reset_password_key("alice", "rk2", "pk2") is True
    assert (await store.get_account("alice"))["password_key"] == "pk2"
    raw_sql(database, "UPDATE accounts SET password_key = NULL, secret_hash = 'argon' "
                      "WHERE user_id = 'alice'")
    assert await store.reset_password_key("alice", "rk2", "pk3") is True
    account = await store.get_account("alice")
    assert (account["password_key"], account["secret_hash"]) == ("pk3", None)


@pytest_twisted.ensureDeferred
async def test_deleting_the_account_removes_its_recovery_key(store, database):  # noqa: F811
    """delete_account takes the recovery row with the account; a new account of the same
    name starts without one."""
    await store.create_account("alice", "pk", "idkey")
    await store.set_recovery("alice", "rk", "backup")
    assert await store.delete_account("alice") is not None
    assert raw_sql(database, "SELECT count(*) FROM recovery_keys") == [(0,)]
    await store.create_account("alice", "pk", "idkey")
    assert await store.get_recovery("alice") is None


@pytest_twisted.ensureDeferred
async def test_a_database_from_before_recovery_keys_gains_them(database, tmp_path):  # noqa: F811
    """Upgrading from the version before recovery keys keeps the accounts, which have no
    recovery key until one is set."""
    earlier = [statement for version in range(2, RECOVERY_VERSION)
               for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      f"INSERT INTO schema_version (version) VALUES ({RECOVERY_VERSION - 1})",
                      "INSERT INTO accounts (user_id, password_key, identity_key, created) "
                      "VALUES ('alice', 'pk', 'idkey', 5)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert await store.get_recovery("alice") is None
        assert await store.set_recovery("alice", "rk", "backup") is True
        assert (await store.get_recovery("alice"))["recovery_key"] == "rk"
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
