"""Logins by device key: a signature of the relay's challenge, bound to the relay's id and to
the TLS session, checked against the device's published key; no password-derived secret
on the wire; the password key salted with the relay's id, so any spelling of its address
works.  (Password keys and the move of old accounts: test_password_key.)"""

import json
import shutil

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer

from securechat import wire
from securechat.client.protocol import RemoteError
from securechat.client.session import ClientError, relay_id
from tests.processes import run_cli, write_client_config
from tests.support import ScriptedDevice, cleanup, expect_error
from tests.test_client_security import record_lines

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[limits]\nlogin_failures_per_account = 3\n")


async def published(server, user="bob"):
    """A registered device whose keys are published; its first connection closed."""
    device = ScriptedDevice(user)
    await device.register(server)
    await device.login(server)
    await device.close()
    return device


async def connected(server, device):
    """A new connection of the same device, not logged in, its TLS handshake done."""
    twin = device.again()
    await twin.connect(server)
    await twin.request("ping")
    return twin


def requests_of(lines, op):
    return [json.loads(line) for line in lines if json.loads(line).get("op") == op]


@pytest_twisted.ensureDeferred
async def test_the_cli_logs_in_by_device_key_and_sends_no_secret(server, tmp_path):
    """After registering, `securechat login` sends a login with a signature and nothing
    derived from the password: no frame of the whole command carries a secret."""
    config = write_client_config(str(tmp_path / "clients"), "alice", server.port,
                                 ca_file=server.cert_path)
    assert (await run_cli(config, "register")).code == 0
    received = record_lines(server)
    result = await run_cli(config, "login")
    assert result.code == 0, result
    logins = requests_of(received, "login")
    assert len(logins) == 1 and set(logins[0]) == {"op", "rid", "user", "device", "signature"}
    assert requests_of(received, "login.challenge")
    assert not [line for line in received if b"secret" in line]


@pytest_twisted.ensureDeferred
async def test_a_signature_made_for_another_tls_connection_is_refused(server):
    """A login frame captured on one connection and sent on another is refused, and so is a
    signature of the right challenge made over another TLS session (what a device talking to
    an interceptor would sign); the same device signing on its own connection gets in."""
    bob = await published(server)
    first = await connected(server, bob)
    captured = first.login_frame(await first.request("login.challenge"))
    assert (await first.request("login", **captured))["user"] == "bob"
    replay = await connected(server, bob)
    await replay.request("login.challenge")
    await expect_error("auth_failed", replay.request("login", **captured))
    relayed = await connected(server, bob)
    challenge = await relayed.request("login.challenge")
    elsewhere = await connected(server, bob)  # the device's own connection, to the interceptor
    await expect_error("auth_failed", relayed.request("login", **elsewhere.login_frame(challenge)))
    await expect_error("challenge_used", relayed.request("login.challenge"))
    assert (await elsewhere.key_login())["device"] == "DEV1"
    await cleanup(first, replay, relayed, elsewhere)


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_an_unknown_device_or_user_get_auth_failed(server):
    """Signing with a key other than the published one, as a device that published none, or
    as a user that does not exist: auth_failed each time, the same answer."""
    bob = await published(server)
    errors = []
    for user, device, key in [("bob", "DEV1", SigningKey.generate()),
                              ("bob", "NOPE", bob.signing), ("nobody", "DEV1", bob.signing)]:
        guesser = ScriptedDevice(user, device)
        await guesser.connect(server)
        errors.append(await expect_error("auth_failed", guesser.key_login(key)))
        await guesser.close()
    assert len({error.message for error in errors}) == 1


@pytest_twisted.ensureDeferred
async def test_failed_signature_logins_are_limited_like_wrong_passwords(server):
    """Past login_failures_per_account wrong signatures from one address, that account waits
    (rate_limited with a delay) even with the right key, as after wrong passwords."""
    bob = await published(server)
    codes = []
    for _ in range(5):
        guesser = await connected(server, bob)
        try:
            await guesser.key_login(SigningKey.generate())
        except RemoteError as e:
            codes.append(e.code)
        await guesser.close()
    assert codes[:3] == ["auth_failed"] * 3 and codes[-1] == "rate_limited"
    owner = await connected(server, bob)
    await expect_error("rate_limited", owner.key_login())
    await owner.close()


@pytest_twisted.ensureDeferred
async def test_a_storm_of_device_logins_from_one_address_is_not_refused(server):
    """Forty devices behind one address (a NAT after a relay restart) log in by key at the
    same moment, past login_failures_per_address (30): all get in, since only failures
    count (a login counted as failed while in flight refused the ones past 30)."""
    store = server.service.store
    devices = [ScriptedDevice(f"user{i}") for i in range(40)]
    for device in devices:
        await store.create_account(device.user, "unused-hash",
                                   wire.b64encode(bytes(device.identity.verify_key)))
        await store.set_device_keys(device.user, device.device,
                                    wire.canonical_json(device.device_keys()).decode("utf-8"),
                                    device.sign(device.device_keys()))
    for device in devices:
        await device.connect(server)
        await device.request("ping")
    challenges = await defer.gatherResults(
        [device.request("login.challenge") for device in devices])
    results = await defer.gatherResults(
        [device.request("login", **device.login_frame(challenge))
         for device, challenge in zip(devices, challenges)])
    assert [result["user"] for result in results] == [device.user for device in devices]
    await cleanup(*devices)


@pytest_twisted.ensureDeferred
async def test_a_login_needs_its_connections_challenge_once_and_a_published_device_its_key(
        server):
    """A signature without a challenge is refused (no_challenge), a connection gets one
    challenge, and the password key no longer logs in a device with published keys."""
    bob = await published(server)
    device = await connected(server, bob)
    await expect_error("no_challenge", device.request("login", user="bob", device="DEV1",
                                                      signature=wire.b64encode(bytes(64))))
    challenge = await device.request("login.challenge")
    await expect_error("challenge_used", device.request("login.challenge"))
    await expect_error("bad_field", device.request(
        "login", user="bob", device="DEV1", password_signature=wire.b64encode(bytes(64)),
        signature=wire.b64encode(bytes(64))))
    await expect_error("device_key_required", device.request(
        "login", **device.password_login_frame(challenge)))
    await device.close()


@pytest.mark.parametrize("answer", [{"pong": True}, {"relay": 7}, {"relay": "short"},
                                    {"relay": "a" * 20 + "\x1b]0;x\x07"}, []])
def test_an_answer_without_a_usable_relay_id_is_a_clear_error(answer):
    """A relay that reports no id (older than the client, or none at all), or one that is
    no id, stops the client with an error saying so, not a KeyError."""
    with pytest.raises(ClientError, match="reports no relay id"):
        relay_id(answer)
    assert relay_id({"relay": "roMuDPepF-z2arD-HFKryg"}) == "roMuDPepF-z2arD-HFKryg"


def spelled(config, spelling):
    """The client ini ``config`` with the server written as ``spelling`` (host:port)."""
    with open(config) as f:
        lines = [f"server = {spelling}" if line.startswith("server =") else line
                 for line in f.read().splitlines()]
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return config


@pytest_twisted.ensureDeferred
async def test_localhost_and_127_0_0_1_spellings_both_register_and_log_in(twistd_relay,
                                                                          tmp_path):
    """A device registered at 127.0.0.1:PORT logs in and sends at localhost:PORT, and one
    registered at localhost:PORT logs in at 127.0.0.1:PORT (real twistd and CLI processes,
    certificates pinned on first use): the login secret no longer depends on the spelling."""
    await twistd_relay.wait_listening()
    port = twistd_relay.port
    clients = str(tmp_path / "clients")
    alice = write_client_config(clients, "alice", port)
    bob = spelled(write_client_config(clients, "bob", port),
                  f"localhost:{port}")
    for config in (alice, bob):
        result = await run_cli(config, "register")
        assert result.code == 0, result
    spelled(alice, f"localhost:{port}")
    spelled(bob, f"127.0.0.1:{port}")
    for config in (alice, bob):
        result = await run_cli(config, "login")
        assert result.code == 0, result
    result = await run_cli(alice, "send", "bob", "hello across spellings")
    assert result.code == 0, result
    inbox = await run_cli(bob, "inbox")
    assert inbox.code == 0 and "hello across spellings" in inbox.out, inbox


@pytest_twisted.ensureDeferred
async def test_another_spelling_is_held_to_the_pin_learnt_at_registration(twistd_relay,
                                                                          tmp_path):
    """A relay that comes back with another certificate is refused (exit 5) under the
    registered spelling and under a spelling never used before alike: a new spelling is
    not a new first use."""
    await twistd_relay.wait_listening()
    port = twistd_relay.port
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    assert (await run_cli(alice, "register")).code == 0
    twistd_relay.stop()
    shutil.rmtree(twistd_relay.data_dir / "tls")
    twistd_relay.start()
    await twistd_relay.wait_listening()
    for spelling in (f"127.0.0.1:{port}", f"localhost:{port}"):
        result = await run_cli(spelled(alice, spelling), "login")
        assert result.code == 5 and "REFUSED" in result.err, result

