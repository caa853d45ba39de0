"""The relay's device model over real TLS: the signed device list decides an account's current
devices; a pending device (keys, in no list) gets no room traffic, is not needed for a send's
coverage and is reached only by its own account's notes; removing a device from the list ends
it at once and for good; the device limit; the link window."""

import time

import pytest
import pytest_twisted

from securechat import wire
from tests.support import (
    ScriptedDevice, cleanup, expect_error, new_envelope_id, poll_until, unicast)
from tests.test_store_contract import raw_sql

MINUTE_MS = 60_000


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[accounts]\nmax_devices = 3\n")


def second_device(first, device):
    """Another device of ``first``'s account: same password and account identity key."""
    return ScriptedDevice(first.user, device, password=first.password, identity=first.identity)


async def publish(by, version, *devices, added=None):
    """``by`` signs, with the account identity key, a list of ``devices`` and publishes it
    (each entry with ``added`` when given: list format 2)."""
    entries = {}
    for d in devices:
        keys = d.device_keys()
        entries[d.device] = {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"],
                             **({"added": added} if added is not None else {})}
    device_list = {"user": by.user, "version": version, "devices": entries,
                   "ts": int(time.time() * 1000)}
    return await by.request("devices.publish", device_list=device_list,
                            signature=by.sign(device_list, by.identity))


async def alice_with_a_list(server):
    """alice's first device, registered, logged in, and alone in her published list."""
    a1 = ScriptedDevice("alice", "A1")
    await a1.register(server)
    await a1.login(server)
    await publish(a1, 1, a1)
    return a1


async def user(server, name, device):
    scripted = ScriptedDevice(name, device)
    await scripted.register(server)
    await scripted.login(server)
    return scripted


def room_message(room):
    return {"room": room, "id": new_envelope_id(), "kind": "megolm", "sid": "c2Vzc2lvbg",
            "ct": wire.b64encode(b"room ciphertext")}


def envelope_ids(device):
    return [e["envelope"]["id"] for e in device.envelopes()]


@pytest_twisted.ensureDeferred
async def test_a_removed_device_cannot_log_in_and_its_queue_is_gone(server):
    """After a list without A2 is published, A2's logins by device key and by password are
    answered device_removed, its queued envelopes are gone, keys.query no longer shows it
    and bob's sends must leave it out."""
    a1 = await alice_with_a_list(server)
    a2 = second_device(a1, "A2")
    await a2.login(server)
    await publish(a1, 2, a1, a2)
    await a2.close()
    bob = await user(server, "bob", "B1")
    await bob.request("send", envelopes=[unicast("alice", "A1"), unicast("alice", "A2")])
    assert await server.service.store.queue_length("alice", "A2") == 1

    answer = await publish(a1, 3, a1)

    assert answer["removed"] == ["A2"]
    assert await server.service.store.queue_length("alice", "A2") == 0
    again = a2.again()
    await again.connect(server)
    await expect_error("device_removed", again.key_login())
    by_password = a2.again()
    await by_password.connect(server)
    await expect_error("device_removed", by_password.password_login())
    queried = await bob.request("keys.query", users=["alice"])
    assert list(queried["users"]["alice"]["devices"]) == ["A1"]
    refused = await expect_error("devices_mismatch", bob.request(
        "send", envelopes=[unicast("alice", "A1"), unicast("alice", "A2")]))
    assert refused.details["extra"] == {"alice": ["A2"]}
    await bob.request("send", envelopes=[unicast("alice", "A1")])
    await cleanup(a1, again, by_password, bob)


@pytest_twisted.ensureDeferred
async def test_a_connected_removed_device_is_told_and_closed_at_once(server):
    """A2, connected when A1 publishes a list without it, gets the device_removed event and
    its connection is closed by the relay."""
    a1 = await alice_with_a_list(server)
    a2 = second_device(a1, "A2")
    await a2.login(server)
    await publish(a1, 2, a1, a2)

    await publish(a1, 3, a1)

    await a2.protocol.closed_d
    removed = [e for e in a2.events if e.get("event") == "device_removed"]
    assert removed and "removed from alice's account" in removed[0]["message"]
    await cleanup(a1)


@pytest_twisted.ensureDeferred
async def test_a_removed_device_cannot_upload_keys_again(server):
    """A removed device's id is refused at keys.upload (device_removed): what a request of
    it racing the removal gets (its connection is closed, so it is asked of the relay's
    key directory directly)."""
    a1 = await alice_with_a_list(server)
    a2 = second_device(a1, "A2")
    await a2.login(server)
    await publish(a1, 2, a1, a2)
    await publish(a1, 3, a1)
    await a2.protocol.closed_d
    keys = server.service.factory.keys
    for fields in ({"device_keys": a2.device_keys(), "signature": a2.sign(a2.device_keys())},
                   {"device_keys": None, "signature": None}):
        with pytest.raises(wire.ProtocolError) as refused:
            await keys.upload("alice", "A2", {
                **fields, "one_time_keys": {"k1": a2.one_time_key("k1")}, "fallback_key": None})
        assert refused.value.code == "device_removed"
    await cleanup(a1)


@pytest_twisted.ensureDeferred
async def test_a_pending_device_gets_no_room_message_and_is_not_needed_for_coverage(server):
    """A2 has keys but is in no list: bob's room message reaches A1 and not A2, bob's 1:1
    send covering only A1 is accepted, room.members and keys.query show only A1 (A1, and
    no one else, sees A2 under "pending"), and bob cannot claim A2's keys."""
    a1 = await alice_with_a_list(server)
    bob = await user(server, "bob", "B1")
    await bob.request("room.create", room="ops")
    await a1.request("room.join", room="ops")
    a2 = second_device(a1, "A2")
    await a2.login(server, otks=1)

    members = await bob.request("room.members", room="ops")
    assert members["members"]["alice"] == ["A1"]
    sent = await bob.request("room.send", **room_message("ops"))
    assert sent["recipients"] == 1
    await poll_until(lambda: sent["accepted"][0] in envelope_ids(a1))
    note = unicast("alice", "A2")
    await a1.request("send", envelopes=[note])  # arrives after the room message would have
    await poll_until(lambda: note["id"] in envelope_ids(a2))
    assert sent["accepted"][0] not in envelope_ids(a2)
    assert envelope_ids(a2) == [note["id"]]

    await bob.request("send", envelopes=[unicast("alice", "A1")])
    seen_by_bob = (await bob.request("keys.query", users=["alice"]))["users"]["alice"]
    assert list(seen_by_bob["devices"]) == ["A1"] and "pending" not in seen_by_bob
    seen_by_a1 = (await a1.request("keys.query", users=["alice"]))["users"]["alice"]
    assert list(seen_by_a1["pending"]) == ["A2"]
    assert seen_by_a1["pending"]["A2"]["device_keys"] == a2.device_keys()
    await expect_error("unknown_device", bob.request("keys.claim", devices={"alice": ["A2"]}))
    claimed = await a1.request("keys.claim", devices={"alice": ["A2"]})
    assert list(claimed["keys"]["alice"]) == ["A2"]
    await cleanup(a1, a2, bob)


@pytest_twisted.ensureDeferred
async def test_own_account_notes_reach_a_pending_device_both_ways(server):
    """A send addressed only to the sender's own devices may name a pending device (and
    need not cover the others); the pending device answers the same way; naming a device
    the account does not have is refused with devices_mismatch."""
    a1 = await alice_with_a_list(server)
    a3 = second_device(a1, "A3")
    await a3.login(server)
    await publish(a1, 2, a1, a3)
    a2 = second_device(a1, "A2")
    await a2.login(server)

    to_pending = unicast("alice", "A2")
    assert (await a1.request("send", envelopes=[to_pending]))["accepted"] == [to_pending["id"]]
    await poll_until(lambda: to_pending["id"] in envelope_ids(a2))
    reply = unicast("alice", "A1")
    await a2.request("send", envelopes=[reply])
    await poll_until(lambda: reply["id"] in envelope_ids(a1))
    refused = await expect_error("devices_mismatch", a1.request(
        "send", envelopes=[unicast("alice", "NOPE")]))
    assert refused.details["extra"] == {"alice": ["NOPE"]}
    await cleanup(a1, a2, a3)


@pytest_twisted.ensureDeferred
async def test_a_pending_device_taken_into_the_list_gets_room_messages_at_once(server):
    """A2, online and pending, becomes current when a list (format 2, with ``added``) names
    it: bob's next room message reaches it live and bob's sends must now cover it."""
    a1 = await alice_with_a_list(server)
    bob = await user(server, "bob", "B1")
    await bob.request("room.create", room="ops")
    await a1.request("room.join", room="ops")
    a2 = second_device(a1, "A2")
    await a2.login(server)

    answer = await publish(a1, 2, a1, a2, added=int(time.time() * 1000))

    assert answer["added"] == ["A2"]
    sent = await bob.request("room.send", **room_message("ops"))
    assert sent["recipients"] == 2
    await poll_until(lambda: sent["accepted"][0] in envelope_ids(a2))
    refused = await expect_error("devices_mismatch", bob.request(
        "send", envelopes=[unicast("alice", "A1")]))
    assert refused.details["missing"] == {"alice": ["A2"]}
    await cleanup(a1, a2, bob)


@pytest_twisted.ensureDeferred
async def test_more_devices_than_max_devices_are_refused(server):
    """With max_devices = 3: a list of 4 devices is refused too_many_devices; an account
    with 4 devices with keys (3 listed, 1 pending) cannot key a fifth."""
    a1 = await alice_with_a_list(server)
    others = [second_device(a1, f"A{n}") for n in (2, 3, 4)]
    for other in others:
        await other.login(server)
    await expect_error("too_many_devices", publish(a1, 2, a1, *others))
    await publish(a1, 2, a1, *others[:2])
    a5 = second_device(a1, "A5")
    await a5.connect(server)
    await a5.password_login()
    refused = await expect_error("too_many_devices", a5.request(
        "keys.upload", device_keys=a5.device_keys(), signature=a5.sign(a5.device_keys()),
        one_time_keys=None, fallback_key=None))
    assert "remove one" in refused.message
    await cleanup(a1, a5, *others)


@pytest_twisted.ensureDeferred
async def test_a_pending_device_past_the_link_window_is_refused_and_then_dropped(server):
    """A pending device whose keys are older than the link window cannot log in
    (device_not_linked) and the next list without it drops it, while a younger pending
    device is kept."""
    a1 = await alice_with_a_list(server)
    old, young = second_device(a1, "OLD"), second_device(a1, "NEW")
    for pending in (old, young):
        await pending.login(server)
        await pending.close()
    database = server.service.config.database
    raw_sql(database, "UPDATE devices SET created = created - ? WHERE device_id = 'OLD'",
            (10 * MINUTE_MS + 1000,))

    late = old.again()
    await late.connect(server)
    refused = await expect_error("device_not_linked", late.key_login())
    assert "10 minutes" in refused.message
    in_time = young.again()
    await in_time.connect(server)
    await in_time.key_login()

    answer = await publish(a1, 2, a1)

    assert answer["dropped"] == ["OLD"] and answer["removed"] == []
    pending = (await a1.request("keys.query", users=["alice"]))["users"]["alice"]["pending"]
    assert list(pending) == ["NEW"]
    await cleanup(a1, late, in_time)
