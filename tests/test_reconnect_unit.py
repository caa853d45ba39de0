"""Unit tests of the client's connection lifecycle without sockets: requests on a closed
connection, pushed events it does not expect, the reconnect schedule (task.Clock), and the
outbox kept while disconnected (a real key store)."""

import random

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionLost

from securechat.client.protocol import ClientProtocol, ConnectionClosed
from securechat.client.reconnect import Backoff, Reconnector
from securechat.client.session import Client, Queued
from securechat.client.settings import ClientSettings
from securechat.crypto.device import DeviceCrypto
from securechat.crypto.keystore import KeyStore

PASSWORD = "correct horse battery staple"


def connected_protocol(on_event=None):
    protocol = ClientProtocol(on_event)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_request_after_close_fails_at_once():
    """A request made after the connection closed fails at once with ConnectionClosed
    (it used to register a Deferred that never fired) and writes nothing."""
    protocol, transport = connected_protocol()
    protocol.connectionLost(Failure(ConnectionLost("gone")))
    transport.clear()
    d = protocol.request("ping")
    assert d.called, "the request is still waiting for an answer that cannot come"
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(ConnectionClosed)
    assert transport.value() == b""


def test_request_in_flight_fails_when_the_connection_closes():
    """A request waiting for its answer fails with ConnectionClosed when the connection ends."""
    protocol, _ = connected_protocol()
    d = protocol.request("ping")
    failure = []
    d.addErrback(failure.append)
    assert not failure
    protocol.connectionLost(Failure(ConnectionLost("gone")))
    assert failure and failure[0].check(ConnectionClosed)


def nominal(attempt):
    return min(30.0, 0.5 * 2 ** attempt)


def test_backoff_delays_grow_and_are_jittered():
    """The reconnect attempts come after delays doubling from 0.5 s to a 30 s cap, each
    within ±25 % of that and not exactly it (jitter), measured on task.Clock."""
    clock = task.Clock()
    attempts = []

    def attempt():
        attempts.append(clock.seconds())
        return False  # unreachable: try again

    reconnector = Reconnector(clock, attempt, backoff=Backoff(rng=random.Random(17).random))
    reconnector.start()
    for _ in range(12):
        clock.advance(min(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds())
    delays = [later - earlier for earlier, later in zip([0.0] + attempts, attempts)]
    assert len(delays) == 12
    for number, delay in enumerate(delays):
        assert 0.75 * nominal(number) <= delay <= 1.25 * nominal(number), (number, delays)
    assert delays[:7] == sorted(delays[:7]), delays  # growing until the cap
    assert all(abs(d - nominal(n)) > 1e-9 for n, d in enumerate(delays)), "no jitter"
    reconnector.stop()
    assert clock.getDelayedCalls() == []


def test_backoff_starts_again_from_the_first_delay_after_a_success():
    """After an attempt succeeds, the next outage starts again at about 0.5 s, not at the
    long delay the previous outage had reached."""
    clock = task.Clock()
    results = [False, False, False, True]
    reconnector = Reconnector(clock, lambda: results.pop(0), backoff=Backoff(rng=lambda: 0.5))
    reconnector.start()
    clock.pump([0.5, 1, 2, 4])
    assert not reconnector.running and not results
    reconnector.start()
    assert [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()] == [0.5]


def test_two_clients_spread_their_reconnects():
    """Two clients with their own random source do not retry at the same instants."""
    first = [Backoff(rng=random.Random(1).random).next() for _ in range(5)]
    second = [Backoff(rng=random.Random(2).random).next() for _ in range(5)]
    assert all(a != b for a, b in zip(first, second))


@pytest.fixture
def client(tmp_path):
    """A Client with a real key store on a MemoryReactorClock, its connection a
    StringTransport (as if logged in)."""
    settings = ClientSettings("127.0.0.1", 6698, "alice", str(tmp_path / "alice"), "", "", "")
    states = []
    made = Client(MemoryReactorClock(), settings, PASSWORD,
                  on_state=lambda state, detail: states.append((state, detail)))
    made.store = KeyStore.create(settings.data_dir, PASSWORD,
                                 {"user": "alice", "device": "DEV1", "server": settings.server})
    made.device = "DEV1"
    made.crypto = DeviceCrypto.create(made.store)
    made.protocol, made.transport = connected_protocol(made._event)
    made._connected()
    made.states = states
    yield made
    made.close()


def test_replaced_is_surfaced_and_not_fought(client):
    """The relay's 'replaced' event becomes the state 'replaced' with the relay's reason,
    and the close that follows does not start a reconnect (which would push the other
    login of this device out in turn)."""
    client.protocol.dataReceived(
        b'{"event":"replaced","message":"this device logged in elsewhere"}\n')
    client.protocol.connectionLost(Failure(ConnectionLost("closed by the relay")))
    assert client.state == "replaced"
    assert client.states[-1] == ("replaced", "the server says: this device logged in elsewhere")
    assert client.reactor.getDelayedCalls() == []


def test_a_dropped_connection_is_reconnected_after_a_short_jittered_delay(client):
    """A connection that drops moves the state to 'disconnected' and schedules a reconnect
    within 0.5 s ±25 %."""
    client.protocol.connectionLost(Failure(ConnectionLost("relay restarted")))
    assert client.state == "disconnected"
    assert "relay restarted" in client.state_detail and "next attempt in" in client.state_detail
    (call,) = client.reactor.getDelayedCalls()
    assert 0.375 <= call.getTime() - client.reactor.seconds() <= 0.625


def test_unknown_events_are_logged_by_name_without_content(client):
    """An event this client does not know is logged (a warning naming it), its content not."""
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        client.protocol.dataReceived(b'{"event":"weather","forecast":"SECRET-CONTENT"}\n')
    finally:
        globalLogPublisher.removeObserver(logged.append)
    texts = [formatEvent(event) for event in logged]
    assert any("unknown event" in text and "weather" in text for text in texts), texts
    assert not any("SECRET-CONTENT" in text for text in texts)
    assert client.state == "connected"


@pytest_twisted.ensureDeferred
async def test_a_send_while_disconnected_is_kept_in_the_outbox(client):
    """send_text on a dropped connection fails at once with Queued (exit 4), and the
    message waits in the outbox, listed as pending."""
    client.protocol.connectionLost(Failure(ConnectionLost("gone")))
    with pytest.raises(Queued) as raised:
        await client.send_text("bob", "see you at nine")
    assert raised.value.exit_code == 4
    (entry,) = client.outbox_pending()
    assert entry["id"] == raised.value.entry_id
    assert (entry["to"], entry["text"], entry["error"]) == ("bob", "see you at nine", None)
