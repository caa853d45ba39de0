"""The relay's recovery ops over real TLS, with scripted devices: ``recovery.set`` from a listed
device signed by the account key, a new device's login by the recovery key (limited like a
password proof), the sealed backup and the new password key on that connection only."""

import pytest
import pytest_twisted
from nacl.signing import SigningKey

from securechat import wire
from securechat.client.tls import channel_binding
from securechat.crypto.recovery import RecoveryKey
from tests.support import ScriptedDevice, cleanup, expect_error

BACKUP = wire.b64encode(b"sealed identity seed, opaque to the relay" + b"\0" * 32)


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[limits]\nlogin_failures_per_account = 3\n")


async def relay_of(device):
    return (await device.request("ping"))["relay"]


async def listed_alice(server):
    """alice's first device: registered, keys uploaded, in her signed one-device list."""
    alice = ScriptedDevice("alice", "A1")
    await alice.register(server)
    await alice.login(server)
    listing = {"user": "alice", "version": 1, "ts": 1,
               "devices": {"A1": {k: alice.device_keys()[k] for k in ("curve25519", "ed25519")}}}
    await alice.request("devices.publish", device_list=listing,
                        signature=alice.sign(listing, alice.identity))
    return alice


async def set_recovery(device, key, backup=BACKUP, signer=None):
    """``recovery.set`` of ``key`` (a RecoveryKey) from ``device``, signed by its account's
    identity key (or ``signer``)."""
    public = wire.b64encode(key.public_key)
    fields = wire.recovery_set_fields(await relay_of(device), device.user, public, backup)
    return await device.request("recovery.set", recovery_key=public, backup=backup,
                                signature=device.sign(fields, signer or device.identity))


async def recovery_login(server, key, user="alice", device="NEW"):
    """A device the relay does not know, connected and logging in by ``key``; the device
    and the login's answer (or the RemoteError it raised)."""
    new = ScriptedDevice(user, device)
    await new.connect(server)
    challenge = await new.request("login.challenge")
    message = wire.recovery_login_message(
        challenge["relay"], user, device, wire.b64decode(challenge["nonce"]),
        channel_binding(new.protocol.transport))
    login = new.request("login", user=user, device=device,
                        recovery_signature=wire.b64encode(key.sign(message)))
    return new, login


def password_reset(device, relay, key, password_key):
    """``account.password`` installing ``password_key`` (a SigningKey), signed by ``key``."""
    public = wire.b64encode(bytes(password_key.verify_key))
    message = wire.recovery_password_message(relay, device.user, device.device, public,
                                             channel_binding(device.protocol.transport))
    return device.request("account.password", password_key=public,
                          recovery_signature=wire.b64encode(key.sign(message)))


@pytest_twisted.ensureDeferred
async def test_a_recovery_login_reads_the_backup_and_sets_a_new_password(server):
    """With the recovery key a new device logs in, reads the sealed backup as it was set,
    and replaces the password key: the old password's login is refused, the new one's
    accepted."""
    alice = await listed_alice(server)
    key = RecoveryKey.generate()
    assert await set_recovery(alice, key) == {"set": True}
    new, login = await recovery_login(server, key)
    assert (await login)["device"] == "NEW"
    assert await new.request("recovery.backup") == {"backup": BACKUP}
    new_password = SigningKey.generate()
    assert await password_reset(new, await relay_of(new), key, new_password) == {
        "changed": True}
    old = ScriptedDevice("alice", "OLDPW", password=alice.password)
    await old.connect(server)
    await expect_error("auth_failed", old.password_login())
    fresh = ScriptedDevice("alice", "NEWPW", password=new_password)
    await fresh.connect(server)
    assert (await fresh.password_login())["device"] == "NEWPW"
    await cleanup(alice, new, old, fresh)


@pytest_twisted.ensureDeferred
async def test_a_replaced_or_wrong_recovery_key_and_an_account_without_one_are_refused(server):
    """auth_failed alike for a key replaced by a newer recovery.set, a key never set and an
    account with no recovery key; the current key logs in."""
    alice = await listed_alice(server)
    bob = ScriptedDevice("bob", "B1")
    await bob.register(server)
    first, second = RecoveryKey.generate(), RecoveryKey.generate()
    await set_recovery(alice, first)
    await set_recovery(alice, second)
    tried = []
    for user, key in (("alice", first), ("alice", RecoveryKey.generate()), ("bob", first)):
        device, login = await recovery_login(server, key, user=user)
        await expect_error("auth_failed", login)
        tried.append(device)
    device, login = await recovery_login(server, second)
    assert (await login)["user"] == "alice"
    await cleanup(alice, bob, device, *tried)


@pytest_twisted.ensureDeferred
async def test_recovery_set_needs_a_listed_device_and_the_account_key(server):
    """A device not in the signed list gets not_listed; a signature by another key than the
    account identity key gets bad_signature; neither changes the recovery key."""
    alice = await listed_alice(server)
    key = RecoveryKey.generate()
    await set_recovery(alice, key)
    unlisted = ScriptedDevice("alice", "A2", password=alice.password, identity=alice.identity)
    await unlisted.login(server)
    await expect_error("not_listed", set_recovery(unlisted, RecoveryKey.generate()))
    await expect_error("bad_signature", set_recovery(alice, RecoveryKey.generate(),
                                                     signer=SigningKey.generate()))
    device, login = await recovery_login(server, key)
    assert (await login)["user"] == "alice"
    await cleanup(alice, unlisted, device)


@pytest_twisted.ensureDeferred
async def test_the_backup_and_a_recovery_password_need_a_recovery_login(server):
    """On a connection logged in by the password or a device key, recovery.backup and a
    recovery-signed account.password get not_recovery_login."""
    alice = await listed_alice(server)
    key = RecoveryKey.generate()
    await set_recovery(alice, key)
    await expect_error("not_recovery_login", alice.request("recovery.backup"))
    await expect_error("not_recovery_login", password_reset(
        alice, await relay_of(alice), key, SigningKey.generate()))
    by_password = ScriptedDevice("alice", "PW", password=alice.password)
    await by_password.connect(server)
    await by_password.password_login()
    await expect_error("not_recovery_login", by_password.request("recovery.backup"))
    await cleanup(alice, by_password)


@pytest_twisted.ensureDeferred
async def test_a_known_device_cannot_log_in_by_the_recovery_key(server):
    """A device with published keys logs in by its device key only: device_key_required."""
    alice = await listed_alice(server)
    key = RecoveryKey.generate()
    await set_recovery(alice, key)
    device, login = await recovery_login(server, key, device="A1")
    await expect_error("device_key_required", login)
    await cleanup(alice, device)


@pytest_twisted.ensureDeferred
async def test_recovery_logins_are_limited_like_password_proofs(server):
    """After login_failures_per_account (3) wrong recovery keys from one address the next
    try, even with the right key, is rate_limited."""
    alice = await listed_alice(server)
    key = RecoveryKey.generate()
    await set_recovery(alice, key)
    tried = []
    for number in range(3):
        device, login = await recovery_login(server, RecoveryKey.generate(),
                                             device=f"GUESS{number}")
        await expect_error("auth_failed", login)
        tried.append(device)
    device, login = await recovery_login(server, key)
    await expect_error("rate_limited", login)
    await cleanup(alice, device, *tried)


@pytest_twisted.ensureDeferred
async def test_a_recovery_signature_passes_for_no_other_proof(server):
    """The recovery key's signature under the password login's context is refused, and a
    login carrying two kinds of proof is a bad_field."""
    alice = await listed_alice(server)
    key = RecoveryKey.generate()
    await set_recovery(alice, key)
    guess = ScriptedDevice("alice", "NEW", password=key.signing_key)
    await guess.connect(server)
    await expect_error("auth_failed", guess.password_login())
    both = ScriptedDevice("alice", "NEW2")
    await both.connect(server)
    challenge = await both.request("login.challenge")
    frame = both.password_login_frame(challenge)
    await expect_error("bad_field", both.request("login", **frame,
                                                 recovery_signature=frame["password_signature"]))
    await cleanup(alice, guess, both)
