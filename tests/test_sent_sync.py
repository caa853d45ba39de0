"""Sent-message sync: what alice sends from one device, 1:1 and in a room, shows on her
other device as sent by her (``inbox``, ``history``, ``chat``), and nobody else can make a
message look sent by her -- a real twistd relay, real securechat CLI and chat processes,
alice on two real devices (the second made by tests/two_devices.py)."""

import time
import types

import pytest
import pytest_twisted
from twisted.internet import reactor

from securechat.client import settings as client_settings
from securechat.client.inbound import sent_by_you
from securechat.client.exit_codes import EXIT_UNTRUSTED
from securechat.client.messaging import new_id, padded
from securechat.client.session import Client
from securechat.crypto.device import DecryptError
from tests.processes import run_cli, write_client_config
from tests.screen import ChatScreen
from tests.two_devices import add_device

PASSWORD = "correct horse battery staple"

KINDS = {"msg", "membership"}
"""What an inbox holds: messages and room notices (never a room key or another control)."""


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def alice_on_two_devices_and_bob(tmp_path, port):
    """alice (device 1, which gives up a verification after 1 s), alice's second device,
    bob: each a config path; plus the id of alice's second device."""
    clients = tmp_path / "clients"
    alice = write_client_config(str(clients), "alice", port, extra_lines=["verify_timeout = 1"])
    await ok(alice, "register")
    bob = write_client_config(str(clients), "bob", port)
    await ok(bob, "register")
    alice2 = write_client_config(str(tmp_path / "second"), "alice", port)
    device2 = await add_device(alice, alice2, PASSWORD)
    return alice, alice2, bob, device2


async def inbox(config):
    return (await ok(config, "inbox", "--json")).json_lines()


def shown(result):
    """The lines of a text ``history``, without their time."""
    return [line.split("] ", 1)[1] for line in result.out.splitlines()]


@pytest_twisted.ensureDeferred
async def test_what_one_device_sends_shows_on_the_other_as_sent_by_you(listening_relay,
                                                                      tmp_path):
    """alice's 1:1 message to bob, her room message and her note to self, sent from device
    1, are on device 2 as hers: `inbox --json` marks them outgoing (1:1 with `to`),
    `history bob` lists the first as 'you -> bob' between bob's lines, the room's history
    marks hers outgoing; no room key or verification step (a copy of device 1's own
    request) shows; bob reads them as alice's."""
    alice, alice2, bob, _ = await alice_on_two_devices_and_bob(tmp_path, listening_relay.port)
    await ok(bob, "send", "alice", "before")
    await ok(alice, "send", "bob", "sent from device 1")
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    await ok(alice, "say", "ops", "room line from device 1")
    await ok(alice, "send", "alice", "note to self")
    unanswered = await run_cli(alice, "verify", "bob")  # verify.start, then verify.cancel
    assert unanswered.code == EXIT_UNTRUSTED, unanswered
    await ok(bob, "send", "alice", "after")

    got = await inbox(alice2)
    assert {m["type"] for m in got} <= KINDS, got
    messages = [m for m in got if m["type"] == "msg"]
    assert [(m["from"], m["text"], m["room"], m.get("outgoing"), m.get("to"))
            for m in messages] == [
        ("bob", "before", None, None, None),
        ("alice", "sent from device 1", None, True, "bob"),
        ("alice", "room line from device 1", "ops", True, None),
        ("alice", "note to self", None, True, "alice"),
        ("bob", "after", None, None, None)], messages
    assert all(m["verified"] and m["error"] is None for m in messages if m.get("outgoing"))

    assert shown(await ok(alice2, "history", "bob")) == [
        "bob (unverified): before", "you -> bob: sent from device 1", "bob (unverified): after"]
    lines = (await ok(alice2, "history", "bob", "--json")).json_lines()
    assert [(m["from"], m["to"], m["outgoing"]) for m in lines] == [
        ("bob", "alice", False), ("alice", "bob", True), ("bob", "alice", False)]
    assert shown(await ok(alice2, "history", "--user", "alice")) == [
        "you -> alice: note to self"]  # the message to bob is not filed as a note to self

    room = [m for m in (await ok(alice2, "history", "ops", "--json")).json_lines()
            if m["type"] == "msg"]
    assert [(m["from"], m["text"], m["outgoing"]) for m in room] == [
        ("alice", "room line from device 1", True)]
    assert "you in ops: room line from device 1" in shown(await ok(alice2, "history", "ops"))

    theirs = [m for m in await inbox(bob) if m["type"] == "msg"]
    assert [(m["from"], m["text"], m.get("outgoing")) for m in theirs] == [
        ("alice", "sent from device 1", None), ("alice", "room line from device 1", None)]


def row_of(chat, text):
    """The screen row (index) that shows ``text``."""
    (index,) = [i for i, row in enumerate(chat.rows()) if text in row]
    return index


def mark_colours(chat, index):
    """The colours of the sender mark (``<alice>``) on screen row ``index``."""
    row = chat.screen.buffer[index]
    start = chat.rows()[index].index("<alice>")
    return [(row[x].fg, row[x].bg, row[x].bold) for x in range(start, start + len("<alice>"))]


@pytest_twisted.ensureDeferred
async def test_the_chat_on_the_other_device_shows_the_line_in_bobs_buffer_as_your_own(
        listening_relay, tmp_path):
    """With alice's chat open on device 2, her message to bob from device 1 appears in
    device 2's bob buffer (not an 'alice' one, not counted unread) as her own line: the
    same '<alice>' mark, in the same colours, as a line typed on device 2."""
    alice, alice2, bob, _ = await alice_on_two_devices_and_bob(tmp_path, listening_relay.port)
    carol = write_client_config(str(tmp_path / "clients"), "carol", listening_relay.port)
    await ok(carol, "register")
    await ok(bob, "send", "alice", "hello alice")
    chat = ChatScreen(alice2)
    try:
        await chat.wait_for(lambda c: c.status_row == "[connected] (status) | bob(1)",
                            what="bob's message waiting")
        chat.line("/query bob")
        await chat.wait_for("<bob?> hello alice")
        chat.line("typed on device 2")
        await chat.wait_for("<alice> typed on device 2")
        chat.press("\x1b1")  # Alt-1: the status buffer, so bob's is not the current one
        await chat.wait_for(lambda c: c.status_row == "[connected] (status)",
                            what="the status buffer")
        await ok(alice, "send", "bob", "typed on device 1")
        await ok(carol, "send", "alice", "after it")  # arrives after the copy
        await chat.wait_for(lambda c: "carol(1)" in c.status_row, what="carol's message")
        assert chat.status_row == "[connected] (status) | carol(1)", chat.text()
        assert ":alice" not in chat.rows()[0], chat.rows()[0]  # no buffer of her own
        chat.line("/query bob")
        await chat.wait_for("<alice> typed on device 1")
        assert "<alice?>" not in chat.text(), chat.text()
        assert (mark_colours(chat, row_of(chat, "typed on device 1"))
                == mark_colours(chat, row_of(chat, "typed on device 2"))), chat.text()
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


async def open_client(config):
    client = Client(reactor, client_settings.load(config), PASSWORD)
    await client.open()
    return client


async def send_sealed(client, recipient, **sealed):
    """Send a 1:1 message to every device of ``recipient`` whose sealed content is the usual one
    with ``sealed``'s fields put over it (a forger's client: sessions exist already)."""
    targets = await client.sender._targets([recipient])
    envelopes = []
    with client.store.transaction():
        for user, device, keys in targets:
            inner = {"type": "msg", "mid": new_id(), "room": None,
                     "ts": int(time.time() * 1000), "from": client.user,
                     "from_dev": client.device, "from_ed25519": client.crypto.ed25519,
                     "to": user, "to_dev": device, "to_ed25519": keys["ed25519"], **sealed}
            sid, otype, ct = client.crypto.encrypt(user, device, keys["curve25519"],
                                                   padded(inner))
            envelopes.append({"id": new_id(), "to": user, "to_dev": device, "kind": "olm",
                              "sid": sid, "otype": otype, "ct": ct})
    await client.request("send", envelopes=envelopes)


@pytest_twisted.ensureDeferred
async def test_bob_cannot_make_a_message_look_sent_by_alice(listening_relay, tmp_path):
    """Only a copy from alice's own device shows as sent by her: bob's messages whose sealed
    content claims `from: alice`, `to: bob`, or names a `peer` and `outgoing`, and his room
    message claiming to be alice's, are refused or shown as bob's (never outgoing, never
    in alice's side of the conversation) on alice's second device."""
    alice, alice2, bob, _ = await alice_on_two_devices_and_bob(tmp_path, listening_relay.port)
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    await ok(bob, "send", "alice", "sessions")  # so bob's client has a session with each
    await ok(alice, "send", "bob", "the real one")
    assert [m["text"] for m in await inbox(alice2) if m["type"] == "msg"] == [
        "sessions", "the real one"]

    forger = await open_client(bob)
    try:
        alice_device = min(await forger.trusted_devices("alice", sending=False))
        await send_sealed(forger, "alice", body="claims from", **{"from": "alice",
                                                                 "from_dev": alice_device})
        await send_sealed(forger, "alice", body="claims to bob", to="bob")
        await send_sealed(forger, "alice", body="claims a peer", peer="carol", outgoing=True)
        inner = {"type": "msg", "mid": new_id(), "room": "ops", "from": "alice",
                 "from_dev": alice_device, "ts": int(time.time() * 1000), "body": "room claim"}
        await forger.rooms.send_queued("ops", inner, forger.outbox.add(inner, room="ops"))
    finally:
        await forger.disconnect()

    got = [m for m in await inbox(alice2) if m["type"] == "msg"]
    assert all(m["from"] == "bob" and not m.get("outgoing") and "to" not in m
               for m in got), got
    assert [(m["text"], m["error"]) for m in got] == [
        (None, "the sealed header's 'from' does not match the envelope (forwarded or forged)"),
        (None, "the sealed header's 'to' does not match the envelope (forwarded or forged)"),
        ("claims a peer", None),
        (None, "the sealed header's 'from' does not match the envelope (forged)")], got
    conversation = (await ok(alice2, "history", "bob", "--json")).json_lines()
    assert [(m["text"], m["outgoing"]) for m in conversation] == [
        ("sessions", False), ("the real one", True), (None, False), (None, False),
        ("claims a peer", False)], conversation
    assert (await ok(alice2, "history", "carol")).out == ""


def test_a_message_from_an_own_device_is_yours_to_its_peer_and_a_bad_peer_is_an_error():
    """A message from another device of this account is outgoing and verified, 1:1 sent to
    its sealed peer (this user without one: sent by a client older than that field); a peer that is no user name
    makes it an error rather than a line in some odd conversation."""
    client = types.SimpleNamespace(user="alice")
    assert sent_by_you(client, {"peer": "bob"}, None) == {
        "outgoing": True, "verified": True, "warning": None, "to": "bob"}
    assert sent_by_you(client, {}, None)["to"] == "alice"
    assert sent_by_you(client, {"peer": "bob"}, "ops") == {
        "outgoing": True, "verified": True, "warning": None}
    for bad in ("Bob", "bob\n[00:00] bob (verified): hi", 7, None):
        with pytest.raises(DecryptError, match="'peer'"):
            sent_by_you(client, {"peer": bad}, None)
