"""``securechat devices`` with a real ``twistd`` relay and the real ``securechat``: the
account's devices listed (this one marked), renamed, never another account's, and names
from the network shown escaped."""

import argparse
import json

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat.client.commands import show_result
from securechat.client.render import safe
from tests.processes import RelayEndpoint, run_cli, write_client_config
from tests.support import cleanup, expect_error
from tests.test_daemon import daemons  # noqa: F401 (a fixture)
from tests.test_password_change import OLD, password_device


@pytest.fixture
def alice(listening_relay, tmp_path):
    """alice registered (password OLD) on a twistd relay: her ini and the relay."""
    config = write_client_config(str(tmp_path / "clients"), "alice", listening_relay.port)
    result = pytest_twisted.blockon(defer.ensureDeferred(run_cli(config, "register")))
    assert result.code == 0, result
    return config, listening_relay


async def listed(config):
    """``securechat devices --json``: one dict a device."""
    result = await run_cli(config, "devices", "--json")
    assert result.code == 0, result
    return [json.loads(line) for line in result.out.splitlines()]


async def second_device(relay, device="SECOND"):
    """Another device of alice, logged in by her password and with its keys published."""
    scripted, _ = await password_device(relay, OLD, device)
    await scripted.login(None)
    return scripted


@pytest_twisted.ensureDeferred
async def test_devices_lists_this_device_marked_and_a_second_one_not(alice):
    """``devices --json`` lists this device with this=true and ISO UTC times; a second
    device of the account appears with this=false; the text form marks this device."""
    config, relay = alice
    (only,) = await listed(config)
    assert only["this"] is True and only["name"] == ""
    assert only["added"].endswith("Z") and only["last_seen"].endswith("Z")
    second = await second_device(relay)
    try:
        devices = {d["id"]: d for d in await listed(config)}
        assert set(devices) == {only["id"], "SECOND"}
        assert devices["SECOND"]["this"] is False and devices[only["id"]]["this"] is True
        text = await run_cli(config, "devices")
        assert text.code == 0, text
        lines = {line.split()[0]: line for line in text.out.splitlines()}
        assert lines[only["id"]].endswith("(this device)")
        assert "(this device)" not in lines["SECOND"]
    finally:
        await cleanup(second)


@pytest_twisted.ensureDeferred
async def test_a_rename_shows_on_both_devices(alice):
    """``devices rename ID NAME`` names the second device; the CLI's list and the second
    device's own ``devices.list`` both show the new name."""
    config, relay = alice
    second = await second_device(relay)
    try:
        renamed = await run_cli(config, "devices", "rename", "SECOND", "work laptop")
        assert renamed.code == 0, renamed
        assert "SECOND is now named work laptop" in renamed.out
        assert {d["id"]: d["name"] for d in await listed(config)}["SECOND"] == "work laptop"
        text = await run_cli(config, "devices")
        assert "SECOND  work laptop  added" in text.out
        seen = (await second.request("devices.list"))["devices"]
        assert {d["device"]: d["name"] for d in seen}["SECOND"] == "work laptop"
    finally:
        await cleanup(second)


@pytest_twisted.ensureDeferred
async def test_the_daemon_serves_devices_and_rename(alice, tmp_path, daemons):  # noqa: F811
    """With a daemon running, ``devices`` and ``devices rename`` work without the
    password (the daemon's methods) and give what the standalone command gives."""
    config, _ = alice
    standalone = await listed(config)
    daemon = daemons(config, tmp_path / "clients" / "alice")
    await daemon.ready()
    (mine,) = standalone
    renamed = await run_cli(config, "devices", "rename", mine["id"], "desk", password=None)
    assert renamed.code == 0, renamed
    served = await run_cli(config, "devices", "--json", password=None)
    assert served.code == 0, served
    (through_daemon,) = [json.loads(line) for line in served.out.splitlines()]
    assert through_daemon["last_seen"] >= mine["last_seen"]  # connected now (ISO order)
    assert through_daemon == {**mine, "name": "desk", "last_seen": through_daemon["last_seen"]}


@pytest_twisted.ensureDeferred
async def test_renaming_another_accounts_device_is_refused(alice, tmp_path):
    """Renaming bob's device from alice's account fails naming the device, and bob's
    device keeps its name; bob sees only his own device."""
    config, relay = alice
    bob = write_client_config(str(tmp_path / "clients"), "bob", relay.port)
    assert (await run_cli(bob, "register")).code == 0
    (bobs,) = await listed(bob)
    refused = await run_cli(config, "devices", "rename", bobs["id"], "mine now")
    assert refused.code == 1
    assert f"your account has no device {bobs['id']}" in refused.err
    assert [d["name"] for d in await listed(bob)] == [""]
    assert bobs["id"] not in {d["id"] for d in await listed(config)}


@pytest_twisted.ensureDeferred
async def test_a_hostile_name_is_refused_by_the_relay(alice):
    """A name with an escape sequence or U+202E is refused (``bad_field``) on the wire, and
    the CLI says what is wrong with it; the device keeps its name."""
    config, relay = alice
    (mine,) = await listed(config)
    for hostile in ("\x1b[31mred", "evil\u202eexe.txt", " "):
        refused = await run_cli(config, "devices", "rename", mine["id"], hostile)
        assert refused.code == 1
        assert "device name" in refused.err
    second = await second_device(relay)
    try:
        await expect_error("bad_field", second.request(
            "devices.rename", device="SECOND", name="x" * 65))
    finally:
        await cleanup(second)
    assert {d["id"]: d["name"] for d in await listed(config)} == {mine["id"]: "", "SECOND": ""}


def test_a_hostile_name_from_the_network_is_shown_escaped():
    """A name a relay answers with an escape sequence and U+202E reaches the terminal
    escaped in the text list and ASCII-escaped in --json (the relay is not trusted)."""
    hostile = "\x1b[2Jevil\u202etxt.exe"
    result = {"devices": [{"id": "D1", "name": hostile, "added": "2026-12-07T01:00:00.000Z",
                           "last_seen": None, "this": True}]}
    for as_json in (False, True):
        lines = []
        show_result(argparse.Namespace(command="devices", devices_command="list",
                                       json=as_json), result, lines.append)
        (line,) = lines
        assert "\x1b" not in line and "\u202e" not in line
        if as_json:
            assert json.loads(line)["name"] == hostile
        else:
            assert safe(hostile) in line and "last seen never" in line
