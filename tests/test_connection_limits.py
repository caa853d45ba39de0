"""Connection limits on real sockets against an in-process relay: the per-address cap on
connections that have not logged in, the handshake and login deadlines, and the output
budget closing a member that asks for large answers and never reads them."""

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.hostile import closed_by_peer, half_open, history_request, room_of_large_messages
from tests.hostile import tls_login
from tests.support import ScriptedDevice, cleanup, poll_until
from tests.test_client_security import record_log


@pytest.fixture
def server(start_relay, request):
    """An in-process relay with the test's ``[limits]`` lines (its parameter)."""
    return start_relay(extra="[limits]\n" + request.param)


@pytest.mark.parametrize("server", ["unauthenticated_per_address = 4\n"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_half_open_connections_over_the_cap_are_closed_and_others_still_log_in(server):
    """From 127.0.0.2, the connections past unauthenticated_per_address are closed as they
    are accepted (one log line for all of them) while a client from 127.0.0.1 logs in."""
    lines, stop_log = record_log()
    sockets = [half_open(server.port, source="127.0.0.2") for _ in range(10)]
    try:
        await poll_until(lambda: sum(map(closed_by_peer, sockets)) == 6)
        assert not any(map(closed_by_peer, sockets[:4]))  # accepted first, still waiting
        alice = ScriptedDevice("alice")
        await alice.register(server)
        assert (await alice.login(server, upload_keys=False))["user"] == "alice"
        await cleanup(alice)
    finally:
        stop_log()
        for sock in sockets:
            sock.close()
    refusals = [line for line in lines if line.startswith("Refused")]
    assert len(refusals) == 1 and "the latest from 127.0.0.2" in refusals[0]


@pytest.mark.parametrize("server", ["handshake_timeout_seconds = 0.5\n"
                                    "login_timeout_seconds = 0.5\n"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_deadlines_close_a_socket_without_tls_and_a_connection_without_login(server):
    """A socket that never starts TLS is closed at handshake_timeout_seconds; a TLS
    connection that never logs in gets login_timeout, then is closed."""
    silent = half_open(server.port)
    idle = ScriptedDevice("idle")
    try:
        await idle.connect(server)
        await poll_until(lambda: closed_by_peer(silent), timeout=10)
        await idle.protocol.closed_d
    finally:
        silent.close()
    assert [e["error"]["code"] for e in idle.events if "error" in e] == ["login_timeout"]
    assert server.service.factory.unauthenticated.holding("127.0.0.1") == 0


@pytest.mark.parametrize("server", ["output_budget_bytes = 2097152\n"
                                    "output_stall_seconds = 1\n"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_member_that_never_reads_large_answers_is_closed_after_the_stall(server):
    """A member asking for history pages and reading nothing goes over its output budget,
    is no longer read, and is closed output_stall_seconds later with a log line naming it;
    the other members stay connected."""
    alice, mallory = ScriptedDevice("alice"), ScriptedDevice("mallory")
    for device in (alice, mallory):
        await device.register(server)
        await device.login(server, upload_keys=False)
    await room_of_large_messages(alice, "big", count=8)
    await mallory.request("room.join", room="big")
    await mallory.close()
    hostile = await threads.deferToThread(tls_login, server.port, server.cert_path, "mallory",
                                          mallory.device, mallory.password)
    relay = server.service.factory.relay
    lines, stop_log = record_log()
    sent = [0]

    def ask():
        sent[0] += 1
        hostile.send(history_request("big", sent[0]))

    asking = task.LoopingCall(ask)
    asking.clock = reactor
    try:
        asking.start(0.1)
        await poll_until(lambda: relay.cursor("mallory", "DEV1") is None or sent[0] >= 100,
                         timeout=30)
    finally:
        if asking.running:
            asking.stop()
        stop_log()
        hostile.close()
    assert relay.cursor("mallory", "DEV1") is None, f"still online after {sent[0]} requests"
    (line,) = [line for line in lines if "output budget" in line]
    assert line.startswith("Closing the connection of mallory/DEV1:")
    assert relay.cursor("alice", "DEV1") is not None
    assert (await alice.request("ping"))["pong"]
    await cleanup(alice)
