"""Reconnecting after the connection to the relay dropped: when to try again.

After a relay restart every client of it reconnects.  Trying at once and
then at fixed intervals would bring them all back in the same instants;
the delays double from half a second up to 30 s and each is moved up to
25 % either way at random, so the attempts spread out (like weechat's and
irssi's reconnect delays).  The clock is passed in, so tests run the
schedule on ``task.Clock``.
"""

import random

from twisted.internet import defer
from twisted.logger import Logger

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
JITTER = 0.25


class Backoff:
    """The delays between attempts: ``first`` doubling up to ``cap``, each times a random
    factor within ``1 ± jitter``."""

    def __init__(self, first=FIRST_DELAY, cap=MAX_DELAY, jitter=JITTER, rng=random.random):
        self._first = first
        self._cap = cap
        self._jitter = jitter
        self._rng = rng
        self._failures = 0

    def next(self):
        nominal = min(self._cap, self._first * 2 ** self._failures)
        self._failures += 1
        return nominal * (1 + self._jitter * (2 * self._rng() - 1))

    def reset(self):
        self._failures = 0


class Reconnector:
    """Calls ``attempt()`` after each delay of ``backoff`` until it fires True.

    ``attempt`` returns (a Deferred or a coroutine firing) True when it is done
    (connected, or an error that retrying cannot fix), False to try again;
    ``on_wait(delay)`` hears each delay before it starts.
    """

    log = Logger()

    def __init__(self, clock, attempt, on_wait=lambda delay: None, backoff=None):
        self._clock = clock
        self._attempt = attempt
        self._on_wait = on_wait
        self.backoff = backoff or Backoff()
        self._call = None
        self._running = False

    @property
    def running(self):
        return self._running

    def start(self):
        """Begin trying (nothing happens when already trying)."""
        if not self._running:
            self._running = True
            self._schedule()

    def stop(self):
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self):
        delay = self.backoff.next()
        self._on_wait(delay)
        self._call = self._clock.callLater(delay, self._try)

    def _try(self):
        self._call = None
        d = defer.maybeDeferred(self._attempt)
        d.addCallback(self._tried)
        d.addErrback(lambda failure: self.log.failure("a reconnect attempt failed", failure)
                     or self._tried(False))

    def _tried(self, done):
        if not self._running:
            return
        if done:
            self._running = False
            self.backoff.reset()
        else:
            self._schedule()
