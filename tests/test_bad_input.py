"""Hostile and broken input over real TLS: a clear error or a disconnect, and nobody else disturbed."""

import json

import pytest
import pytest_twisted

from securechat import wire
from tests.support import ScriptedDevice, cleanup, expect_error, poll_until, unicast


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[limits]\nrequests_per_second = 50\nrequest_burst = 100\nlogin_failures_per_account = 3\n")


async def pair(server):
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for dev in (alice, bob):
        await dev.register(server)
        await dev.login(server)
    return alice, bob


def errors(device):
    return [e["error"] for e in device.events if "error" in e]


async def raw_error(device, data):
    """Send raw bytes and fire with the error frame the server answers."""
    before = len(errors(device))
    device.protocol.send_raw(data)
    await poll_until(lambda: len(errors(device)) > before)
    return errors(device)[-1]


async def still_works(alice, bob):
    """The other connection and the stored data are untouched: a message still flows."""
    env = unicast("bob", "DEV1", b"after the attack")
    await alice.request("send", envelopes=[env])
    await poll_until(lambda: any(e["envelope"]["id"] == env["id"] for e in bob.envelopes()))


@pytest_twisted.ensureDeferred
async def test_malformed_frames_get_named_errors(server):
    """Invalid UTF-8, invalid JSON, a non-object, an unknown op and wrong types each get their error code."""
    alice, bob = await pair(server)
    mallory = ScriptedDevice("mallory")
    await mallory.connect(server)
    cases = [
        (b"\xff\xfe{}\n", "bad_utf8"),
        (b"{not json\n", "bad_json"),
        (b"[1,2]\n", "bad_frame"),
        (b'{"op":"explode","rid":1}\n', "unknown_op"),
        (b'{"op":"login","rid":2,"user":5,"device":"D","password_signature":"x"}\n', "bad_field"),
        (b'{"op":"login","rid":3,"device":"D"}\n', "missing_field"),
        (b'{"op":"ping","rid":[1]}\n', "bad_field"),
        (b'{"op":"send","rid":4,"envelopes":[]}\n', "not_logged_in"),
    ]
    for data, code in cases:
        error = await raw_error(mallory, data)
        assert error["code"] == code, (data, error)
        assert error["message"]
    assert (await mallory.request("ping"))["pong"] is True
    await still_works(alice, bob)
    await cleanup(alice, bob, mallory)


@pytest_twisted.ensureDeferred
async def test_oversized_line_is_refused_and_disconnected(server):
    """A line over the limit gets a line_too_long error, then the connection is closed; others carry on."""
    alice, bob = await pair(server)
    mallory = ScriptedDevice("mallory")
    await mallory.connect(server)
    mallory.protocol.send_raw(b"x" * (wire.MAX_LINE_BYTES + 10) + b"\n")
    await mallory.protocol.closed_d
    assert errors(mallory)[-1]["code"] == "line_too_long"
    await still_works(alice, bob)
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_wrong_field_values_in_a_send(server):
    """Bad base64, an oversized ciphertext, a bad envelope id and an unknown field are each refused."""
    alice, bob = await pair(server)
    bad = [
        {**unicast("bob", "DEV1"), "ct": "not base64!"},
        {**unicast("bob", "DEV1"), "ct": "A" * (wire.MAX_CIPHERTEXT_CHARS + 4)},
        {**unicast("bob", "DEV1"), "id": "short"},
        {**unicast("bob", "DEV1"), "surprise": 1},
    ]
    for env in bad:
        error = await raw_error(alice, wire.encode({"op": "send", "rid": "x", "envelopes": [env]}) + b"\n")
        assert error["code"] == "bad_field", error
    assert await server.service.store.queue_length("bob", "DEV1") == 0
    await still_works(alice, bob)
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_request_flood_is_limited_then_disconnected(server):
    """A client flooding requests gets rate_limited errors and is then dropped; others carry on."""
    alice, bob = await pair(server)
    flooder = ScriptedDevice("flooder")
    await flooder.connect(server)
    flood = b"".join(
        json.dumps({"op": "ping", "rid": i}).encode() + b"\n" for i in range(2000)
    )
    flooder.protocol.send_raw(flood)
    await flooder.protocol.closed_d
    codes = {e["code"] for e in errors(flooder)}
    assert "rate_limited" in codes
    await still_works(alice, bob)
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_login_attempts_are_rate_limited_per_account(server):
    """After a few failed logins, even the right password is refused for that account until
    the window passes."""
    alice = ScriptedDevice("alice")
    await alice.register(server)
    for _ in range(3):
        guesser = ScriptedDevice("alice", "D")
        await guesser.connect(server)
        await expect_error("auth_failed", guesser.password_login())
        await guesser.close()
    owner = ScriptedDevice("alice", "D", password=alice.password)
    await owner.connect(server)
    await expect_error("rate_limited", owner.password_login())
    await cleanup(alice, owner)
