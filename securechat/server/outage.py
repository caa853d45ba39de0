"""One log line per stretch of refused requests while the store cannot take them.

While the database is unreachable, or its disk is full, every request that
needs the store is refused (``unavailable``); logging each one, with a
traceback, would bury the one line the operator needs under thousands.
"""

from twisted.logger import Logger

LOG_INTERVAL = 10.0


class OutageLog:
    """Counts refusals by kind of StoreUnavailable; logs a warning at a kind's first refusal
    and then at most every LOG_INTERVAL s (a full disk and a lost connection each get
    theirs)."""

    log = Logger()

    def __init__(self, clock):
        self._clock = clock
        self._kinds = {}  # class of the error -> [logged at, refusals since]

    def refused(self, error):
        """A request (or a delivery, or a prune) failed with ``error``, a StoreUnavailable."""
        kind = self._kinds.setdefault(type(error), [None, 0])
        kind[1] += 1
        now = self._clock.seconds()
        if kind[0] is None or now - kind[0] >= LOG_INTERVAL:
            self.log.warn("{what} ({reason}): {count} store operation(s) refused since the "
                          "last warning; requests are answered unavailable",
                          what=error.log_message, reason=error.args[0] if error.args else "",
                          count=kind[1])
            kind[0], kind[1] = now, 0
