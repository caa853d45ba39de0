"""The limits on guessing in the store, on SQLite and a real PostgreSQL server: what a check
reads, what a failure writes, several nodes counting at once, pruning (the tables stay
bounded), and the migration that adds them."""

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from securechat.store import make_store
from securechat.store.schema import MIGRATIONS, SCHEMA_VERSION
from securechat.store.transactions import limits
from tests.test_store_contract import database, database_at, raw_sql  # noqa: F401

LIMITS_VERSION = max(v for v, statements in MIGRATIONS.items()
                     if any("limit_events" in s for s in statements))
"""The schema version that adds the limit tables (whatever number the merges gave it)."""

DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


async def started(database, tmp_path, clock, name="node"):  # noqa: F811
    """A started store on ``database`` (one node's), stamping by ``clock``."""
    store = make_store(database, str(tmp_path / name), clock)
    await store.start()
    return store


@pytest.fixture
def store(database, tmp_path, clock):  # noqa: F811
    store = pytest_twisted.blockon(defer.ensureDeferred(started(database, tmp_path, clock)))
    yield store
    pytest_twisted.blockon(store.stop())


def window(scope, subject, since_ms, rows):
    return (scope, subject, since_ms, rows)


@pytest_twisted.ensureDeferred
async def test_a_check_reads_the_pair_and_each_windows_newest_events(store, clock):
    """read_limits answers the pair's failures and last time, and per window its newest
    events after ``since`` (at most ``rows``, newest first); other subjects and scopes
    are not mixed in; forget_failures deletes the pair only."""
    await store.record_limits(("alice", "10.0.0.1"), [("address", "10.0.0.1", 1, 60_000)])
    first = store.now_ms()
    clock.advance(1)
    await store.record_limits(("alice", "10.0.0.1"), [("address", "10.0.0.1", 1, 60_000),
                                                      ("room", "ops", 3, 60_000)])
    await store.record_limits(("bob", "10.0.0.1"), [("address", "10.0.0.2", 1, 60_000)])
    second = store.now_ms()
    row, (address, room, since) = await store.read_limits(("alice", "10.0.0.1"), [
        window("address", "10.0.0.1", 0, 5), window("room", "ops", 0, 5),
        window("address", "10.0.0.1", first, 5)])
    assert row == (2, second)
    assert address == [(second, 1), (first, 1)]
    assert room == [(second, 3)]
    assert since == [(second, 1)]
    _, (newest,) = await store.read_limits(None, [window("address", "10.0.0.1", 0, 1)])
    assert newest == [(second, 1)]
    await store.forget_failures("alice", "10.0.0.1")
    row, _ = await store.read_limits(("alice", "10.0.0.1"), [])
    assert row is None
    assert (await store.read_limits(("bob", "10.0.0.1"), []))[0] == (1, second)


PER_MS = 10 / 60_000
"""A bucket of 10 tokens a minute."""


def claim(claimer, cost, devices=()):
    return (("claims", claimer, cost, PER_MS, 10), ("otk", list(devices), PER_MS, 3))


@pytest_twisted.ensureDeferred
async def test_token_buckets_give_what_they_saved_and_say_how_long_to_wait(store, clock):
    """take_tokens takes the first bucket's cost while it has it, and then one token of
    each other bucket that has one; refused, it says the ms until the cost is saved and
    takes nothing; buckets refill at their rate."""
    assert await store.take_tokens(*claim("alice", 4, ["a", "b"])) == (0, {"a", "b"})
    assert await store.take_tokens(*claim("alice", 4, ["a"])) == (0, {"a"})
    assert await store.take_tokens(*claim("alice", 2, ["a", "b"])) == (0, {"a", "b"})
    assert await store.take_tokens(*claim("bob", 1, ["a", "b"])) == (0, {"b"})
    wait_ms, taken = await store.take_tokens(*claim("alice", 1, ["c"]))
    assert wait_ms == pytest.approx(6000) and taken == set()
    assert await store.take_tokens(*claim("bob", 1, ["c"])) == (0, {"c"})  # c untouched
    clock.advance(3)
    assert await store.take_tokens(*claim("bob", 1, ["a"])) == (0, set())
    clock.advance(3)
    assert await store.take_tokens(*claim("alice", 1, ["a"])) == (0, {"a"})


@pytest_twisted.ensureDeferred
async def test_nodes_counting_at_once_all_count(database, tmp_path, clock):  # noqa: F811
    """Two stores on one database (two nodes) recording failures of one pair and taking
    tokens at once: every failure is counted, none lost to the other's write, and the
    buckets give out exactly what they hold."""
    nodes = [await started(database, tmp_path, clock, name) for name in ("a", "b")]
    try:
        await defer.gatherResults([
            defer.ensureDeferred(node.record_limits(("alice", "10.0.0.66"),
                                                    [("address", "10.0.0.66", 1, 60_000)]))
            for node in nodes for _ in range(20)])
        for node in nodes:
            row, (events,) = await node.read_limits(
                ("alice", "10.0.0.66"), [window("address", "10.0.0.66", 0, 100)])
            assert row[0] == 40 and len(events) == 40
        takes = await defer.gatherResults([
            defer.ensureDeferred(node.take_tokens(*claim(f"c{i}", 1, ["bob"])))
            for node in nodes for i in range(10)])
        assert sum(len(taken) for _, taken in takes) == 3
    finally:
        for node in nodes:
            await node.stop()


@pytest_twisted.ensureDeferred
async def test_pruning_forgets_expired_rows(store, database, clock):  # noqa: F811
    """prune_limits deletes events past their window, buckets once full again and pairs
    whose last failure is older than the pair memory, and keeps the rest."""
    await store.record_limits(("alice", "10.0.0.1"), [("address", "10.0.0.1", 1, 60_000),
                                                      ("room", "ops", 1, 900_000)])
    await store.take_tokens(*claim("alice", 5, ["bob"]))  # full again in 30 s and 6 s
    clock.advance(29)
    assert await store.prune_limits(DAY_MS) == 1  # bob's bucket
    clock.advance(32)
    assert await store.prune_limits(DAY_MS) == 2  # the address event, alice's bucket
    assert raw_sql(database, "SELECT scope FROM limit_events") == [("room",)]
    assert raw_sql(database, "SELECT count(*) FROM limit_buckets") == [(0,)]
    clock.advance(24 * 3600)
    assert await store.prune_limits(DAY_MS) == 2
    assert raw_sql(database, "SELECT count(*) FROM login_failures") == [(0,)]
    assert raw_sql(database, "SELECT count(*) FROM limit_events") == [(0,)]


@pytest_twisted.ensureDeferred
async def test_the_tables_stay_bounded_whatever_a_guesser_cycles_through(
        store, database, clock, monkeypatch):  # noqa: F811
    """Beyond MAX_ROWS a table, pruning drops the rows to be forgotten soonest, even when
    none has expired: 300 pairs and events from as many addresses leave 100 of each, the
    newest (and as many buckets)."""
    monkeypatch.setattr(limits, "MAX_ROWS", 100)
    for i in range(300):
        address = f"10.0.{i // 256}.{i % 256}"
        await store.record_limits(("alice", address), [("address", address, 1, 60_000)])
        await store.take_tokens(*claim(address, 1))
        clock.advance(0.01)
    assert await store.prune_limits(DAY_MS) == 600
    kept = raw_sql(database, "SELECT address FROM login_failures")
    assert len(kept) == 100 and ("10.0.1.43",) in kept and ("10.0.0.0",) not in kept
    assert raw_sql(database, "SELECT count(*) FROM limit_events") == [(100,)]
    assert raw_sql(database, "SELECT count(*) FROM limit_buckets") == [(100,)]


@pytest_twisted.ensureDeferred
async def test_a_database_from_before_the_limit_tables_gains_them(
        database, tmp_path, clock):  # noqa: F811
    """Upgrading from the version before the limit tables keeps the accounts and counts
    failures at once."""
    database_at(database, LIMITS_VERSION - 1,
                "INSERT INTO accounts (user_id, password_key, identity_key, created) "
                "VALUES ('alice', 'pk', 'idkey', 5)")
    store = await started(database, tmp_path, clock)
    try:
        assert (await store.get_account("alice"))["password_key"] == "pk"
        await store.record_limits(("alice", "10.0.0.1"), [("address", "10.0.0.1", 1, 60_000)])
        assert (await store.read_limits(("alice", "10.0.0.1"), []))[0][0] == 1
    finally:
        await store.stop()
    assert raw_sql(database, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
