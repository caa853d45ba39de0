"""One log line per stretch of refused requests while the database is unreachable.

During a database outage every request that needs the store is refused
(``unavailable``); logging each one, with a traceback, would bury the one
line the operator needs under thousands.
"""

from twisted.logger import Logger

LOG_INTERVAL = 10.0


class OutageLog:
    """Counts refusals; logs a warning at the first one and then at most every LOG_INTERVAL s."""

    log = Logger()

    def __init__(self, clock):
        self._clock = clock
        self._logged_at = None
        self._since = 0

    def refused(self, reason):
        self._since += 1
        now = self._clock.seconds()
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL:
            self.log.warn("The database cannot be reached ({reason}): {count} request(s) "
                          "refused as unavailable", reason=reason, count=self._since)
            self._logged_at, self._since = now, 0
