"""The connection's state machine, deadlines, per-address cap, output budget and request
backpressure, without sockets: StringTransport, task.Clock, a real SQLite store and real
password-key logins."""

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from securechat import config, wire
from securechat.server.auth import SecretHasher
from securechat.server.factory import RelayFactory
from securechat.server.output import HARD_LIMIT_FACTOR
from securechat.server.session import MAX_PENDING
from securechat.store import make_store
from tests.support import poll_until
from tests.test_client_security import record_log
from tests.test_session_unit import connect as unit_connect, frames

PASSWORD_KEY = SigningKey(b"s" * 32)


class ExportingTransport(StringTransport):
    """A StringTransport with the one TLS call a login makes: keying material exported from
    its session (fixed bytes here; the binding itself is tested over real TLS in
    test_device_login)."""

    def getHandle(self):
        return self

    def export_keying_material(self, label, length, context=None):
        return b"e" * length


class BufferingTransport(ExportingTransport):
    """A transport whose client reads nothing: all that is written stays unsent."""

    def unsent_bytes(self):
        return len(self.value())


@pytest.fixture
def factory(tmp_path):
    from twisted.internet import reactor

    path = tmp_path / "relay.ini"
    path.write_text("[limits]\noutput_budget_bytes = 2097152\noutput_stall_seconds = 5\n"
                    "handshake_timeout_seconds = 10\nlogin_timeout_seconds = 30\n"
                    "unauthenticated_per_address = 3\n")
    store = make_store(str(tmp_path / "unit.sqlite3"), str(tmp_path))
    pytest_twisted.blockon(defer.ensureDeferred(store.start()))
    made = RelayFactory(config.load(str(path)), store, task.Clock(), SecretHasher(reactor, 1, 32),
                        relay_id="unit-relay")
    yield made
    pytest_twisted.blockon(store.stop())


def answer(transport, rid):
    found = [f for f in frames(transport) if f.get("rid") == rid]
    return found[0] if found else None


def send(protocol, *requests):
    """Several requests in one read."""
    protocol.dataReceived(b"".join(wire.encode(r) + b"\n" for r in requests))


def connect(factory, transport=None, **kwargs):
    return unit_connect(factory, transport=transport or ExportingTransport(), **kwargs)


async def account(factory, user):
    await factory.store.create_account(user, wire.b64encode(bytes(PASSWORD_KEY.verify_key)),
                                       wire.b64encode(b"k" * 32))


def challenge(protocol, transport):
    """The connection's login challenge (answered within the read that asks for it)."""
    send(protocol, {"op": "login.challenge", "rid": "challenge"})
    return answer(transport, "challenge")["result"]


def login_request(rid, challenge, user="alice", device="D1", key=PASSWORD_KEY):
    """A password login answering ``challenge`` on an ExportingTransport."""
    message = wire.password_login_message(challenge["relay"], user, device,
                                          wire.b64decode(challenge["nonce"]), b"e" * 32)
    return {"op": "login", "rid": rid, "user": user, "device": device,
            "password_signature": wire.b64encode(key.sign(message).signature)}


async def logged_in(factory, user="alice", device="D1", transport=None):
    protocol, transport = connect(factory, transport=transport)
    send(protocol, login_request(1, challenge(protocol, transport), user, device))
    await poll_until(lambda: answer(transport, 1) is not None)
    assert "result" in answer(transport, 1), answer(transport, 1)
    return protocol, transport


def closed(protocol, transport):
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    protocol.connectionLost(Failure(ConnectionDone()))


@pytest_twisted.ensureDeferred
async def test_pipelined_logins_the_second_is_refused_and_no_ghost_stays_online(factory):
    """Two logins in one read: the second gets login_in_progress, and once the connection
    closes the device is no longer in the relay's table of online devices."""
    await account(factory, "alice")
    protocol, transport = connect(factory)
    asked = challenge(protocol, transport)
    send(protocol, login_request(1, asked), login_request(2, asked))
    assert answer(transport, 2)["error"]["code"] == "login_in_progress"
    await poll_until(lambda: answer(transport, 1) is not None)
    assert answer(transport, 1)["result"]["device"] == "D1"
    assert factory.relay.cursor("alice", "D1") is not None
    closed(protocol, transport)
    assert factory.relay.cursor("alice", "D1") is None
    assert factory.relay._online == {} and factory.relay._online_devices_of == {}


@pytest_twisted.ensureDeferred
async def test_a_login_accepted_after_the_connection_closed_leaves_nothing_online(
        factory, monkeypatch):
    """A connection that closes while its login is checked does not stay in the online
    table when the check succeeds afterwards."""
    await account(factory, "alice")
    detached = []
    detach = factory.relay.detach
    monkeypatch.setattr(factory.relay, "detach", lambda *a: detached.append(a) or detach(*a))
    protocol, transport = connect(factory)
    send(protocol, login_request(1, challenge(protocol, transport)))
    assert protocol.session.state == "checking_login"
    closed(protocol, transport)
    await poll_until(lambda: detached)  # the check succeeded, and was undone at once
    assert protocol.session.state == "closed" and answer(transport, 1) is None
    assert factory.relay.cursor("alice", "D1") is None


@pytest_twisted.ensureDeferred
async def test_a_refused_login_returns_to_logging_in_with_its_challenge_used(factory):
    """A wrong password proof answers auth_failed and the connection is back in logging_in,
    but its one challenge is used up: another login there is refused without a check."""
    await account(factory, "alice")
    protocol, transport = connect(factory)
    asked = challenge(protocol, transport)
    send(protocol, login_request(1, asked, key=SigningKey(b"w" * 32)))
    await poll_until(lambda: answer(transport, 1) is not None)
    assert answer(transport, 1)["error"]["code"] == "auth_failed"
    assert protocol.session.state == "logging_in"
    send(protocol, login_request(2, asked))
    await poll_until(lambda: answer(transport, 2) is not None)
    assert answer(transport, 2)["error"]["code"] == "no_challenge"


@pytest_twisted.ensureDeferred
async def test_login_on_a_logged_in_connection_is_already_logged_in(factory):
    """After a login, another login on the same connection is refused at once."""
    await account(factory, "alice")
    protocol, transport = await logged_in(factory)
    send(protocol, login_request(2, {"relay": "unit-relay", "nonce": "AAAA"}, device="D2"))
    assert answer(transport, 2)["error"]["code"] == "already_logged_in"
    assert factory.relay.cursor("alice", "D2") is None


@pytest_twisted.ensureDeferred
async def test_logout_answers_leaves_the_relay_and_closes(factory):
    """logout is answered, the device leaves the online table at once, a request pipelined
    after it is not run, and the connection closes on the next turn."""
    await account(factory, "alice")
    protocol, transport = await logged_in(factory)
    send(protocol, {"op": "logout", "rid": 2}, {"op": "keys.count", "rid": 3})
    assert answer(transport, 2)["result"] == {"bye": True}
    assert answer(transport, 3) is None
    assert factory.relay.cursor("alice", "D1") is None
    assert protocol.session.state == "closing" and not transport.disconnecting
    factory.clock.advance(0)
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_same_device_logging_in_elsewhere_replaces_the_first_connection(factory):
    """The first connection gets a 'replaced' event and is closed; the second stays online,
    also after the first connection's close arrives."""
    await account(factory, "alice")
    first, first_transport = await logged_in(factory)
    second, _ = await logged_in(factory)
    assert frames(first_transport)[-1]["event"] == "replaced"
    assert first_transport.disconnecting and first.session.state == "closing"
    closed(first, first_transport)
    cursor = factory.relay.cursor("alice", "D1")
    assert cursor is not None and factory.relay._online[("alice", "D1")][0] is second.session


def test_requests_wait_for_the_tls_handshake_state(factory):
    """Before the TLS handshake nothing is allowed; after it the anonymous ops are."""
    protocol, transport = connect(factory, handshake=False)
    assert protocol.session.state == "handshaking"
    send(protocol, {"op": "ping", "rid": 1})
    assert answer(transport, 1)["error"]["code"] == "not_logged_in"
    protocol.handshakeCompleted()
    send(protocol, {"op": "ping", "rid": 2}, {"op": "keys.count", "rid": 3})
    assert answer(transport, 2)["result"] == {"pong": True, "relay": "unit-relay",
                                              "link_window_seconds": 600}
    assert answer(transport, 3)["error"]["code"] == "not_logged_in"


def test_an_unfinished_handshake_is_aborted_at_its_deadline(factory):
    """A connection that has not finished TLS within handshake_timeout_seconds is aborted
    (and no longer counts against its address)."""
    protocol, transport = connect(factory, handshake=False)
    factory.clock.advance(9.9)
    assert not transport.disconnecting
    factory.clock.advance(0.2)
    assert transport.disconnected and protocol.session.state == "closing"
    assert transport.value() == b""
    assert factory.unauthenticated.holding("10.0.0.1") == 0


def test_missed_deadlines_are_logged_once_per_interval_not_per_connection(factory):
    """Ten connections that miss their handshake deadline at once give one log line naming
    an address; the next interval's line counts the rest; a missed login has its own."""
    lines, stop = record_log()
    try:
        for n in range(10):
            connect(factory, host=f"10.0.1.{n}", handshake=False)
        factory.clock.advance(10.1)
        late = [line for line in lines if "did not finish their TLS handshake" in line]
        assert len(late) == 1 and late[0].startswith("Closed 1 ") and "10.0.1." in late[0]
        factory.clock.advance(10)
        late = [line for line in lines if "did not finish their TLS handshake" in line]
        assert len(late) == 2 and late[1].startswith("Closed 9 ")
        connect(factory)
        factory.clock.advance(30.1)
        assert sum("did not finish their login" in line for line in lines) == 1
    finally:
        stop()


def test_a_connection_that_does_not_log_in_is_closed_at_its_deadline(factory):
    """No login within login_timeout_seconds of the handshake: a login_timeout error, then
    the connection is closed."""
    protocol, transport = connect(factory)
    factory.clock.advance(29.9)
    send(protocol, {"op": "ping", "rid": 1})  # activity is not a login
    assert not transport.disconnecting
    factory.clock.advance(0.2)
    (error,) = [f for f in frames(transport) if f.get("rid") is None]
    assert error["error"]["code"] == "login_timeout"
    assert transport.disconnecting
    assert factory.unauthenticated.holding("10.0.0.1") == 0


@pytest_twisted.ensureDeferred
async def test_a_logged_in_connection_outlives_the_login_deadline(factory):
    """The login deadline ends with the login."""
    await account(factory, "alice")
    protocol, transport = await logged_in(factory)
    factory.clock.advance(3600)
    assert not transport.disconnecting and protocol.session.state == "authenticated"


def test_ipv6_clients_are_counted_by_their_64_network(factory):
    """The addresses of one IPv6 /64 (what one host is commonly given) share one place in
    the per-address cap; another /64 and an IPv4-mapped client count on their own."""
    for n in range(3):
        connect(factory, host=f"2001:db8:0:7::{n + 1}", handshake=False)
    assert factory.buildProtocol(IPv4Address("TCP", "2001:db8:0:7:ffff::9", 1)) is None
    assert factory.unauthenticated.holding("2001:db8:0:7::/64") == 3
    assert factory.buildProtocol(IPv4Address("TCP", "2001:db8:0:8::1", 1)) is not None
    assert factory.buildProtocol(IPv4Address("TCP", "::ffff:10.0.0.9", 1)) is not None
    assert factory.unauthenticated.holding("10.0.0.9") == 1


@pytest_twisted.ensureDeferred
async def test_unauthenticated_connections_are_capped_per_address(factory):
    """An address holding unauthenticated_per_address connections that have not logged in
    gets no more (the port closes them); other addresses do; a login or a close frees a place."""
    await account(factory, "alice")
    held = [connect(factory) for _ in range(3)]
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 1)) is not None
    protocol, transport = held[0]
    send(protocol, login_request(1, challenge(protocol, transport)))
    await poll_until(lambda: answer(transport, 1) is not None)
    assert factory.unauthenticated.holding("10.0.0.1") == 2
    closed(*held[1])
    assert factory.unauthenticated.holding("10.0.0.1") == 1
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)) is not None


@pytest_twisted.ensureDeferred
async def test_256_requests_in_flight_stop_reading_until_half_are_answered(factory, monkeypatch):
    """With MAX_PENDING requests in progress the connection is no longer read; reading
    resumes once half of them have been answered."""
    await account(factory, "alice")
    protocol, transport = await logged_in(factory)
    held = []

    def key_counts(user, device):
        held.append(defer.Deferred())
        return held[-1]

    monkeypatch.setattr(factory.store, "key_counts", key_counts)
    send(protocol, *({"op": "keys.count", "rid": 100 + i} for i in range(MAX_PENDING - 1)))
    assert transport.producerState == "producing"
    send(protocol, {"op": "keys.count", "rid": 99})
    assert transport.producerState == "paused" and len(held) == MAX_PENDING
    for d in held[:MAX_PENDING // 2]:
        d.callback({"otk_count": 0})
    assert transport.producerState == "paused"  # half answered, half still in progress
    held[MAX_PENDING // 2].callback({"otk_count": 0})
    assert transport.producerState == "producing"
    for d in held[MAX_PENDING // 2 + 1:]:
        d.callback({"otk_count": 0})
    answered = [f for f in frames(transport) if "result" in f]
    assert len(answered) == 2 + MAX_PENDING  # with the login's challenge and the login


@pytest_twisted.ensureDeferred
async def test_output_over_budget_holds_reading_until_it_drains(factory):
    """Past output_budget_bytes unsent, the connection's requests are not read; once the
    transport has sent it all, they are again."""
    await account(factory, "alice")
    protocol, transport = await logged_in(factory, transport=BufferingTransport())
    protocol.gate.pauseProducing()  # the transport's buffer passed its high-water mark
    protocol.session.push_line(b"x" * 1_000_000)
    assert transport.producerState == "producing"  # within the budget of 2 MiB
    protocol.session.push_line(b"x" * 1_200_000)
    assert transport.producerState == "paused" and protocol.budget.over
    transport.clear()  # the client read it all
    protocol.gate.resumeProducing()  # and the transport says so
    assert transport.producerState == "producing" and not protocol.budget.over
    factory.clock.advance(60)
    assert not transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_output_over_budget_for_the_stall_time_closes_with_a_log_line(factory):
    """Still over the budget output_stall_seconds later: the connection is aborted and the
    log names the user and device."""
    await account(factory, "alice")
    protocol, transport = await logged_in(factory, transport=BufferingTransport())
    protocol.gate.pauseProducing()
    protocol.session.push_line(b"x" * 2_200_000)
    unsent = len(transport.value())
    lines, stop = record_log()
    try:
        factory.clock.advance(4.9)
        assert not transport.disconnected
        factory.clock.advance(0.2)
    finally:
        stop()
    assert transport.disconnected and protocol.session.state == "closing"
    assert factory.relay.cursor("alice", "D1") is None
    (line,) = [text for text in lines if "output budget" in text]
    assert "alice/D1" in line and f"{unsent} bytes unsent for 5 s" in line


def test_output_far_over_budget_closes_at_once_naming_the_peer(factory):
    """Unsent output past HARD_LIMIT_FACTOR budgets closes the connection at once, with one
    log line (writes before the transport reports the close add none); an anonymous one
    is named by its address."""
    protocol, transport = connect(factory, transport=BufferingTransport())
    protocol.gate.pauseProducing()
    lines, stop = record_log()
    try:
        protocol.session.push_line(b"x" * (HARD_LIMIT_FACTOR * 2097152))
        protocol.session.push_line(b"pushed in the same turn")
        protocol.session.push_line(b"and another")
    finally:
        stop()
    assert transport.disconnected
    closing = [text for text in lines if text.startswith("Closing the connection")]
    assert len(closing) == 1 and "an anonymous connection from 10.0.0.1" in closing[0]


def test_draining_slowly_below_the_budget_is_not_closed(factory):
    """At the stall deadline a connection back under its budget (but not yet drained)
    stays open, still not read."""
    protocol, transport = connect(factory, transport=BufferingTransport())
    protocol.gate.pauseProducing()
    protocol.session.push_line(b"x" * 2_200_000)
    transport.clear()
    transport.write(b"y" * 100_000)  # most of it was read, the rest is on its way
    factory.clock.advance(10)
    assert not transport.disconnected and transport.producerState == "paused"
