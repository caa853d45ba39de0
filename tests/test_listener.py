"""The relay's listener, on real loopback sockets.

The write-through TCP transport: a write to an idle connection must leave in
the ``write`` call itself (no epoll round), and what the kernel does not take
must still arrive, whole and in order, with the producer paused and resumed
as Twisted does it.  The turn-buffered TLS connections: the writes of one
reactor turn leave as one TLS record per connection, flushed for all
connections by one timed call, and nothing written is lost on the way out.
"""

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from securechat.server.listener import TURN_BUFFER_BYTES, TurnWrites, WriteThroughPort
from tests.support import ScriptedDevice, cleanup, poll_until


class _Accepted(Protocol):
    def connectionMade(self):
        self.factory.accepted.callback(self)


@implementer(IPushProducer)
class _Producer:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


async def _connected_pair():
    """A listening write-through port, a blocking stdlib client, and the server side's protocol."""
    factory = Factory.forProtocol(_Accepted)
    factory.accepted = defer.Deferred()
    port = WriteThroughPort(0, factory, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
    server_side = await factory.accepted
    return port, client, server_side


def _read_exactly(sock, size):
    chunks, received = [], 0
    while received < size:
        chunk = sock.recv(min(1 << 20, size - received))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_a_write_to_an_idle_connection_is_sent_at_once():
    port, client, server_side = await _connected_pair()
    try:
        server_side.transport.write(b"frame one\n")
        # Nothing was left for the reactor: the bytes are already in the client's socket.
        assert not server_side.transport.dataBuffer and not server_side.transport._tempDataBuffer
        assert _read_exactly(client, 10) == b"frame one\n"
    finally:
        client.close()
        server_side.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_refuses_is_buffered_and_arrives_in_order():
    port, client, server_side = await _connected_pair()
    producer = _Producer()
    server_side.transport.registerProducer(producer, True)
    payload = bytes(range(256)) * (128 * 1024)  # 32 MiB: more than even tuned socket buffers hold
    try:
        server_side.transport.write(payload)
        assert server_side.transport.dataBuffer or server_side.transport._tempDataBuffer
        assert producer.events == ["pause"]  # a full buffer pauses the producer, as in Twisted
        server_side.transport.write(b"and then this")  # queued behind the rest, not sent first
        received = await threads.deferToThread(_read_exactly, client, len(payload) + 13)
        assert received == payload + b"and then this"
        assert producer.events[-1] == "resume" and "resume" not in producer.events[:-1]
    finally:
        client.close()
        server_side.transport.unregisterProducer()
        server_side.transport.loseConnection()
        await port.stopListening()


# -- turn-buffered TLS connections ------------------------------------------------


@pytest.fixture
def server(start_relay):
    return start_relay()


def _server_side(server, user):
    """The relay's protocol for ``user``'s connection."""
    (protocol,) = [p for p in server.service.factory.connections
                   if p.session is not None and p.session.user == user]
    return protocol


def _tls_records_written(protocol):
    """Record (in a list it returns) the TLS record types each write of ``protocol``'s TCP
    connection carries; the writes still go through."""
    tcp = protocol.transport.transport
    writes, write = [], tcp.write

    def recording(data):
        records, offset = [], 0
        while offset + 5 <= len(data):
            kind, _version, length = struct.unpack_from("!BHH", data, offset)
            records.append(kind)
            offset += 5 + length
        writes.append(records)
        write(data)

    tcp.write = recording
    return writes


def _probes(device):
    return [e["n"] for e in device.events if e.get("event") == "probe"]


async def _logged_in(server, *names):
    devices = []
    for name in names:
        device = ScriptedDevice(name)
        await device.register(server)
        await device.login(server, upload_keys=False)
        devices.append(device)
    return devices


@pytest_twisted.ensureDeferred
async def test_a_turns_writes_leave_as_one_record_per_connection_flushed_by_one_timed_call(
        server):
    alice, bob = await _logged_in(server, "alice", "bob")
    clock = task.Clock()  # stands in for the end of the reactor turn
    server.service.port.factory.turn_writes = TurnWrites(clock)
    sides = [_server_side(server, "alice"), _server_side(server, "bob")]
    written = [_tls_records_written(side) for side in sides]
    for n in range(3):
        for side in sides:
            side.send_line(b'{"event":"probe","n":%d}' % n)
    assert len(clock.getDelayedCalls()) == 1  # one for both connections
    assert written == [[], []]  # nothing encrypted or sent before the turn ends
    clock.advance(0)
    assert written == [[[23]], [[23]]]  # one application-data record each, in one send
    await poll_until(lambda: _probes(alice) == [0, 1, 2] and _probes(bob) == [0, 1, 2])
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_turns_writes_past_the_bound_are_sent_without_waiting(server):
    (alice,) = await _logged_in(server, "alice")
    clock = task.Clock()
    server.service.port.factory.turn_writes = TurnWrites(clock)
    side = _server_side(server, "alice")
    written = _tls_records_written(side)
    filler = b'{"event":"probe","n":0,"pad":"' + b"x" * (TURN_BUFFER_BYTES // 2) + b'"}'
    side.send_line(filler)
    assert written == []
    side.send_line(filler.replace(b'"n":0', b'"n":1'))  # past the bound: flushed in the write
    assert written and all(kind == 23 for records in written for kind in records)
    clock.advance(0)  # the timed call finds nothing left
    await poll_until(lambda: _probes(alice) == [0, 1])
    await cleanup(alice)


@pytest_twisted.ensureDeferred
async def test_what_was_written_before_a_disconnect_in_the_same_turn_arrives(server):
    (alice,) = await _logged_in(server, "alice")
    server.service.port.factory.turn_writes = TurnWrites(task.Clock())  # never flushed by time
    side = _server_side(server, "alice")
    side.send_line(b'{"event":"probe","n":7}')
    side.session.replaced()  # its last frame, then the connection is closed
    await alice.protocol.closed_d
    assert _probes(alice) == [7] and alice.events[-1]["event"] == "replaced"


class _Connection:
    def __init__(self, fails=False):
        self.fails = fails
        self.flushed = 0

    def flush_turn(self):
        self.flushed += 1
        if self.fails:
            raise RuntimeError("this connection's flush fails")


def test_one_connections_failed_flush_does_not_keep_the_others_frames_back():
    clock = task.Clock()
    turn = TurnWrites(clock)
    connections = [_Connection(), _Connection(fails=True), _Connection()]
    for connection in connections:
        turn.add(connection)
    clock.advance(0)
    assert [c.flushed for c in connections] == [1, 1, 1]
    turn.add(connections[0])  # the next turn is scheduled again
    assert len(clock.getDelayedCalls()) == 1
