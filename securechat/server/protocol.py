"""Framing only: bytes in, lines to the session; frames out.

Frames are handed to the transport one by one: the listener's TLS
transport (``listener.TurnBufferedTLS``) already gathers the small writes of
one reactor turn into one TLS record and one ``send``, so batching them here
as well only cost a timer per connection and a reactor turn of latency.
"""

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from securechat import wire
from securechat.server.session import ConnectionSession


@implementer(IPushProducer)
class WriteGate:
    """Closed while the transport's send buffer is full: delivery waits on it.

    Registered with the transport as our producer, so a device that reads
    slowly makes its queue be read from the store page by page as it drains,
    and gets new envelopes from the store too once it falls behind, instead
    of its queue or a busy room piling up in the relay's memory.
    """

    def __init__(self):
        self.open = True
        self.overflow = 0  # bytes pushed live since the transport last paused us
        self._waiting = []

    def pauseProducing(self):
        self.open = False
        self.overflow = 0

    def resumeProducing(self):
        self.open = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self):
        self.resumeProducing()

    def wait(self):
        if self.open:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


class RelayProtocol(Protocol):
    """Splits the byte stream into lines (``\n``, an optional ``\r`` before it is dropped).

    Not Twisted's LineReceiver: its line and raw modes and its own pausing
    cost time on every line and are not needed here.
    """

    def __init__(self, server):
        self._server = server
        self._partial = b""
        self.session = None
        self.gate = WriteGate()
        self.active = True  # read or written since the last IdleSweep (tls_memory)
        self.buffers_released = False

    def connectionMade(self):
        # Small frames must leave at once: Nagle plus delayed ACKs would add ~40 ms.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:  # TCP (through TLS); in-memory test transports have none
            no_delay(True)
        self.transport.registerProducer(self.gate, True)
        peer = self.transport.getPeer()
        self.session = ConnectionSession(
            self._server,
            getattr(peer, "host", str(peer)),
            send=self.send_line,
            gate=self.gate,
            disconnect=self._disconnect,
            pause=self.transport.pauseProducing,
            resume=self.transport.resumeProducing,
        )
        self._server.connection_opened(self)

    def dataReceived(self, data):
        self.active = True
        session = self.session
        if session.state == "closed":  # disconnecting: what is still arriving is dropped
            return
        lines = (self._partial + data).split(b"\n") if self._partial else data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if len(line) > wire.MAX_LINE_BYTES:
                self._partial = b""
                session.line_too_long()
                return
            session.line_received(line.rstrip(b"\r"))
        if len(self._partial) > wire.MAX_LINE_BYTES:
            self._partial = b""
            session.line_too_long()

    def send_line(self, data):
        self.active = True
        if self.transport is not None:
            self.transport.write(data + b"\n")

    def _disconnect(self):
        # A TLS transport with a registered producer would wait for it before closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.gate.stopProducing()
        self._server.connection_closed(self)
        if self.session is not None:
            self.session.connection_lost()
