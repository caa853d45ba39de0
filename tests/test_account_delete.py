"""``securechat account delete`` with a real ``twistd`` relay and the real ``securechat``:
the password and the typed name guard it, the relay forgets the account and closes its
connections, contacts are told it was deleted, and its name stays taken for the quarantine."""

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import config as server_config
from securechat.client import settings as client_settings
from securechat.crypto.keystore import KeyStore
from tests.processes import (
    RelayEndpoint, ServerProcess, free_port, run_cli, write_client_config)
from tests.support import cleanup, expect_error, poll_until, write_config
from tests.test_password_change import OLD, password_device


async def registered(relay, tmp_path, user):
    """``user`` registered (password OLD) on ``relay``: its client ini."""
    config = write_client_config(str(tmp_path / "clients"), user, relay.port)
    result = await run_cli(config, "register")
    assert result.code == 0, result
    return config


@pytest.fixture
def alice(listening_relay, tmp_path):
    """alice registered on a twistd relay with the default quarantine: her ini and the relay."""
    config = pytest_twisted.blockon(defer.ensureDeferred(
        registered(listening_relay, tmp_path, "alice")))
    return config, listening_relay


@pytest.fixture
def no_quarantine_relay(tmp_path):
    """A twistd relay with ``[accounts] name_quarantine_days = 0``, listening."""
    data_dir = tmp_path / "relay0"
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(
        str(data_dir), port=port, extra="[accounts]\nname_quarantine_days = 0\n"))
    proc.data_dir, proc.port = data_dir, port
    proc.start()
    pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
    yield proc
    proc.stop()


def delete(config, typed="alice", password=OLD):
    """``securechat account delete`` with the password from the environment and ``typed``
    on standard input."""
    return run_cli(config, "account", "delete", password=password,
                   stdin=typed.encode() + b"\n")


def data_dir(config):
    return client_settings.load(config).data_dir


@pytest_twisted.ensureDeferred
async def test_delete_then_register_of_the_same_name_is_refused_in_quarantine(alice):
    """After `account delete` the data dir's key store is gone, and `register` of the same
    name is refused saying when the name frees (30 days by default)."""
    config, _ = alice
    result = await delete(config)
    assert result.code == 0, result
    assert "Type your user name (alice) to delete the account for good:" in result.out
    assert "account alice deleted: 1 device(s) removed" in result.out
    assert "the name alice can be registered again from " in result.out
    assert not KeyStore.exists(data_dir(config))
    again = await run_cli(config, "register")
    assert again.code == 1, again
    assert "belonged to a deleted account; it can be registered again from" in again.err
    assert not KeyStore.exists(data_dir(config))


@pytest_twisted.ensureDeferred
async def test_with_no_quarantine_the_name_is_registered_again_at_once(no_quarantine_relay,
                                                                       tmp_path):
    """With name_quarantine_days = 0 the deleted name can be registered again at once."""
    config = await registered(no_quarantine_relay, tmp_path, "alice")
    result = await delete(config)
    assert result.code == 0, result
    again = await run_cli(config, "register")
    assert again.code == 0, again
    assert again.out.startswith("registered alice")


@pytest_twisted.ensureDeferred
async def test_a_wrong_confirmation_deletes_nothing(alice):
    """Typing another name exits 1 saying nothing was deleted; the account still logs in."""
    config, _ = alice
    result = await delete(config, typed="alicia")
    assert result.code == 1, result
    assert "that is not alice: nothing was deleted" in result.err
    assert KeyStore.exists(data_dir(config))
    login = await run_cli(config, "login")
    assert login.code == 0, login


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_deletes_nothing(alice):
    """A wrong password exits 3; the account still logs in and its store is kept."""
    config, _ = alice
    result = await delete(config, password="not the password at all")
    assert result.code == 3, result
    assert KeyStore.exists(data_dir(config))
    login = await run_cli(config, "login")
    assert login.code == 0, login


@pytest_twisted.ensureDeferred
async def test_a_contact_sending_to_the_deleted_user_is_told_so(alice, tmp_path):
    """bob's `send alice` after alice deleted her account exits 6 with "alice deleted their
    account", not "no user named alice"."""
    config, relay = alice
    bob = await registered(relay, tmp_path, "bob")
    assert (await delete(config)).code == 0
    result = await run_cli(bob, "send", "alice", "hello?")
    assert result.code == 6, result
    assert "alice deleted their account" in result.err


@pytest_twisted.ensureDeferred
async def test_the_accounts_other_device_connection_is_closed(alice):
    """A second device of alice, connected, is told the account was deleted and its
    connection is closed by the relay; it cannot log in again."""
    config, relay = alice
    endpoint = RelayEndpoint(relay.port, relay.data_dir)
    other, _ = await password_device(relay, OLD, device="DEV2")
    await other.login(endpoint)  # publishes its keys: a device of the account
    closed = []
    other.protocol.closed_d.addCallback(closed.append)
    assert (await delete(config)).code == 0
    await poll_until(lambda: closed)
    assert [e for e in other.events if e.get("event") == "account_deleted"]
    again = other.again()
    await again.connect(endpoint)
    await expect_error("auth_failed", again.key_login())
    await cleanup(again)


@pytest.mark.parametrize("value, accepted", [("0", 0), ("45", 45), ("-1", None),
                                             ("soon", None)])
def test_name_quarantine_days_is_checked(tmp_path, value, accepted):
    """[accounts] name_quarantine_days takes 0 or more days; anything else stops start-up
    naming the option."""
    path = os.path.join(tmp_path, "s.ini")
    with open(path, "w") as f:
        f.write(f"[accounts]\nname_quarantine_days = {value}\n")
    if accepted is None:
        with pytest.raises(server_config.ConfigError, match=r"\[accounts\] name_quarantine_days"):
            server_config.load(path)
    else:
        assert server_config.load(path).name_quarantine_days == accepted


@pytest_twisted.ensureDeferred
async def test_a_room_the_deleted_user_owned_passes_to_its_member(alice, tmp_path):
    """alice's room passes to bob, its other member: the delete says so, bob's inbox shows
    alice leaving, and bob, now its owner, can make it invite-only."""
    config, relay = alice
    bob = await registered(relay, tmp_path, "bob")
    assert (await run_cli(config, "rooms", "create", "ops")).code == 0
    assert (await run_cli(bob, "join", "ops")).code == 0
    result = await delete(config)
    assert result.code == 0, result
    assert "room ops now belongs to bob" in result.out
    inbox = await run_cli(bob, "inbox")
    assert inbox.code == 0, inbox
    assert "alice left" in inbox.out, inbox
    mode = await run_cli(bob, "rooms", "mode", "ops", "invite-only")
    assert mode.code == 0, mode


@pytest_twisted.ensureDeferred
async def test_inviting_or_kicking_the_deleted_user_says_it_was_deleted(alice, tmp_path):
    """bob's `invite` and `kick` of alice after she deleted her account exit 6
    saying she deleted it, not that no such user exists (the name is still quarantined)."""
    config, relay = alice
    bob = await registered(relay, tmp_path, "bob")
    assert (await run_cli(bob, "rooms", "create", "ops")).code == 0
    assert (await delete(config)).code == 0
    for action in ("invite", "kick"):
        result = await run_cli(bob, action, "ops", "alice")
        assert result.code == 6, result
        assert "alice" in result.err and "deleted their account" in result.err, result
