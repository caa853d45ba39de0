"""The relay's audit log: registrations, failed logins with reason and address, limits hit,
as JSON lines in a private file rotated by size; never a key, a signature or content."""

import json
import os
import stat

import pytest
import pytest_twisted
from twisted.internet import defer, task

from securechat import config as server_config
from securechat.server.audit import AuditLog
from tests.processes import RelayEndpoint, ServerProcess, free_port
from tests.support import ScriptedDevice, cleanup, poll_until, unicast, write_config
from tests.test_device_removal import publish, second_device


def events(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def relay_process(tmp_path):
    """A twistd relay with the default [audit] file (audit.jsonl in its data dir) and a
    login limit of 2 failures."""
    data_dir, port = tmp_path / "relay", free_port()
    proc = ServerProcess(tmp_path, write_config(
        str(data_dir), port=port, extra="[limits]\nlogin_failures_per_account = 2\n"))
    proc.data_dir, proc.port = data_dir, port
    proc.start()
    pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
    yield proc
    proc.stop()


@pytest_twisted.ensureDeferred
async def test_registrations_failed_logins_and_limits_are_recorded_without_secrets(
        relay_process):
    """alice and bob register and alice sends, a wrong password proof fails three times (the third is
    refused by the limit): the audit log holds the registration, each failure with its
    reason and address, in a 0600 file, and none of the keys, signatures or ciphertext
    that crossed the wire."""
    endpoint = RelayEndpoint(relay_process.port, relay_process.data_dir)
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    intruders = [ScriptedDevice("alice", device=f"EVIL{n}") for n in range(3)]
    try:
        for device in (alice, bob):
            await device.register(endpoint)
            await device.login(endpoint)
        await alice.request("send", envelopes=[unicast("bob", "DEV1", b"secret words")])
        for intruder in intruders:
            await intruder.connect(endpoint)
            with pytest.raises(Exception):
                await intruder.password_login()
        path = os.path.join(relay_process.data_dir, "audit.jsonl")
        await poll_until(lambda: os.path.exists(path) and len(events(path)) >= 5)
        recorded = [{k: v for k, v in e.items() if k != "ts"} for e in events(path)]
        assert recorded == [
            {"event": "registered", "user": "alice", "address": "127.0.0.1"},
            {"event": "registered", "user": "bob", "address": "127.0.0.1"},
            {"event": "login_failed", "user": "alice", "device": "EVIL0",
             "reason": "auth_failed", "address": "127.0.0.1"},
            {"event": "login_failed", "user": "alice", "device": "EVIL1",
             "reason": "auth_failed", "address": "127.0.0.1"},
            {"event": "login_failed", "user": "alice", "device": "EVIL2",
             "reason": "rate_limited", "address": "127.0.0.1"}]
        assert all(e["ts"].endswith("Z") for e in events(path))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = open(path, encoding="utf-8").read()
        keys = alice.device_keys()
        for secret in (alice.password_key(), keys["ed25519"], keys["curve25519"],
                       "c2VjcmV0IHdvcmRz"):  # base64 of the ciphertext sent
            assert secret not in text
    finally:
        await cleanup(alice, bob, *intruders)


def test_the_log_rotates_by_size_and_keeps_a_bounded_number_of_files(tmp_path):
    """With max_bytes 300 and keep 2, many events leave the current file and at most two
    rotated ones, none much over the limit (a line is never split)."""
    log = AuditLog(str(tmp_path / "audit.jsonl"), 300, 2, task.Clock())
    for n in range(100):
        log.record("login_failed", user=f"user{n}", reason="auth_failed", address="127.0.0.1")
    log.close()
    files = sorted(os.listdir(tmp_path))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(os.path.getsize(tmp_path / name) < 300 + 200 for name in files)
    assert events(tmp_path / "audit.jsonl")[-1]["user"] == "user99"


def test_an_empty_file_setting_turns_the_audit_log_off(tmp_path):
    """[audit] file left empty: no audit file; the default is audit.jsonl in the data dir,
    and a relative name is taken from the data dir."""
    assert server_config.load(write_config(str(tmp_path), port=7000,
                                           extra="[audit]\nfile =\n")).audit_file == ""
    assert server_config.load(None).audit_file.endswith(os.sep + "audit.jsonl")
    assert server_config.load(write_config(
        str(tmp_path), port=7000)).audit_file == str(tmp_path / "audit.jsonl")


@pytest_twisted.ensureDeferred
async def test_devices_added_and_removed_by_the_account_are_recorded(relay_process):
    """alice's device A1 publishes her list alone, then with A2, then without it: the audit
    log records A2 added and removed, each by A1 (A1, her first device, came with the
    registration), and nothing of the keys."""
    endpoint = RelayEndpoint(relay_process.port, relay_process.data_dir)
    a1 = ScriptedDevice("alice", "A1")
    a2 = second_device(a1, "A2")
    try:
        await a1.register(endpoint)
        await a1.login(endpoint)
        await publish(a1, 1, a1)
        await a2.login(endpoint)
        await publish(a1, 2, a1, a2)
        await publish(a1, 3, a1)
        path = os.path.join(relay_process.data_dir, "audit.jsonl")
        await poll_until(lambda: len(events(path)) >= 3)
        recorded = [{k: v for k, v in e.items() if k not in ("ts", "address")}
                    for e in events(path) if e["event"].startswith("device_")]
        assert recorded == [
            {"event": "device_added", "user": "alice", "device": "A2", "by": "A1"},
            {"event": "device_removed", "user": "alice", "device": "A2", "by": "A1"}]
        assert a2.device_keys()["ed25519"] not in open(path, encoding="utf-8").read()
    finally:
        await cleanup(a1, a2)
