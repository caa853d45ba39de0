"""Device list format 2 and the migration of accounts made before it, with a real
``twistd`` relay and the real ``securechat``: a list re-published in the old format (no
``added``) is re-signed in format 2 by the next login of a device holding the account
key, and a contact's verification of the account holds across it."""

import os
import sqlite3

import pytest_twisted
from nacl.signing import SigningKey, VerifyKey

from securechat import wire
from securechat.client.device_list import FORMAT_META
from securechat.crypto import passwords
from securechat.crypto.keystore import STORE_FILE, KeyStore
from tests.processes import RelayEndpoint
from tests.support import ScriptedDevice, cleanup
from tests.test_linking import accounts, device_list, ok, texts, verify_each_other  # noqa: F401

PASSWORD = "correct horse battery staple"


def account_key(data_dir):
    """The account identity key alice's key store holds (the store opened here, no CLI
    running on it)."""
    store = KeyStore.open(str(data_dir), PASSWORD)
    try:
        return SigningKey(bytes.fromhex(store.secret("identity_seed")))
    finally:
        store.close()


def forget_format(data_dir):
    """Make alice's key store look as one from before format 2 (no format in its meta)."""
    database = sqlite3.connect(os.path.join(str(data_dir), STORE_FILE))
    with database:
        database.execute("DELETE FROM meta WHERE key = ?", (FORMAT_META,))
    database.close()


async def republish_in_the_old_format(relay, identity):
    """Publish alice's current list again, version+1, without ``added`` (as a client from
    before format 2 signed it), from a connection logged in by her password."""
    scripted = ScriptedDevice("alice", "OLDCLIENT")
    await scripted.connect(RelayEndpoint(relay.port, relay.data_dir))
    relay_id = (await scripted.request("ping"))["relay"]
    scripted.password = passwords.password_key(PASSWORD, relay_id, "alice")
    try:
        await scripted.password_login()
        entry = (await scripted.request("keys.query", users=["alice"]))["users"]["alice"]
        current = entry["device_list"]
        assert entry["identity_key"] == wire.b64encode(bytes(identity.verify_key)), entry
        old = {"user": "alice", "version": current["version"] + 1, "ts": current["ts"] + 1,
               "devices": {device: {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"]}
                           for device, keys in current["devices"].items()}}
        await scripted.request("devices.publish", device_list=old,
                               signature=scripted.sign(old, identity))
        return old
    finally:
        await cleanup(scripted)


@pytest_twisted.ensureDeferred
async def test_a_registered_device_publishes_format_2(accounts):  # noqa: F811
    """``register`` signs its one-device list in format 2: the device carries ``added``."""
    _, _, _, relay = accounts
    listing, _ = device_list(relay, "alice")
    (entry,) = listing["devices"].values()
    assert isinstance(entry["added"], int) and entry["added"] > 1_600_000_000_000


@pytest_twisted.ensureDeferred
async def test_an_old_format_list_is_re_signed_at_the_next_login(accounts, tmp_path):  # noqa: F811
    """alice's list re-published in the old format: her next command's login re-signs it
    (version+1, ``added`` for each device, signed by her account key), once; bob, who
    verified alice before, sends to her and sees her answer verified."""
    alice, _, bob, relay = accounts
    await verify_each_other(alice, bob)
    data_dir = tmp_path / "clients" / "alice"
    identity = account_key(data_dir)
    old = await republish_in_the_old_format(relay, identity)
    forget_format(data_dir)
    assert device_list(relay, "alice")[0] == old
    await ok(alice, "login")
    migrated, signature = device_list(relay, "alice")
    assert migrated["version"] == old["version"] + 1
    assert set(migrated["devices"]) == set(old["devices"])
    for device, keys in migrated["devices"].items():
        assert {k: keys[k] for k in ("curve25519", "ed25519")} == old["devices"][device]
        assert isinstance(keys["added"], int)
    VerifyKey(bytes(identity.verify_key)).verify(wire.canonical_json(migrated),
                                                 wire.b64decode(signature))
    await ok(alice, "login")
    assert device_list(relay, "alice")[0] == migrated  # done once
    await ok(bob, "send", "alice", "still you?")
    assert "still you?" in await texts(alice)
    await ok(alice, "send", "bob", "still me")
    assert (await texts(bob))["still me"]["verified"] is True
