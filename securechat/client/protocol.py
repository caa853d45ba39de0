"""The client side of the wire: requests matched to answers by ``rid``, pushed events to a callback."""

import itertools

from twisted.internet import defer, endpoints
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from securechat import wire


class RemoteError(Exception):
    """The server answered a request with an error frame."""

    def __init__(self, code, message, details=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class ConnectionClosed(Exception):
    """The connection ended before the server answered."""


class ClientProtocol(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_LINE_BYTES * 2

    log = Logger()

    def __init__(self, on_event=None):
        self._rids = itertools.count(1)
        self._pending = {}
        self.on_event = on_event or (lambda frame: None)
        self.connected_d = defer.Deferred()
        self.closed_d = defer.Deferred()
        self.lost_reason = None
        self.closed = False

    def connectionMade(self):
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:  # TCP (through TLS); in-memory test transports have none
            no_delay(True)
        self.connected_d.callback(self)

    def request(self, op, **fields):
        """Send one request; fire with its ``result`` or fail with RemoteError.

        On a connection already closed it fails at once with ConnectionClosed:
        no answer can come, and a Deferred nobody fires would hang its caller.
        """
        if self.closed:
            return defer.fail(ConnectionClosed("the connection to the server is closed"))
        rid = next(self._rids)
        d = defer.Deferred()
        self._pending[rid] = d
        self.sendLine(wire.encode({"op": op, "rid": rid, **fields}))
        return d

    def send_raw(self, data):
        """Write bytes as they are (tests of bad input use this)."""
        self.transport.write(data)

    def lineReceived(self, line):
        frame = wire.decode(line)
        rid = frame.get("rid")
        if "event" in frame:
            self.on_event(frame)
        elif rid in self._pending:
            d = self._pending.pop(rid)
            if "error" in frame:
                error = dict(frame["error"])
                d.errback(RemoteError(error.pop("code"), error.pop("message"), error))
            else:
                d.callback(frame.get("result"))
        else:
            self.on_event(frame)

    def connectionLost(self, reason=ConnectionDone):
        self.lost_reason = reason.value
        self.closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionClosed("the connection to the server was closed"))
        self.closed_d.callback(None)


async def connect(reactor, host, port, tls_creator, on_event=None):
    """Open a verified TLS connection and fire with a ClientProtocol once TLS is up."""
    endpoint = endpoints.wrapClientTLS(
        tls_creator, endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=10)
    )
    protocol = await endpoints.connectProtocol(endpoint, ClientProtocol(on_event))
    return protocol
