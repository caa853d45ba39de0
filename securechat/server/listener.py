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

With ``[server] proxy_protocol = yes`` the TLS factory is wrapped in
``ProxyHeaderFactory``: each connection's PROXY protocol header is read first
(Twisted's parser), and the TLS connection and the relay's protocol are built
only then, for the client's address the header names, so every per-address
limit and every log line sees the client rather than the balancer.

Both transports also say how many bytes they hold unsent (``unsent_bytes``),
which the output budget (``securechat.server.output``) reads, and the
listening port logs failed accepts (out of file descriptors: ``EMFILE``) once
per interval instead of once per attempt.
"""

import os
import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, globalLogPublisher
# Twisted exports only proxyEndpoint, whose wrapper builds the wrapped protocol at accept
# (for the balancer's address); ProxyHeader below needs it built after the header.
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import directlyProvides, providedBy

from securechat.server.logthrottle import INTERVAL, ThrottledWarning

LISTEN_BACKLOG = 4096
"""Connections the kernel may hold for the relay to accept (capped by net.core.somaxconn).
Twisted's default, 50, dropped the SYNs of a reconnect storm -- every device coming back
after a restart -- and each dropped one waited 1, 3, 7 ... s for its retransmission: 1,000
devices took 29 s to log in instead of 1.6 s (docs/benchmarks.rst, W6)."""

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

    def unsent_bytes(self):
        """Cleartext written and not yet encrypted, plus the TCP transport's unsent bytes.

        Constant time but for TLS's own buffer, which holds data only while a
        handshake is under way.
        """
        waiting = self._appSendBuffer
        below = getattr(self.transport, "unsent_bytes", None)
        return (self._unsent_bytes + (sum(map(len, waiting)) if waiting else 0)
                + (below() if below is not None else 0))


class TurnBufferedTLSFactory(TLSMemoryBIOFactory):
    protocol = TurnBufferedTLS

    def __init__(self, contextFactory, isClient, wrappedFactory, clock=None):
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.turn_writes = TurnWrites(self._clock)

    def buildProtocol(self, addr):
        """None when the wrapped factory refuses ``addr``: the port then closes the socket
        at once, before any TLS work (Twisted's wrapper would wrap the None)."""
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else self.protocol(self, wrapped)


class _AfterHeader:
    """What arrives in the same read as the PROXY header, kept for the TLS connection
    that is built once the header is read."""

    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


class ProxyHeader(HAProxyProtocolWrapper):
    """A connection that starts with a PROXY protocol header (v1 or v2): the TLS
    connection behind it is built once the header is read, for the address it names.

    Twisted's wrapper builds its wrapped protocol at accept, for the balancer's
    address; the relay's factory counts and admits a connection by the address it
    is built for, so here that waits for the header.  Until then the connection
    holds only its socket and the header read so far (at most 107 bytes for v1,
    64 KiB for v2), for at most ``[limits] handshake_timeout_seconds``; one that
    sends no valid header by then is closed and counted as a failed handshake.
    """

    def __init__(self, factory):
        super().__init__(factory, None)
        self._deadline = None

    def logPrefix(self):
        return "ProxyHeader"

    def makeConnection(self, transport):
        """What ``ProtocolWrapper`` does but connect the wrapped protocol, which is built
        once the header is read."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self):
        relay = self.factory.relay
        self._deadline = relay.clock.callLater(relay.config.handshake_timeout_seconds,
                                               self._late)

    def dataReceived(self, data):
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        after = self.wrappedProtocol = _AfterHeader()
        super().dataReceived(data)  # parses; what follows the header goes to ``after``
        if self._proxyInfo is None:  # more to come, or invalid (then closing)
            self.wrappedProtocol = None
            return
        self._deadline.cancel()
        self.wrappedProtocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if self.wrappedProtocol is None:  # refused by the relay (unauthenticated_per_address)
            self.transport.abortConnection()
            return
        self.wrappedProtocol.makeConnection(self)
        if after.data:
            self.wrappedProtocol.dataReceived(after.data)

    def _late(self):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if self.wrappedProtocol is not None:
            super().connectionLost(reason)
            return
        self.factory.unregisterProtocol(self)
        if self._proxyInfo is None:  # else refused by the relay, which logged it
            if self._deadline.active():
                self._deadline.cancel()
            self.factory.without_header(self.transport.getPeer().host)


class ProxyHeaderFactory(HAProxyWrappingFactory):
    """``tls_factory``'s connections, each behind its PROXY protocol header; ``relay``
    (the relay's factory) gives the deadline and counts the connections closed without
    a valid header as failed handshakes."""

    protocol = ProxyHeader
    log = Logger()

    def __init__(self, tls_factory, relay):
        super().__init__(tls_factory)
        self.relay = relay
        self._without_header = ThrottledWarning(
            relay.clock, self.log,
            "Closed {count} connection(s) that sent no valid PROXY protocol header in time "
            "([server] proxy_protocol = yes; the latest from {host}; logged at most every "
            f"{INTERVAL:g} s)")

    def buildProtocol(self, addr):
        return self.protocol(self)

    def without_header(self, host):
        """A connection from ``host`` (the balancer, or whoever reached the port) ended
        before sending a valid header."""
        self.relay.metrics.handshake_failures += 1
        self._without_header(host=host)

    def stopFactory(self):
        self._without_header.stop()
        super().stopFactory()


def _tls_factory(reactor, context, factory, proxy_protocol):
    """The factory a TLS port accepts with: TLS to ``factory``, behind a PROXY protocol
    header when ``proxy_protocol``."""
    tls = TurnBufferedTLSFactory(context, False, factory, reactor)
    return ProxyHeaderFactory(tls, factory) if proxy_protocol else tls


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

    def unsent_bytes(self):
        """Bytes written to this transport that the kernel has not taken yet."""
        return len(self.dataBuffer) - self.offset + self._tempDataLen


class AcceptErrors:
    """A log observer for a listening port: its accept errors summed up once per interval,
    everything else passed on.

    Out of file descriptors (``EMFILE``), Twisted's port accepts and closes each
    waiting client to drain the backlog and logs three lines for it; at the
    open-file limit that is thousands of lines a second, burying every other
    line.  ``ENFILE``, ``ENOBUFS`` and ``ENOMEM`` are logged once per attempt.
    """

    log = Logger()

    _REFUSED = "EMFILE recovery: Closed socket from {address}"
    _FAILED = "Could not accept new connection ({acceptError})"
    _RECOVERY = frozenset({"EMFILE encountered; releasing reserved file descriptor.",
                           "Re-reserving EMFILE recovery file descriptor."})

    def __init__(self, clock):
        self.warning = ThrottledWarning(
            clock, self.log,
            "Cannot accept connections ({error}: the process is out of file descriptors or "
            f"memory): {{count}} connection attempt(s) failed (logged at most every {INTERVAL:g} s)")

    def __call__(self, event):
        text = event.get("log_format")
        if text == self._REFUSED:
            self.warning(error="EMFILE")
        elif text == self._FAILED:
            self.warning(error=event.get("acceptError", "?"))
        elif text not in self._RECOVERY:
            globalLogPublisher(event)


class WriteThroughPort(tcp.Port):
    transport = WriteThroughServer

    def __init__(self, port, factory, backlog=50, interface="", reactor=None):
        super().__init__(port, factory, backlog, interface, reactor)
        self.accept_errors = AcceptErrors(self.reactor)
        self._logger = Logger(namespace=type(self)._logger.namespace, observer=self.accept_errors)

    def connectionLost(self, reason):
        self.accept_errors.warning.stop()
        super().connectionLost(reason)


def listen_tls(reactor, port, context, factory, interface, proxy_protocol=False):
    """Listen on ``interface:port`` for TLS connections to ``factory`` (each behind a
    PROXY protocol header when ``proxy_protocol``); the listening port.

    What ``reactor.listenSSL`` does (TLS over a TCP port), with the turn-buffered
    TLS connections and the write-through transport.
    """
    listening = WriteThroughPort(port, _tls_factory(reactor, context, factory, proxy_protocol),
                                 backlog=LISTEN_BACKLOG, interface=interface, reactor=reactor)
    listening.startListening()
    return listening


def adopt_tls(reactor, fd, context, factory, interface, proxy_protocol=False):
    """Accept TLS connections to ``factory`` on ``fd``, a socket listening on ``interface``
    that the supervisor of ``[server] workers`` opened and shares with its other workers;
    the listening port.

    What ``reactor.adoptStreamPort`` does, with the listener above; the kernel hands
    each new connection to whichever worker accepts it first.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    listening = WriteThroughPort._fromListeningDescriptor(
        reactor, fd, family, _tls_factory(reactor, context, factory, proxy_protocol))
    os.close(fd)  # the port holds its own duplicate
    listening.startListening()
    return listening
