"""Reconnects and the outbox end to end: real ``twistd -n securechat`` processes stopped with
SIGTERM and started again on the same port and data dir, and the real ``securechat`` CLI."""

import os
import shutil
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from securechat.client.session import Client
from securechat.client.settings import ClientSettings
from tests.processes import (
    RelayEndpoint, ServerProcess, free_port, run_cli, write_client_config)
from tests.support import poll_until, write_config


@pytest.fixture
def relay(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    proc = ServerProcess(tmp_path, write_config(str(data), port=port))
    proc.start()
    yield proc, port, data
    proc.stop()


async def ok(config, *args, **kw):
    result = await run_cli(config, *args, **kw)
    assert result.code == 0, result
    return result


async def restart(proc):
    """SIGTERM, then start again on the same port and data dir."""
    proc.stop()
    proc.start()
    await proc.wait_listening()


def established_to(port):
    """How many TCP connections to 127.0.0.1:``port`` are established (from /proc)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, _, state = line.split()[1:4]
            if local == f"0100007F:{port:04X}" and state == "01":
                count += 1
    return count


def queued_for(data, user):
    """The envelope ids the relay's store holds for ``user``'s devices."""
    database = sqlite3.connect(os.path.join(str(data), "securechat.sqlite3"))
    try:
        return [row[0] for row in database.execute(
            "SELECT envelope_id FROM queue WHERE user_id = ?", (user,))]
    finally:
        database.close()


def outbox_rows(data_dir):
    """How many entries a device's outbox holds (their content is sealed; the count is not)."""
    database = sqlite3.connect(os.path.join(str(data_dir), "keystore.sqlite3"))
    try:
        return database.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        database.close()


async def users(tmp_path, proc, port):
    await proc.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    bob = write_client_config(str(tmp_path / "clients"), "bob", port)
    await ok(alice, "register")
    await ok(bob, "register")
    await ok(alice, "send", "bob", "hello")  # sessions and keys exist before the outage
    assert [m["text"] for m in (await ok(bob, "inbox", "--json")).json_lines()] == ["hello"]
    return alice, bob


@pytest_twisted.ensureDeferred
async def test_inbox_wait_keeps_waiting_across_a_relay_restart(relay, tmp_path):
    """bob's `inbox --wait` has its connection when the relay is stopped (SIGTERM) and
    started again; a message alice sent during the outage (kept in her outbox, sent by her
    next command) and one after it each reach bob exactly once, the first while that
    inbox still waits (it reconnected by itself)."""
    proc, port, _ = relay
    alice, bob = await users(tmp_path, proc, port)
    waiting = defer.ensureDeferred(run_cli(bob, "inbox", "--json", "--wait", "90"))
    await poll_until(lambda: established_to(port) == 1, timeout=30)
    proc.stop()
    during = await run_cli(alice, "send", "bob", "sent during the outage")
    assert during.code == 4 and "kept in the outbox" in during.err, during
    assert not waiting.called, "the waiting inbox gave up when the relay went away"
    proc.start()
    await proc.wait_listening()
    await ok(alice, "send", "bob", "sent after the outage")
    first = await waiting
    assert first.code == 0, first
    rest = await ok(bob, "inbox", "--json")
    texts = [m["text"] for m in first.json_lines() + rest.json_lines()]
    assert texts == ["sent during the outage", "sent after the outage"], (first, rest)
    assert "sent during the outage" in first.out
    assert (await ok(bob, "inbox", "--json")).json_lines() == []


@pytest_twisted.ensureDeferred
async def test_a_message_queued_while_the_relay_is_down_is_sent_once(relay, tmp_path):
    """With the relay down, `send` exits 4 and keeps the message in the outbox (listed as
    pending), and `inbox --wait` ends at its deadline with exit 4; the first command after
    the relay is back sends the message, later ones do not send it again: the relay's
    store holds it once and bob reads it once."""
    proc, port, data = relay
    alice, bob = await users(tmp_path, proc, port)
    proc.stop()
    queued = await run_cli(alice, "send", "bob", "queued while down")
    assert queued.code == 4 and "kept in the outbox" in queued.err, queued
    listing = await ok(alice, "outbox")
    assert "to bob (pending)" in listing.out and "queued while down" in listing.out, listing
    down = await run_cli(bob, "inbox", "--wait", "1")
    assert down.code == 4 and "not connected to the server at the end" in down.err, down
    proc.start()
    await proc.wait_listening()
    await ok(alice, "login")
    assert (await ok(alice, "outbox")).out == ""
    await ok(alice, "login")
    assert len(queued_for(data, "bob")) == 1
    received = await ok(bob, "inbox", "--json")
    assert [m["text"] for m in received.json_lines()] == ["queued while down"]
    assert (await ok(bob, "inbox", "--json")).json_lines() == []


@pytest_twisted.ensureDeferred
async def test_send_wait_sends_once_the_relay_is_back(relay, tmp_path):
    """`send --wait` with the relay down keeps reconnecting and exits 0 once the relay,
    started again meanwhile, has accepted the message."""
    proc, port, _ = relay
    alice, bob = await users(tmp_path, proc, port)
    proc.stop()
    sending = defer.ensureDeferred(run_cli(alice, "send", "--wait", "60", "bob", "patient"))
    await poll_until(lambda: outbox_rows(tmp_path / "clients" / "alice") == 1, timeout=30)
    proc.start()
    await proc.wait_listening()
    result = await sending
    assert result.code == 0, result
    assert [m["text"] for m in (await ok(bob, "inbox", "--json")).json_lines()] == ["patient"]


@pytest_twisted.ensureDeferred
async def test_a_logged_in_client_reconnects_after_a_relay_restart_and_receives(
        relay, tmp_path):
    """A Client logged in (in this process) when the relay gets SIGTERM goes disconnected,
    saying the relay is shutting down (its notice), reconnects by itself once the relay is
    back, and goes on receiving (alice's next message arrives once); its states are
    reported in order."""
    proc, port, data = relay
    alice, _ = await users(tmp_path, proc, port)
    endpoint = RelayEndpoint(port, data)
    settings = ClientSettings("127.0.0.1", port, "bob", str(tmp_path / "clients" / "bob"),
                              endpoint.cert_path, None, "test")
    states, details, received = [], [], []

    def state_changed(state, detail):
        states.append(state)
        details.append(detail)

    bob = Client(reactor, settings, "correct horse battery staple",
                 on_message=received.append, on_state=state_changed)
    await bob.open()
    assert bob.state == "connected"
    proc.stop()
    await poll_until(lambda: bob.state != "connected", timeout=30)
    assert "(the relay is shutting down)" in details[states.index("disconnected")], details
    proc.start()
    await proc.wait_listening()
    await poll_until(lambda: bob.state == "connected", timeout=60)
    await ok(alice, "send", "bob", "after the restart")
    await poll_until(lambda: received and bob.receiver.idle(), timeout=30)
    await bob.disconnect()
    assert [r["text"] for r in received] == ["after the restart"]
    assert states[:3] == ["connecting", "connected", "disconnected"], states
    assert states[-2:] == ["connected", "closed"], states


@pytest_twisted.ensureDeferred
async def test_a_room_message_said_while_the_relay_is_down_is_sent_once(relay, tmp_path):
    """`say` with the relay down keeps the room message in the outbox (exit 4); the next
    command after the relay is back sends it: bob reads it in the room once."""
    proc, port, _ = relay
    alice, bob = await users(tmp_path, proc, port)
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    proc.stop()
    queued = await run_cli(alice, "say", "ops", "said while down")
    assert queued.code == 4 and "kept in the outbox" in queued.err, queued
    assert "in ops (pending)" in (await ok(alice, "outbox")).out
    proc.start()
    await proc.wait_listening()
    await ok(alice, "login")
    await ok(alice, "login")
    lines = (await ok(bob, "inbox", "--json")).json_lines()
    said = [(m["room"], m["text"], m["error"]) for m in lines if m["type"] == "msg"]
    assert said == [("ops", "said while down", None)], lines
    assert (await ok(bob, "inbox", "--json")).json_lines() == []


@pytest_twisted.ensureDeferred
async def test_a_certificate_change_during_an_outage_stops_the_reconnects(relay, tmp_path):
    """A relay that comes back with another certificate than the pinned one is not
    retried: the Client's state becomes 'closed' with the refusal, and no further
    attempt is scheduled."""
    proc, port, data = relay
    await proc.wait_listening()
    bob = write_client_config(str(tmp_path / "clients"), "bob", port)
    await ok(bob, "register")
    settings = ClientSettings("127.0.0.1", port, "bob", str(tmp_path / "clients" / "bob"),
                              "", proc.fingerprint(), "test")
    client = Client(reactor, settings, "correct horse battery staple")
    await client.open()
    proc.stop()
    shutil.rmtree(os.path.join(str(data), "tls"))  # the relay makes itself a new one
    proc.start()
    await proc.wait_listening()
    await poll_until(lambda: client.state == "closed", timeout=60)
    assert "REFUSED" in client.state_detail
    assert not client._reconnector.running
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_queued_message_refused_later_stays_listed_as_failed(relay, tmp_path):
    """A message queued for a user who does not exist is refused when the relay is back:
    it stays in the outbox marked failed with the reason (the others are sent), and
    `outbox --drop` removes it."""
    proc, port, _ = relay
    alice, bob = await users(tmp_path, proc, port)
    proc.stop()
    assert (await run_cli(alice, "send", "nobody", "lost letter")).code == 4
    assert (await run_cli(alice, "send", "bob", "real letter")).code == 4
    proc.start()
    await proc.wait_listening()
    await ok(alice, "login")
    listing = (await ok(alice, "outbox")).out.splitlines()
    assert len(listing) == 1 and "to nobody (failed: no user named nobody" in listing[0], listing
    assert [m["text"] for m in (await ok(bob, "inbox", "--json")).json_lines()] == [
        "real letter"]
    await ok(alice, "outbox", "--drop", listing[0].split()[0])
    assert (await ok(alice, "outbox")).out == ""
    missing = await run_cli(alice, "outbox", "--drop", "no-such-entry")
    assert missing.code == 1 and "no entry no-such-entry" in missing.err
