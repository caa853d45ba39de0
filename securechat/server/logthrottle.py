"""Warnings about events that can come thousands of times a second (connections refused
over a cap, failed accepts): one line at the first, then one line per interval with
the number of events since, so a flood shows in the log without burying it.
"""

INTERVAL = 10.0


class ThrottledWarning:
    """Logs ``message`` at the first event, then at most once every ``interval`` seconds
    with ``{count}`` the events since the previous line (and the latest event's fields)."""

    def __init__(self, clock, log, message, interval=INTERVAL):
        self._clock = clock
        self._log = log
        self._message = message
        self._interval = interval
        self._count = 0
        self._fields = None
        self._timer = None

    def __call__(self, **fields):
        if self._timer is None:
            self._log.warn(self._message, count=1, **fields)
            self._timer = self._clock.callLater(self._interval, self._summarize)
        else:
            self._count += 1
            self._fields = fields

    def _summarize(self):
        self._timer = None
        if self._count:
            count, self._count = self._count, 0
            self._log.warn(self._message, count=count, **self._fields)
            self._timer = self._clock.callLater(self._interval, self._summarize)

    def stop(self):
        """Forget what is still to be summed up (the listener stopped)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._count = None, 0

