"""``securechat password``: the relay's password key and the local key store's wrapping both
move to the new password, or neither does; with a real ``twistd`` relay and the real
``securechat``, and the relay checked by a device that logs in by password."""

import os
import signal
import subprocess
import sys

import pexpect
import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import wire
from securechat.client import settings as client_settings
from securechat.client.tls import channel_binding
from securechat.crypto import passwords
from securechat.crypto.keystore import KeyStore, WrongPassword
from tests.processes import (
    DaemonProcess, RelayEndpoint, executable, run_cli, write_client_config)
from tests.support import ScriptedDevice, cleanup, expect_error

OLD = "correct horse battery staple"
NEW = "a whole new password, longer"


@pytest.fixture
def alice(listening_relay, tmp_path):
    """alice registered (password OLD) on a twistd relay: her ini and the relay."""
    config = write_client_config(str(tmp_path / "clients"), "alice", listening_relay.port)
    result = pytest_twisted.blockon(defer.ensureDeferred(run_cli(config, "register")))
    assert result.code == 0, result
    return config, listening_relay


def change(config, current=OLD, new=NEW, **kwargs):
    """``securechat password`` with the current and the new password from the environment."""
    return run_cli(config, "password", password=current,
                   extra_env={"SECURECHAT_NEW_PASSWORD": new}, **kwargs)


async def password_device(relay, password, device="OTHER"):
    """A device of alice the relay does not know, connected: it can only log in by the
    password key ``password`` derives on this relay."""
    endpoint = RelayEndpoint(relay.port, relay.data_dir)
    scripted = ScriptedDevice("alice", device)
    await scripted.connect(endpoint)
    relay_id = (await scripted.request("ping"))["relay"]
    scripted.password = passwords.password_key(password, relay_id, "alice")
    return scripted, relay_id


async def assert_password_login(relay, password, works):
    """A password login of a new device with ``password``: accepted or ``auth_failed``."""
    scripted, _ = await password_device(relay, password)
    if works:
        assert (await scripted.password_login())["device"] == "OTHER"
    else:
        await expect_error("auth_failed", scripted.password_login())
    await cleanup(scripted)


async def assert_store_opens_with(config, password):
    """``outbox`` (the key store alone, no relay) unlocks with ``password`` and with no other:
    the old and the new password tried."""
    for candidate in (OLD, NEW):
        result = await run_cli(config, "outbox", password=candidate)
        assert result.code == (0 if candidate == password else 3), (candidate, result)


@pytest_twisted.ensureDeferred
async def test_a_changed_password_is_refused_old_and_taken_new_by_relay_and_store(alice):
    """After `securechat password`: the relay refuses a password login with the old password
    and takes the new one; the key store opens with the new password only; this device's
    login (device key) and another device's (which logged in before the change) work."""
    config, relay = alice
    other, _ = await password_device(relay, OLD, device="DEV2")
    await other.login(RelayEndpoint(relay.port, relay.data_dir))  # publishes its keys
    await cleanup(other)
    result = await change(config)
    assert (result.code, result.out, result.err) == (0, "password changed\n", ""), result
    await assert_password_login(relay, OLD, works=False)
    await assert_password_login(relay, NEW, works=True)
    await assert_store_opens_with(config, NEW)
    login = await run_cli(config, "login", password=NEW)
    assert login.code == 0, login
    again = other.again()
    await again.connect(RelayEndpoint(relay.port, relay.data_dir))
    assert (await again.key_login())["device"] == "DEV2"
    await cleanup(again)


@pytest_twisted.ensureDeferred
async def test_the_relay_down_changes_nothing(alice):
    """With the relay stopped the change exits 4 with one line on stderr, and the store
    still opens with the old password only; restarted, the relay takes the old one."""
    config, relay = alice
    relay.stop()
    result = await change(config)
    assert result.code == 4 and result.out == "", result
    assert len(result.err.splitlines()) == 1, result
    await assert_store_opens_with(config, OLD)
    relay.start()
    await relay.wait_listening()
    await assert_password_login(relay, OLD, works=True)


@pytest_twisted.ensureDeferred
async def test_a_wrong_current_password_exits_3_and_changes_nothing(alice):
    """A wrong current password is refused by the key store (exit 3, one line) before any
    change: the store and the relay still take the old password."""
    config, relay = alice
    result = await change(config, current="not the password at all")
    assert result.code == 3 and "wrong password" in result.err, result
    assert len(result.err.splitlines()) == 1, result
    await assert_store_opens_with(config, OLD)
    await assert_password_login(relay, OLD, works=True)


@pytest_twisted.ensureDeferred
async def test_a_short_or_unchanged_new_password_is_refused(alice):
    """A new password under 10 characters, or the current one again, is a usage error
    (exit 2) naming the problem; nothing is changed."""
    config, relay = alice
    short = await change(config, new="too short")
    assert short.code == 2, short
    assert "SECURECHAT_NEW_PASSWORD: password too short (at least 10 characters)" in short.err
    same = await change(config, new=OLD)
    assert same.code == 2 and "the new password is the current one" in same.err, same
    missing = await run_cli(config, "password", password=OLD)
    assert missing.code == 2 and "SECURECHAT_NEW_PASSWORD" in missing.err, missing
    await assert_store_opens_with(config, OLD)
    await assert_password_login(relay, OLD, works=True)


@pytest_twisted.ensureDeferred
async def test_a_running_daemon_makes_it_refuse(alice):
    """While a daemon serves the data dir the change stops at once, saying to stop the
    daemon first; the store keeps the old password."""
    config, _ = alice
    daemon = DaemonProcess(config, client_settings.load(config).data_dir, password=OLD)
    try:
        await daemon.ready()
        result = await change(config)
        assert result.code == 1 and "stop the daemon" in result.err, result
    finally:
        await daemon.stop()
    await assert_store_opens_with(config, OLD)


@pytest_twisted.ensureDeferred
async def test_a_change_the_relay_took_before_the_store_finishes_when_run_again(alice):
    """The relay already holds the new password (a crash after its change, before the store
    was re-wrapped; or the change made on another device): the store still opens with the
    old one, and running the change again finishes it."""
    config, relay = alice
    other, relay_id = await password_device(relay, OLD, device="DEV2")
    await other.login(RelayEndpoint(relay.port, relay.data_dir))
    new_key = passwords.password_key(NEW, relay_id, "alice")
    public = wire.b64encode(bytes(new_key.verify_key))
    message = wire.password_change_message(relay_id, "alice", "DEV2", public,
                                           channel_binding(other.protocol.transport))
    assert await other.request("account.password", password_key=public, signature=wire.b64encode(
        other.password.sign(message).signature)) == {"changed": True}
    await cleanup(other)
    await assert_store_opens_with(config, OLD)
    result = await change(config)
    assert result.code == 0, result
    await assert_store_opens_with(config, NEW)
    await assert_password_login(relay, NEW, works=True)


KILLED_REWRAP = """
import os, signal, sys
from securechat.crypto.keystore import KeyStore
store = KeyStore.open(sys.argv[1], sys.argv[2])
written = []
set_meta = store.set_meta
def set_meta_then_die(key, value):
    set_meta(key, value)
    written.append(key)
    if len(written) == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
store.set_meta = set_meta_then_die
store.rewrap(sys.argv[3])
if sys.argv[4] == "0":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def rewrap_killed(directory, after_writes):
    """Re-wrap the store from OLD to NEW in a process SIGKILLed after ``after_writes`` of
    its meta writes (0: after ``rewrap`` returned)."""
    done = subprocess.run([sys.executable, "-c", KILLED_REWRAP, str(directory), OLD, NEW,
                           str(after_writes)], timeout=120, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


def opens_with(directory):
    """Which of OLD and NEW unlock the store."""
    found = []
    for password in (OLD, NEW):
        try:
            KeyStore.open(str(directory), password).close()
            found.append(password)
        except WrongPassword:
            pass
    return found


def test_a_rewrap_killed_half_way_leaves_the_old_password_and_one_done_the_new(tmp_path):
    """SIGKILL between the re-wrap's two meta writes (new salt written, wrapped key not):
    the store opens with the old password, and holds what it held; killed after the re-wrap
    returned, it opens with the new one only -- never with neither."""
    directory = tmp_path / "device"
    store = KeyStore.create(str(directory), OLD, {"user": "alice"})
    with store.transaction():
        store.set_secret("kept", {"text": "still here"})
    store.close()
    rewrap_killed(directory, after_writes=1)
    assert opens_with(directory) == [OLD]
    rewrap_killed(directory, after_writes=0)
    assert opens_with(directory) == [NEW]
    store = KeyStore.open(str(directory), NEW)
    assert store.secret("kept") == {"text": "still here"} and store.meta("user") == "alice"
    store.close()


def test_on_a_terminal_the_new_password_is_asked_twice_until_it_fits(alice):
    """In a terminal (current password from SECURECHAT_PASSWORD) the new one is asked for:
    a short one and a mismatched confirmation are each said and asked again, the third
    answer changes it."""
    config, _ = alice
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    child = pexpect.spawn(executable("securechat"), ["--config", config, "password"],
                          env=dict(env, SECURECHAT_PASSWORD=OLD), encoding="utf-8",
                          timeout=120)
    child.expect_exact("New password (at least 10 characters): ")
    child.sendline("short")
    child.expect_exact("password too short (at least 10 characters)")
    child.expect_exact("New password (at least 10 characters): ")
    child.sendline(NEW)
    child.expect_exact("Password again: ")
    child.sendline(NEW + " typo")
    child.expect_exact("passwords do not match; try again")
    child.expect_exact("New password (at least 10 characters): ")
    child.sendline(NEW)
    child.expect_exact("Password again: ")
    child.sendline(NEW)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "password changed" in child.before, child.before
    assert opens_with(client_settings.load(config).data_dir) == [NEW]
