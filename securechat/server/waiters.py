"""Deferreds for whoever waits for one moment (a buffer drained, the last connection
closed, a process ended, a device let go), all fired when it comes."""

from twisted.internet import defer


class Waiters:
    """Hands out a new Deferred to each waiter (``wait``) and fires them all (``fire``);
    one that a waiter cancelled meanwhile (a stop that timed out) is skipped."""

    def __init__(self):
        self._waiting = []

    def wait(self):
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def fire(self):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)
