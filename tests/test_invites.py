"""Registration policy and invites with a real relay, ``securechat-admin`` and the real
``securechat``: an invite-only relay refuses a registration without an invite and takes
one with it, as many times as the invite allows; a closed relay registers nobody; the
default policy follows the listening address."""

import json
import os
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import config as server_config
from tests.processes import ServerProcess, executable, free_port, run_cli, write_client_config
from tests.support import write_config


def admin(config, *args):
    return subprocess.run([executable("securechat-admin"), "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def relay_with(tmp_path, policy):
    """A twistd relay whose [accounts] registration is ``policy`` (started, not yet
    listening: wait for it)."""
    data_dir, port = tmp_path / "relay", free_port()
    config = write_config(str(data_dir), port=port, extra=(
        f"[http]\nport = {free_port()}\n[accounts]\nregistration = {policy}\n"))
    proc = ServerProcess(tmp_path, config)
    proc.config, proc.data_dir, proc.port = config, data_dir, port
    proc.start()
    return proc


def listening(tmp_path, policy):
    """A fixture's body: the relay of ``policy``, listening, stopped after the test."""
    proc = relay_with(tmp_path, policy)
    pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
    yield proc
    proc.stop()


@pytest.fixture
def invite_only(tmp_path):
    yield from listening(tmp_path, "invite")


@pytest.fixture
def closed(tmp_path):
    yield from listening(tmp_path, "closed")


def client(relay, tmp_path, user):
    return write_client_config(str(tmp_path / "clients"), user, relay.port)


@pytest_twisted.ensureDeferred
async def test_an_invite_only_relay_takes_a_registration_with_an_invite_as_often_as_it_allows(
        invite_only, tmp_path):
    """Without an invite: exit 3 naming --invite.  An invite for 2 uses registers alice and
    bob and is then used up (carol: exit 3, nothing kept); invites list shows what is
    left; a revoked invite registers nobody; the audit log never holds a token or a
    password."""
    relay = invite_only
    alice, bob, carol = (client(relay, tmp_path, u) for u in ("alice", "bob", "carol"))
    refused = await run_cli(alice, "register")
    assert refused.code == 3 and "--invite TOKEN" in refused.err, refused
    made = admin(relay.config, "--json", "invites", "create", "--uses", "2")
    assert made.returncode == 0, made
    token = json.loads(made.stdout)["token"]
    listed = json.loads(admin(relay.config, "--json", "invites", "list").stdout)["invites"]
    assert [i["uses_left"] for i in listed] == [2]
    for config in (alice, bob):
        assert (await run_cli(config, "register", "--invite", token)).code == 0
    used_up = await run_cli(carol, "register", "--invite", token)
    assert used_up.code == 3 and "used up" in used_up.err, used_up
    assert not os.listdir(os.path.join(str(tmp_path / "clients"), "carol"))
    assert json.loads(admin(relay.config, "--json", "invites", "list").stdout) == {
        "invites": []}
    second = json.loads(admin(relay.config, "--json", "invites", "create").stdout)
    revoked = admin(relay.config, "invites", "revoke", second["id"])
    assert revoked.returncode == 0, revoked
    assert (await run_cli(carol, "register", "--invite", second["token"])).code == 3
    audit = open(os.path.join(relay.data_dir, "audit.jsonl")).read()
    assert token not in audit and second["token"] not in audit
    assert "correct horse battery staple" not in audit  # run_cli's password


@pytest_twisted.ensureDeferred
async def test_a_closed_relay_registers_nobody(closed, tmp_path):
    """registration = closed: register exits 3 saying the relay registers no new
    accounts, with or without an invite."""
    alice = client(closed, tmp_path, "alice")
    for extra in ((), ("--invite", "x" * 22)):
        refused = await run_cli(alice, "register", *extra)
        assert refused.code == 3 and "registers no new accounts" in refused.err, refused


@pytest.mark.parametrize("interface, policy", [
    ("127.0.0.1", "open"), ("::1", "open"), ("0.0.0.0", "invite"), ("10.0.0.5", "invite")])
def test_the_default_policy_is_open_only_on_a_loopback_relay(tmp_path, interface, policy):
    """Left out, registration is open on a relay nobody else can reach and by invitation
    on any other; a wrong value is named."""
    path = tmp_path / "relay.ini"
    path.write_text(f"[server]\ninterface = {interface}\n")
    assert server_config.load(str(path)).registration == policy
    path.write_text("[accounts]\nregistration = sometimes\n")
    with pytest.raises(server_config.ConfigError, match="must be open, invite or closed"):
        server_config.load(str(path))
