"""One contract for IStore, run against SQLite and a real PostgreSQL server."""

import sqlite3

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from securechat.store import IStore, make_store
from securechat.store.engine import SqliteTxn, Txn
from securechat.store.postgres import PostgresStore
from securechat.store.sqlite import SqliteStore
from securechat.store.errors import (
    Banned, DuplicateEnvelope, KeyConflict, RoomExists, StaleVersion, StoreError, StoreUnavailable,
    UserExists)
from securechat.store.schema import (
    MIGRATIONS, SCHEMA_VERSION, STATEMENTS as SCHEMA_V1, VERSION_TABLE)
from securechat.store.transactions.common import digest
from securechat.wire import BROADCAST_ROOM
from tests.support import poll_until_async


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("fresh_postgres_dsn")


@pytest.fixture
def store(database, tmp_path):
    store = make_store(database, str(tmp_path))
    pytest_twisted.blockon(defer.ensureDeferred(store.start()))
    yield store
    pytest_twisted.blockon(defer.ensureDeferred(store.stop()))


def raw_sql(database, sql, args=()):
    """Change (or read) the database behind the store's back (corruption, version bumps);
    the rows of a SELECT."""
    if database.startswith("postgresql://"):
        connection = psycopg2.connect(database)
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), args)
            rows = cursor.fetchall() if cursor.description else []
        connection.close()
    else:
        connection = sqlite3.connect(database)
        with connection:
            rows = connection.execute(sql, args).fetchall()
        connection.close()
    return rows


def database_at(database, version, *statements):
    """Make ``database`` as securechat's schema ``version`` left it, then run
    ``statements`` (rows of that version): what a migration test upgrades."""
    from securechat.store.schema import MIGRATIONS, STATEMENTS, VERSION_TABLE
    earlier = [statement for step in range(2, version + 1) for statement in MIGRATIONS[step]]
    for statement in [VERSION_TABLE, *STATEMENTS, *earlier,
                      f"INSERT INTO schema_version (version) VALUES ({version})",
                      *statements]:
        raw_sql(database, statement)


async def device(store, user, name="D1"):
    if await store.get_account(user) is None:
        await store.create_account(user, "hash", "idkey")
    await store.set_device_keys(user, name, f'{{"device":"{name}"}}', "sig")


def envelope(envelope_id, recipients, body="{}"):
    return {"id": envelope_id, "sender": "alice", "sender_device": "A1",
            "recipients": recipients, "body": body}


def test_store_provides_the_interface(store):
    """Both backends fully provide IStore."""
    assert verifyObject(IStore, store)


@pytest_twisted.ensureDeferred
async def test_make_store_picks_the_backend(tmp_path):
    """A postgres URL gives PostgreSQL; anything else is a SQLite path, relative to the data dir."""
    assert isinstance(make_store("postgresql://u@h/db", str(tmp_path)), PostgresStore)
    assert isinstance(make_store("postgres://u@h/db", str(tmp_path)), PostgresStore)
    relative = make_store("sub/store.db", str(tmp_path))
    assert isinstance(relative, SqliteStore)
    await relative.start()
    await relative.stop()
    assert (tmp_path / "sub" / "store.db").exists()


@pytest_twisted.ensureDeferred
async def test_accounts(store):
    """An account is created once, with its password key, and read back; a second one with
    the same name fails."""
    await store.create_account("alice", "pk1", "k1")
    with pytest.raises(UserExists):
        await store.create_account("alice", "pk2", "k2")
    account = await store.get_account("alice")
    assert account == {"user": "alice", "password_key": "pk1", "secret_hash": None,
                       "identity_key": "k1", "created": account["created"]}
    assert await store.get_account("bob") is None
    assert await store.count_accounts() == 1


@pytest_twisted.ensureDeferred
async def test_a_password_key_is_replaced_only_when_it_is_the_current_one(store):
    """replace_password_key swaps the account's key when the old one is current (and
    nothing else of the account); a stale key or an unknown user: False, nothing changed."""
    await store.create_account("alice", "pk1", "k1")
    assert await store.replace_password_key("alice", "pk1", "pk2") is True
    assert await store.replace_password_key("alice", "pk1", "pk3") is False
    account = await store.get_account("alice")
    assert (account["password_key"], account["secret_hash"], account["identity_key"]) == (
        "pk2", None, "k1")
    assert await store.replace_password_key("nobody", "pk1", "pk2") is False
    assert await store.get_account("nobody") is None


@pytest_twisted.ensureDeferred
async def test_a_version_7_account_keeps_its_hash_and_moves_to_a_password_key_once(
        database, tmp_path):
    """Upgrading from schema version 7 keeps an account's argon2 hash (and no password key);
    move_to_password_key replaces exactly that hash by the key, once: a stale hash, an
    account already moved and an unknown user answer False and change nothing."""
    earlier = [statement for version in range(2, 8) for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      "INSERT INTO schema_version (version) VALUES (7)",
                      "INSERT INTO accounts VALUES ('alice', 'argon-hash', 'idkey', 5)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        account = await store.get_account("alice")
        assert (account["secret_hash"], account["password_key"], account["identity_key"],
                account["created"]) == ("argon-hash", None, "idkey", 5)
        assert await store.move_to_password_key("alice", "other-hash", "pk") is False
        assert await store.move_to_password_key("alice", "argon-hash", "pk") is True
        account = await store.get_account("alice")
        assert (account["secret_hash"], account["password_key"]) == (None, "pk")
        assert await store.move_to_password_key("alice", "argon-hash", "pk2") is False
        assert await store.move_to_password_key("nobody", "argon-hash", "pk") is False
        assert (await store.get_account("alice"))["password_key"] == "pk"
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


@pytest_twisted.ensureDeferred
async def test_the_relay_id_is_made_once_and_shared_by_every_node(store, database, tmp_path):
    """The first call makes a random id; later calls, a restart and a second node on the same
    database all read that same id; another database has another id."""
    first = await store.relay_id()
    assert len(first) >= 22 and first == await store.relay_id()
    node = make_store(database, str(tmp_path / "node2"))
    await node.start()
    try:
        assert await node.relay_id() == first
    finally:
        await node.stop()
    other = make_store(str(tmp_path / "other.sqlite3"), str(tmp_path))
    await other.start()
    try:
        assert await other.relay_id() != first
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_one_devices_published_keys_are_read_alone(store):
    """get_device_keys answers one device's keys; None for a device or user without them."""
    await device(store, "alice", "A")
    await store.create_account("bob", "hash", "idkey")
    assert await store.get_device_keys("alice", "A") == '{"device":"A"}'
    assert await store.get_device_keys("alice", "B") is None
    assert await store.get_device_keys("bob", "A") is None
    assert await store.get_device_keys("nobody", "A") is None


@pytest_twisted.ensureDeferred
async def test_login_counts_are_the_key_counts_and_the_queue_length(store):
    """login_counts answers, in one transaction, what key_counts and queue_length answer."""
    await device(store, "alice", "A")
    await device(store, "bob", "B")
    await store.add_one_time_keys("alice", "A", [("k1", "key1", "sig")])
    await store.enqueue([envelope("e" * 16, [("alice", "A")])])
    counts = await store.login_counts("alice", "A")
    assert counts == {**await store.key_counts("alice", "A"),
                      "queued": await store.queue_length("alice", "A")}
    assert (counts["otk_count"], counts["queued"]) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_logins_arriving_together_each_get_their_devices_keys_and_counts(store):
    """device_login answers each of several logins asked at once (they share transactions)
    its device's keys and login counts; None for a device or user without keys."""
    await device(store, "alice", "A")
    await device(store, "bob", "B")
    await store.add_one_time_keys("alice", "A", [("k1", "key1", "sig")])
    await store.enqueue([envelope("e" * 16, [("alice", "A")])])
    alice, bob, unknown, nobody = await defer.gatherResults([
        store.device_login("alice", "A"), store.device_login("bob", "B"),
        store.device_login("alice", "B"), store.device_login("nobody", "A")])
    assert alice == {"device_keys": '{"device":"A"}', "pending_since": None,
                     "counts": await store.login_counts("alice", "A")}
    assert (alice["counts"]["otk_count"], alice["counts"]["queued"]) == (1, 1)
    assert bob == {"device_keys": '{"device":"B"}', "pending_since": None,
                   "counts": await store.login_counts("bob", "B")}
    assert (bob["counts"]["otk_count"], bob["counts"]["queued"]) == (0, 0)
    assert unknown is None and nobody is None


@pytest_twisted.ensureDeferred
async def test_a_version_6_database_keeps_its_accounts_and_gains_a_relay_id(database, tmp_path):
    """Upgrading from schema version 6 keeps accounts and their hashes as they were and gives
    the relay an id, the same at every start after."""
    earlier = [statement for version in range(2, 7) for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      "INSERT INTO schema_version (version) VALUES (6)",
                      "INSERT INTO accounts VALUES ('alice', 'argon-hash', 'idkey', 0)"]:
        raw_sql(database, statement)
    ids = []
    for _ in range(2):
        store = make_store(database, str(tmp_path))
        await store.start()
        try:
            assert (await store.get_account("alice"))["secret_hash"] == "argon-hash"
            ids.append(await store.relay_id())
        finally:
            await store.stop()
    assert ids[0] == ids[1]
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


@pytest_twisted.ensureDeferred
async def test_device_keys_are_fixed_and_listed(store):
    """Device keys can be re-sent unchanged but never replaced; only devices with keys are current."""
    await device(store, "alice", "B")
    await device(store, "alice", "A")
    await store.set_device_keys("alice", "A", '{"device":"A"}', "sig")
    with pytest.raises(KeyConflict):
        await store.set_device_keys("alice", "A", '{"device":"other"}', "sig")
    assert [d["device"] for d in await store.get_devices("alice")] == ["A", "B"]
    assert await store.all_devices() == [("alice", "A"), ("alice", "B")]


@pytest_twisted.ensureDeferred
async def test_device_list_versions_grow(store):
    """A device list is replaced only by a higher version."""
    await device(store, "alice")
    await store.set_device_list("alice", 1, "list1", "s1", ["D1"], 0)
    with pytest.raises(StaleVersion):
        await store.set_device_list("alice", 1, "list1b", "s1b", ["D1"], 0)
    await store.set_device_list("alice", 3, "list3", "s3", ["D1"], 0)
    assert await store.get_device_list("alice") == {"version": 3, "device_list": "list3",
                                                    "signature": "s3"}


@pytest_twisted.ensureDeferred
async def test_one_time_keys_fifo_once_then_fallback(store):
    """Keys come out in upload order, once each, then the fallback key flagged and marked used."""
    await device(store, "bob")
    assert await store.add_one_time_keys("bob", "D1", [("k1", "K1", "s"), ("k2", "K2", "s")]) == 2
    assert await store.add_one_time_keys("bob", "D1", [("k1", "K1", "s"), ("k3", "K3", "s")]) == 3
    assert await store.key_counts("bob", "D1") == {"otk_count": 3, "fallback_used": False,
                                                  "has_fallback": False}
    await store.set_fallback_key("bob", "D1", "f1", "F1", "s")
    got = [(await store.claim_keys([("bob", "D1")]))[("bob", "D1")] for _ in range(5)]
    assert [(k["kid"], k["fallback"]) for k in got] == [
        ("k1", False), ("k2", False), ("k3", False), ("f1", True), ("f1", True)]
    assert await store.key_counts("bob", "D1") == {"otk_count": 0, "fallback_used": True,
                                                  "has_fallback": True}
    await store.set_fallback_key("bob", "D1", "f2", "F2", "s")
    assert (await store.key_counts("bob", "D1"))["fallback_used"] is False
    assert (await store.claim_keys([("bob", "D1")]))[("bob", "D1")]["kid"] == "f2"
    assert await store.claim_keys([("bob", "NOPE")]) == {}


@pytest_twisted.ensureDeferred
async def test_a_fallback_only_claim_leaves_the_one_time_keys(store):
    """A device named in fallback_only gives its fallback key and keeps its one-time keys;
    the other devices of the same claim get one-time keys."""
    await device(store, "bob")
    await device(store, "carol")
    for user in ("bob", "carol"):
        await store.add_one_time_keys(user, "D1", [("k1", "K1", "s"), ("k2", "K2", "s")])
        await store.set_fallback_key(user, "D1", "f1", "F1", "s")
    got = await store.claim_keys([("bob", "D1"), ("carol", "D1")], {("bob", "D1")})
    assert (got[("bob", "D1")]["kid"], got[("bob", "D1")]["fallback"]) == ("f1", True)
    assert (got[("carol", "D1")]["kid"], got[("carol", "D1")]["fallback"]) == ("k1", False)
    assert (await store.key_counts("bob", "D1"))["otk_count"] == 2


@pytest_twisted.ensureDeferred
async def test_conflicting_upload_stores_nothing(store):
    """A kid re-used with another key, or already handed out, fails the whole upload."""
    await device(store, "bob")
    await store.add_one_time_keys("bob", "D1", [("k1", "K1", "s")])
    with pytest.raises(KeyConflict):
        await store.add_one_time_keys("bob", "D1", [("k9", "K9", "s"), ("k1", "other", "s")])
    assert (await store.key_counts("bob", "D1"))["otk_count"] == 1
    await store.claim_keys([("bob", "D1")])
    with pytest.raises(KeyConflict):
        await store.add_one_time_keys("bob", "D1", [("k1", "K1", "s")])
    assert (await store.key_counts("bob", "D1"))["otk_count"] == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_hand_out_each_key_once(store):
    """30 simultaneous claims for 20 keys: 20 distinct kids, then only the fallback key."""
    await device(store, "bob")
    await store.add_one_time_keys("bob", "D1", [(f"k{i:02d}", f"K{i}", "s") for i in range(20)])
    await store.set_fallback_key("bob", "D1", "fb", "FB", "s")
    results = await defer.gatherResults(
        [store.claim_keys([("bob", "D1")]) for _ in range(30)], consumeErrors=True)
    keys = [r[("bob", "D1")] for r in results]
    one_time = [k["kid"] for k in keys if not k["fallback"]]
    assert sorted(one_time) == [f"k{i:02d}" for i in range(20)]
    assert [k["kid"] for k in keys if k["fallback"]] == ["fb"] * 10


@pytest_twisted.ensureDeferred
async def test_two_nodes_claim_each_key_once(store, database, tmp_path):
    """Claims through two store objects (two relay nodes) on one database never share a key."""
    await device(store, "bob")
    await store.add_one_time_keys("bob", "D1", [(f"k{i:02d}", f"K{i}", "s") for i in range(20)])
    other = make_store(database, str(tmp_path))
    await other.start()
    try:
        results = await defer.gatherResults(
            [node.claim_keys([("bob", "D1"), ("bob", "D1")]) for node in [store, other] * 12],
            consumeErrors=True)
    finally:
        await other.stop()
    kids = [r[("bob", "D1")]["kid"] for r in results if r]
    assert sorted(kids) == [f"k{i:02d}" for i in range(20)] and len(results) - len(kids) == 4


@pytest_twisted.ensureDeferred
async def test_enqueue_numbers_envelopes_in_one_sequence(store):
    """Envelopes are numbered 1, 2, 3 ... in the order stored, whatever their recipients;
    each device reads its own in that order."""
    await device(store, "bob", "B1")
    await device(store, "bob", "B2")
    placed = await store.enqueue([
        envelope("e1", [("bob", "B1"), ("bob", "B2")]),
        envelope("e2", [("bob", "B1")]),
    ])
    assert placed == [(1, None), (2, None)]
    assert await store.enqueue([envelope("e3", [("bob", "B2")], body='{"x":1}')]) == [(3, None)]
    rows = await store.fetch_queue("bob", "B2", 0, 10)
    assert [(r["seq"], r["id"], r["body"], r["intact"]) for r in rows] == [
        (1, "e1", "{}", True), (3, "e3", '{"x":1}', True)]
    assert [r["id"] for r in await store.fetch_queue("bob", "B1", 1, 10)] == ["e2"]
    assert [r["id"] for r in await store.fetch_queue("bob", "B1", 0, 1)] == ["e1"]
    assert await store.queue_length("bob", "B1") == 2


@pytest_twisted.ensureDeferred
async def test_duplicate_envelope_is_atomic(store):
    """A batch with an id used before raises DuplicateEnvelope and stores nothing."""
    await device(store, "bob")
    await store.enqueue([envelope("e1", [("bob", "D1")])])
    with pytest.raises(DuplicateEnvelope) as info:
        await store.enqueue([envelope("e2", [("bob", "D1")]), envelope("e1", [("bob", "D1")])])
    assert info.value.envelope_id == "e1"
    assert [r["id"] for r in await store.fetch_queue("bob", "D1", 0, 10)] == ["e1"]
    assert (await store.enqueue([envelope("e2", [("bob", "D1")])])) == [(2, None)]


@pytest_twisted.ensureDeferred
async def test_an_id_is_unique_per_queued_device_and_per_room_history(store):
    """An id still queued for a recipient device, or kept in the room's history, is refused
    (a retried send); once every copy is acknowledged it may be queued again (clients
    de-duplicate by id), and the refused call leaves no trace and no gap in the numbering."""
    await device(store, "bob")
    await device(store, "carol")
    await store.enqueue([envelope("e1", [("bob", "D1")])])
    with pytest.raises(DuplicateEnvelope):
        await store.enqueue([envelope("e1", [("carol", "D1"), ("bob", "D1")])])
    assert await store.queue_length("carol", "D1") == 0
    assert await store.enqueue([envelope("e1", [("carol", "D1")])]) == [(2, None)]
    await store.ack("bob", "D1", ["e1"])
    assert await store.enqueue([envelope("e1", [("bob", "D1")])]) == [(3, None)]
    room_message = {**envelope("r1", [("bob", "D1")]), "history": "ops"}
    await store.enqueue([room_message])
    await store.ack("bob", "D1", ["r1"])
    with pytest.raises(DuplicateEnvelope):
        await store.enqueue([room_message])
    assert [e["id"] for e in (await store.room_history("ops", None, 10))] == ["r1"]


@pytest_twisted.ensureDeferred
async def test_a_version_1_database_is_migrated_with_its_queue(database, tmp_path):
    """A database written by schema version 1 (with its table of every envelope id) is
    upgraded on start to the current version: queued envelopes stay, and the id table is gone."""
    for statement in [VERSION_TABLE, *SCHEMA_V1,
                      "INSERT INTO schema_version (version) VALUES (1)",
                      "INSERT INTO accounts VALUES ('bob', 'h', 'k', 0)",
                      "INSERT INTO devices (user_id, device_id, next_seq, created) "
                      "VALUES ('bob', 'D1', 1, 0)",
                      "INSERT INTO envelope_ids VALUES ('e1', 'alice', 'A1', 0)",
                      f"INSERT INTO queue VALUES ('bob', 'D1', 1, 'e1', '{{}}', '{digest('{}')}', 0)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert [(r["id"], r["body"], r["intact"])
                for r in await store.fetch_queue("bob", "D1", 0, 10)] == [("e1", "{}", True)]
        with pytest.raises(DuplicateEnvelope):
            await store.enqueue([envelope("e1", [("bob", "D1")])])
        assert await store.enqueue([envelope("e2", [("bob", "D1")])]) == [(2, None)]
    finally:
        await store.stop()
    with pytest.raises(Exception, match="envelope_ids"):
        raw_sql(database, "SELECT count(*) FROM envelope_ids")


@pytest_twisted.ensureDeferred
async def test_concurrent_enqueues_are_numbered_gaplessly(store):
    """Simultaneous batches for the same devices, in either order, get seqs 1..N, and each
    device reads them all in that order."""
    await device(store, "bob", "B1")
    await device(store, "bob", "B2")
    orders = [[("bob", "B1"), ("bob", "B2")], [("bob", "B2"), ("bob", "B1")]]
    placed = await defer.gatherResults(
        [store.enqueue([envelope(f"e{i}", orders[i % 2])]) for i in range(20)],
        consumeErrors=True)
    assert sorted(seq for ((seq, _),) in placed) == list(range(1, 21))
    for name in ("B1", "B2"):
        rows = await store.fetch_queue("bob", name, 0, 100)
        assert [r["seq"] for r in rows] == list(range(1, 21))
        assert await store.queue_length("bob", name) == 20


@pytest_twisted.ensureDeferred
async def test_concurrent_duplicates_are_refused(store):
    """The same envelope id (or user name) sent at once is stored once; the others are refused."""
    await device(store, "bob")
    outcomes = await defer.DeferredList(
        [store.enqueue([envelope("same", [("bob", "D1")])]) for _ in range(6)]
        + [store.create_account("carol", "h", "k") for _ in range(6)], consumeErrors=True)
    failures = [result.value for ok, result in outcomes if not ok]
    assert sorted(type(f).__name__ for f in failures) == (
        ["DuplicateEnvelope"] * 5 + ["UserExists"] * 5)
    assert await store.queue_length("bob", "D1") == 1


@pytest_twisted.ensureDeferred
async def test_enqueue_to_an_unknown_device_stores_nothing(store):
    """A batch naming a device that does not exist fails as a whole."""
    await device(store, "bob")
    with pytest.raises(StoreError):
        await store.enqueue([envelope("e1", [("bob", "D1")]), envelope("e2", [("bob", "GONE")])])
    assert await store.queue_length("bob", "D1") == 0
    assert await store.enqueue([envelope("e1", [("bob", "D1")])]) == [(1, None)]


@pytest_twisted.ensureDeferred
async def test_ack_removes_only_that_device_copy(store):
    """An ack removes the acknowledging device's copy; unknown ids are ignored."""
    await device(store, "bob", "B1")
    await device(store, "bob", "B2")
    await store.enqueue([envelope("e1", [("bob", "B1"), ("bob", "B2")])])
    assert await store.ack("bob", "B1", ["e1", "unknown"]) == 1
    assert await store.ack("bob", "B1", ["e1"]) == 0
    assert await store.queue_length("bob", "B1") == 0
    assert await store.queue_length("bob", "B2") == 1


@pytest_twisted.ensureDeferred
async def test_acks_sharing_a_commit_each_count_their_own_removals(store):
    """Acks of several devices committed together: each removes only its device's copies,
    and an id acknowledged twice in the group counts for the first ack only."""
    for user, name in (("bob", "B1"), ("bob", "B2"), ("carol", "C1")):
        await device(store, user, name)
    await store.enqueue([envelope("e1", [("bob", "B1"), ("carol", "C1")]),
                         envelope("e2", [("bob", "B1")]), envelope("e3", [("bob", "B1")])])
    removed = await defer.gatherResults([
        store.ack("bob", "B1", ["e1", "e2"]),
        store.ack("bob", "B1", ["e2", "e3", "e2"]),
        store.ack("carol", "C1", ["e1", "e3"]),
        store.ack("bob", "B2", ["e1"]),
    ])
    assert removed == [2, 1, 1, 0]
    assert await store.queue_length("bob", "B1") == 0
    assert await store.queue_length("carol", "C1") == 0


@pytest_twisted.ensureDeferred
async def test_corruption_at_rest_is_detected(store, database):
    """A body changed behind the store's back fails its digest check."""
    await device(store, "bob")
    await store.enqueue([envelope("e1", [("bob", "D1")], body='{"ct":"AAAA"}')])
    raw_sql(database, "UPDATE queue SET body = ? WHERE envelope_id = ?", ('{"ct":"AAAB"}', "e1"))
    (row,) = await store.fetch_queue("bob", "D1", 0, 10)
    assert row["intact"] is False and row["body"] == '{"ct":"AAAB"}'
    assert digest('{"ct":"AAAA"}') != digest(row["body"])


@pytest_twisted.ensureDeferred
async def test_postgres_connections_come_back_after_the_server_drops_them(fresh_postgres_dsn,
                                                                           tmp_path):
    """What a PostgreSQL restart looks like to the relay (every connection closed by the
    server): writes fail with StoreUnavailable while the connections are down, then work
    again without restarting the store, and nothing committed before is lost."""
    store = make_store(fresh_postgres_dsn, str(tmp_path))
    await store.start()
    try:
        await device(store, "bob")
        await store.enqueue([envelope("before", [("bob", "D1")])])
        database_name = fresh_postgres_dsn.rsplit("/", 1)[1]
        killed = raw_sql(fresh_postgres_dsn,
                         "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = ? AND pid <> pg_backend_pid()", (database_name,))
        assert len(killed) >= 1

        async def accepted():
            try:
                await store.enqueue([envelope("after", [("bob", "D1")])])
            except StoreUnavailable:  # down: refused, nothing stored (the sender would retry)
                return False
            return True

        await poll_until_async(accepted, timeout=30, interval=0.2)
        rows = await store.fetch_queue("bob", "D1", 0, 10)
        assert [r["id"] for r in rows] == ["before", "after"]
        assert [r["seq"] for r in rows] == [1, 2]
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart(database, tmp_path):
    """What one store object committed, a new one on the same database reads."""
    first = make_store(database, str(tmp_path))
    await first.start()
    await device(first, "bob")
    await first.enqueue([envelope("e1", [("bob", "D1")])])
    await first.stop()
    second = make_store(database, str(tmp_path))
    await second.start()
    try:
        assert [r["id"] for r in await second.fetch_queue("bob", "D1", 0, 10)] == ["e1"]
        assert (await second.enqueue([envelope("e2", [("bob", "D1")])])) == [(2, None)]
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_a_group_larger_than_one_statement_is_numbered_and_checked(store, monkeypatch):
    """Rows and devices beyond what one statement holds: every row is numbered from the
    group's share of the sequence, in order, and a missing device still fails the call."""
    monkeypatch.setattr("securechat.store.transactions.common.ROWS_PER_INSERT", 2)
    for name in ("B1", "B2", "B3"):
        await device(store, "bob", name)
    everyone = [("bob", "B1"), ("bob", "B2"), ("bob", "B3")]
    assert await store.enqueue([envelope(f"e{i}", everyone) for i in range(3)]) == [
        (1, None), (2, None), (3, None)]
    with pytest.raises(StoreError):
        await store.enqueue([envelope("e9", everyone + [("bob", "GONE")])])
    for name in ("B1", "B2", "B3"):
        assert [(r["seq"], r["id"]) for r in await store.fetch_queue("bob", name, 0, 10)] == [
            (1, "e0"), (2, "e1"), (3, "e2")]
    assert await store.enqueue([envelope("e9", everyone)]) == [(4, None)]


def record_statements(monkeypatch):
    """The text of every statement the store's transactions run from now on (a list that
    grows), whichever database runs them."""
    texts = []
    for txn_class in (Txn, SqliteTxn):
        for name in ("execute", "count", "with_next"):
            def recorded(self, sql, *args, _run=getattr(txn_class, name)):
                texts.append(sql)
                return _run(self, sql, *args)
            monkeypatch.setattr(txn_class, name, recorded)
    return texts


@pytest_twisted.ensureDeferred
async def test_write_groups_of_one_shape_run_the_same_statements(store, monkeypatch):
    """Numbers a group takes from the sequence are parameters, not part of the SQL text: a
    text that changed with every group would make SQLite parse and plan it again each
    time (its statement cache is keyed by the text)."""
    await device(store, "bob", "B1")
    await store.create_room("ops", "alice", None)
    texts = record_statements(monkeypatch)
    groups = []
    for number in range(3):
        del texts[:]
        await store.enqueue([envelope(f"e{number}", [("bob", "B1")]),
                             room_message(f"r{number}")])
        groups.append(list(texts))
    assert groups[0] and groups[1] == groups[0] and groups[2] == groups[0]


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused(database, tmp_path):
    """A database written by a newer securechat is not touched: start() fails and says why."""
    store = make_store(database, str(tmp_path))
    await store.start()
    await store.stop()
    raw_sql(database, "UPDATE schema_version SET version = 999")
    store = make_store(database, str(tmp_path))
    with pytest.raises(StoreError) as info:
        await store.start()
    await store.stop()
    assert "999" in str(info.value) and "newer" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_rooms(store):
    """Rooms are created once with their owner as member, open until made invite-only;
    members join and leave."""
    await store.create_room("ops", "alice", None)
    with pytest.raises(RoomExists):
        await store.create_room("ops", "bob", "hash")
    assert (await store.get_room("ops"))["owner"] == "alice"
    assert await store.get_room("nope") is None
    assert (await store.get_room("ops"))["invite_only"] is False
    assert await store.set_invite_only("ops", True) is True
    assert (await store.get_room("ops"))["invite_only"] is True
    assert await store.set_invite_only("nope", True) is False
    assert await store.add_member("ops", "bob") == ["alice", "bob"]  # the members to tell
    assert await store.add_member("ops", "bob") is None
    assert await store.room_members("ops") == ["alice", "bob"]
    assert await store.rooms_of("bob") == ["ops"]
    assert await store.remove_member("ops", "bob") == ["alice", "bob"]  # bob is told too
    assert await store.remove_member("ops", "bob") is None
    assert await store.rooms_of("bob") == []


@pytest_twisted.ensureDeferred
async def test_member_roles(store):
    """The creator is owner; roles can be changed for members only; ``room_roles`` names
    the owner and the admins."""
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    assert await store.member_role("ops", "alice") == "owner"
    assert await store.member_role("ops", "bob") == "member"
    assert await store.set_member_role("ops", "bob", "admin") is True
    assert await store.member_role("ops", "bob") == "admin"
    assert await store.set_member_role("ops", "carol", "admin") is False
    assert await store.member_role("ops", "carol") is None
    assert await store.room_roles("ops") == {"alice": "owner", "bob": "admin"}
    assert await store.room_roles("nope") == {}


@pytest_twisted.ensureDeferred
async def test_a_banned_member_is_removed_and_kept_out_until_unbanned(store):
    """A ban removes the member (its devices get nothing sent later), remembers its role
    and who banned it, refuses its return with Banned until lifted."""
    await device(store, "carol", "C1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "carol")
    await store.set_member_role("ops", "carol", "admin")
    await store.enqueue([room_message("while-member")])
    assert await store.ban_member("ops", "carol", "alice") == ["alice", "carol"]  # to tell
    await store.enqueue([room_message("after-ban")])
    assert await store.room_members("ops") == ["alice"]
    assert await pending_ids(store, "carol", "C1") == ["while-member"]
    ban = await store.room_ban("ops", "carol")
    assert (ban["role"], ban["by"], isinstance(ban["created"], int)) == ("admin", "alice", True)
    with pytest.raises(Banned):
        await store.add_member("ops", "carol")
    assert await store.room_members("ops") == ["alice"]
    assert await store.room_ban("other", "carol") is None
    assert await store.unban_member("ops", "carol") is True
    assert await store.unban_member("ops", "carol") is False
    assert await store.room_ban("ops", "carol") is None
    assert await store.add_member("ops", "carol") == ["alice", "carol"]
    assert await store.member_role("ops", "carol") == "member"


@pytest_twisted.ensureDeferred
async def test_a_non_member_is_banned_and_bans_are_listed_in_pages(store):
    """A ban of a user who is not a member removes nobody (it is not among the members
    returned) but keeps it out, as a former member; banning again keeps the first ban;
    the bans are listed by name, a page at a time."""
    await store.create_room("ops", "alice", None)
    await store.create_room("other", "alice", None)
    await store.add_member("ops", "bob")
    assert await store.ban_member("ops", "dave", "bob") == ["alice", "bob"]
    with pytest.raises(Banned):
        await store.add_member("ops", "dave")
    assert await store.ban_member("ops", "dave", "alice") == ["alice", "bob"]
    ban = await store.room_ban("ops", "dave")
    assert (ban["role"], ban["by"]) == ("member", "bob")
    await store.set_member_role("ops", "bob", "admin")
    assert await store.ban_member("ops", "bob", "alice") == ["alice", "bob"]
    await store.ban_member("ops", "carol", "alice")
    assert await store.ban_member("other", "erin", "alice") == ["alice"]
    first = await store.room_bans("ops", None, 2)
    assert [(b["user"], b["role"], b["by"]) for b in first] == [
        ("bob", "admin", "alice"), ("carol", "member", "alice")]
    assert all(isinstance(b["created"], int) for b in first)
    assert [b["user"] for b in await store.room_bans("ops", "carol", 2)] == ["dave"]
    assert await store.room_bans("ops", "dave", 2) == []
    assert await store.room_bans("nope", None, 2) == []


@pytest_twisted.ensureDeferred
async def test_a_version_5_database_gains_room_bans_and_keeps_its_rooms(database, tmp_path):
    """Upgrading from schema version 5 adds the bans table and leaves rooms and members as
    they were: a member of before the upgrade can be banned and is kept out."""
    earlier = [statement for version in range(2, 6) for statement in MIGRATIONS[version]]
    for statement in [VERSION_TABLE, *SCHEMA_V1, *earlier,
                      "INSERT INTO schema_version (version) VALUES (5)",
                      "INSERT INTO rooms VALUES ('ops', 'alice', NULL, 0)",
                      "INSERT INTO room_members VALUES ('ops', 'alice', 'owner', 0)",
                      "INSERT INTO room_members VALUES ('ops', 'bob', 'member', 0)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert await store.room_members("ops") == ["alice", "bob"]
        assert await store.ban_member("ops", "bob", "alice") == ["alice", "bob"]
        with pytest.raises(Banned):
            await store.add_member("ops", "bob")
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


@pytest_twisted.ensureDeferred
async def test_a_join_racing_a_ban_on_another_node_never_outlasts_it(store, database, tmp_path):
    """Joins of members being banned through a second store object (another relay node)
    either come first and are removed, or are refused: no banned user stays a member."""
    await store.create_room("ops", "alice", None)
    users = [f"u{i:02d}" for i in range(12)]
    for user in users:
        await store.add_member("ops", user)
    other = make_store(database, str(tmp_path))
    await other.start()
    try:
        outcomes = await defer.gatherResults(
            [call for user in users for call in (
                other.ban_member("ops", user, "alice"),
                store.add_member("ops", user).addErrback(lambda f: f.trap(Banned)))],
            consumeErrors=True)
    finally:
        await other.stop()
    assert [user in members for user, members in zip(users, outcomes[0::2])] == [True] * len(
        users)
    assert await store.room_members("ops") == ["alice"]
    assert all([await store.room_ban("ops", user) for user in users])


@pytest_twisted.ensureDeferred
async def test_a_ban_racing_joins_returns_the_members_its_own_transaction_saw(
        store, database, tmp_path):
    """A ban made through a second store object (another relay node) while 12 users join
    fires with exactly the members of its moment: the owner, the banned user, and the
    joiners whose join came first (those whose join saw the banned user still in)."""
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    joiners = [f"u{i:02d}" for i in range(12)]
    other = make_store(database, str(tmp_path))
    await other.start()
    try:
        joins = [store.add_member("ops", user) for user in joiners[:6]]
        ban = other.ban_member("ops", "bob", "alice")
        joins += [store.add_member("ops", user) for user in joiners[6:]]
        outcomes = await defer.gatherResults([ban, *joins])
    finally:
        await other.stop()
    earlier = [user for user, after in zip(joiners, outcomes[1:]) if "bob" in after]
    assert outcomes[0] == sorted(["alice", "bob", *earlier])
    assert await store.room_members("ops") == sorted(["alice", *joiners])


@pytest_twisted.ensureDeferred
async def test_room_history_is_kept_with_the_envelope_and_pruned(store):
    """A room envelope lands in the room's history atomically; paging and pruning work."""
    await device(store, "bob")
    for i in range(5):
        item = envelope(f"r{i}", [("bob", "D1")], body=f'{{"n":{i}}}')
        await store.enqueue([{**item, "history": "ops"}])
    await store.enqueue([envelope("direct", [("bob", "D1")])])
    newest = await store.room_history("ops", None, 2)
    assert [(h["pos"], h["id"]) for h in newest] == [(4, "r3"), (5, "r4")]
    older = await store.room_history("ops", newest[0]["pos"], 10)
    assert [h["id"] for h in older] == ["r0", "r1", "r2"]
    assert await store.prune_history(0, 3) == 2
    assert [h["id"] for h in await store.room_history("ops", None, 10)] == ["r2", "r3", "r4"]
    assert await store.prune_history(2**53, 100) == 3
    assert await store.room_history("ops", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_a_room_history_page_stops_at_its_byte_cap(store):
    """With max_bytes a page holds the newest entries whose bodies fit together (at least
    one, however large), and paging on with ``before`` reaches every entry once."""
    for i, size in enumerate((100, 300, 300, 300, 900)):
        await store.enqueue([room_message(f"r{i}", body='"' + "x" * (size - 2) + '"')])
    pages, before = [], None
    while True:
        page = await store.room_history("ops", before, 10, 700)
        if not page:
            break
        pages.append([h["id"] for h in page])
        before = page[0]["pos"]
    assert pages == [["r4"], ["r2", "r3"], ["r0", "r1"]]
    assert [h["id"] for h in await store.room_history("ops", None, 2, 10_000)] == ["r3", "r4"]


def room_message(envelope_id, body="{}", sender=("alice", "A1"), room="ops"):
    return {"id": envelope_id, "sender": sender[0], "sender_device": sender[1],
            "recipients": [], "body": body, "history": room}


async def pending_ids(store, user, name):
    return [r["id"] for r in await store.fetch_queue(user, name, 0, 100)]


@pytest_twisted.ensureDeferred
async def test_a_room_message_is_one_row_for_every_member_device(store, database):
    """A room message is one history entry and no queue row; every member device (keys
    published before or after its user joined) reads the same body, intact."""
    await device(store, "bob", "B1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await store.add_member("ops", "carol")
    await device(store, "bob", "B2")
    await device(store, "carol", "C1")
    body = '{"ct":"' + "Q" * 400 + '"}'
    await store.enqueue([room_message("r1", body)])
    assert raw_sql(database, "SELECT count(*) FROM queue") == [(0,)]
    assert raw_sql(database, "SELECT count(*) FROM room_history WHERE body = ?", (body,)) == [(1,)]
    for user, name in (("bob", "B1"), ("bob", "B2"), ("carol", "C1")):
        (row,) = await store.fetch_queue(user, name, 0, 10)
        assert (row["id"], row["body"], row["intact"]) == ("r1", body, True)
        assert await store.queue_length(user, name) == 1


@pytest_twisted.ensureDeferred
async def test_room_delivery_follows_membership(store):
    """A device gets the room messages sent while its user is a member, except its own:
    not those from before the join, still those from before a removal, none after it."""
    for user, name in (("alice", "A1"), ("alice", "A2"), ("bob", "B1")):
        await device(store, user, name)
    await store.create_room("ops", "alice", None)
    await store.enqueue([room_message("before-join")])
    await store.add_member("ops", "bob")
    await store.enqueue([room_message("while-member")])
    await store.remove_member("ops", "bob")
    await store.enqueue([room_message("after-removal")])
    assert await pending_ids(store, "bob", "B1") == ["while-member"]
    assert await pending_ids(store, "alice", "A1") == []
    assert await pending_ids(store, "alice", "A2") == [
        "before-join", "while-member", "after-removal"]
    assert await store.ack("bob", "B1", ["while-member"]) == 1
    assert await pending_ids(store, "bob", "B1") == []
    await store.add_member("ops", "bob")
    await store.enqueue([room_message("after-rejoin")])
    assert await pending_ids(store, "bob", "B1") == ["after-rejoin"]


@pytest_twisted.ensureDeferred
async def test_every_device_follows_the_broadcast_room(store):
    """The broadcast room needs no membership: every device with keys reads it."""
    await device(store, "bob", "B1")
    await store.enqueue([room_message("b1", room=BROADCAST_ROOM)])
    await device(store, "carol", "C1")
    await store.enqueue([room_message("b2", room=BROADCAST_ROOM)])
    assert await pending_ids(store, "bob", "B1") == ["b1", "b2"]
    assert await pending_ids(store, "carol", "C1") == ["b2"]


@pytest_twisted.ensureDeferred
async def test_queue_and_rooms_come_out_in_the_order_stored(store):
    """A room's key sent 1:1 and the room message it opens reach a device in the order they
    were stored, across pages, whichever table holds them."""
    await device(store, "bob", "B1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    expected = []
    for i in range(4):
        await store.enqueue([envelope(f"key{i}", [("bob", "B1")])])
        await store.enqueue([room_message(f"msg{i}")])
        expected += [f"key{i}", f"msg{i}"]
    assert await pending_ids(store, "bob", "B1") == expected
    pages, after = [], 0
    while rows := await store.fetch_queue("bob", "B1", after, 3):
        pages.append([r["id"] for r in rows])
        after = rows[-1]["seq"]
    assert pages == [expected[0:3], expected[3:6], expected[6:8]]


class RoomSender:
    """Sends room messages and acknowledges them either by id alone or as the relay does,
    naming the ``(room, pos)`` that ``enqueue`` gave each room entry."""

    def __init__(self, store, named):
        self._store = store
        self._named = named
        self.places = {}

    async def send(self, *messages):
        for message, (_, pos) in zip(messages, await self._store.enqueue(list(messages))):
            self.places[message["id"]] = (message["history"], pos)

    def ack(self, user, name, ids):
        if not self._named:
            return self._store.ack(user, name, ids)
        positions = {}
        for room, pos in (self.places[i] for i in ids if i in self.places):
            positions.setdefault(room, []).append(pos)
        return self._store.ack(user, name, [i for i in ids if i not in self.places], positions)


@pytest.mark.parametrize("named", [False, True], ids=["by-id", "named-entries"])
@pytest_twisted.ensureDeferred
async def test_a_room_ack_covers_the_earlier_messages(store, named):
    """Acknowledging a room message moves the device past it and every earlier one of that
    room (and past its own messages), counting the ids that were pending; other rooms and
    other devices are not moved.  The same whether the entries are looked up by id or
    named with the places ``enqueue`` and ``fetch_queue`` gave them."""
    rooms = RoomSender(store, named)
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    await device(store, "bob", "B2")
    await store.create_room("ops", "alice", None)
    await store.create_room("dev", "alice", None)
    await store.add_member("ops", "bob")
    await store.add_member("dev", "bob")
    for i in range(3):
        await rooms.send(room_message(f"ops{i}"), room_message(f"dev{i}", room="dev"))
    await rooms.send(room_message("own", sender=("bob", "B1")))
    await rooms.send(room_message("ops3"))
    await store.enqueue([envelope("direct", [("bob", "B1")])])
    assert rooms.places["ops3"] == ("ops", 5) and rooms.places["dev2"] == ("dev", 3)
    assert {r["id"]: (r["room"], r["pos"]) for r in await store.fetch_queue("bob", "B1", 0, 20)
            } == {**{i: rooms.places[i] for i in (*(f"ops{n}" for n in range(4)),
                                                  *(f"dev{n}" for n in range(3)))},
                  "direct": (None, None)}
    assert await rooms.ack("bob", "B1", ["ops1", "unknown"]) == 1
    assert await pending_ids(store, "bob", "B1") == [
        "dev0", "dev1", "ops2", "dev2", "ops3", "direct"]
    assert await rooms.ack("bob", "B1", ["ops0", "ops1"]) == 0
    assert await rooms.ack("bob", "B1", ["ops3", "direct", "dev2"]) == 3
    assert await store.queue_length("bob", "B1") == 0
    assert await store.queue_length("bob", "B2") == 8


@pytest_twisted.ensureDeferred
async def test_room_acks_sharing_a_commit_count_each_entry_once(store):
    """Room acks committed together, by id and by place, for the same device and room:
    each pending entry counts once, for the first ack naming it (a place named twice in one
    ack too), and the device's position ends past the last one acknowledged."""
    rooms = RoomSender(store, named=True)
    for user, name in (("alice", "A1"), ("bob", "B1"), ("carol", "C1")):
        await device(store, user, name)
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await store.add_member("ops", "carol")
    await rooms.send(*(room_message(f"m{i}") for i in range(5)))
    pos = [rooms.places[f"m{i}"][1] for i in range(5)]
    removed = await defer.gatherResults([
        store.ack("bob", "B1", [], {"ops": [pos[0], pos[1]]}),
        store.ack("bob", "B1", ["m1", "m2"]),
        store.ack("bob", "B1", [], {"ops": [pos[2], pos[3], pos[3]]}),
        store.ack("carol", "C1", ["m0"], {"ops": [pos[4]]}),
    ])
    assert removed == [2, 1, 1, 2]
    assert await pending_ids(store, "bob", "B1") == ["m4"]
    assert await pending_ids(store, "carol", "C1") == []


@pytest.mark.parametrize("named", [False, True], ids=["by-id", "named-entries"])
@pytest_twisted.ensureDeferred
async def test_a_removed_member_acknowledges_only_what_was_sent_to_it(store, named):
    """After its user's removal a device can still acknowledge what it was sent as a
    member; an ack of a later message (pushed while the removal was committing) neither
    counts nor moves it past what it still has to receive."""
    rooms = RoomSender(store, named)
    await device(store, "bob", "B1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await rooms.send(room_message("m1"), room_message("m2"))
    await store.remove_member("ops", "bob")
    await rooms.send(room_message("later"))
    assert await rooms.ack("bob", "B1", ["later"]) == 0
    assert await pending_ids(store, "bob", "B1") == ["m1", "m2"]
    assert await rooms.ack("bob", "B1", ["m1"]) == 1
    assert await pending_ids(store, "bob", "B1") == ["m2"]
    assert await rooms.ack("bob", "B1", ["m2", "later"]) == 1
    assert await pending_ids(store, "bob", "B1") == []


@pytest_twisted.ensureDeferred
async def test_history_is_kept_until_every_device_has_it(store):
    """History past its retention is dropped only once every device following the room has
    acknowledged it; a sender's own messages never hold it back."""
    await device(store, "alice", "A1")
    await device(store, "bob", "B1")
    await device(store, "carol", "C1")
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await store.add_member("ops", "carol")
    for i in range(3):
        await store.enqueue([room_message(f"r{i}", body=f'{{"n":{i}}}')])
    assert await store.ack("bob", "B1", ["r2"]) == 1
    assert await store.prune_history(2**53, 100) == 0
    rows = await store.fetch_queue("carol", "C1", 0, 10)
    assert [(r["id"], r["body"], r["intact"]) for r in rows] == [
        (f"r{i}", f'{{"n":{i}}}', True) for i in range(3)]
    assert await store.ack("carol", "C1", ["r1"]) == 1
    assert await store.prune_history(2**53, 100) == 2
    assert await store.ack("carol", "C1", ["r2"]) == 1
    assert await store.prune_history(2**53, 100) == 1
    assert await store.room_history("ops", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_a_corrupted_room_message_is_detected_for_every_device(store, database):
    """A shared body changed behind the store's back fails the digest check for each device."""
    await device(store, "bob", "B1")
    await device(store, "carol", "C1")
    await store.create_room("ops", "bob", None)
    await store.add_member("ops", "carol")
    await store.enqueue([room_message("r1", body='{"ct":"AAAA"}')])
    raw_sql(database, "UPDATE room_history SET body = ? WHERE envelope_id = ?",
            ('{"ct":"AAAB"}', "r1"))
    for user, name in (("bob", "B1"), ("carol", "C1")):
        (row,) = await store.fetch_queue(user, name, 0, 10)
        assert row["intact"] is False and row["body"] == '{"ct":"AAAB"}'


@pytest_twisted.ensureDeferred
async def test_a_version_3_database_keeps_its_queued_room_messages(database, tmp_path):
    """Upgrading from schema version 3: a queued room message (a row pointing at the room's
    history) is still delivered intact, and members' devices follow their rooms from then on."""
    body = '{"ct":"AAAA"}'
    for statement in [VERSION_TABLE, *SCHEMA_V1, *MIGRATIONS[2], *MIGRATIONS[3],
                      "INSERT INTO schema_version (version) VALUES (3)",
                      "INSERT INTO accounts VALUES ('bob', 'h', 'k', 0)",
                      "INSERT INTO devices (user_id, device_id, device_keys, signature, "
                      "next_seq, created) VALUES ('bob', 'B1', '{}', 's', 7, 0)",
                      "INSERT INTO rooms VALUES ('ops', 'alice', NULL, 0)",
                      "INSERT INTO room_members VALUES ('ops', 'bob', 'member', 0)",
                      "INSERT INTO room_counters VALUES ('ops', 1)",
                      "INSERT INTO room_history (room, pos, envelope_id, body, created, digest) "
                      f"VALUES ('ops', 1, 'r1', '{body}', 0, '{digest(body)}')",
                      "INSERT INTO queue (user_id, device_id, seq, envelope_id, room, pos, "
                      "created) VALUES ('bob', 'B1', 7, 'r1', 'ops', 1, 0)"]:
        raw_sql(database, statement)
    store = make_store(database, str(tmp_path))
    await store.start()
    try:
        assert [(r["seq"], r["id"], r["body"], r["intact"])
                for r in await store.fetch_queue("bob", "B1", 0, 10)] == [(7, "r1", body, True)]
        assert await store.enqueue([room_message("r2"),
                                    room_message("b1", room=BROADCAST_ROOM)]) == [(8, 2), (9, 1)]
        assert await pending_ids(store, "bob", "B1") == ["r1", "r2", "b1"]
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_share_commits_but_not_errors(store):
    """Enqueues and acks fired together all commit, except the one with a used id, which alone fails."""
    await device(store, "bob", "B1")
    await store.enqueue([envelope("old", [("bob", "B1")])])
    calls = [store.enqueue([envelope(f"n{i}", [("bob", "B1")])]) for i in range(10)]
    calls.append(store.enqueue([envelope("old", [("bob", "B1")])]))
    calls.append(store.ack("bob", "B1", ["old"]))
    outcomes = await defer.DeferredList(calls, consumeErrors=True)
    assert [ok for ok, _ in outcomes] == [True] * 10 + [False, True]
    assert outcomes[10][1].check(DuplicateEnvelope)
    assert outcomes[11][1] == 1
    rows = await store.fetch_queue("bob", "B1", 0, 100)
    assert [r["id"] for r in rows] == [f"n{i}" for i in range(10)]
    assert [r["seq"] for r in rows] == list(range(2, 12))
