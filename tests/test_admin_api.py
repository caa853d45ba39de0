"""The admin API of a real relay and ``securechat-admin`` talking to it: users, rooms,
stats and a certificate reload, in lines and in JSON; a missing or wrong token refused
(and audit-logged); a relay that is not running named as such."""

import json
import os
import socket
import stat
import subprocess
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.processes import (
    RelayEndpoint, ServerProcess, executable, free_port, run_cli, write_client_config)
from securechat.client.protocol import RemoteError
from tests.support import ScriptedDevice, cleanup, poll_until, unicast, write_config
from securechat.client.exit_codes import EXIT_OUTPUT_CLOSED
from tests.test_closed_output import into_closed_pipe
from tests.test_device_removal import publish
from tests.two_devices import add_device

PASSWORD = "correct horse battery staple"  # run_cli's


def admin(config, *args):
    """``securechat-admin --config CONFIG ARGS`` run to its end: the CompletedProcess."""
    return subprocess.run([executable("securechat-admin"), "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def admin_json(config, *args):
    result = admin(config, "--json", *args)
    assert result.returncode == 0, result
    return json.loads(result.stdout)


@pytest.fixture
def relay(tmp_path):
    """A twistd relay with its operator port on a free port; alice (two devices: one
    listed, one pending) and bob registered, a room ops of alice's with bob in it."""
    data_dir, port, http_port = tmp_path / "relay", free_port(), free_port()
    config = write_config(str(data_dir), port=port, extra=f"[http]\nport = {http_port}\n")
    proc = ServerProcess(tmp_path, config)
    proc.config, proc.data_dir, proc.http_port = config, data_dir, http_port
    proc.start()
    pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
    proc.endpoint = RelayEndpoint(port, data_dir)
    devices = pytest_twisted.blockon(defer.ensureDeferred(populate(proc.endpoint)))
    proc.devices = devices
    yield proc
    pytest_twisted.blockon(cleanup(*devices))
    proc.stop()


async def populate(endpoint):
    alice, bob = ScriptedDevice("alice", "A1"), ScriptedDevice("bob", "B1")
    for device in (alice, bob):
        await device.register(endpoint)
        await device.login(endpoint)
    await publish(alice, 1, alice)  # her list: A1 alone, so A2 below is pending
    await alice.request("room.create", room="ops")
    await alice.request("room.invite", room="ops", user="bob")
    pending = ScriptedDevice("alice", "A2", password=alice.password, identity=alice.identity)
    await pending.login(endpoint)
    return alice, bob, pending


def test_users_rooms_and_stats_in_lines_and_json(relay):
    """users list / show, rooms list / show and stats: what the relay holds, a line each
    entry, or one JSON document with --json; no key anywhere in it."""
    users = admin_json(relay.config, "users", "list")["users"]
    assert [(u["user"], u["devices"]) for u in users] == [("alice", 2), ("bob", 1)]
    alice = admin_json(relay.config, "users", "show", "alice")
    assert [(d["device"], d["listed"], d["online"]) for d in alice["devices"]] == [
        ("A1", True, True), ("A2", False, True)]
    assert alice["rooms"] == {"ops": "owner"}
    rooms = {r["room"]: r for r in admin_json(relay.config, "rooms", "list")["rooms"]}
    assert rooms["ops"]["owner"] == "alice" and rooms["ops"]["members"] == 2
    ops = admin_json(relay.config, "rooms", "show", "ops")
    assert ops["members"] == {"alice": "owner", "bob": "member"}
    stats = admin_json(relay.config, "stats")
    assert (stats["accounts"], stats["devices"], stats["connections"]) == (2, 3, 3)
    lines = admin(relay.config, "users", "list").stdout.splitlines()
    assert lines[0].startswith("alice  devices 2  created ") and lines[1].startswith("bob ")
    shown = admin(relay.config, "users", "show", "alice").stdout
    assert "device A2" in shown and "(pending: being linked)" in shown and "ops (owner)" in shown
    for text in (json.dumps(alice), shown):
        assert "ed25519" not in text and "curve25519" not in text
    missing = admin(relay.config, "users", "show", "nobody")
    assert missing.returncode == 1 and "no user named 'nobody'" in missing.stderr


def test_output_into_a_closed_pipe_ends_quietly_with_141(relay):
    """``securechat-admin users list`` whose reader stopped reading: 141, no stderr."""
    result = into_closed_pipe(executable("securechat-admin"), "--config", str(relay.config),
                              "users", "list")
    assert (result.returncode, result.stderr) == (EXIT_OUTPUT_CLOSED, "")


def test_tls_reload_answers_the_fingerprint_new_connections_get(relay):
    """tls reload through the admin API: the certificate (unchanged here) is loaded again
    and its fingerprint answered, as the relay logs it."""
    done = admin_json(relay.config, "tls", "reload")
    assert done["fingerprint"] == relay.fingerprint()


def request(relay, token):
    """A GET of /admin/v1/users with ``token`` (None: no Authorization): status, body."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{relay.http_port}/admin/v1/users"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_missing_or_wrong_token_is_refused_and_every_call_is_audited(relay):
    """Without a token or with a wrong one: 401 and nothing listed; with the relay's token
    (made at its first start, 0600): the users.  The audit log has each call, refused or
    not, with the caller's address, and never the token."""
    token_path = os.path.join(relay.data_dir, "admin.token")
    assert stat.S_IMODE(os.stat(token_path).st_mode) == 0o600
    token = open(token_path).read().strip()
    assert request(relay, None)[0] == 401
    status, body = request(relay, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert status == 401 and "users" not in body
    status, body = request(relay, token)
    assert status == 200 and [u["user"] for u in body["users"]] == ["alice", "bob"]
    with open(os.path.join(relay.data_dir, "audit.jsonl")) as f:
        text = f.read()
    events = [json.loads(line) for line in text.splitlines()]
    calls = [(e["event"], e["action"]) for e in events if e["event"].startswith("admin")]
    assert calls == [("admin_refused", "GET /admin/v1/users")] * 2 + [
        ("admin", "GET /admin/v1/users")]
    assert all(e["caller"] == "127.0.0.1" for e in events if e["event"].startswith("admin"))
    assert token not in text


def raw_post(relay, head, body_parts):
    """Send a POST head and then ``body_parts`` on a plain socket until the relay closes
    it; what it answered."""
    with socket.create_connection(("127.0.0.1", relay.http_port), timeout=30) as conn:
        try:
            conn.sendall(head)
            for part in body_parts:
                conn.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed early: what was answered is read below
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_a_request_body_over_64_kib_is_refused_and_never_runs(relay):
    """An invite creation with a 1 MiB body (said by its Content-Length), and one sent in
    chunks without a length, are each answered 413 and closed while the body still comes;
    neither creates an invite."""
    token = open(os.path.join(relay.data_dir, "admin.token")).read().strip()
    start = (b"POST /admin/v1/invites HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Authorization: Bearer " + token.encode() + b"\r\n")
    filler = b" " * 65536
    by_length = raw_post(relay, start + b"Content-Length: 1048576\r\n\r\n", [filler] * 16)
    chunk = b"%x\r\n%s\r\n" % (len(filler), filler)
    by_chunks = raw_post(relay, start + b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 16)
    for answer in (by_length, by_chunks):
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"request body over 65536 bytes" in answer
    assert admin_json(relay.config, "invites", "list")["invites"] == []


def test_the_admin_tool_says_when_the_relay_is_not_running(tmp_path):
    """Nothing answers on the configured operator port: exit 1, "the relay is not
    running", in lines and in JSON."""
    config = write_config(str(tmp_path / "relay"), port=free_port(),
                          extra=f"[http]\nport = {free_port()}\n")
    os.makedirs(tmp_path / "relay", exist_ok=True)
    (tmp_path / "relay" / "admin.token").write_text("x" * 43 + "\n")
    result = admin(config, "stats")
    assert result.returncode == 1 and "the relay is not running" in result.stderr, result
    as_json = admin(config, "--json", "stats")
    assert json.loads(as_json.stdout)["error"].startswith("the relay is not running")


@pytest_twisted.ensureDeferred
async def test_disable_closes_the_accounts_connections_and_refuses_its_logins(relay):
    """users disable alice: her connections (a listed and a pending device) get the
    account_disabled event and are closed within a second of the command's answer; her
    next login, right proof and all, is refused with account_disabled; users list marks
    her; enable lets her log in again."""
    alice, _, pending = relay.devices
    done = admin(relay.config, "users", "disable", "alice")
    assert done.returncode == 0 and done.stdout == "alice disabled\n", done
    for device in (alice, pending):
        await poll_until(lambda: device.protocol.closed, timeout=1.0)
        assert [e for e in device.events if e.get("event") == "account_disabled"]
    listed = admin_json(relay.config, "users", "list")["users"]
    assert [(u["user"], u["disabled"]) for u in listed] == [("alice", True), ("bob", False)]
    again, welcome = alice.again(), alice.again()
    try:
        assert await _login_error(again, relay) == "account_disabled"
        assert admin(relay.config, "users", "enable", "alice").returncode == 0
        assert await _login_error(welcome, relay) is None
    finally:
        await cleanup(again, welcome)
    unknown = admin(relay.config, "users", "disable", "nobody")
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr


async def _login_error(device, relay):
    try:
        await device.login(relay.endpoint, upload_keys=False)
    except RemoteError as e:
        return e.code
    return None


@pytest_twisted.ensureDeferred
async def test_a_disabled_users_client_says_so_and_exits_3(relay, tmp_path):
    """carol's real client, her account disabled: `securechat inbox` exits 3 saying the
    relay's operator disabled it."""
    carol = write_client_config(str(tmp_path / "clients"), "carol", relay.endpoint.port)
    assert (await run_cli(carol, "register")).code == 0
    assert admin(relay.config, "users", "disable", "carol").returncode == 0
    refused = await run_cli(carol, "inbox")
    assert refused.code == 3, refused
    assert "the relay's operator disabled the account carol" in refused.err, refused


@pytest_twisted.ensureDeferred
async def test_delete_removes_the_account_and_quarantines_its_name(relay):
    """users delete bob: his connection gets account_deleted and closes, he is gone from
    users list and the room, and registering the name again is refused
    (name_quarantined), as after his own deletion."""
    _, bob, _ = relay.devices
    done = admin(relay.config, "users", "delete", "bob")
    assert done.returncode == 0 and done.stdout.startswith("bob deleted: 1 device(s)"), done
    await poll_until(lambda: bob.protocol.closed, timeout=1.0)
    assert [e for e in bob.events if e.get("event") == "account_deleted"]
    users = admin_json(relay.config, "users", "list")["users"]
    assert [u["user"] for u in users] == ["alice"]
    assert admin_json(relay.config, "rooms", "show", "ops")["members"] == {"alice": "owner"}
    again = ScriptedDevice("bob", "B2")
    try:
        with pytest.raises(RemoteError) as refused:
            await again.register(relay.endpoint)
        assert refused.value.code == "name_quarantined"
    finally:
        await cleanup(again)
    gone = admin(relay.config, "users", "delete", "bob")
    assert gone.returncode == 1 and "no user named 'bob'" in gone.stderr


@pytest_twisted.ensureDeferred
async def test_devices_remove_takes_a_device_out_for_good(relay):
    """devices remove alice A2 (her pending device, connected): it is told device_removed
    and closed, its login is refused for good, and bob's sends to alice need only A1
    while her signed list is unchanged (no key of A2 is handed out any more)."""
    alice, bob, pending = relay.devices
    done = admin(relay.config, "devices", "remove", "alice", "A2")
    assert done.returncode == 0 and "removed device A2 of alice" in done.stdout, done
    await poll_until(lambda: pending.protocol.closed, timeout=1.0)
    assert [e for e in pending.events if e.get("event") == "device_removed"]
    again = pending.again()
    try:
        assert await _login_error(again, relay) == "device_removed"
    finally:
        await cleanup(again)
    entry = (await bob.request("keys.query", users=["alice"]))["users"]["alice"]
    assert sorted(entry["devices"]) == ["A1"]
    accepted = await bob.request("send", envelopes=[unicast("alice", "A1")])
    assert len(accepted["accepted"]) == 1
    missing = admin(relay.config, "devices", "remove", "alice", "A2")
    assert missing.returncode == 1 and "alice has no device 'A2'" in missing.stderr


@pytest_twisted.ensureDeferred
async def test_after_an_operator_removal_the_owner_still_changes_the_list(relay, tmp_path):
    """carol's phone (listed) removed by the operator: her laptop then adds a tablet,
    publishing a list without the phone (the relay has no keys of it, and would refuse
    a list naming it), and bob's client sees the laptop and the tablet."""
    carol = write_client_config(str(tmp_path / "laptop"), "carol", relay.endpoint.port)
    phone = write_client_config(str(tmp_path / "phone"), "carol", relay.endpoint.port)
    tablet = write_client_config(str(tmp_path / "tablet"), "carol", relay.endpoint.port)
    assert (await run_cli(carol, "register")).code == 0
    phone_id = await add_device(carol, phone, PASSWORD)
    assert admin(relay.config, "devices", "remove", "carol", phone_id).returncode == 0
    tablet_id = await add_device(carol, tablet, PASSWORD)
    _, bob, _ = relay.devices
    entry = (await bob.request("keys.query", users=["carol"]))["users"]["carol"]
    assert phone_id not in entry["device_list"]["devices"]
    assert tablet_id in entry["device_list"]["devices"] and len(entry["devices"]) == 2
