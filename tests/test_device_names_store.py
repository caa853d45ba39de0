"""Device names and last-seen times in the store, on SQLite and a real PostgreSQL server:
listing an account's devices, renaming one (never another account's), last seen set at
when a connection ends, and the migration from schema version 9."""

import pytest_twisted

from securechat.store import make_store
from securechat.store.schema import (
    MIGRATIONS, SCHEMA_VERSION, STATEMENTS as SCHEMA_V1, VERSION_TABLE)
from tests.test_account_deletion_store import clocked  # noqa: F401
from tests.test_store_contract import database, device, raw_sql, store  # noqa: F401


@pytest_twisted.ensureDeferred
async def test_devices_are_listed_with_created_and_last_seen_set_when_marked_seen(
        clocked):  # noqa: F811
    """list_devices gives the account's own devices, oldest first, unnamed, with their
    creation time; only mark_seen (a verified connection ending) moves the last-seen
    time: a login lookup, which runs before the signature is checked, does not."""
    store, clock = clocked
    await device(store, "alice", "A1")
    clock.advance(60)
    await device(store, "alice", "A2")
    await device(store, "bob", "B1")
    listed = await store.list_devices("alice")
    assert listed == [
        {"device": "A1", "name": "", "created": 1_000_000_000, "last_seen": 1_000_000_000},
        {"device": "A2", "name": "", "created": 1_000_060_000, "last_seen": 1_000_060_000}]
    clock.advance(30)
    assert await store.device_login("alice", "A1") is not None
    seen = {d["device"]: d["last_seen"] for d in await store.list_devices("alice")}
    assert seen == {"A1": 1_000_000_000, "A2": 1_000_060_000}
    await store.mark_seen("alice", "A1")
    seen = {d["device"]: d["last_seen"] for d in await store.list_devices("alice")}
    assert seen == {"A1": 1_000_090_000, "A2": 1_000_060_000}


@pytest_twisted.ensureDeferred
async def test_renaming_names_only_the_accounts_own_device(store):  # noqa: F811
    """rename_device names one of the user's devices; another account's device or an
    unknown one is refused (False) and left as it was."""
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    assert await store.rename_device("alice", "A1", "laptop") is True
    assert await store.rename_device("alice", "B1", "mine now") is False
    assert await store.rename_device("alice", "NOPE", "x") is False
    assert [d["name"] for d in await store.list_devices("alice")] == ["laptop"]
    assert [d["name"] for d in await store.list_devices("bob")] == [""]


@pytest_twisted.ensureDeferred
async def test_a_version_9_database_gains_device_names_and_last_seen(
        database, tmp_path):  # noqa: F811
    """Upgrading from schema version 9 keeps the devices (named '', never seen) and lets
    them be renamed and marked seen."""
    earlier = [statement for version in range(2, 10) for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      "INSERT INTO schema_version (version) VALUES (9)",
                      "INSERT INTO accounts (user_id, password_key, identity_key, created) "
                      "VALUES ('alice', 'pk', 'idkey', 5)",
                      "INSERT INTO devices (user_id, device_id, device_keys, signature, "
                      "created) VALUES ('alice', 'A1', '{}', 'sig', 7)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert await store.list_devices("alice") == [
            {"device": "A1", "name": "", "created": 7, "last_seen": None}]
        assert await store.rename_device("alice", "A1", "desk")
        await store.mark_seen("alice", "A1")
        (listed,) = await store.list_devices("alice")
        assert listed["name"] == "desk" and listed["last_seen"] >= 7
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
