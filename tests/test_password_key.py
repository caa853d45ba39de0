"""Password keys: the password derives an Ed25519 key whose public half the relay stores; a
password proof is a signature of the connection's challenge bound to its TLS session, under
its own context.  Nothing that would prove the password on another connection crosses the
wire, so an interceptor learns nothing it can replay on the real relay.  Accounts registered
before that (an argon2 hash of a legacy login secret) move to a password key, once."""

import os
import sqlite3

import pytest
import pytest_twisted
from nacl import pwhash
from nacl.signing import SigningKey

from securechat import wire
from securechat.client.session import PASSWORD_KEY_AT
from securechat.client.tls import channel_binding
from securechat.crypto import passwords
from securechat.crypto.keystore import STORE_FILE
from securechat.server.auth import (
    DeviceSignature, IDeviceSignature, IPasswordSignature, PasswordSignature)
from tests.processes import run_cli, write_client_config
from tests.support import ScriptedDevice, cleanup, expect_error
from tests.test_client_security import record_lines
from tests.test_device_login import connected, published, requests_of

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[limits]\nlogin_failures_per_account = 3\n")


def public(key):
    return wire.b64encode(bytes(key.verify_key))


@pytest_twisted.ensureDeferred
async def test_registration_sends_no_secret_only_the_public_password_key(server, tmp_path):
    """`securechat register` sends the public half of the password-derived key and no
    secret; its first login is a password signature; the relay's row holds that key and no
    hash."""
    config = write_client_config(str(tmp_path / "clients"), "alice", server.port,
                                 ca_file=server.cert_path)
    received = record_lines(server)
    result = await run_cli(config, "register")
    assert result.code == 0, result
    relay = await server.service.store.relay_id()
    expected = public(passwords.password_key(PASSWORD, relay, "alice"))
    (register,) = requests_of(received, "register")
    assert set(register) == {"op", "rid", "user", "password_key", "identity_key"}
    assert register["password_key"] == expected
    (login,) = requests_of(received, "login")
    assert set(login) == {"op", "rid", "user", "device", "password_signature"}
    assert not [line for line in received if b"secret" in line]
    account = await server.service.store.get_account("alice")
    assert (account["password_key"], account["secret_hash"]) == (expected, None)


@pytest_twisted.ensureDeferred
async def test_a_password_proof_from_one_connection_is_refused_on_another(server):
    """A new device's password login captured on one connection and replayed on another is
    refused, and so is one signed for the relay's challenge over another TLS session (an
    interceptor relaying the challenge); the device on its own connection gets in."""
    bob = await published(server)
    new = ScriptedDevice("bob", "NEW", password=bob.password)
    first = await connected(server, new)
    captured = first.password_login_frame(await first.request("login.challenge"))
    assert (await first.request("login", **captured))["device"] == "NEW"
    await first.close()
    replay = await connected(server, new)
    await replay.request("login.challenge")
    await expect_error("auth_failed", replay.request("login", **captured))
    relayed = await connected(server, new)
    challenge = await relayed.request("login.challenge")
    elsewhere = await connected(server, new)  # the device's own connection, to the interceptor
    await expect_error("auth_failed", relayed.request(
        "login", **elsewhere.password_login_frame(challenge)))
    assert (await elsewhere.password_login())["device"] == "NEW"
    await cleanup(bob, replay, relayed, elsewhere)


@pytest_twisted.ensureDeferred
async def test_a_password_proof_and_a_device_proof_cannot_stand_for_each_other(server):
    """The password key's signature of a device login's message is refused as a password
    proof, and the device key's signature of a password login's message as a device proof:
    each proof names what it is for; the right pairs get in."""
    bob = await published(server)
    new = ScriptedDevice("bob", "NEW", password=bob.password)
    as_device = await connected(server, new)
    challenge = await as_device.request("login.challenge")
    device_message = as_device.login_frame(challenge, key=bob.password)  # device context
    await expect_error("auth_failed", as_device.request(
        "login", user="bob", device="NEW", password_signature=device_message["signature"]))
    as_password = await connected(server, bob)
    challenge = await as_password.request("login.challenge")
    password_message = as_password.password_login_frame(challenge, key=bob.signing)
    await expect_error("auth_failed", as_password.request(
        "login", user="bob", device="DEV1", signature=password_message["password_signature"]))
    right = [await connected(server, new), await connected(server, bob)]
    assert (await right[0].password_login())["device"] == "NEW"
    assert (await right[1].key_login())["device"] == "DEV1"
    await cleanup(bob, as_device, as_password, *right)


def test_the_portal_keeps_password_proofs_and_device_proofs_apart():
    """A password proof's credentials are not a device signature's and the reverse, so
    each reaches only its own checker, whatever the order of the portal's checkers."""
    fields = ("alice", "DEV1", b"message", b"signature", "127.0.0.1")
    assert not IDeviceSignature.providedBy(PasswordSignature(*fields))
    assert IPasswordSignature.providedBy(PasswordSignature(*fields))
    assert not IPasswordSignature.providedBy(DeviceSignature(*fields))


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_are_auth_failed_like_an_unknown_user_and_then_limited(server):
    """A wrong password key gets auth_failed with the same message as an unknown user; past
    login_failures_per_account (3) failures from one address even the right key waits
    (rate_limited), as the login limits promise."""
    alice = ScriptedDevice("alice")
    await alice.register(server)
    await alice.close()
    errors = []
    for user in ("alice", "alice", "nobody", "alice"):
        guesser = ScriptedDevice(user, "NEW")
        await guesser.connect(server)
        errors.append(await expect_error("auth_failed", guesser.password_login()))
        await guesser.close()
    assert len({error.message for error in errors}) == 1
    owner = ScriptedDevice("alice", "NEW", password=alice.password)
    await owner.connect(server)
    await expect_error("rate_limited", owner.password_login())
    await owner.close()


def make_legacy(server, key_store_dir, user, secret):
    """Turn a freshly registered account into one registered before password keys: the
    relay's row holds an argon2 hash of ``secret`` and no key (as schema 8 migrates it), and
    the key store records no password key."""
    hashed = pwhash.argon2id.str(secret).decode("ascii")
    relay_db = sqlite3.connect(server.service.config.database)
    with relay_db:
        relay_db.execute("UPDATE accounts SET password_key = NULL, secret_hash = ? "
                         "WHERE user_id = ?", (hashed, user))
    relay_db.close()
    key_store = sqlite3.connect(os.path.join(key_store_dir, STORE_FILE))
    with key_store:
        key_store.execute("DELETE FROM meta WHERE key = ?", (PASSWORD_KEY_AT,))
    key_store.close()


def key_store_meta(key_store_dir, key):
    key_store = sqlite3.connect(os.path.join(key_store_dir, STORE_FILE))
    rows = key_store.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
    key_store.close()
    return rows


@pytest_twisted.ensureDeferred
async def test_an_old_account_moves_to_its_password_key_on_its_next_login(server, tmp_path):
    """An account whose relay row holds an argon2 hash of its legacy login secret (salted
    with the address as typed) logs in by device key and moves:
    one account.move with the legacy secret, then the row holds the password key (which
    logs in a new device) and no hash, and the next login sends nothing of the kind."""
    config = write_client_config(str(tmp_path / "clients"), "alice", server.port,
                                 ca_file=server.cert_path)
    assert (await run_cli(config, "register")).code == 0
    store = server.service.store
    relay = await store.relay_id()
    legacy = passwords.address_salted_login_secret(PASSWORD, f"127.0.0.1:{server.port}",
                                                   "alice")
    key_store_dir = str(tmp_path / "clients" / "alice")
    make_legacy(server, key_store_dir, "alice", legacy)
    assert (await store.get_account("alice"))["password_key"] is None

    received = record_lines(server)
    result = await run_cli(config, "login")
    assert result.code == 0, result
    (move,) = requests_of(received, "account.move")
    assert wire.b64decode(move["legacy_secret"]) == legacy
    key = passwords.password_key(PASSWORD, relay, "alice")
    account = await store.get_account("alice")
    assert (account["password_key"], account["secret_hash"]) == (public(key), None)
    assert key_store_meta(key_store_dir, PASSWORD_KEY_AT) == [(relay,)]
    del received[:]
    assert (await run_cli(config, "login")).code == 0
    assert requests_of(received, "account.move") == []
    new = ScriptedDevice("alice", "NEW", password=key)
    await new.connect(server)
    assert (await new.password_login())["device"] == "NEW"
    await new.close()


@pytest_twisted.ensureDeferred
async def test_a_device_whose_keys_got_there_before_a_crash_logs_in_by_its_key(server,
                                                                                tmp_path):
    """A device that published its keys but crashed before recording it tries the password
    key, is told device_key_required, and logs in by its device key on a new connection
    (the first connection's one challenge went to the password proof)."""
    config = write_client_config(str(tmp_path / "clients"), "alice", server.port,
                                 ca_file=server.cert_path)
    assert (await run_cli(config, "register")).code == 0
    key_store = sqlite3.connect(os.path.join(str(tmp_path / "clients" / "alice"), STORE_FILE))
    with key_store:
        key_store.execute("DELETE FROM meta WHERE key = 'device_list_version'")
    key_store.close()
    received = record_lines(server)
    result = await run_cli(config, "login")
    assert result.code == 0, result
    logins = requests_of(received, "login")
    assert [sorted(set(login) & {"signature", "password_signature"}) for login in logins] == [
        ["password_signature"], ["signature"]]


@pytest_twisted.ensureDeferred
async def test_a_move_needs_the_legacy_secret_and_happens_once(server):
    """account.move with a wrong legacy secret is auth_failed and keeps the hash (the relay
    checks it with argon2); the right one stores the key; a second move, with any key, is
    nothing_to_move; and an account of password keys cannot be moved at all."""
    bob = await published(server)
    legacy = b"L" * 32
    relay_db = sqlite3.connect(server.service.config.database)
    with relay_db:
        relay_db.execute("UPDATE accounts SET password_key = NULL, secret_hash = ? "
                         "WHERE user_id = 'bob'", (pwhash.argon2id.str(legacy).decode("ascii"),))
    relay_db.close()
    device = await connected(server, bob)
    await device.key_login()
    store = server.service.store
    await expect_error("auth_failed", device.request(
        "account.move", legacy_secret=wire.b64encode(b"W" * 32),
        password_key=public(SigningKey.generate())))
    assert (await store.get_account("bob"))["password_key"] is None
    assert await device.request("account.move", legacy_secret=wire.b64encode(legacy),
                                password_key=bob.password_key()) == {"moved": True}
    assert (await store.get_account("bob"))["password_key"] == bob.password_key()
    await expect_error("nothing_to_move", device.request(
        "account.move", legacy_secret=wire.b64encode(legacy),
        password_key=public(SigningKey.generate())))
    assert (await store.get_account("bob"))["password_key"] == bob.password_key()
    await device.close()


def password_change(relay, device, new_key, key=None):
    """The fields of ``account.password`` on ``device``'s logged-in connection: ``new_key``
    signed for by the current password key (or ``key``)."""
    message = wire.password_change_message(
        relay, device.user, device.device, public(new_key),
        channel_binding(device.protocol.transport))
    return {"password_key": public(new_key),
            "signature": wire.b64encode((key or device.password).sign(message).signature)}


@pytest_twisted.ensureDeferred
async def test_a_password_change_is_proved_by_the_current_key_on_this_connection(server):
    """account.password signed by a wrong key is auth_failed; the same change signed by the
    current key but for another connection is refused; signed on this connection it
    replaces the key: the new key logs a new device in, the old one no longer does."""
    bob = await published(server)
    device = await connected(server, bob)
    await device.key_login()
    relay = await server.service.store.relay_id()
    new_key = SigningKey.generate()
    await expect_error("auth_failed", device.request(
        "account.password", **password_change(relay, device, new_key, key=SigningKey.generate())))
    elsewhere = await connected(server, bob)
    await expect_error("auth_failed", device.request(
        "account.password", **password_change(relay, elsewhere, new_key)))
    assert await device.request("account.password",
                                **password_change(relay, device, new_key)) == {"changed": True}
    assert (await server.service.store.get_account("bob"))["password_key"] == public(new_key)
    old = await connected(server, ScriptedDevice("bob", "NEW", password=bob.password))
    await expect_error("auth_failed", old.password_login())
    new = await connected(server, ScriptedDevice("bob", "NEW", password=new_key))
    assert (await new.password_login())["device"] == "NEW"
    await cleanup(device, elsewhere, old, new)


@pytest_twisted.ensureDeferred
async def test_register_login_and_send_end_to_end_store_only_password_keys(twistd_relay,
                                                                           tmp_path):
    """With real twistd and securechat processes, two users register, log in and exchange
    a message, and the relay's database holds a password key for each and no secret hash."""
    await twistd_relay.wait_listening()
    clients = str(tmp_path / "clients")
    alice, bob = (write_client_config(clients, user, twistd_relay.port)
                  for user in ("alice", "bob"))
    for config in (alice, bob):
        for command in ("register", "login"):
            result = await run_cli(config, command)
            assert result.code == 0, result
    result = await run_cli(alice, "send", "bob", "signed, not secret")
    assert result.code == 0, result
    inbox = await run_cli(bob, "inbox")
    assert inbox.code == 0 and "signed, not secret" in inbox.out, inbox
    relay_db = sqlite3.connect(str(twistd_relay.data_dir / "securechat.sqlite3"))
    rows = relay_db.execute(
        "SELECT user_id, length(password_key), secret_hash FROM accounts ORDER BY user_id"
    ).fetchall()
    relay_db.close()
    assert rows == [("alice", 44, None), ("bob", 44, None)]
