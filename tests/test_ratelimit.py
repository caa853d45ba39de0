"""Unit tests of the rate limiters, driven by task.Clock."""

from twisted.internet.task import Clock

from securechat.server.ratelimit import SlidingWindow, TokenBucket


def test_sliding_window_blocks_then_forgets():
    """A key is refused after `limit` events and allowed again once the window has passed."""
    clock = Clock()
    window = SlidingWindow(clock, limit=3, window=60)
    assert [window.allow("alice") for _ in range(4)] == [True, True, True, False]
    assert window.allow("bob")
    assert window.retry_after("alice") == 60
    clock.advance(60)
    assert window.allow("alice")
    clock.advance(120)
    window.prune()
    assert window._events == {}


def test_token_bucket_refills_at_its_rate():
    """A bucket spends its burst, refuses, and refills `rate` tokens per second."""
    clock = Clock()
    bucket = TokenBucket(clock, rate=10, burst=5)
    assert sum(bucket.take() for _ in range(10)) == 5
    clock.advance(0.5)
    assert sum(bucket.take() for _ in range(10)) == 5
