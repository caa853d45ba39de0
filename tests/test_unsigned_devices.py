"""A device its account key did not sign is never encrypted to, and is said as a warning
that does not block the signed devices (design point 10): the trust decision on a
keys.query entry, then a real ``twistd`` relay whose stored list of alice was replaced by
one another key signed (a relay handing out a list of its own)."""

import json
import sqlite3

import pytest_twisted
from nacl.signing import SigningKey

from securechat import wire
from securechat.client.contacts import Contacts
from securechat.client.exit_codes import EXIT_UNTRUSTED
from securechat.crypto.keystore import KeyStore
from tests.processes import run_cli, write_client_config
from tests.test_linking import accounts, ok, texts  # noqa: F401


def signed_device(user, device):
    """A self-signed device key set (as keys.query gives it) and its signing key."""
    key = SigningKey.generate()
    keys = {"user": user, "device": device, "curve25519": wire.b64encode(b"c" * 32),
            "ed25519": wire.b64encode(bytes(key.verify_key))}
    return {"device_keys": keys,
            "signature": wire.b64encode(key.sign(wire.canonical_json(keys)).signature)}


def test_a_device_missing_from_the_signed_list_is_left_out_with_a_warning(tmp_path):
    """Of two self-signed devices of alice, the one her signed list holds is trusted (its
    ``added`` not compared) and the other is left out, named in a warning, even when
    sending: no error blocks the signed one."""
    identity = SigningKey.generate()
    listed, extra = signed_device("alice", "LISTED"), signed_device("alice", "EXTRA")
    keys = listed["device_keys"]
    listing = {"user": "alice", "version": 1, "ts": 1, "devices": {"LISTED": {
        "curve25519": keys["curve25519"], "ed25519": keys["ed25519"], "added": 5}}}
    entry = {"identity_key": wire.b64encode(bytes(identity.verify_key)),
             "device_list": listing,
             "device_list_signature": wire.b64encode(
                 identity.sign(wire.canonical_json(listing)).signature),
             "devices": {"LISTED": listed, "EXTRA": extra}}
    store = KeyStore.create(str(tmp_path / "bob"), "pw", {"user": "bob"})
    try:
        trusted, warnings = Contacts(store, "bob", "unused").devices("alice", entry, True)
    finally:
        store.close()
    assert trusted == {"LISTED": keys}
    assert warnings == ["alice's device EXTRA is not signed by alice's identity key: "
                        "nothing is encrypted to it"]


def sign_alices_list_with_another_key(relay):
    """As a relay that lies: alice's stored list, with a device added, signed by a key
    that is not hers."""
    database = sqlite3.connect(str(relay.data_dir / "securechat.sqlite3"))
    with database:
        (listing,) = database.execute(
            "SELECT device_list FROM device_lists WHERE user_id = 'alice'").fetchone()
        listing = json.loads(listing)
        impostor = SigningKey.generate()
        signature = impostor.sign(wire.canonical_json(listing)).signature
        database.execute("UPDATE device_lists SET signature = ? WHERE user_id = 'alice'",
                         (wire.b64encode(signature),))
    database.close()
    return sorted(listing["devices"])


@pytest_twisted.ensureDeferred
async def test_devices_under_a_list_another_key_signed_are_not_encrypted_to(accounts,  # noqa: F811
                                                                             tmp_path):
    """alice's list signed by another key: bob's send to alice is refused (exit 7) with a
    warning naming each of her devices, and nothing reaches alice; bob's room message
    still reaches carol, with the same warning on stderr, and alice cannot read it."""
    alice, _, bob, relay = accounts
    carol = write_client_config(str(tmp_path / "clients"), "carol", relay.port)
    await ok(carol, "register")
    await ok(bob, "rooms", "create", "ops")
    for user in ("alice", "carol"):
        await ok(bob, "invite", "ops", user)
    await ok(bob, "say", "ops", "before")
    assert "before" in await texts(alice)
    devices = sign_alices_list_with_another_key(relay)
    refused = await run_cli(bob, "send", "alice", "secret")
    assert refused.code == EXIT_UNTRUSTED, refused
    for device in devices:
        assert (f"alice's device {device} is not signed by alice's identity key: nothing is "
                "encrypted to it") in refused.err
    said = await ok(bob, "say", "ops", "after")
    assert all(f"warning: alice's device {device} is not signed" in said.err
               for device in devices), said
    assert "after" in await texts(carol)
    shown = (await ok(alice, "inbox", "--json")).json_lines()
    assert [m["text"] for m in shown if m["type"] == "msg"] == [None], shown  # unreadable
    assert shown[-1]["room"] == "ops" and shown[-1]["error"], shown
