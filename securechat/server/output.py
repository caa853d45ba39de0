"""The output budget: how much a connection may leave unsent before the relay stops
reading it, and how long it may stay over before the relay gives up on it.

Everything the relay writes to a connection -- pushed envelopes, answers,
events -- waits in the TLS and TCP transports' buffers until the client reads
it.  Deliveries already wait for the buffer to drain (``WriteGate``), but an
answer is written whatever its size, so a client that asks and never reads
could make the relay hold any amount of memory.  The budget closes that gap
without costing the hot path anything: the transport tells us (by pausing our
producer) when its buffer passes its high-water mark, and only then do writes
measure what is unsent.  Over the budget, the connection's requests are no
longer read (so it cannot ask for more) until the transport has sent what it
holds; still over the budget ``stall_seconds`` later, or over
``HARD_LIMIT_FACTOR`` times it at any time, the connection is closed.
"""

from twisted.logger import Logger

HARD_LIMIT_FACTOR = 4
"""Unsent output past this many budgets closes a connection at once: only answers to
requests it sent before reading was held (up to 256 of them) can take it that far."""


class OutputBudget:
    """Holds one connection's unsent output to ``budget`` bytes.

    ``connection`` provides ``unsent_bytes()``, ``hold_reading(reason)``,
    ``release_reading(reason)``, ``describe()`` (who it is, for the log) and
    ``abort()``.
    """

    log = Logger()
    __slots__ = ("_clock", "_budget", "_stall_seconds", "_connection", "_over_since", "_timer",
                 "_gave_up")

    def __init__(self, clock, budget, stall_seconds, connection):
        self._clock = clock
        self._budget = budget
        self._stall_seconds = stall_seconds
        self._connection = connection
        self._over_since = None  # when unsent output passed the budget; None: within it
        self._timer = None
        self._gave_up = False  # the connection is being aborted: nothing more to decide

    @property
    def over(self):
        """Whether reading is held because too much output is unsent."""
        return self._over_since is not None

    def check(self):
        """Called after a write while the transport's buffer is past its high-water mark."""
        if self._gave_up:  # writes still come until the transport reports the close
            return
        unsent = self._connection.unsent_bytes()
        if unsent > HARD_LIMIT_FACTOR * self._budget:
            self._give_up(unsent)
        elif unsent > self._budget and self._over_since is None:
            self._over_since = self._clock.seconds()
            self._connection.hold_reading("output")
            self._timer = self._clock.callLater(self._stall_seconds, self._deadline)

    def drained(self):
        """The transport has sent what it held: its requests may be read again."""
        if self._over_since is not None:
            self._stop_timer()
            self._over_since = None
            self._connection.release_reading("output")

    def stop(self):
        """The connection is gone."""
        self._stop_timer()
        self._over_since = None

    def _deadline(self):
        self._timer = None
        unsent = self._connection.unsent_bytes()
        if unsent > self._budget:
            self._give_up(unsent)
        else:  # draining, if slowly: reading resumes once the transport has sent it all
            self._timer = self._clock.callLater(self._stall_seconds, self._deadline)

    def _give_up(self, unsent):
        since = self._over_since if self._over_since is not None else self._clock.seconds()
        self.log.warn(
            "Closing the connection of {who}: {unsent} bytes unsent for {seconds:.0f} s, over "
            "its output budget of {budget} bytes (it does not read what it asks for)",
            who=self._connection.describe(), unsent=unsent,
            seconds=self._clock.seconds() - since, budget=self._budget)
        self._gave_up = True
        self.stop()
        self._connection.abort()

    def _stop_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
