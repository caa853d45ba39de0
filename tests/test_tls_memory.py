"""OpenSSL's memory per connection (securechat.server.tls_memory), on real TLS connections.

What the memory savings are worth is measured in docs/benchmarks.rst (W4);
these tests pin the behaviour: the key exchange groups each setting offers,
and that an idle connection's buffers are swapped for empty ones without
disturbing the connection or a busy neighbour.
"""

import pytest
import pytest_twisted

from securechat.server.tls_memory import IdleSweep
from tests.support import ScriptedDevice, cleanup, poll_until, unicast


def server_side(server, user):
    """The relay's protocol for ``user``'s connection."""
    (protocol,) = [p for p in server.service.factory.connections
                   if p.session is not None and p.session.user == user]
    return protocol


def bios(protocol):
    handle = protocol.transport.getHandle()
    return handle._into_ssl, handle._from_ssl


async def logged_in(server, *names):
    devices = []
    for name in names:
        device = ScriptedDevice(name)
        await device.register(server)
        await device.login(server)
        devices.append(device)
    return devices


@pytest.fixture
def server(start_relay, request):
    setting = getattr(request, "param", "")
    return start_relay(extra=f"[tls]\nkey_exchange = {setting}\n" if setting else "")


@pytest.mark.parametrize("server, group", [("", "X25519MLKEM768"), ("classic", "x25519")],
                         indirect=["server"])
@pytest_twisted.ensureDeferred
async def test_key_exchange_setting_decides_the_negotiated_group(server, group):
    """By default the relay prefers the hybrid post-quantum group; ``classic`` offers X25519
    and P-256 only, to a client that offers both kinds."""
    (alice,) = await logged_in(server, "alice")
    negotiated = server_side(server, "alice").transport.getHandle().get_group_name()
    assert negotiated.lower() == group.lower()
    await cleanup(alice)


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_gives_its_tls_buffers_back_and_keeps_working(server):
    """After a large envelope, a connection quiet for a whole sweep gets fresh memory BIOs;
    it still receives and answers, and a connection active in between is left alone."""
    server.service._idle_sweep.stop()  # this test runs the sweeps itself
    alice, bob = await logged_in(server, "alice", "bob")
    await alice.request("send", envelopes=[unicast("bob", "DEV1", ct=b"x" * 150_000)])
    await poll_until(lambda: len(bob.envelopes()) == 1)
    bob_side = server_side(server, "bob")
    grown = bios(bob_side)

    sweep = IdleSweep(server.service.factory.connections)
    assert sweep() == 0  # everyone was active: only the marks are cleared
    assert sweep() == 2  # quiet for a whole interval: both give their buffers back
    assert bios(bob_side) != grown and bob_side.buffers_released
    assert sweep() == 0  # once is enough until they are active again

    await alice.request("send", envelopes=[unicast("bob", "DEV1", ct=b"y" * 150_000)])
    await poll_until(lambda: len(bob.envelopes()) == 2)
    assert (await bob.request("ping"))["pong"] is True
    fresh = bios(bob_side)
    assert sweep() == 0 and bios(bob_side) == fresh and not bob_side.buffers_released
    await cleanup(alice, bob)
