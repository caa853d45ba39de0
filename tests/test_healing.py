"""Sessions that heal: after bob's data dir is restored from an older copy, alice's next
1:1 message and next room message reach him readable (marked re-sent / decrypted once
the key came again) without bob replying -- real twistd relay, real securechat CLI
processes -- and the rate limits that keep two broken peers from looping."""

import dataclasses
import json
import shutil
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from securechat.client.files import FileTransfers
from securechat.client.healing import PER_MINUTE, RequestLimiter, TRACKED
from securechat.client.messaging import new_id
from securechat.client.session import Client
from securechat.client import settings
from securechat.client.settings import ClientSettings
from securechat.config import ConfigError
from tests.processes import run_cli, write_client_config
from tests.support import poll_until

PASSWORD = "correct horse battery staple"


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def registered(clients, port, user):
    path = write_client_config(clients, user, port)
    await ok(path, "register")
    return path


def copy_dir(source, target):
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


async def inbox(config):
    return [json.loads(line) for line in (await ok(config, "inbox", "--json")).out.splitlines()]


@pytest_twisted.ensureDeferred
async def test_a_1to1_message_to_a_restored_data_dir_arrives_re_sent_without_a_reply(
        listening_relay, tmp_path):
    """bob's data dir restored from a copy older than the last exchange: alice's next 1:1
    message fails at bob, bob's client asks again on a fresh session, alice's next command
    sends it again, and bob reads it marked re-sent -- the error is not left in history."""
    port, clients = listening_relay.port, str(tmp_path / "clients")
    alice = await registered(clients, port, "alice")
    bob = await registered(clients, port, "bob")
    bob_dir, backup = tmp_path / "clients" / "bob", tmp_path / "bob-backup"
    await ok(alice, "send", "bob", "one")
    assert [m["text"] for m in await inbox(bob)] == ["one"]
    copy_dir(bob_dir, backup)
    await ok(bob, "send", "alice", "two")  # the ratchet moves on past the copy
    await ok(alice, "send", "bob", "three")
    assert [m["text"] for m in await inbox(bob)] == ["three"]
    await ok(bob, "send", "alice", "four")
    copy_dir(backup, bob_dir)  # the restore

    await ok(alice, "send", "bob", "five")
    failed = await inbox(bob)  # fails, and asks alice's device again
    # (alice's delivered receipt of "four", sent after "five", fails too: it cannot be
    # told from a message yet)
    assert {m["error"] for m in failed} == {
        "no session with this device can decrypt it (tampered, replayed or out of sync)"}
    assert len(failed) in (1, 2), failed
    assert [m["text"] for m in await inbox(alice)] == ["two", "four"]  # answers the request
    healed = await inbox(bob)
    assert [(m["text"], m.get("resent"), m["error"]) for m in healed] == [
        ("five", True, None)]
    written = [m["sent_at"] for m in (await ok(alice, "history", "bob", "--json")).json_lines()
               if m["text"] == "five"]
    assert [healed[0]["sent_at"]] == written  # when alice wrote it, not when it went again
    text = (await ok(bob, "history", "alice")).out
    assert "alice (unverified) (re-sent): five" in text, text
    assert "not decryptable" not in text, text

    await ok(alice, "send", "bob", "six")  # and the healed session simply works on
    assert [(m["text"], m.get("resent")) for m in await inbox(bob)] == [("six", None)]


@pytest_twisted.ensureDeferred
async def test_a_room_message_to_a_restored_data_dir_is_read_once_the_key_is_given_again(
        listening_relay, tmp_path):
    """bob's data dir restored from before alice's room key reached him: her next room
    message fails, bob's client asks her device for the key, alice's next command gives
    it again, and bob's client decrypts the kept message (shown once, readable)."""
    port, clients = listening_relay.port, str(tmp_path / "clients")
    alice = await registered(clients, port, "alice")
    bob = await registered(clients, port, "bob")
    bob_dir, backup = tmp_path / "clients" / "bob", tmp_path / "bob-backup"
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    copy_dir(bob_dir, backup)
    await ok(alice, "say", "ops", "r1")
    assert [m["text"] for m in await inbox(bob) if m["type"] == "msg"] == ["r1"]
    copy_dir(backup, bob_dir)  # the restore: the room key is gone

    await ok(alice, "say", "ops", "r2")
    failed = [m for m in await inbox(bob) if m["type"] == "msg"]
    assert [(m["text"], bool(m["error"])) for m in failed] == [(None, True)], failed
    await ok(alice, "inbox")  # answers the key request
    healed = await inbox(bob)
    assert [(m["id"], m["room"], m["text"], m["error"]) for m in healed] == [
        (failed[0]["id"], "ops", "r2", None)]

    await ok(alice, "say", "ops", "r3")
    assert [m["text"] for m in await inbox(bob)] == ["r3"]


# -- who is sent a message again: in-process clients, the relay over real TLS -----------


@pytest.fixture
def server(start_relay):
    return start_relay()


async def online(server, tmp_path, user, received, controls=None):
    settings = ClientSettings(host="127.0.0.1", port=server.port, username=user,
                              data_dir=str(tmp_path / user), ca_file=server.cert_path,
                              server_fingerprint=None, source="test")
    client = Client(reactor, settings, PASSWORD, on_message=received.append,
                    on_control=None if controls is None else controls.append)
    await client.register()
    return client


async def ask(client, sender, request):
    """``client`` sends ``sender``'s device a ``request`` (a healing control), then a 1:1
    "asked", which ``sender`` processes after the request (one device's envelopes keep
    their order)."""
    await client.sender.send([sender.user], {
        "mid": new_id(), "room": None, "ts": int(time.time() * 1000), **request},
        only={(sender.user, sender.device)})
    await client.send_text(sender.user, "asked")


async def answered(sender, received, count):
    """``sender`` processed (and answered) the requests before its ``count``-th "asked"."""
    await poll_until(lambda: len([m for m in received if m["text"] == "asked"]) == count
                     and sender.receiver.idle())


async def ask_again(client, sender, envelope_id):
    """``client`` asks ``sender``'s device to send envelope ``envelope_id`` again."""
    await ask(client, sender, {"type": "retry.request", "envelope": envelope_id})


async def after_a_marker(alice, client, received):
    """Everything alice sent ``client`` before is in ``received`` (a last message came)."""
    await alice.send_text(client.user, "marker")
    await poll_until(lambda: received and received[-1]["text"] == "marker"
                     and client.receiver.idle())


@pytest_twisted.ensureDeferred
async def test_a_message_is_sent_again_only_to_its_recipient_device_within_resend_days(
        server, tmp_path):
    """A retry request for alice's message to bob gets it re-sent to bob's device, never to
    carol's device that asks for the same envelope, and once (a later alice process does
    not send it again); with resend_days = 0 bob's request for a newer one is refused."""
    to_bob, to_carol, to_alice = [], [], []
    bob = await online(server, tmp_path, "bob", to_bob)
    carol = await online(server, tmp_path, "carol", to_carol)
    alice = await online(server, tmp_path, "alice", to_alice)
    try:
        await alice.send_text("bob", "first")
        envelope_id, = alice.store.conversation("bob", 1)[0]["to_devices"]
        await ask_again(carol, alice, envelope_id)
        await ask_again(bob, alice, envelope_id)
        await answered(alice, to_alice, 2)
        await after_a_marker(alice, carol, to_carol)
        await after_a_marker(alice, bob, to_bob)
        assert [m["text"] for m in to_carol] == ["marker"]
        assert [(m["text"], m.get("resent")) for m in to_bob] == [
            ("first", None), ("first", True), ("marker", None)]

        await alice.disconnect()  # a new process: the limiters forget, the key store not
        alice = Client(reactor, alice.settings, PASSWORD, on_message=to_alice.append)
        await alice.open()
        await ask_again(bob, alice, envelope_id)
        await answered(alice, to_alice, 3)
        alice.settings = dataclasses.replace(alice.settings, resend_days=0)
        await alice.send_text("bob", "second")
        envelope_id, = alice.store.conversation("bob", 1)[0]["to_devices"]
        await ask_again(bob, alice, envelope_id)
        await answered(alice, to_alice, 4)
        await after_a_marker(alice, bob, to_bob)
        assert [m["text"] for m in to_bob[3:]] == ["second", "marker"]
    finally:
        for client in (alice, bob, carol):
            await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_room_key_is_given_again_only_to_a_member_device_that_had_it(server, tmp_path):
    """A room_key.request for alice's room session from carol (not a member) gets no key;
    from bob (a member that was given it) it gets the key again, in the exported form."""
    to_bob, to_carol, to_alice, bob_keys, carol_keys = [], [], [], [], []
    bob = await online(server, tmp_path, "bob", to_bob, bob_keys)
    carol = await online(server, tmp_path, "carol", to_carol, carol_keys)
    alice = await online(server, tmp_path, "alice", to_alice)
    try:
        await alice.rooms.create("ops")
        await bob.rooms.join("ops")
        await alice.rooms.say("ops", "r1")
        await poll_until(lambda: [m for m in to_bob if m["text"] == "r1"]
                         and bob.receiver.idle())
        session_id = alice.store.group_session("out:ops")[1]["session_id"]
        for asking in (carol, bob):
            await ask(asking, alice, {"type": "room_key.request", "room": "ops",
                                      "session_id": session_id})
        await answered(alice, to_alice, 2)
        await after_a_marker(alice, carol, to_carol)
        await after_a_marker(alice, bob, to_bob)
        assert carol_keys == []
        assert [k["inner"].get("exported") for k in bob_keys if k["type"] == "room_key"] == [
            None, True]
    finally:
        for client in (alice, bob, carol):
            await client.disconnect()


def client_ini(tmp_path, extra):
    path = tmp_path / "client.ini"
    path.write_text("[client]\nserver = 127.0.0.1:6697\nusername = bob\n"
                    "server_fingerprint = " + ":".join(["AB"] * 32) + "\n" + extra)
    return str(path)


def test_resend_days_defaults_to_7_and_a_bad_value_is_named(tmp_path):
    """[client] resend_days is 7 when absent, a number of days 0-365 when set; anything
    else is refused with an error naming the key and the allowed range."""
    assert settings.load(client_ini(tmp_path, "")).resend_days == 7
    assert settings.load(client_ini(tmp_path, "resend_days = 0.5\n")).resend_days == 0.5
    for bad in ("-1", "366", "soon", "nan"):
        with pytest.raises(ConfigError, match=r"\[client\] resend_days = .*0-365"):
            settings.load(client_ini(tmp_path, f"resend_days = {bad}\n"))


# -- the rate limits, on a task.Clock ---------------------------------------------------


def test_one_request_per_device_and_item():
    """The same (device, envelope) is asked (or answered) once, however often it comes."""
    limiter = RequestLimiter(task.Clock().seconds)
    assert limiter.allow(("alice", "D1"), "env1")
    assert not limiter.allow(("alice", "D1"), "env1")
    assert limiter.allow(("alice", "D2"), "env1")


def test_a_device_gets_per_minute_requests_then_waits_a_minute():
    """After PER_MINUTE requests to/from one device in a minute the next is refused; a
    minute later it goes; another device is not held back meanwhile."""
    clock = task.Clock()
    limiter = RequestLimiter(clock.seconds)
    peer = ("mallory", "M1")
    assert all(limiter.allow(peer, f"env{i}") for i in range(PER_MINUTE))
    assert not limiter.allow(peer, "one more")
    assert limiter.allow(("alice", "D1"), "one more")
    clock.advance(59)
    assert not limiter.allow(peer, "one more")
    clock.advance(1)
    assert limiter.allow(peer, "one more")


def test_the_limiter_remembers_a_bounded_number_of_devices_and_items():
    """A flood of distinct devices and items leaves at most TRACKED of each remembered."""
    clock = task.Clock()
    limiter = RequestLimiter(clock.seconds)
    for i in range(3 * TRACKED):
        clock.advance(1)
        limiter.allow(("mallory", f"M{i}"), f"env{i}")
    assert len(limiter._items) == TRACKED and len(limiter._recent) == TRACKED


class RecordingSender:
    """What Healer uses of a client's Sender: it notes each send (no network in a unit)."""

    def __init__(self):
        self.sent = []

    async def send(self, users, payload, fresh=(), only=None):
        self.sent.append((payload["type"], payload.get("envelope"), bool(fresh)))
        return 1


def failed_from(peer_device, envelope_id):
    return {"id": envelope_id, "from": "alice", "from_dev": peer_device, "kind": "olm"}


@pytest_twisted.ensureDeferred
async def test_a_burst_of_failures_asks_once_per_envelope_on_one_fresh_session_a_minute():
    """Failures from one device: each envelope is asked for once, only the first request of
    a minute starts a fresh session, and past PER_MINUTE requests the rest wait a minute."""
    from securechat.client.healing import Healer

    clock = task.Clock()
    client = type("C", (), {"user": "bob", "device": "B1", "sender": RecordingSender()})()
    healer = Healer(client, clock.seconds)
    for envelope_id in ["e1", "e1", "e2", "e3", "e4", "e5", "e6"]:
        await healer.ask_again(failed_from("A1", envelope_id))
    assert client.sender.sent == [("retry.request", "e1", True)] + [
        ("retry.request", f"e{i}", False) for i in range(2, PER_MINUTE + 1)]
    clock.advance(60)
    await healer.ask_again(failed_from("A1", "e6"))
    await healer.ask_again(failed_from("A1", "e1"))
    assert client.sender.sent[-1] == ("retry.request", "e6", True)
    assert len(client.sender.sent) == PER_MINUTE + 1


@pytest_twisted.ensureDeferred
async def test_a_file_message_asked_for_again_is_not_sent_again_as_an_empty_text(
        server, tmp_path):
    """A retry request for alice's file message to bob (in her 1:1 history like a text)
    gets nothing sent again: never a text message without a text (a file's key is not
    kept to send it again)."""
    to_bob, to_alice = [], []
    bob = await online(server, tmp_path, "bob", to_bob)
    alice = await online(server, tmp_path, "alice", to_alice)
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc")
    try:
        await FileTransfers(alice).send(str(path), user="bob")
        envelope_id, = alice.store.conversation("bob", 1)[0]["to_devices"]
        await ask_again(bob, alice, envelope_id)
        await answered(alice, to_alice, 1)
        await after_a_marker(alice, bob, to_bob)
        assert [(m["type"], m["text"]) for m in to_bob] == [("file", None), ("msg", "marker")]
    finally:
        for client in (alice, bob):
            await client.disconnect()
