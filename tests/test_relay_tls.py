"""Integration tests: a real relay on 127.0.0.1, real TLS connections, the SQLite store."""

import secrets

import pytest
import pytest_twisted

from securechat import wire
from tests.support import ScriptedDevice, cleanup, expect_error, new_envelope_id, poll_until
from tests.support import unicast


@pytest.fixture
def server(start_relay):
    return start_relay()


async def registered(server, *names, device="DEV1"):
    devices = []
    for name in names:
        dev = ScriptedDevice(name, device)
        await dev.register(server)
        await dev.login(server, otks=3)
        devices.append(dev)
    return devices


@pytest_twisted.ensureDeferred
async def test_register_login_and_wrong_password(server):
    """A registered device logs in with its password key; a wrong password and an unknown
    user fail alike."""
    alice = ScriptedDevice("alice")
    await alice.register(server)
    result = await alice.login(server, upload_keys=False)
    assert result["user"] == "alice" and result["queued"] == 0
    errors = []
    for user in ("alice", "nobody"):
        intruder = ScriptedDevice(user, "X")
        await intruder.connect(server)
        errors.append(await expect_error("auth_failed", intruder.password_login()))
        await intruder.close()
    assert errors[0].message == errors[1].message
    await intruder.connect(server)
    await expect_error("user_exists", intruder.request(
        "register", user="alice", password_key=intruder.password_key(),
        identity_key=wire.b64encode(bytes(intruder.identity.verify_key))))
    await cleanup(alice, intruder)


@pytest_twisted.ensureDeferred
async def test_keys_claimed_in_order_once_then_fallback(server):
    """One-time keys are claimed in upload order, once each, then the flagged fallback key."""
    alice, bob = await registered(server, "alice", "bob")
    kids = []
    for _ in range(4):
        result = await alice.request("keys.claim", devices={"bob": ["DEV1"]})
        key = result["keys"]["bob"]["DEV1"]
        kids.append((key["kid"], key["fallback"]))
    assert kids == [("k0000", False), ("k0001", False), ("k0002", False), ("fb1", True)]
    assert (await bob.request("keys.count"))["otk_count"] == 0
    await expect_error("unknown_user", alice.request("keys.claim", devices={"mallory": ["D"]}))
    await expect_error("unknown_device", alice.request("keys.claim", devices={"bob": ["NOPE"]}))
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_unsigned_or_forged_keys_are_refused(server):
    """Keys whose signatures do not verify are refused; a re-upload of the same key is idempotent."""
    (alice,) = await registered(server, "alice")
    forged = alice.one_time_key("kX")
    forged["signature"] = alice.one_time_key("kY")["signature"]
    await expect_error("bad_signature", alice.request("keys.upload", one_time_keys={"kX": forged}))
    good = alice.one_time_key("kZ")
    first = await alice.request("keys.upload", one_time_keys={"kZ": good})
    again = await alice.request("keys.upload", one_time_keys={"kZ": good})
    assert first["otk_count"] == again["otk_count"] == 4
    await expect_error("key_conflict", alice.request(
        "keys.upload", one_time_keys={"kZ": alice.one_time_key("kZ")}))
    await cleanup(alice)


@pytest_twisted.ensureDeferred
async def test_device_list_signed_by_identity_key(server):
    """A device list signed by the identity key is published and queried; a forged one is not."""
    (alice,) = await registered(server, "alice")
    keys = alice.device_keys()
    listing = {"user": "alice", "version": 1, "ts": 1,
               "devices": {"DEV1": {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"]}}}
    await expect_error("bad_signature", alice.request(
        "devices.publish", device_list=listing, signature=alice.sign(listing)))
    await alice.request("devices.publish", device_list=listing,
                        signature=alice.sign(listing, alice.identity))
    await expect_error("stale_version", alice.request(
        "devices.publish", device_list=listing, signature=alice.sign(listing, alice.identity)))
    result = await alice.request("keys.query", users=["alice"])
    assert result["users"]["alice"]["device_list"] == listing
    assert result["users"]["alice"]["devices"]["DEV1"]["device_keys"] == keys
    await cleanup(alice)


@pytest_twisted.ensureDeferred
async def test_unicast_online_and_offline_in_order(server):
    """An online device gets envelopes pushed; an offline one gets its queue on login, in order."""
    alice, bob = await registered(server, "alice", "bob")
    env = unicast("bob", "DEV1", b"hello")
    assert (await alice.request("send", envelopes=[env]))["accepted"] == [env["id"]]
    await poll_until(lambda: len(bob.envelopes()) == 1)
    pushed = bob.envelopes()[0]
    assert pushed["envelope"]["ct"] == env["ct"] and pushed["envelope"]["from"] == "alice"
    assert pushed["seq"] == 1
    await bob.request("ack", ids=[env["id"]])
    await bob.close()
    ids = [unicast("bob", "DEV1", b"m%d" % i) for i in range(5)]
    for e in ids:
        await alice.request("send", envelopes=[e])
    bob2 = bob.again()
    result = await bob2.login(server, upload_keys=False)
    assert result["queued"] == 5
    await poll_until(lambda: len(bob2.envelopes()) == 5)
    assert [e["envelope"]["id"] for e in bob2.envelopes()] == [e["id"] for e in ids]
    # Frames number the pushes of each connection (the store's numbers are shared by
    # every device and would tell bob how much everybody sends).
    assert [e["seq"] for e in bob2.envelopes()] == [1, 2, 3, 4, 5]
    assert (await bob2.request("ack", ids=[e["id"] for e in ids]))["removed"] == 5
    await bob2.close()
    bob3 = bob.again()
    assert (await bob3.login(server, upload_keys=False))["queued"] == 0
    await cleanup(alice, bob3)


@pytest_twisted.ensureDeferred
async def test_send_must_cover_exactly_the_current_devices(server):
    """A send that misses a device or names an unknown one is refused with both lists."""
    alice, bob = await registered(server, "alice", "bob")
    bob_phone = ScriptedDevice("bob", "PHONE", password=bob.password)
    await bob_phone.login(server)
    err = await expect_error("devices_mismatch", alice.request(
        "send", envelopes=[unicast("bob", "DEV1"), unicast("bob", "GHOST")]))
    assert err.details == {"missing": {"bob": ["PHONE"]}, "extra": {"bob": ["GHOST"]}}
    assert bob.envelopes() == [] and bob_phone.envelopes() == []
    await alice.request("send", envelopes=[unicast("bob", "DEV1"), unicast("bob", "PHONE")])
    await poll_until(lambda: len(bob.envelopes()) == 1 and len(bob_phone.envelopes()) == 1)
    await cleanup(alice, bob, bob_phone)


@pytest_twisted.ensureDeferred
async def test_envelope_only_reaches_its_recipient_device(server):
    """An envelope for one device is never pushed to another device or user."""
    alice, bob, carol = await registered(server, "alice", "bob", "carol")
    await alice.request("send", envelopes=[unicast("bob", "DEV1")])
    await poll_until(lambda: len(bob.envelopes()) == 1)
    await carol.request("ping")
    assert carol.envelopes() == [] and alice.envelopes() == []
    await cleanup(alice, bob, carol)


def of_kind(device, kind):
    return [e["envelope"] for e in device.envelopes() if e["envelope"]["kind"] == kind]


@pytest_twisted.ensureDeferred
async def test_room_multicast_and_password(server):
    """A room message is one ciphertext delivered to every member device; a wrong password joins nothing."""
    alice, bob, carol = await registered(server, "alice", "bob", "carol")
    password = wire.b64encode(b"correct horse battery")
    await alice.request("room.create", room="ops", password=password)
    await expect_error("wrong_password", bob.request(
        "room.join", room="ops", password=wire.b64encode(b"wrong horse battery!")))
    members = await alice.request("room.members", room="ops")
    assert list(members["members"]) == ["alice"]
    await bob.request("room.join", room="ops", password=password)
    await poll_until(lambda: len(of_kind(alice, "membership")) == 1)
    assert of_kind(alice, "membership")[0]["event"] == {"user": "bob", "action": "joined",
                                                        "by": "bob"}
    env = {"room": "ops", "id": new_envelope_id(), "kind": "megolm", "sid": "bWVnb2xt",
           "ct": wire.b64encode(b"group ct")}
    result = await alice.request("room.send", **env)
    assert result["recipients"] == 1
    await poll_until(lambda: len(of_kind(bob, "megolm")) == 1)
    assert of_kind(bob, "megolm")[0]["room"] == "ops"
    await expect_error("not_member", carol.request("room.send", **{**env, "id": new_envelope_id()}))
    assert (await bob.request("rooms.list"))["rooms"] == ["ops"]
    history = await bob.request("room.history", room="ops")
    assert [m["envelope"]["id"] for m in history["messages"]] == [env["id"]]
    await bob.request("room.leave", room="ops")
    await expect_error("not_member", bob.request("room.members", room="ops"))
    await expect_error("not_member", bob.request("room.history", room="ops"))
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_member_that_stops_reading_gets_a_busy_room_from_the_store(server):
    """A member whose connection is not read while its room carries far more than the
    socket buffers hold is not fed from the relay's memory: its cursor falls back to the
    store, and once the member reads again every message arrives, once, in order."""
    alice, bob = await registered(server, "alice", "bob")
    await alice.request("room.create", room="ops")
    await alice.request("room.invite", room="ops", user="bob")
    await poll_until(lambda: of_kind(bob, "membership"))
    cursor = server.service.factory.relay.cursor("bob", "DEV1")
    bob.protocol.transport.pauseProducing()  # bob's client stops reading its socket
    ct = wire.b64encode(secrets.token_bytes(96 * 1024))
    ids = [new_envelope_id() for _ in range(200)]  # 25 MiB: more than loopback buffers hold
    for envelope_id in ids:
        await alice.request("room.send", room="ops", id=envelope_id, kind="megolm",
                            sid="c2lk", ct=ct)
    assert not cursor.caught_up  # the rest waits in the store, not in the relay's memory
    bob.protocol.transport.resumeProducing()
    await poll_until(lambda: len(of_kind(bob, "megolm")) == len(ids), timeout=60)
    assert [envelope["id"] for envelope in of_kind(bob, "megolm")] == ids
    await poll_until(lambda: cursor.caught_up)
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_invite_kick_and_admins(server):
    """Only the owner and admins invite and kick; the owner names admins; members see it all."""
    alice, bob, carol = await registered(server, "alice", "bob", "carol")
    await alice.request("room.create", room="ops", password=wire.b64encode(b"p" * 16))
    await alice.request("room.invite", room="ops", user="bob")
    await expect_error("forbidden", bob.request("room.invite", room="ops", user="carol"))
    await expect_error("forbidden", bob.request("room.admin", room="ops", user="bob", admin=True))
    await alice.request("room.admin", room="ops", user="bob", admin=True)
    await bob.request("room.invite", room="ops", user="carol")
    await expect_error("forbidden", bob.request("room.kick", room="ops", user="alice"))
    await bob.request("room.kick", room="ops", user="carol")
    await poll_until(lambda: len(of_kind(carol, "membership")) == 2)
    assert [e["event"]["action"] for e in of_kind(carol, "membership")] == ["invited", "kicked"]
    assert list((await alice.request("room.members", room="ops"))["members"]) == ["alice", "bob"]
    await expect_error("unknown_user", alice.request("room.invite", room="ops", user="nobody"))
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_every_device(open_broadcast):
    """A broadcast is stored for and pushed to every other registered device."""
    server = open_broadcast
    alice, bob, carol = await registered(server, "alice", "bob", "carol")
    result = await alice.request("broadcast", id=new_envelope_id(), kind="megolm", sid="YWxs",
                                 ct=wire.b64encode(b"announcement"))
    assert result["recipients"] == 2
    assert [e["room"] for e in (await bob.request("room.history", room="everyone"))["messages"]
            for e in [e["envelope"]]] == ["everyone"]
    await poll_until(lambda: len(bob.envelopes()) == 1 and len(carol.envelopes()) == 1)
    assert alice.envelopes() == []
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_duplicate_envelope_id_is_refused_and_stores_nothing(open_broadcast):
    """Re-using an envelope id still queued for a recipient device, or kept in the room's
    history, is refused, and nothing of that request is stored."""
    server = open_broadcast
    alice, bob = await registered(server, "alice", "bob")
    await bob.close()
    env = unicast("bob", "DEV1")
    await alice.request("send", envelopes=[env])
    await expect_error("duplicate_envelope", alice.request("send", envelopes=[env]))
    announcement = {"id": new_envelope_id(), "kind": "megolm", "sid": "eA", "ct": env["ct"]}
    await alice.request("broadcast", **announcement)
    await expect_error("duplicate_envelope", alice.request("broadcast", **announcement))
    assert await server.service.store.queue_length("bob", "DEV1") == 2
    await cleanup(alice)


@pytest.fixture
def restricted(start_relay):
    return start_relay(extra="[broadcast]\nadmins = alice\n")


@pytest_twisted.ensureDeferred
async def test_broadcast_restricted_to_admins(restricted):
    """By default ([broadcast] senders = admins) only the listed users may broadcast, and
    only they are given the `everyone` room's members."""
    server = restricted
    alice, bob = await registered(server, "alice", "bob")
    fields = {"kind": "megolm", "sid": "YWxs", "ct": wire.b64encode(b"x")}
    await expect_error("forbidden", bob.request("broadcast", id=new_envelope_id(), **fields))
    await expect_error("forbidden", bob.request("room.members", room="everyone"))
    assert (await alice.request("broadcast", id=new_envelope_id(), **fields))["recipients"] == 1
    await expect_error("room_exists", alice.request("room.create", room="everyone"))
    await expect_error("forbidden", alice.request("room.join", room="everyone"))
    await cleanup(alice, bob)
