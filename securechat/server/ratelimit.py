"""Rate limits kept in this node's memory: requests per connection, key claims.

A connection lives on one node, so its request and message rates are this
node's business alone; failed logins and room password guesses, which a
guesser could spread over several nodes, are counted in the store instead
(``securechat.server.guards``).

Everything takes the clock as an argument (``IReactorTime``) so tests drive
it with ``task.Clock`` instead of sleeping.  Every table keyed by something a
client chooses (a user name, a device) holds at most ``MAX_KEYS`` entries:
past that the least recently touched is forgotten, so memory stays bounded
whatever names an attacker cycles through.
"""

import math
from collections import OrderedDict

from securechat.wire import ProtocolError

MAX_KEYS = 100_000
"""Entries one limit table keeps at most (the least recently touched is dropped first)."""


def rate_limited(what, wait):
    """The error a client sees when a limit is hit: what happened and how long to wait."""
    seconds = max(1, math.ceil(wait))
    return ProtocolError("rate_limited", f"{what}; try again in {seconds} s",
                         {"retry_after": seconds})


class _BoundedTable(OrderedDict):
    """A dict that forgets its least recently touched entry beyond ``MAX_KEYS``."""

    def touch(self, key, make):
        """The entry of ``key`` (made by ``make()`` if new), now the most recent."""
        entry = self.pop(key, None)
        if entry is None:
            entry = make()
            if len(self) >= MAX_KEYS:
                self.popitem(last=False)
        self[key] = entry
        return entry


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per request."""

    def __init__(self, clock, rate, burst):
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self, cost=1):
        """Spend ``cost`` tokens if saved up (``take(0)`` only brings the count up to date)."""
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, cost=1):
        """Seconds until ``cost`` tokens are saved up."""
        self.take(0)
        return max(0, (cost - self._tokens) / self._rate)

    @property
    def full(self):
        self.take(0)
        return self._tokens >= self._burst


class KeyedBuckets:
    """A token bucket per key: ``limit`` tokens per ``window`` seconds, ``limit`` saved at most."""

    def __init__(self, clock, limit, window):
        self._clock = clock
        self.limit = limit
        self._rate = limit / window
        self._buckets = _BoundedTable()

    def bucket(self, key):
        return self._buckets.touch(key, lambda: TokenBucket(self._clock, self._rate, self.limit))

    def prune(self):
        """Forget full buckets: a new one starts full too."""
        for key in [k for k, bucket in self._buckets.items() if bucket.full]:
            del self._buckets[key]


class KeyClaimLimits:
    """Nobody drains a device's one-time keys.

    A claimer may claim ``key_claims_per_minute`` keys a minute
    (``rate_limited`` past that).  A device gives out at most
    ``one_time_keys_per_device_per_minute`` one-time keys a minute; past
    that claimers get its fallback key, so sessions can still start (Olm
    accepts a fallback key) while the one-time keys last until its owner
    tops them up.
    """

    def __init__(self, clock, config):
        self._claimers = KeyedBuckets(clock, config.key_claims_per_minute, 60)
        self._targets = KeyedBuckets(clock, config.one_time_keys_per_device_per_minute, 60)

    def check_claimer(self, user, count):
        """Take ``count`` claims from ``user``'s allowance or raise ``rate_limited``."""
        if count > self._claimers.limit:
            raise rate_limited(
                f"a minute allows claiming at most {self._claimers.limit} keys", 60)
        bucket = self._claimers.bucket(user)
        if not bucket.take(count):
            raise rate_limited("too many key claims", bucket.retry_after(count))

    def one_time_key_allowed(self, user, device):
        """Whether ``device`` may give out one more one-time key now (else: its fallback)."""
        return self._targets.bucket((user, device)).take()

    def prune(self):
        self._claimers.prune()
        self._targets.prune()
