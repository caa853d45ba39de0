"""With real CLI processes: SAS verification, a changed identity key blocking sends (the
chat: tests/test_chat.py)."""

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.processes import run_cli, write_client_config
from tests.support import poll_until_async


@pytest.fixture
def server(start_relay):
    return start_relay()


async def register(server, tmp_path, name, where="clients"):
    config = write_client_config(str(tmp_path / where), name, server.port, ca_file=server.cert_path)
    result = await run_cli(config, "register")
    assert result.code == 0, result
    return config


async def queued(server, user):
    devices = await server.service.store.get_devices(user)
    return sum([await server.service.store.queue_length(user, d["device"]) for d in devices])


def emoji_line(output):
    lines = output.splitlines()
    return lines[lines.index(next(l for l in lines if l.startswith("Compare with"))) + 1]


@pytest_twisted.ensureDeferred
async def test_sas_verification_marks_both_verified(server, tmp_path):
    """Both run `verify`, see the same emoji, answer y, and then show each other as verified."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    assert (await run_cli(alice, "send", "bob", "hello")).code == 0
    assert (await run_cli(bob, "inbox")).code == 0
    started = defer.ensureDeferred(run_cli(alice, "verify", "bob", stdin=b"y\n"))
    await poll_until_async(lambda: queued(server, "bob"), timeout=60)
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)
    assert "bob is verified" in initiator.out and "alice is verified" in responder.out
    assert emoji_line(initiator.out) == emoji_line(responder.out)
    assert (await run_cli(alice, "send", "bob", "now verified")).code == 0
    (message,) = (await run_cli(bob, "inbox", "--json")).json_lines()
    assert message["text"] == "now verified" and message["verified"] is True


@pytest_twisted.ensureDeferred
async def test_changed_identity_key_blocks_sending_until_trusted(server, tmp_path):
    """When bob's identity key changes, alice is warned and blocked (exit 7) until `trust bob`."""
    alice = await register(server, tmp_path, "alice")
    await register(server, tmp_path, "bob")
    assert (await run_cli(alice, "send", "bob", "first")).code == 0
    database = sqlite3.connect(server.service.config.database)
    with database:
        for table in ("accounts", "devices", "device_lists", "one_time_keys", "fallback_keys", "queue"):
            database.execute(f"DELETE FROM {table} WHERE user_id = 'bob'")
    database.close()
    new_bob = await register(server, tmp_path, "bob", where="bob-new-phone")
    blocked = await run_cli(alice, "send", "bob", "second")
    assert blocked.code == 7 and "identity key changed" in blocked.err, blocked
    trusted = await run_cli(alice, "trust", "bob")
    assert trusted.code == 0 and "accepted bob's new identity key" in trusted.out
    assert (await run_cli(alice, "send", "bob", "third")).code == 0
    texts = [m["text"] for m in (await run_cli(new_bob, "inbox", "--json")).json_lines()]
    assert texts == ["third"]
