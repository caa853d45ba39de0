"""Rate limits: login attempts per account and per address, requests per connection.

Both take the clock as an argument (``IReactorTime``) so tests drive them
with ``task.Clock`` instead of sleeping.
"""

from collections import deque


class SlidingWindow:
    """At most ``limit`` events per key in the last ``window`` seconds.

    Memory stays bounded: a key's deque never holds more than ``limit``
    entries and ``prune`` forgets keys whose window has passed.
    """

    def __init__(self, clock, limit, window):
        self._clock = clock
        self._limit = limit
        self._window = window
        self._events = {}

    def allow(self, key):
        """Record one event for ``key`` and say whether it is within the limit."""
        now = self._clock.seconds()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self._window:
            events.popleft()
        if len(events) >= self._limit:
            return False
        events.append(now)
        return True

    def retry_after(self, key):
        """Seconds until ``key`` may try again (0 when it may now)."""
        events = self._events.get(key)
        if not events or len(events) < self._limit:
            return 0
        return max(0, events[0] + self._window - self._clock.seconds())

    def prune(self):
        horizon = self._clock.seconds() - self._window
        for key in [k for k, ev in self._events.items() if not ev or ev[-1] <= horizon]:
            del self._events[key]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per request."""

    def __init__(self, clock, rate, burst):
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self):
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
