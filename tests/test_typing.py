"""Typing notices: the relay pushes them to connected devices only and never stores them,
limits them per connection, and a client shows them (and sends none when told not to)."""

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from securechat import wire
from securechat.client import settings as client_settings
from securechat.client.session import Client
from tests.processes import run_cli, write_client_config
from tests.screen import ChatScreen
from tests.support import ScriptedDevice, cleanup, expect_error, poll_until

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server(start_relay):
    return start_relay()


async def logged_in(server, user, device="DEV1"):
    scripted = ScriptedDevice(user, device)
    await scripted.register(server)
    await scripted.login(server)
    return scripted


def notice(to, to_dev, secret):
    return {"to": to, "to_dev": to_dev, "kind": "olm", "sid": "c2Vzc2lvbg", "otype": 1,
            "ct": wire.b64encode(secret)}


def files_holding(directory, needle):
    """The files under ``directory`` (the relay's data: its database, WAL, logs) that hold
    ``needle``."""
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                if needle in f.read():
                    found.append(path)
    return found


def typing_events(device):
    return [e for e in device.events if e.get("event") == "typing"]


@pytest_twisted.ensureDeferred
async def test_a_typing_notice_reaches_connected_devices_only_and_is_never_stored(server):
    """alice's notice to bob's connected device is pushed to it (from alice, the ciphertext
    as sent); one to his device while it is offline is dropped (it never arrives after he
    reconnects); neither ciphertext is anywhere in the relay's files."""
    alice = await logged_in(server, "alice")
    bob = await logged_in(server, "bob")
    online, offline = b"typing-notice-while-online-0001", b"typing-notice-while-offline-002"
    assert await alice.request("typing", envelopes=[notice("bob", "DEV1", online)]) == {}
    await poll_until(lambda: typing_events(bob))
    (pushed,) = typing_events(bob)
    assert pushed["envelope"]["from"] == "alice" and pushed["envelope"]["from_dev"] == "DEV1"
    assert wire.b64decode(pushed["envelope"]["ct"]) == online

    await bob.close()
    await alice.request("typing", envelopes=[notice("bob", "DEV1", offline)])
    bob = bob.again()
    await bob.login(server, upload_keys=False)
    await alice.request("send", envelopes=[{  # a message after it, to know bob is caught up
        "id": "after-the-typing-notice", "to": "bob", "to_dev": "DEV1", "kind": "olm",
        "sid": "c2Vzc2lvbg", "otype": 1, "ct": wire.b64encode(b"a stored message")}])
    await poll_until(lambda: bob.envelopes())
    assert typing_events(bob) == []
    data_dir = server.service.config.data_dir
    for secret in (online, offline):
        assert files_holding(data_dir, secret) == []
        assert files_holding(data_dir, wire.b64encode(secret).encode()) == []
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_typing_notices_are_rate_limited_per_connection(server):
    """A connection may send [limits] typing_burst notices in a row (5 by default); the
    next is refused with rate_limited, naming the limit, while another connection still
    sends its own and the limited one still makes other requests."""
    alice = await logged_in(server, "alice")
    carol = await logged_in(server, "carol")
    await logged_in(server, "bob")
    for _ in range(5):
        await alice.request("typing", envelopes=[notice("bob", "DEV1", b"x" * 16)])
    refused = await expect_error("rate_limited", alice.request(
        "typing", envelopes=[notice("bob", "DEV1", b"x" * 16)]))
    assert "typing notices" in refused.message
    assert await carol.request("typing", envelopes=[notice("bob", "DEV1", b"y" * 16)]) == {}
    await alice.request("ping")
    await cleanup(alice, carol)


@pytest_twisted.ensureDeferred
async def test_an_oversized_or_stored_kind_of_typing_notice_is_refused(server):
    """A typing notice must be a small Olm envelope: a megolm kind or a ciphertext past
    MAX_TYPING_CIPHERTEXT is refused with bad_field, naming the field."""
    alice = await logged_in(server, "alice")
    big = notice("bob", "DEV1", b"z" * (wire.MAX_TYPING_CIPHERTEXT + 1))
    refused = await expect_error("bad_field", alice.request("typing", envelopes=[big]))
    assert "envelopes[0].ct" in refused.message
    refused = await expect_error("bad_field", alice.request(
        "typing", envelopes=[{**notice("bob", "DEV1", b"z"), "kind": "megolm"}]))
    assert "envelopes[0].kind" in refused.message
    await cleanup(alice)


async def client_of(config):
    client = Client(reactor, client_settings.load(config), PASSWORD)
    await client.open()
    return client


@pytest_twisted.ensureDeferred
async def test_typing_shows_on_the_other_side_and_send_typing_no_sends_none(listening_relay,
                                                                          tmp_path):
    """With a session between them (one message each way), alice's client tells bob's that
    she types and stops: bob's client hears start then stop, from alice, 1:1; then that
    she types in the room ops they are both in.  alice with send_typing = no sends no
    typing request at all."""
    port = listening_relay.port
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    bob = write_client_config(str(tmp_path / "clients"), "bob", port)
    for config in (alice, bob):
        assert (await run_cli(config, "register")).code == 0
    assert (await run_cli(alice, "send", "bob", "hi")).code == 0
    assert (await run_cli(bob, "send", "alice", "hello")).code == 0
    assert (await run_cli(alice, "rooms", "create", "ops")).code == 0
    assert (await run_cli(bob, "join", "ops")).code == 0

    bob_client = await client_of(bob)
    heard = []
    bob_client.typing.listeners.append(lambda *notice: heard.append(notice))
    alice_client = await client_of(alice)
    try:
        await alice_client.drain(timeout=30)
        assert await alice_client.typing.send("start", user="bob") == 1
        await poll_until(lambda: heard, timeout=30)
        await alice_client.typing.send("stop", user="bob")
        await alice_client.typing.send("start", room="ops")
        await poll_until(lambda: len(heard) == 3, timeout=30)
        assert heard == [("alice", None, "start"), ("alice", None, "stop"),
                         ("alice", "ops", "start")]
    finally:
        await alice_client.disconnect()

    quiet = write_client_config(str(tmp_path / "quiet"), "alice", port,
                                data_dir=os.path.join(tmp_path, "clients", "alice"),
                                extra_lines=["send_typing = no"])
    alice_client = await client_of(quiet)
    requests = []
    request = alice_client.request
    alice_client.request = lambda op, **fields: (requests.append(op), request(op, **fields))[1]
    try:
        assert await alice_client.typing.send("start", user="bob") == 0
        assert "typing" not in requests
    finally:
        await alice_client.disconnect()
        await bob_client.disconnect()


@pytest_twisted.ensureDeferred
async def test_the_chat_shows_who_types_and_says_when_its_person_types(listening_relay,
                                                                     tmp_path):
    """alice's chat (a real pseudo-terminal) with bob's buffer open: bob's client says he
    types, and alice's status line shows 'bob is typing…' until his stop; alice typing
    half a line makes bob's client hear 'start' from her, and sending it 'stop'."""
    port = listening_relay.port
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    bob = write_client_config(str(tmp_path / "clients"), "bob", port)
    for config in (alice, bob):
        assert (await run_cli(config, "register")).code == 0
    assert (await run_cli(alice, "send", "bob", "hi")).code == 0
    assert (await run_cli(bob, "send", "alice", "hello")).code == 0
    bob_client = await client_of(bob)
    heard = []
    bob_client.typing.listeners.append(lambda *notice: heard.append(notice))
    chat = ChatScreen(alice)
    try:
        await bob_client.drain(timeout=30)
        await chat.wait_for("/help for help")
        chat.line("/query bob")
        await chat.wait_for("<bob?> hello")
        await bob_client.typing.send("start", user="alice")
        await chat.wait_for(lambda c: "bob is typing…" in c.status_row, what="typing")
        await bob_client.typing.send("stop", user="alice")
        await chat.wait_for(lambda c: "typing" not in c.status_row, what="no typing")

        chat.type("half a li")
        await poll_until(lambda: ("alice", None, "start") in heard, timeout=30)
        chat.line("ne")
        await poll_until(lambda: ("alice", None, "stop") in heard, timeout=30)
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
        await bob_client.disconnect()
