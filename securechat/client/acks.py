"""Acknowledging processed envelopes in batches.

An envelope is acknowledged only after its plaintext, its ratchet state and
its id are committed to the key store (``messaging.Receiver``); from then on
a lost or late ack costs nothing but a redelivery, which the receiver skips
by id.  So the receiver need not wait for the server's answer before the
next envelope, nor acknowledge each one: the ids processed within
``ACK_DELAY`` go out in one ``ack`` request (up to the protocol's 512), like
TCP's delayed acknowledgements.  Draining a long queue is no longer one round
trip per envelope, and a busy room costs the relay one ack request per
member every 50 ms instead of one per message.
"""

from twisted.internet import defer, reactor
from twisted.logger import Logger

from securechat import wire

ACK_DELAY = 0.05
"""Seconds an id waits for company before it is acknowledged."""


class AckBatcher:
    """Collects processed envelope ids; one ``ack`` request per ``ACK_DELAY`` (or per 512
    ids).  ``on_acked`` hears how many of each request's ids the relay still held."""

    log = Logger()

    def __init__(self, request, clock=reactor, on_acked=None):
        self._request = request
        self._clock = clock
        self._on_acked = on_acked
        self._ids = []
        self._flush_call = None
        self._in_flight = 0

    def add(self, envelope_id):
        self._ids.append(envelope_id)
        if len(self._ids) >= wire.MAX_BATCH_ITEMS:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(ACK_DELAY, self.flush)

    def flush(self):
        """Send what has been collected now."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        ids, self._ids = self._ids, []
        if not ids:
            return
        self._in_flight += 1
        d = defer.maybeDeferred(self._request, "ack", ids=ids)  # may raise: not connected
        if self._on_acked is not None:
            d.addCallback(lambda result: self._on_acked(result["removed"]))
        d.addErrback(lambda f: self.log.warn(
            "{count} acknowledgement(s) not confirmed ({error}); the server will deliver them "
            "again and they will be skipped", count=len(ids), error=f.getErrorMessage()))
        d.addBoth(self._answered)

    def _answered(self, _):
        self._in_flight -= 1

    def settled(self):
        """Nothing waits to be sent or answered."""
        return not self._ids and not self._in_flight
