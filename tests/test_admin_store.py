"""What the admin API reads and sets in the store, on SQLite and a real PostgreSQL: pages
of users and rooms, one user or room in detail, totals, and disabled accounts (schema 13,
migrated from 12 with every account enabled)."""

import pytest_twisted

from securechat.store import make_store
from securechat.store.schema import SCHEMA_VERSION
from tests.test_store_contract import (  # noqa: F401
    database, database_at, device, raw_sql, store)


@pytest_twisted.ensureDeferred
async def test_users_rooms_and_totals_as_the_admin_api_reads_them(store):  # noqa: F811
    """users_page pages by name with devices, queued and disabled; user_detail lists the
    devices and rooms; rooms_page and room_detail count members; stats totals it all."""
    await device(store, "alice", "A1")
    await device(store, "alice", "A2")
    await device(store, "bob", "B1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    first = await store.users_page("", 1)
    assert [(u["user"], u["devices"], u["disabled"]) for u in first] == [("alice", 2, False)]
    rest = await store.users_page(first[-1]["user"], 10)
    assert [u["user"] for u in rest] == ["bob"]
    alice = await store.user_detail("alice")
    assert [d["device"] for d in alice["devices"]] == ["A1", "A2"]
    assert alice["rooms"] == {"ops": "owner"} and await store.user_detail("nobody") is None
    (ops,) = [r for r in await store.rooms_page("", 10) if r["room"] == "ops"]
    assert (ops["owner"], ops["members"], ops["password"]) == ("alice", 2, False)
    detail = await store.room_detail("ops")
    assert detail["members"] == {"alice": "owner", "bob": "member"}
    assert detail["history_bytes"] == 0 and await store.room_detail("none") is None
    stats = await store.stats()
    assert (stats["accounts"], stats["devices"], stats["queued"]) == (2, 3, 0)


@pytest_twisted.ensureDeferred
async def test_an_account_is_disabled_and_enabled_again(store):  # noqa: F811
    """set_disabled marks an existing account (False for an unknown one) and
    disabled_users lists the disabled ones."""
    await device(store, "alice")
    await device(store, "bob")
    assert await store.set_disabled("alice", True) is True
    assert await store.set_disabled("nobody", True) is False
    assert await store.disabled_users() == ["alice"]
    assert (await store.user_detail("alice"))["disabled"] is True
    assert await store.set_disabled("alice", False) is True
    assert await store.disabled_users() == []


@pytest_twisted.ensureDeferred
async def test_a_version_12_database_gains_the_flag_with_every_account_enabled(
        database, tmp_path):  # noqa: F811
    """Upgrading from schema 12 keeps the accounts, none of them disabled."""
    database_at(database, 12, "INSERT INTO accounts (user_id, password_key, identity_key, "
                              "created) VALUES ('alice', 'pk', 'idkey', 5)")
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert await store.disabled_users() == []
        assert await store.set_disabled("alice", True) is True
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
