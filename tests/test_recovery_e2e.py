"""Recovery with a real ``twistd`` relay and the real ``securechat``: the key ``register``
prints brings the account back on a new machine after every device is lost, with its
identity (and a contact's verification of it) intact; the lost device is removed; a
replaced, wrong or mistyped key is refused."""

import os
import re
import shutil
import sqlite3

import pytest_twisted
from twisted.internet import defer

from securechat.client import settings as client_settings
from securechat.crypto.keystore import KeyStore
from securechat.crypto.recovery import RecoveryKey
from tests.processes import DaemonProcess, run_cli, write_client_config
from tests.support import poll_until
from tests.two_devices import add_device

OLD = "correct horse battery staple"
NEW = "a new password after the fire"
RECOVERY_LINE = re.compile(r"^recovery key: (.*)$", re.M)


def recovery_key(output):
    """The one ``recovery key: ...`` line of a command's output: its key."""
    (key,) = RECOVERY_LINE.findall(output)
    return key


async def registered(relay, tmp_path, user):
    """``user`` registered (password OLD): its client ini and its recovery key."""
    config = write_client_config(str(tmp_path / "clients"), user, relay.port)
    result = await run_cli(config, "register", password=OLD)
    assert result.code == 0, result
    return config, recovery_key(result.out)


def new_machine(relay, tmp_path, name, user="alice"):
    """A client ini for ``user`` on another machine: an empty data directory."""
    return write_client_config(str(tmp_path / name), user, relay.port)


def recover(config, key, new_password=NEW):
    """``securechat recover`` with the key and the new password from the environment."""
    return run_cli(config, "recover", password=None,
                   extra_env={"SECURECHAT_RECOVERY_KEY": key,
                              "SECURECHAT_NEW_PASSWORD": new_password})


def data_dir(config):
    return client_settings.load(config).data_dir


def queued_for(relay, user):
    """Envelopes the relay's database holds for ``user``'s devices (read beside it)."""
    database = sqlite3.connect(os.path.join(str(relay.data_dir), "securechat.sqlite3"))
    try:
        return database.execute("SELECT count(*) FROM queue WHERE user_id = ?",
                                (user,)).fetchone()[0]
    finally:
        database.close()


async def bob_verifies_alice(alice, bob, relay):
    """bob runs `verify alice`, alice answers with `verify bob`: both confirm the emoji."""
    started = defer.ensureDeferred(run_cli(bob, "verify", "alice", stdin=b"y\n", password=OLD))
    await poll_until(lambda: queued_for(relay, "alice") > 0, timeout=60)
    responder = await run_cli(alice, "verify", "bob", stdin=b"y\n", password=OLD)
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)
    assert "alice is verified" in initiator.out


@pytest_twisted.ensureDeferred
async def test_recover_after_every_device_is_lost_keeps_the_identity_and_verification(
        listening_relay, tmp_path):
    """alice, with two devices, loses both data dirs; `recover` with her key on a new
    machine makes it her only device: bob sends to her without verifying again (same
    fingerprint, still verified), she reads it with her new password, and neither lost
    device can log in."""
    relay = listening_relay
    alice, key = await registered(relay, tmp_path, "alice")
    phone = new_machine(relay, tmp_path, "phone")
    await add_device(alice, phone, OLD)
    bob, _ = await registered(relay, tmp_path, "bob")
    assert (await run_cli(bob, "send", "alice", "hello", password=OLD)).code == 0
    assert (await run_cli(alice, "inbox", password=OLD)).code == 0
    await bob_verifies_alice(alice, bob, relay)
    before = await run_cli(bob, "fingerprint", "alice", password=OLD)
    assert before.code == 0 and "(verified)" in before.out, before
    lost = str(tmp_path / "found-later")  # the lost laptop, found by someone else
    shutil.copytree(data_dir(alice), lost)
    shutil.rmtree(data_dir(alice))
    lost_phone = str(tmp_path / "phone-found-later")
    shutil.copytree(data_dir(phone), lost_phone)
    shutil.rmtree(data_dir(phone))

    fresh = new_machine(relay, tmp_path, "new-laptop")
    result = await recover(fresh, key)

    assert result.code == 0, result
    assert "recovered alice: this device" in result.out
    new_key = recovery_key(result.out)
    assert RecoveryKey.parse(new_key).text != RecoveryKey.parse(key).text
    assert "no longer works" in result.out
    sent = await run_cli(bob, "send", "alice", "after the fire", password=OLD)
    assert sent.code == 0, sent
    after = await run_cli(bob, "fingerprint", "alice", password=OLD)
    assert after.out == before.out, (before, after)
    inbox = await run_cli(fresh, "inbox", "--json", password=NEW)
    assert inbox.code == 0, inbox
    assert [m["text"] for m in inbox.json_lines()] == ["after the fire"]
    for name, directory in (("finder", lost), ("phone-finder", lost_phone)):
        old_device = write_client_config(str(tmp_path / name), "alice", relay.port,
                                         data_dir=directory)
        refused = await run_cli(old_device, "login", password=OLD)
        assert refused.code == 3, refused
        assert "was removed from alice's account" in refused.err, refused


@pytest_twisted.ensureDeferred
async def test_a_new_recovery_key_makes_the_old_one_useless(listening_relay, tmp_path):
    """After `devices recovery-key` the first key is refused (exit 3, the new machine's data
    dir left empty) and the new one recovers the account."""
    relay = listening_relay
    alice, first = await registered(relay, tmp_path, "alice")
    made = await run_cli(alice, "devices", "recovery-key", password=OLD)
    assert made.code == 0, made
    second = recovery_key(made.out)
    assert "the previous recovery key no longer works" in made.out
    fresh = new_machine(relay, tmp_path, "new-laptop")
    refused = await recover(fresh, first)
    assert refused.code == 3, refused
    assert "the relay refused this recovery key" in refused.err
    assert not KeyStore.exists(data_dir(fresh))
    result = await recover(fresh, second)
    assert result.code == 0, result


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_refused_and_a_typo_is_named_before_anything_is_sent(
        listening_relay, tmp_path):
    """A well-formed key that is not alice's exits 3; one mistyped character exits 2
    naming the checksum and the group, with nothing asked of the relay; alice's own key
    still works afterwards (the refusals changed nothing)."""
    relay = listening_relay
    _, key = await registered(relay, tmp_path, "alice")
    fresh = new_machine(relay, tmp_path, "new-laptop")
    wrong = await recover(fresh, RecoveryKey.generate().text)
    assert wrong.code == 3, wrong
    assert "the relay refused this recovery key" in wrong.err
    groups = key.split(" ")
    groups[4] = ("1" if groups[4][0] != "1" else "2") + groups[4][1:]
    typo = await recover(fresh, " ".join(groups))
    assert typo.code == 2, typo
    assert "does not match its checksum" in typo.err and "group 5" in typo.err, typo
    assert not KeyStore.exists(data_dir(fresh))
    assert (await recover(fresh, key.lower().replace(" ", "-"))).code == 0


@pytest_twisted.ensureDeferred
async def test_recover_refuses_a_data_dir_that_is_not_empty(tmp_path):
    """`recover` into a data dir with a key store, or with any other file, stops at once
    (exit 1), asks nothing and leaves the file where it was."""
    config = write_client_config(str(tmp_path / "clients"), "alice", 6698,
                                 fingerprint="AA:" * 31 + "AA")
    os.makedirs(data_dir(config))
    for name, said in (("notes.txt", "is not empty"),
                       ("keystore.sqlite3", "already holds a device's key store")):
        path = os.path.join(data_dir(config), name)
        with open(path, "w"):
            pass
        result = await recover(config, "x")
        assert result.code == 1, result
        assert said in result.err, result
        assert os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_a_new_recovery_key_is_refused_through_a_running_daemon(listening_relay,
                                                                      tmp_path):
    """While a daemon serves the data dir, `devices recovery-key` stops saying to stop it
    (exit 1) and the key from `register` still recovers the account."""
    relay = listening_relay
    alice, key = await registered(relay, tmp_path, "alice")
    daemon = DaemonProcess(alice, data_dir(alice), password=OLD)
    try:
        await daemon.ready()
        result = await run_cli(alice, "devices", "recovery-key", password=OLD)
        assert result.code == 1 and "stop the daemon" in result.err, result
        assert not RECOVERY_LINE.search(result.out)
    finally:
        await daemon.stop()
    assert (await recover(new_machine(relay, tmp_path, "new-laptop"), key)).code == 0
