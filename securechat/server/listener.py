"""The TLS listener: one flush per reactor turn for all connections, and sockets that
send at once when nothing is waiting to be sent.

A relay pushes one small frame to each of many connections -- fifty for a
message to a fifty-device room -- so what each push costs beyond its TLS
record and its ``send`` is paid fifty times a message.  Two such costs of
Twisted's defaults are avoided here:

* Twisted's TLS transport gathers the small writes of a reactor turn into one
  record by scheduling a timed call (``callLater(0)``) per connection.
  ``TurnWrites`` schedules one for all the connections written to in a turn
  and flushes each of them when it fires, at the same moment Twisted would.
* Twisted's TCP transport never writes in ``write()``: it buffers, asks epoll
  to report the socket writable (one ``epoll_ctl``), sends on the next poll
  and then stops asking (a second ``epoll_ctl``).  ``WriteThroughServer``
  sends straight away when its buffer is empty, which is the common case for
  a reader that keeps up; whatever the kernel does not take is buffered
  exactly as before, so back-pressure, producers and ``loseConnection``
  behave as in Twisted.
"""

from twisted.internet import tcp
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

TURN_BUFFER_BYTES = 64_000
"""A connection's writes are encrypted before the turn ends once they reach this size
(Twisted's aggregator uses the same bound), so one turn never holds more per
connection."""


class TurnWrites:
    """The connections written to in the current reactor turn, flushed together once it
    ends: one timed call a turn, not one per connection."""

    log = Logger()

    def __init__(self, clock):
        self._clock = clock
        self._written = []
        self._scheduled = False

    def add(self, connection):
        """``connection`` has writes to flush at the end of this turn."""
        self._written.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._flush)

    def _flush(self):
        self._scheduled = False
        written, self._written = self._written, []
        for connection in written:
            try:
                connection.flush_turn()
            except Exception:
                # One connection's failure must not leave the others' frames unsent.
                self.log.failure("Flushing a connection's writes failed")


class TurnBufferedTLS(TLSMemoryBIOProtocol):
    """A TLS connection whose writes of one reactor turn become one TLS record, flushed
    by the factory's ``TurnWrites`` (what Twisted's ``BufferingTLSTransport`` does with
    a timed call of its own)."""

    def __init__(self, factory, wrappedProtocol, _connectWrapped=True):
        self._unsent = []
        self._unsent_bytes = 0
        super().__init__(factory, wrappedProtocol, _connectWrapped)

    def write(self, data):
        unsent = self._unsent
        if not unsent:
            self.factory.turn_writes.add(self)
        unsent.append(data + b"")  # raises TypeError now for anything but bytes
        self._unsent_bytes += len(data)
        if self._unsent_bytes > TURN_BUFFER_BYTES:
            self.flush_turn()

    def writeSequence(self, sequence):
        self.write(b"".join(sequence))

    def flush_turn(self):
        """Encrypt and send what was written since the last flush."""
        unsent = self._unsent
        if unsent:
            self._unsent, self._unsent_bytes = [], 0
            TLSMemoryBIOProtocol.write(self, unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def loseConnection(self):
        self.flush_turn()
        super().loseConnection()


class TurnBufferedTLSFactory(TLSMemoryBIOFactory):
    protocol = TurnBufferedTLS

    def __init__(self, contextFactory, isClient, wrappedFactory, clock=None):
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.turn_writes = TurnWrites(self._clock)


class WriteThroughServer(tcp.Server):
    """A server-side TCP connection whose writes try the socket before the buffer."""

    def write(self, data):
        if (self.connected and not self._writeDisconnected and not self.dataBuffer
                and not self._tempDataBuffer and data):
            try:
                sent = self.socket.send(data)
            except OSError:
                # Full (EAGAIN), interrupted or broken: the buffered path and
                # doWrite deal with all of these as they always have.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


class WriteThroughPort(tcp.Port):
    transport = WriteThroughServer


def listen_tls(reactor, port, context, factory, interface):
    """Listen on ``interface:port`` for TLS connections to ``factory``; the listening port.

    What ``reactor.listenSSL`` does (TLS over a TCP port), with the turn-buffered
    TLS connections and the write-through transport.
    """
    listening = WriteThroughPort(port, TurnBufferedTLSFactory(context, False, factory, reactor),
                                 interface=interface, reactor=reactor)
    listening.startListening()
    return listening
