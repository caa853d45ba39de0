"""Unit tests of the connection layer without sockets: StringTransport, task.Clock, a real SQLite store."""

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from securechat import config, wire
from securechat.server.auth import SecretHasher
from securechat.server.factory import RelayFactory
from securechat.server.listener import ProxyHeaderFactory
from securechat.server.protocol import WriteGate
from securechat.store import make_store


@pytest.fixture
def factory(tmp_path):
    from twisted.internet import reactor

    settings = config.load(None)
    store = make_store(str(tmp_path / "unit.sqlite3"), str(tmp_path))
    pytest_twisted.blockon(defer.ensureDeferred(store.start()))
    clock = task.Clock()
    hasher = SecretHasher(reactor, 1, 1)
    made = RelayFactory(settings, store, clock, hasher, relay_id="unit-relay")
    made.config_database = str(tmp_path / "unit.sqlite3")
    yield made
    pytest_twisted.blockon(store.stop())


def connect(factory, host="10.0.0.1", handshake=True, transport=None):
    """A connection from ``host`` over a StringTransport, its TLS handshake done (or not)."""
    protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    transport = transport or StringTransport()
    protocol.makeConnection(transport)
    if handshake:
        protocol.handshakeCompleted()
    return protocol, transport


def frames(transport):
    return [json.loads(line) for line in transport.value().splitlines() if line]


def test_requests_of_one_read_are_answered_in_order_one_line_each(factory):
    """Several requests in one read get their answers in request order, a line each (the
    TLS transport, not this layer, gathers a turn's writes into one record)."""
    protocol, transport = connect(factory)
    protocol.dataReceived(b'{"op":"ping","rid":1}\n{"op":"ping","rid":2}\n{"op":"nope","rid":3}\n')
    answers = frames(transport)
    assert [a["rid"] for a in answers] == [1, 2, 3]
    assert answers[2]["error"]["code"] == "unknown_op"


def test_requests_before_login_are_refused(factory):
    """Every authenticated op answers not_logged_in on a fresh connection."""
    protocol, transport = connect(factory)
    for rid, op in enumerate(sorted(set(wire.REQUESTS) - wire.ANONYMOUS_OPS)):
        protocol.dataReceived(json.dumps({"op": op, "rid": rid}).encode() + b"\n")
    factory.clock.advance(0)
    answers = frames(transport)
    assert len(answers) == len(wire.REQUESTS) - len(wire.ANONYMOUS_OPS)
    assert {f["error"]["code"] for f in answers} == {"not_logged_in"}


def test_overlong_line_errors_then_disconnects(factory):
    """A line over the limit gets line_too_long and the transport is closed."""
    protocol, transport = connect(factory)
    protocol.dataReceived(b"a" * (wire.MAX_LINE_BYTES + 1))
    assert transport.disconnecting
    assert frames(transport)[0]["error"]["code"] == "line_too_long"


@pytest_twisted.ensureDeferred
async def test_corrupt_envelope_is_announced_not_delivered(factory):
    """A queued envelope whose digest fails is pushed as a 'corrupt' event, never as an envelope."""
    store = factory.store
    await store.create_account("bob", "h", "k")
    await store.set_device_keys("bob", "B1", "{}", "s")
    await store.enqueue([{"id": "e" * 16, "sender": "a", "sender_device": "A",
                          "recipients": [("bob", "B1")], "body": '{"ct":"AAAA"}'}])
    database = sqlite3.connect(factory.config_database)
    with database:
        database.execute("UPDATE queue SET body = ?", ('{"ct":"AAAB"}',))
    database.close()
    pushed = []
    cursor = factory.relay.attach("bob", "B1", _Sink(pushed))
    await cursor.pump()
    assert [json.loads(line) for line in pushed] == [{"event": "corrupt", "seq": 1, "id": "e" * 16}]


class _Sink:
    def __init__(self, pushed):
        self.push_line = pushed.append
        self.gate = WriteGate()


@pytest_twisted.ensureDeferred
async def test_slow_reader_gets_its_queue_page_by_page(factory):
    """While the connection's send buffer is full, the queue is not read further from the store."""
    from securechat.server.relay import FETCH_PAGE
    from tests.support import poll_until

    store = factory.store
    await store.create_account("bob", "h", "k")
    await store.set_device_keys("bob", "B1", "{}", "s")
    total = FETCH_PAGE * 2 + 10
    await store.enqueue([{"id": f"e{i:015d}", "sender": "a", "sender_device": "A",
                          "recipients": [("bob", "B1")], "body": "{}"} for i in range(total)])
    pushed = []
    sink = _Sink(pushed)

    def push_until_full(line):  # the transport pauses its producer past its high-water mark
        pushed.append(line)
        if len(pushed) == FETCH_PAGE:
            sink.gate.pauseProducing()

    sink.push_line = push_until_full
    done = factory.relay.attach("bob", "B1", sink).pump()
    await poll_until(lambda: len(pushed) == FETCH_PAGE)
    await store.queue_length("bob", "B1")
    assert len(pushed) == FETCH_PAGE and not done.called
    sink.gate.resumeProducing()
    await done
    assert len(pushed) == total


@pytest.mark.parametrize("frame", [
    {"op": "send", "rid": 1, "envelopes": [
        {"id": "e" * 32, "to": "bob", "to_dev": "B_1-x", "kind": "olm", "sid": "s+/=",
         "otype": 0, "ct": wire.b64encode(bytes(range(256)))}]},
    {"op": "room.send", "rid": 2, "room": "ops.team-1", "id": "f" * 32, "kind": "megolm",
     "sid": "S1", "ct": "QUJD"},
])
def test_spliced_envelope_body_is_the_json_of_the_checked_fields(frame):
    """The relay writes stored bodies by splicing (for speed); for any frame the schema
    accepts, that text is exactly the JSON the fields would be encoded as."""
    from securechat.server.relay import envelope_body

    op, _, fields = wire.parse_request(frame)
    if op == "send":
        env = fields["envelopes"][0]
        body = envelope_body("alice", "A1", env, env["to"], env["to_dev"], None, 1234)
        expected = {"to": env["to"], "to_dev": env["to_dev"], "room": None, "otype": 0}
    else:
        env = fields
        body = envelope_body("alice", "A1", env, None, None, env["room"], 1234)
        expected = {"to": None, "to_dev": None, "room": env["room"], "otype": None}
    assert json.loads(body) == {
        "v": 1, "id": env["id"], "from": "alice", "from_dev": "A1", "kind": env["kind"],
        "sid": env["sid"], "ct": env["ct"], "ts": 1234, **expected}


class _Recorded(Protocol):
    """What a connection behind a PROXY header is built for and receives."""

    def __init__(self, addr):
        self.addr, self.received = addr, b""

    def dataReceived(self, data):
        self.received += data


class _Recording(Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        self.built.append(_Recorded(addr))
        return self.built[-1]


def _behind_proxy_header(factory):
    """A connection from the balancer (10.0.0.9) to a ProxyHeaderFactory over a
    StringTransport: the wrapped factory, the connection and its transport."""
    wrapped = _Recording()
    proxy = ProxyHeaderFactory(wrapped, factory)
    connection = proxy.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    connection.makeConnection(transport)
    return wrapped, connection, transport


def test_behind_a_proxy_header_the_connection_is_built_for_the_address_it_names(factory):
    """The wrapped protocol is built only once the PROXY header is read, for the client's
    address the header names (not the balancer's), and gets what followed the header."""
    wrapped, connection, _ = _behind_proxy_header(factory)
    assert wrapped.built == []
    connection.dataReceived(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 6697\r\nhello")
    [built] = wrapped.built
    assert (built.addr.host, built.received) == ("192.0.2.7", b"hello")
    connection.dataReceived(b" again")
    assert built.received == b"hello again"


def test_a_connection_without_a_proxy_header_by_the_handshake_deadline_is_closed(factory):
    """A connection that sends no PROXY header is closed at the handshake deadline and
    counted as a failed handshake; none is built for it."""
    wrapped, connection, transport = _behind_proxy_header(factory)
    factory.clock.advance(factory.config.handshake_timeout_seconds)
    assert transport.disconnecting
    connection.connectionLost(None)
    assert wrapped.built == [] and factory.metrics.handshake_failures == 1


def test_a_connection_that_starts_with_something_else_is_closed_at_once(factory):
    """A connection whose first bytes are not a PROXY header (a TLS ClientHello) is closed
    at once, its deadline cancelled, and counted as a failed handshake."""
    wrapped, connection, transport = _behind_proxy_header(factory)
    connection.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
    assert transport.disconnecting
    connection.connectionLost(None)
    assert wrapped.built == [] and factory.metrics.handshake_failures == 1
    assert not connection._deadline.active()
