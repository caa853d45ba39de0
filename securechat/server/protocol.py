"""Framing only: bytes in, lines to the session; frames out, held to the output budget.

Frames are handed to the transport one by one: the listener's TLS
transport (``listener.TurnBufferedTLS``) already gathers the small writes of
one reactor turn into one TLS record and one ``send``, so batching them here
as well only cost a timer per connection and a reactor turn of latency.
"""

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from securechat import wire
from securechat.server.output import OutputBudget
from securechat.server.session import CLOSED, HANDSHAKING, ConnectionSession
from securechat.server.waiters import Waiters


@implementer(IPushProducer)
class WriteGate:
    """Closed while the transport's send buffer is full: delivery waits on it.

    Registered with the transport as our producer, so a device that reads
    slowly makes its queue be read from the store page by page as it drains,
    and gets new envelopes from the store too once it falls behind, instead
    of its queue or a busy room piling up in the relay's memory.
    """

    def __init__(self, on_open=None):
        self.open = True
        self.overflow = 0  # bytes pushed live since the transport last paused us
        self._waiting = Waiters()
        self._on_open = on_open

    def pauseProducing(self):
        self.open = False
        self.overflow = 0

    def resumeProducing(self):
        self.open = True
        if self._on_open is not None:
            self._on_open()
        self._waiting.fire()

    def stopProducing(self):
        self.resumeProducing()

    def wait(self):
        if self.open:
            return defer.succeed(None)
        return self._waiting.wait()


NO_HOLDS = frozenset()
"""No reason to hold reading: shared, so an idle connection carries no set of its own."""


@implementer(IHandshakeListener)
class RelayProtocol(Protocol):
    """Splits the byte stream into lines (``\n``, an optional ``\r`` before it is dropped).

    Not Twisted's LineReceiver: its line and raw modes and its own pausing
    cost time on every line and are not needed here.  It is also the
    connection the session and the output budget act on: reading held and
    released for a reason, closing gently or at once.
    """

    def __init__(self, server, host):
        self._server = server
        self._host = host  # the peer's address, as the factory admitted it
        self._partial = b""
        self.session = None
        config = server.config
        self.budget = OutputBudget(server.clock, config.output_budget_bytes,
                                   config.output_stall_seconds, self)
        self.gate = WriteGate(on_open=self.budget.drained)
        self._read_holds = NO_HOLDS
        self.active = True  # read or written since the last IdleSweep (tls_memory)
        self.buffers_released = False

    def connectionMade(self):
        # The session first: it owns the connection's place in the per-address count of
        # connections not logged in, which only its end gives back.
        self.session = ConnectionSession(self._server, self._host, self)
        self._server.connection_opened(self)
        # Small frames must leave at once: Nagle plus delayed ACKs would add ~40 ms.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:  # TCP (through TLS); in-memory test transports have none
            no_delay(True)
        self.transport.registerProducer(self.gate, True)

    def handshakeCompleted(self):
        self.session.handshake_completed()

    def dataReceived(self, data):
        self.active = True
        session = self.session
        if session.allowed is None:  # closing: what is still arriving is dropped
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
        transport = self.transport
        if transport is not None:
            transport.write(data + b"\n")
            if not self.gate.open:  # past the transport's high-water mark: measure
                self.budget.check()

    # -- what the session and the budget do to the connection -------------------

    def hold_reading(self, reason):
        """Stop reading requests until every reason given is released."""
        if not self._read_holds:
            self.transport.pauseProducing()
        self._read_holds |= {reason}

    def release_reading(self, reason):
        if reason in self._read_holds:
            self._read_holds -= {reason}
            if not self._read_holds and self.session.state is not CLOSED:
                self.transport.resumeProducing()

    def tls_exporter(self):
        """Keying material exported from this connection's TLS session for a device-key
        login's channel binding (RFC 5705 / RFC 8446 7.5): the client derives the same
        bytes only on this very connection.  None without TLS (in-memory test transports)."""
        get_handle = getattr(self.transport, "getHandle", None)
        if get_handle is None:
            return None
        return get_handle().export_keying_material(wire.LOGIN_EXPORTER_LABEL,
                                                   wire.LOGIN_EXPORTER_BYTES)

    def unsent_bytes(self):
        measure = getattr(self.transport, "unsent_bytes", None)
        return measure() if measure is not None else 0

    def describe(self):
        return self.session.describe()

    def abort(self):
        """Close now, dropping what is unsent (the output budget gave up on the reader)."""
        self.session.abort()

    def shut_down(self):
        """The relay is stopping: say so, answer what is in flight, then close."""
        if self.session is not None:
            self.session.shutting_down()
        else:
            self.transport.abortConnection()

    def disconnect(self):
        """Close once what was written has been sent."""
        # A TLS transport with a registered producer would wait for it before closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort_transport(self):
        self.transport.unregisterProducer()
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.budget.stop()
        self.gate.stopProducing()
        if self.session is not None and self.session.state == HANDSHAKING:
            self._server.metrics.handshake_failures += 1  # failed, timed out or dropped
        self._server.connection_closed(self)
        if self.session is not None:
            self.session.connection_lost()
