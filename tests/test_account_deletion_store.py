"""Deleting an account in the store, on SQLite and a real PostgreSQL server: what goes, what
stays, who inherits a room, and the name's quarantine."""

import pytest
import pytest_twisted
from twisted.internet import defer, task

from securechat.store import make_store
from securechat.store.errors import NameQuarantined, UserExists
from securechat.store.schema import (
    MIGRATIONS, SCHEMA_VERSION, STATEMENTS as SCHEMA_V1, VERSION_TABLE)
from tests.test_store_contract import database, device, envelope, raw_sql, store  # noqa: F401

DAY_MS = 86_400_000


@pytest.fixture
def clocked(database, tmp_path):  # noqa: F811 (the imported fixture)
    """A store whose stamps come from a task.Clock the test moves, and that clock."""
    clock = task.Clock()
    clock.advance(1_000_000)
    store = make_store(database, str(tmp_path), clock)
    pytest_twisted.blockon(defer.ensureDeferred(store.start()))
    yield store, clock
    pytest_twisted.blockon(defer.ensureDeferred(store.stop()))


@pytest_twisted.ensureDeferred
async def test_deleting_removes_devices_keys_queue_and_memberships_at_once(
        store, database):  # noqa: F811
    """After delete_account nothing of bob is left: account, devices, keys, queued
    envelopes, room memberships and cursors; alice's own rows are untouched."""
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    await device(store, "bob", "B2")
    await store.add_one_time_keys("bob", "B1", [("k1", "key1", "s1"), ("k2", "key2", "s2")])
    await store.set_fallback_key("bob", "B1", "f1", "fkey", "fs")
    await store.set_device_list("bob", 1, "[]", "sig", ["B1", "B2"], 0)
    await store.claim_keys([("bob", "B1")])
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await store.enqueue([envelope("e1", [("bob", "B1"), ("bob", "B2"), ("alice", "A1")])])
    assert await store.queue_length("bob", "B1") == 1

    deleted = await store.delete_account("bob")

    assert deleted == {"devices": ["B1", "B2"], "rooms": ["ops"], "heirs": {},
                       "deleted_at": await store.deleted_at("bob")}
    assert await store.get_account("bob") is None
    assert await store.get_devices("bob") == []
    assert await store.get_device_list("bob") is None
    assert await store.rooms_of("bob") == []
    assert await store.room_members("ops") == ["alice"]
    for table in ("devices", "one_time_keys", "claimed_kids", "fallback_keys", "queue",
                  "room_cursors", "room_members", "device_lists", "accounts"):
        assert raw_sql(database, f"SELECT count(*) FROM {table} WHERE user_id = 'bob'") == [(0,)]
    assert await store.queue_length("alice", "A1") == 1
    assert await store.get_devices("alice") != []
    assert await store.deleted_at("bob") is not None
    assert await store.delete_account("bob") is None  # no such account any more


@pytest_twisted.ensureDeferred
async def test_an_owned_room_passes_to_the_oldest_admin_else_member_or_is_dropped(clocked):
    """A room bob owned goes to its longest-standing admin (before any older member), or
    to its longest-standing member when it has no admin; one he was alone in is gone."""
    store, clock = clocked
    for user in ("bob", "carol", "dave", "erin"):
        await device(store, user)
    await store.create_room("withadmin", "bob", None)
    await store.create_room("members", "bob", None)
    await store.create_room("alone", "bob", None)
    clock.advance(1)
    await store.add_member("withadmin", "carol")
    await store.add_member("members", "dave")
    clock.advance(1)
    await store.add_member("withadmin", "dave")
    await store.add_member("members", "carol")
    await store.set_member_role("withadmin", "dave", "admin")
    await store.enqueue([{**envelope("r1", []), "history": "alone"}])

    deleted = await store.delete_account("bob")

    assert deleted["heirs"] == {"withadmin": "dave", "members": "dave"}
    assert (await store.get_room("withadmin"))["owner"] == "dave"
    assert await store.member_role("withadmin", "dave") == "owner"
    assert await store.member_role("members", "dave") == "owner"
    assert await store.get_room("alone") is None
    assert await store.room_history("alone", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_a_deleted_name_is_refused_until_its_quarantine_ends(clocked):
    """Registering a deleted name within the quarantine fails with NameQuarantined (saying
    when it frees); at that moment it succeeds and the tombstone goes; with no quarantine
    it succeeds at once."""
    store, clock = clocked
    await store.create_account("bob", "pk", "idkey")
    await store.create_account("carol", "pk", "idkey")
    await store.delete_account("bob")
    await store.delete_account("carol")
    deleted_at = await store.deleted_at("bob")
    assert deleted_at == store.now_ms()

    with pytest.raises(NameQuarantined) as refused:
        await store.create_account("bob", "pk2", "idkey2", quarantine_ms=30 * DAY_MS)
    assert refused.value.frees_at == deleted_at + 30 * DAY_MS
    clock.advance(30 * 86_400 - 1)
    with pytest.raises(NameQuarantined):
        await store.create_account("bob", "pk2", "idkey2", quarantine_ms=30 * DAY_MS)
    clock.advance(1)
    await store.create_account("bob", "pk2", "idkey2", quarantine_ms=30 * DAY_MS)
    assert (await store.get_account("bob"))["password_key"] == "pk2"
    assert await store.deleted_at("bob") is None
    with pytest.raises(UserExists):
        await store.create_account("bob", "pk3", "idkey3")

    await store.create_account("carol", "pk2", "idkey2", quarantine_ms=0)
    assert await store.deleted_at("carol") is None


@pytest_twisted.ensureDeferred
async def test_a_version_8_database_gains_the_deleted_accounts_table(
        database, tmp_path):  # noqa: F811
    """Upgrading from schema version 8 keeps the accounts and lets an account be deleted
    and its name quarantined."""
    earlier = [statement for version in range(2, 9) for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      "INSERT INTO schema_version (version) VALUES (8)",
                      "INSERT INTO accounts (user_id, password_key, identity_key, created) "
                      "VALUES ('alice', 'pk', 'idkey', 5)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert (await store.get_account("alice"))["password_key"] == "pk"
        await store.delete_account("alice")
        with pytest.raises(NameQuarantined):
            await store.create_account("alice", "pk", "idkey", quarantine_ms=DAY_MS)
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
