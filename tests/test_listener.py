"""The relay's write-through TCP transport, on real loopback sockets.

A write to an idle connection must leave in the ``write`` call itself (no
epoll round), and what the kernel does not take must still arrive, whole and
in order, with the producer paused and resumed as Twisted does it.
"""

import socket

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from securechat.server.listener import WriteThroughPort


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
