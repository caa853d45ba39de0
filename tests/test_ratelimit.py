"""Unit tests of the rate limiters, driven by task.Clock."""

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from securechat.server import ratelimit
from securechat.server.ratelimit import (
    FailureBackoff, LoginGuard, SlidingWindow, TokenBucket)
from securechat.wire import ProtocolError


def test_sliding_window_blocks_then_forgets():
    """A key must wait after `limit` events and may go on once the window has passed."""
    clock = Clock()
    window = SlidingWindow(clock, limit=3, window=60)
    for _ in range(3):
        assert window.retry_after("alice") == 0
        window.record("alice")
    assert window.retry_after("alice") == 60
    assert window.retry_after("bob") == 0
    clock.advance(60)
    assert window.retry_after("alice") == 0
    clock.advance(120)
    window.prune()
    assert window._events == {}


def test_a_key_whose_only_event_was_taken_back_is_pruned_without_error():
    """An attempt counted, then taken back (not a failure), leaves nothing for prune to trip on."""
    clock = Clock()
    window = SlidingWindow(clock, limit=3, window=60)
    window.record("alice")
    window.unrecord("alice")
    window.record("bob")
    clock.advance(61)
    window.prune()
    assert window._events == {}
    assert window.retry_after("alice") == 0


def test_token_bucket_refills_at_its_rate():
    """A bucket spends its burst, refuses, and refills `rate` tokens per second."""
    clock = Clock()
    bucket = TokenBucket(clock, rate=10, burst=5)
    assert sum(bucket.take() for _ in range(10)) == 5
    clock.advance(0.5)
    assert sum(bucket.take() for _ in range(10)) == 5
    assert bucket.retry_after(3) == pytest.approx(0.3)


def test_failure_backoff_grows_caps_and_resets_on_success():
    """After the free failures each one doubles the wait (capped); a success forgets them."""
    clock = Clock()
    backoff = FailureBackoff(clock, free=2, max_delay=8)
    waits = []
    for _ in range(7):
        backoff.failed("k")
        waits.append(backoff.retry_after("k"))
    assert waits == [0, 1, 2, 4, 8, 8, 8]
    clock.advance(8)
    assert backoff.retry_after("k") == 0
    backoff.succeeded("k")
    backoff.failed("k")
    assert backoff.retry_after("k") == 0


def test_limit_tables_hold_a_bounded_number_of_keys(monkeypatch):
    """A table never holds more than MAX_KEYS entries, whatever names a client cycles through."""
    monkeypatch.setattr(ratelimit, "MAX_KEYS", 50)
    clock = Clock()
    backoff = FailureBackoff(clock, free=1, max_delay=60)
    window = SlidingWindow(clock, limit=2, window=60)
    for i in range(1000):
        backoff.failed(("alice", f"10.0.{i // 256}.{i % 256}"))
        window.record(f"10.0.{i // 256}.{i % 256}")
    assert len(backoff._failures) == 50 and len(window._events) == 50


def login_guard(clock, **limits):
    settings = {"login_failures_per_account": 3, "login_delay_max_seconds": 900,
                "login_failures_per_address": 10, "login_window_seconds": 60, **limits}
    return LoginGuard(clock, SimpleNamespace(**settings))


def test_login_guard_counts_failures_only_and_per_address():
    """Successes never count; failures delay that (account, address) pair, not the account."""
    clock = Clock()
    guard = login_guard(clock)
    for _ in range(20):
        guard.attempt("alice", "10.0.0.1")
        guard.login_succeeded("alice", "10.0.0.1")
    for _ in range(3):
        guard.attempt("alice", "10.0.0.66")  # a wrong password: nothing more to say
    with pytest.raises(ProtocolError) as refused:
        guard.attempt("alice", "10.0.0.66")
    assert refused.value.code == "rate_limited" and refused.value.details == {"retry_after": 1}
    guard.attempt("alice", "10.0.0.1")  # the owner, elsewhere, is not locked out


def test_attempts_in_flight_count_until_their_outcome():
    """Guesses let through at once count before their checks end, so no more pass than the
    limit allows; an attempt that ends without a verdict is taken back."""
    clock = Clock()
    guard = login_guard(clock)
    passed = 0
    for _ in range(10):  # ten guesses at once, none has an outcome yet
        try:
            guard.attempt("alice", "10.0.0.66")
            passed += 1
        except ProtocolError:
            pass
    assert passed == 3
    guard.login_abandoned("alice", "10.0.0.66")  # the store was unavailable for one
    guard.attempt("alice", "10.0.0.66")
    with pytest.raises(ProtocolError):
        guard.attempt("alice", "10.0.0.66")


