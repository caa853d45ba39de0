"""Unit tests of the rate limiters, driven by task.Clock: the per-connection buckets in memory,
and the guards whose counts live in a real (SQLite) store, as every node would share them."""

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from securechat.server.guards import (
    Backoff, KeyClaimLimits, LocalCounts, LoginGuard, RoomPasswordGuard, Window)
from securechat.server.ratelimit import TokenBucket
from securechat.store.sqlite import SqliteStore
from securechat.wire import ProtocolError


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(1_700_000_000)  # a plausible epoch: stamps are ms since 1970
    return clock


@pytest.fixture
def store(tmp_path, clock):
    store = SqliteStore(str(tmp_path / "limits.sqlite3"), clock)
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())


def login_guard(store, **limits):
    settings = {"login_failures_per_account": 3, "login_delay_max_seconds": 900,
                "login_failures_per_address": 10, "login_window_seconds": 60, **limits}
    return LoginGuard(store, SimpleNamespace(**settings))


async def refusal(d):
    """The ``rate_limited`` error ``d`` (a check) ends in, or None when it lets the attempt
    through."""
    try:
        await d
    except ProtocolError as e:
        assert e.code == "rate_limited", e
        return e
    return None


async def wrong_login(guard, user, address):
    attempt = await guard.attempt(user, address)
    await attempt.failed()


def test_window_waits_for_the_event_that_must_leave():
    """A window of 3 per 60 s: a 4th event waits until the 3rd newest leaves; weights and
    this node's unseen events count like stored ones."""
    window = Window("w", limit=3, seconds=60)
    now = 100_000
    assert window.wait_ms([(now - 10_000, 1), (now - 20_000, 1)], 0, now) == 0
    assert window.wait_ms([(now - 10_000, 1), (now - 20_000, 1), (now - 50_000, 1)], 0,
                          now) == 10_000
    assert window.wait_ms([(now - 10_000, 1), (now - 20_000, 1)], 1, now) == 40_000
    assert window.wait_ms([], 3, now) == 60_000
    assert window.wait_ms([(now - 30_000, 2)], 0, now, weight=2) == 30_000


def test_backoff_grows_caps_and_forgets_after_a_day():
    """After the free failures each one doubles the wait (capped); a day later the pair
    starts afresh."""
    backoff = Backoff(free=2, max_delay=8)
    now = 10_000_000
    waits = [backoff.wait_ms((failures, now), 0, now) for failures in range(1, 8)]
    assert waits == [0, 1000, 2000, 4000, 8000, 8000, 8000]
    assert backoff.wait_ms((7, now - 8000), 0, now) == 0
    assert backoff.wait_ms((1, now - 5000), 1, now) == 1000  # one more in flight here
    day_later = now + 24 * 3600 * 1000
    assert backoff.wait_ms((7, now), 0, day_later) == 0


@pytest_twisted.ensureDeferred
async def test_failure_backoff_grows_and_resets_on_success(store, clock):
    """Through the store: after the free failures the pair waits 1, 2 ... s; once the wait
    is over a success forgets its failures (the next failure is free again)."""
    guard = login_guard(store, login_failures_per_account=2, login_delay_max_seconds=8)
    waits = []
    for _ in range(4):
        await wrong_login(guard, "alice", "10.0.0.66")
        refused = await refusal(guard.check("alice", "10.0.0.66"))
        waits.append(refused and refused.details["retry_after"])
        clock.advance(waits[-1] or 0)
    assert waits == [None, 1, 2, 4]
    await (await guard.attempt("alice", "10.0.0.66")).succeeded()
    await wrong_login(guard, "alice", "10.0.0.66")
    assert await refusal(guard.check("alice", "10.0.0.66")) is None


@pytest_twisted.ensureDeferred
async def test_login_guard_counts_failures_only_and_per_address(store):
    """Successes never count; failures delay that (account, address) pair, not the account."""
    guard = login_guard(store)
    for _ in range(20):
        await (await guard.attempt("alice", "10.0.0.1")).succeeded()
    for _ in range(3):
        await wrong_login(guard, "alice", "10.0.0.66")
    refused = await refusal(guard.attempt("alice", "10.0.0.66"))
    assert refused.details == {"retry_after": 1}
    assert await refusal(guard.attempt("alice", "10.0.0.1")) is None  # the owner, elsewhere


@pytest_twisted.ensureDeferred
async def test_the_address_window_blocks_then_forgets(store, clock):
    """An address past its failures per window waits until the window has passed, whatever
    account it tries; another address does not."""
    guard = login_guard(store, login_failures_per_address=3)
    for user in ("a", "b", "c"):
        await wrong_login(guard, user, "10.0.0.66")
    refused = await refusal(guard.check("d", "10.0.0.66"))
    assert refused.details == {"retry_after": 60}
    assert await refusal(guard.check("d", "10.0.0.1")) is None
    clock.advance(60)
    assert await refusal(guard.check("d", "10.0.0.66")) is None


@pytest_twisted.ensureDeferred
async def test_attempts_in_flight_count_until_their_outcome(store):
    """Guesses let through at once count before their verdicts, so no more pass than the
    limit allows; an attempt that ends without a verdict is taken back."""
    guard = login_guard(store)
    outcomes = await defer.DeferredList(
        [defer.ensureDeferred(guard.attempt("alice", "10.0.0.66")) for _ in range(10)],
        consumeErrors=True)
    passed = [attempt for ok, attempt in outcomes if ok]
    assert len(passed) == 3
    passed[0].abandoned()  # the store was unavailable for one
    again = await guard.attempt("alice", "10.0.0.66")
    assert await refusal(guard.attempt("alice", "10.0.0.66")) is not None
    for attempt in (*passed[1:], again):
        await attempt.failed()
    assert len(guard._local) == 0  # nothing of them is left in memory


@pytest_twisted.ensureDeferred
async def test_a_read_never_overlaps_this_nodes_write_of_its_subject():
    """A failure's write waits for the read under way (its attempt counted as pending by
    that read), and a read waits for the write under way (then it sees the row): each
    failure is counted once, never missed, never twice; nothing stays in memory after."""
    local = LocalCounts()
    key = [("pair", "alice 10.0.0.66")]
    store_rows = []
    local.let_through(key, 1)  # an attempt let through; its verdict is pending
    read_done = defer.Deferred()
    first_read = defer.ensureDeferred(local.read(key, lambda: read_done))
    write_done = defer.Deferred()
    writing = defer.ensureDeferred(local.write(key, 1, lambda: write_done))
    second_read = defer.ensureDeferred(local.read(key, lambda: defer.succeed(list(store_rows))))
    read_done.callback(list(store_rows))  # the first read saw no row ...
    assert (await first_read) == ([], [1])  # ... and counts the attempt as pending
    assert not second_read.called  # waits for the write
    store_rows.append("failure")
    write_done.callback(None)
    await writing
    assert (await second_read) == (["failure"], [0])  # the row, not pending as well
    assert len(local) == 0


@pytest_twisted.ensureDeferred
async def test_registrations_count_against_their_address(store):
    """Every registration counts against its address, like a failed login."""
    guard = login_guard(store, login_failures_per_address=2)
    await guard.registering("10.0.0.5")
    await guard.registering("10.0.0.5")
    assert await refusal(guard.registering("10.0.0.5")) is not None
    assert await refusal(guard.check("alice", "10.0.0.5")) is not None


class CountingStore:
    """A real store that counts the limit reads and writes the guard makes."""

    def __init__(self, store):
        self._store = store
        self.calls = []

    def __getattr__(self, name):
        method = getattr(self._store, name)
        if name in ("read_limits", "record_limits", "forget_failures"):
            def counted(*args):
                self.calls.append(name)
                return method(*args)
            return counted
        return method


@pytest_twisted.ensureDeferred
async def test_a_login_costs_one_read_and_a_failure_one_write(store):
    """A login check is one limit read; a success writes nothing (unless the pair had
    failures: one delete), a failure one write."""
    counting = CountingStore(store)
    guard = login_guard(counting)
    await (await guard.check("alice", "10.0.0.1")).succeeded()
    assert counting.calls == ["read_limits"]
    counting.calls.clear()
    await (await guard.check("alice", "10.0.0.1")).failed()
    assert counting.calls == ["read_limits", "record_limits"]
    counting.calls.clear()
    await (await guard.check("alice", "10.0.0.1")).succeeded()
    assert counting.calls == ["read_limits", "forget_failures"]


@pytest_twisted.ensureDeferred
async def test_room_password_guesses_are_limited_per_room_and_per_user(store, clock):
    """Wrong guesses lock the guesser out of that room, then of every room; the right
    password counts nothing, and another user is never locked out."""
    guard = RoomPasswordGuard(store, SimpleNamespace(
        room_password_failures_per_room=2, room_password_room_window_seconds=900,
        room_password_failures_per_user=3, room_password_user_window_seconds=3600))
    for _ in range(2):
        await (await guard.attempt("ops", "mallory")).failed()
    refused = await refusal(guard.attempt("ops", "mallory"))
    assert "room 'ops'" in refused.message and refused.details == {"retry_after": 900}
    await (await guard.attempt("dev", "mallory")).failed()
    refused = await refusal(guard.attempt("lab", "mallory"))
    assert refused.message.startswith("too many wrong room passwords")
    for _ in range(5):
        await (await guard.attempt("ops", "alice")).succeeded()
    assert await refusal(guard.attempt("ops", "alice")) is None


def test_token_bucket_refills_at_its_rate():
    """A bucket spends its burst, refuses, and refills `rate` tokens per second."""
    clock = Clock()
    bucket = TokenBucket(clock, rate=10, burst=5)
    assert sum(bucket.take() for _ in range(10)) == 5
    clock.advance(0.5)
    assert sum(bucket.take() for _ in range(10)) == 5
    assert bucket.retry_after(3) == pytest.approx(0.3)


@pytest_twisted.ensureDeferred
async def test_key_claims_are_limited_per_claimer_and_per_device(store, clock):
    """A claimer's allowance refills at its rate and a refused claim says how long to wait;
    a device past its one-time keys a minute is rationed (gives its fallback key) for
    every claimer; a claim bigger than a minute allows anyone is refused at once."""
    limits = KeyClaimLimits(store, SimpleNamespace(key_claims_per_minute=6,
                                                   one_time_keys_per_device_per_minute=2))
    bob = ("bob", "B1")
    assert await limits.admit("alice", [bob, ("carol", "C1")]) == set()
    assert await limits.admit("alice", [bob]) == set()
    assert await limits.admit("dave", [bob]) == {bob}
    assert await limits.admit("alice", [("carol", "C1"), ("carol", "C2")]) == set()
    refused = await refusal(limits.admit("alice", [("carol", "C1")] * 2))
    assert refused.details == {"retry_after": 10}
    clock.advance(10)
    assert await limits.admit("alice", [("carol", "C1")]) == {("carol", "C1")}
    with pytest.raises(ProtocolError) as too_many:
        limits.check_size(7)
    assert too_many.value.code == "rate_limited"
