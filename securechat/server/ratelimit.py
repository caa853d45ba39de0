"""Rate limits kept in this node's memory (requests per connection), and the error every
limit answers with.

A connection lives on one node, so its request and message rates are this
node's business alone: a bucket per connection, gone with it.  Limits a
client could spread over several nodes (failed logins, room password
guesses, key claims) are counted in the store instead
(``securechat.server.guards``).

The clock is an argument (``IReactorTime``) so tests drive it with
``task.Clock`` instead of sleeping.
"""

import math

from securechat.wire import ProtocolError


def rate_limited(what, wait):
    """The error a client sees when a limit is hit: what happened and how long to wait."""
    seconds = max(1, math.ceil(wait))
    return ProtocolError("rate_limited", f"{what}; try again in {seconds} s",
                         {"retry_after": seconds})


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
