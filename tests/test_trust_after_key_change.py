"""One trust decision for 1:1 and room messages: right after a contact's identity key
changes, what they send shows unverified with the changed-key warning, in a room as in 1:1.

Real ``securechat`` processes against an in-process relay over TLS (so the test can play the
relay's database, as a relay that hands out another key would)."""

import json
import sqlite3

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer

from securechat import wire
from tests.processes import run_cli
from tests.support import poll_until_async
from tests.test_client_trust_and_chat import queued, register

CHANGED = "bob's identity key changed"


@pytest.fixture
def server(start_relay):
    return start_relay()


async def ok(config, *args, stdin=None):
    result = await run_cli(config, *args, stdin=stdin)
    assert result.code == 0, (args, result)
    return result


async def received(config):
    """The chat messages ``inbox --json`` shows: ``{text: (room, verified, warning)}``."""
    lines = (await ok(config, "inbox", "--json")).json_lines()
    return {m["text"]: (m["room"], m["verified"], m["warning"])
            for m in lines if m["type"] == "msg"}


async def verify_each_other(server, alice, bob):
    """Both run `securechat verify` and confirm the emoji (as test_client_trust_and_chat)."""
    await ok(alice, "send", "bob", "hello")
    await ok(bob, "inbox")
    started = defer.ensureDeferred(run_cli(alice, "verify", "bob", stdin=b"y\n"))
    await poll_until_async(lambda: queued(server, "bob"), timeout=60)
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)


def hand_out_another_identity_key(server, user):
    """As a relay that lies: give ``user`` a new identity key that signs the same devices."""
    database = sqlite3.connect(server.service.config.database)
    with database:
        (listing,) = database.execute(
            "SELECT device_list FROM device_lists WHERE user_id = ?", (user,)).fetchone()
        impostor = SigningKey.generate()
        signature = impostor.sign(wire.canonical_json(json.loads(listing))).signature
        database.execute("UPDATE device_lists SET signature = ? WHERE user_id = ?",
                         (wire.b64encode(signature), user))
        database.execute("UPDATE accounts SET identity_key = ? WHERE user_id = ?",
                         (wire.b64encode(bytes(impostor.verify_key)), user))
    database.close()


@pytest_twisted.ensureDeferred
async def test_a_verified_contacts_room_message_after_a_key_change_is_unverified_and_warned(
        server, tmp_path):
    """alice verified bob; then the relay hands out another identity key for bob: bob's room
    message that arrives next (its room key known from before) and his 1:1 message after
    it both show unverified, each with the changed-key warning."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await verify_each_other(server, alice, bob)
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    await ok(bob, "say", "ops", "before")
    assert await received(alice) == {"before": ("ops", True, None)}
    await ok(bob, "say", "ops", "after, in the room")
    await ok(bob, "send", "alice", "after, to alice")
    hand_out_another_identity_key(server, "bob")
    shown = await received(alice)
    assert set(shown) == {"after, in the room", "after, to alice"}, shown
    for text, (room, verified, warning) in shown.items():
        assert verified is False and warning and CHANGED in warning, (text, shown)
    assert shown["after, in the room"][0] == "ops" and shown["after, to alice"][0] is None


@pytest_twisted.ensureDeferred
async def test_a_room_message_from_a_reinstalled_contact_carries_the_warning(server, tmp_path):
    """bob reinstalls (a new identity key and device, as test_client_trust_and_chat does it)
    and writes in the room and to alice: alice's inbox shows both unverified, each with the
    changed-key warning, and the text view puts the warning line above each."""
    alice = await register(server, tmp_path, "alice")
    await register(server, tmp_path, "bob")
    await ok(alice, "rooms", "create", "ops")
    await ok(alice, "invite", "ops", "bob")
    await ok(alice, "say", "ops", "hi bob")
    database = sqlite3.connect(server.service.config.database)
    with database:
        for table in ("accounts", "devices", "device_lists", "one_time_keys", "fallback_keys",
                      "queue"):
            database.execute(f"DELETE FROM {table} WHERE user_id = 'bob'")
    database.close()
    new_bob = await register(server, tmp_path, "bob", where="bob-new-phone")
    await ok(new_bob, "say", "ops", "new phone, same bob")
    await ok(new_bob, "send", "alice", "it is me")
    text = (await ok(alice, "inbox")).out.splitlines()
    lines = [line for line in text if "new phone, same bob" in line or "it is me" in line]
    assert len(lines) == 2 and all("(unverified)" in line for line in lines), text
    for line in lines:
        assert CHANGED in text[text.index(line) - 1], text
