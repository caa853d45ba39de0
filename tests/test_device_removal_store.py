"""The signed device list as the truth of an account's devices, in the store, on SQLite and a
real PostgreSQL server: current and pending devices, removal (keys, queue and cursors gone
in the list's own transaction, the id refused for ever), pending devices dropped after the
link window, the device limit, and the migration from schema version 10."""

import pytest
import pytest_twisted

from securechat.store import make_store
from securechat.store.errors import DeviceRemoved, TooManyDevices, UnknownDevice
from securechat.store.schema import (
    MIGRATIONS, SCHEMA_VERSION, STATEMENTS as SCHEMA_V1, VERSION_TABLE)
from tests.test_account_deletion_store import clocked  # noqa: F401
from tests.test_store_contract import database, device, envelope, raw_sql, store  # noqa: F401

MINUTE_MS = 60_000
WINDOW_MS = 10 * MINUTE_MS


def keys(name):
    return f'{{"device":"{name}"}}'


def cursors(database, user, device):  # noqa: F811 (database: a path or URL here)
    return sorted(room for (room,) in raw_sql(
        database, "SELECT room FROM room_cursors WHERE user_id = ? AND device_id = ?",
        (user, device)))


@pytest_twisted.ensureDeferred
async def test_a_list_leaving_out_a_listed_device_removes_it_and_all_it_held(
        clocked, database):  # noqa: F811
    """Publishing a list without A2 removes A2 in the same transaction: its keys, one-time
    and fallback keys, queued envelopes and room cursors are gone, it is recorded as
    removed, its login lookup says so and its id can never publish keys again; A1 and bob
    keep everything."""
    store, clock = clocked
    await device(store, "alice", "A1")
    await device(store, "alice", "A2")
    await device(store, "bob", "B1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await store.add_one_time_keys("alice", "A2", [("k1", "key1", "s1")])
    await store.set_fallback_key("alice", "A2", "f1", "fkey", "fs")
    await store.enqueue([envelope("e1", [("alice", "A1"), ("alice", "A2"), ("bob", "B1")])])
    assert cursors(database, "alice", "A2") == ["everyone", "ops"]

    changes = await store.set_device_list("alice", 1, "list", "sig", ["A1"], WINDOW_MS)

    assert changes == {"added": [], "removed": ["A2"], "dropped": []}
    assert [d["device"] for d in await store.get_devices("alice")] == ["A1"]
    for table in ("devices", "one_time_keys", "fallback_keys", "queue", "room_cursors"):
        assert raw_sql(database, f"SELECT count(*) FROM {table} "
                                 "WHERE user_id = 'alice' AND device_id = 'A2'") == [(0,)]
    assert await store.removed_at("alice", "A2") == 1_000_000_000
    assert await store.device_login("alice", "A2") == {"removed_at": 1_000_000_000}
    with pytest.raises(DeviceRemoved):
        await store.set_device_keys("alice", "A2", keys("A2"), "sig")
    assert await store.queue_length("alice", "A1") == 1
    assert await store.queue_length("bob", "B1") == 1
    assert cursors(database, "alice", "A1") == ["everyone", "ops"]
    assert await store.all_devices() == [("alice", "A1"), ("bob", "B1")]


@pytest_twisted.ensureDeferred
async def test_a_device_keyed_after_the_first_list_is_pending_until_a_list_takes_it_in(
        clocked, database):  # noqa: F811
    """Once alice has a list, a new device's keys make it pending: not in all_devices, no
    room cursors, its login lookup gives when it was created; the list that names it makes
    it current and starts it following alice's rooms."""
    store, clock = clocked
    await device(store, "alice", "A1")
    await store.create_room("ops", "alice", None)
    await store.set_device_list("alice", 1, "list1", "sig", ["A1"], WINDOW_MS)

    clock.advance(7)
    assert await store.set_device_keys("alice", "A2", keys("A2"), "sig") is False

    listed = {d["device"]: d["listed"] for d in await store.get_devices("alice")}
    assert listed == {"A1": True, "A2": False}
    assert await store.all_devices() == [("alice", "A1")]
    assert cursors(database, "alice", "A2") == []
    assert (await store.device_login("alice", "A2"))["pending_since"] == 1_000_007_000
    assert (await store.device_login("alice", "A1"))["pending_since"] is None

    changes = await store.set_device_list("alice", 2, "list2", "sig", ["A1", "A2"], WINDOW_MS)

    assert changes == {"added": ["A2"], "removed": [], "dropped": []}
    assert await store.all_devices() == [("alice", "A1"), ("alice", "A2")]
    assert cursors(database, "alice", "A2") == ["everyone", "ops"]
    assert (await store.device_login("alice", "A2"))["pending_since"] is None


@pytest_twisted.ensureDeferred
async def test_pending_devices_older_than_the_link_window_are_dropped_by_the_next_list(
        clocked, database):  # noqa: F811
    """A list that leaves out pending devices drops those older than the window (keys gone,
    not recorded as removed) and keeps the younger ones pending."""
    store, clock = clocked
    await device(store, "alice", "A1")
    await store.set_device_list("alice", 1, "list1", "sig", ["A1"], WINDOW_MS)
    await store.set_device_keys("alice", "OLD", keys("OLD"), "sig")
    clock.advance(5 * 60)
    await store.set_device_keys("alice", "NEW", keys("NEW"), "sig")
    clock.advance(5 * 60 + 1)  # OLD: 10 min 1 s; NEW: 5 min 1 s

    changes = await store.set_device_list("alice", 2, "list2", "sig", ["A1"], WINDOW_MS)

    assert changes == {"added": [], "removed": [], "dropped": ["OLD"]}
    assert [d["device"] for d in await store.get_devices("alice")] == ["A1", "NEW"]
    assert await store.removed_at("alice", "OLD") is None


@pytest_twisted.ensureDeferred
async def test_a_new_device_past_the_limit_of_listed_and_pending_devices_is_refused(
        store):  # noqa: F811
    """With max_devices 2 an account may hold 3 devices with keys (listed and pending: one
    more to link a replacement); a fourth is refused with TooManyDevices and not stored,
    while a device already there can send its keys again."""
    await store.create_account("alice", "pk", "idkey")
    for name in ("A1", "A2", "A3"):
        await store.set_device_keys("alice", name, keys(name), "sig", max_devices=2)
    with pytest.raises(TooManyDevices):
        await store.set_device_keys("alice", "A4", keys("A4"), "sig", max_devices=2)
    await store.set_device_keys("alice", "A1", keys("A1"), "sig", max_devices=2)
    assert [d["device"] for d in await store.get_devices("alice")] == ["A1", "A2", "A3"]


@pytest_twisted.ensureDeferred
async def test_a_list_naming_a_device_without_keys_is_refused_and_changes_nothing(
        store):  # noqa: F811
    """A list that names a device with no keys fails with UnknownDevice: the stored list,
    and the devices it would have removed, stay as they were."""
    await device(store, "alice", "A1")
    await device(store, "alice", "A2")
    await store.set_device_list("alice", 1, "list1", "sig", ["A1", "A2"], WINDOW_MS)
    with pytest.raises(UnknownDevice):
        await store.set_device_list("alice", 2, "list2", "sig", ["A1", "GHOST"], WINDOW_MS)
    assert (await store.get_device_list("alice"))["version"] == 1
    assert [d["device"] for d in await store.get_devices("alice")] == ["A1", "A2"]


@pytest_twisted.ensureDeferred
async def test_rows_a_racing_send_left_for_a_removed_device_are_swept(
        clocked, database):  # noqa: F811
    """A send whose transaction counted alice's devices just before A2's removal committed
    (PostgreSQL, read committed) commits A2's copy after the removal's own delete, as the
    row written here stands for: the sweep of devices removed since a moment deletes it
    (and only rows of removed devices); one removed before that moment is not looked at."""
    store, clock = clocked
    await device(store, "alice", "A1")
    await device(store, "alice", "A2")
    await store.set_device_list("alice", 1, "list", "sig", ["A1", "A2"], WINDOW_MS)
    await store.enqueue([envelope("early", [("alice", "A1"), ("alice", "A2")])])
    await store.set_device_list("alice", 2, "list", "sig", ["A1"], WINDOW_MS)
    raw_sql(database, "INSERT INTO queue (user_id, device_id, seq, envelope_id, body, digest, "
                      "created) VALUES ('alice', 'A2', 1000, 'late', '{}', 'x', 0)")

    assert await store.sweep_removed_devices(store.now_ms() + 1) == 0  # removed before it
    assert await store.sweep_removed_devices(store.now_ms()) == 1
    assert raw_sql(database, "SELECT count(*) FROM queue WHERE device_id = 'A2'") == [(0,)]
    assert await store.queue_length("alice", "A1") == 1


@pytest_twisted.ensureDeferred
async def test_deleting_an_account_forgets_its_removed_devices(store, database):  # noqa: F811
    """An account's deletion takes its removed-device records with it."""
    await device(store, "alice", "A1")
    await device(store, "alice", "A2")
    await store.set_device_list("alice", 1, "list1", "sig", ["A1"], WINDOW_MS)
    assert await store.removed_at("alice", "A2") is not None
    await store.delete_account("alice")
    assert raw_sql(database, "SELECT count(*) FROM removed_devices") == [(0,)]


@pytest_twisted.ensureDeferred
async def test_a_version_10_database_keeps_every_keyed_device_current(
        database, tmp_path):  # noqa: F811
    """Upgrading from schema version 10 makes every device with keys current (each was
    before), a device row without keys stays out, and removals work on the result."""
    earlier = [statement for version in range(2, 11) for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      "INSERT INTO schema_version (version) VALUES (10)",
                      "INSERT INTO accounts (user_id, password_key, identity_key, created) "
                      "VALUES ('alice', 'pk', 'idkey', 5)",
                      "INSERT INTO devices (user_id, device_id, device_keys, signature, created) "
                      "VALUES ('alice', 'A1', '{}', 'sig', 5)",
                      "INSERT INTO devices (user_id, device_id, device_keys, signature, created) "
                      "VALUES ('alice', 'A2', '{}', 'sig', 6)",
                      "INSERT INTO devices (user_id, device_id, created) "
                      "VALUES ('alice', 'A3', 7)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert await store.all_devices() == [("alice", "A1"), ("alice", "A2")]
        changes = await store.set_device_list("alice", 1, "list", "sig", ["A1"], WINDOW_MS)
        assert changes["removed"] == ["A2"]
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
