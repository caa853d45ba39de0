"""1:1 history from the encrypted local store: own sent lines kept once when the relay
accepted them, both directions read back by ``securechat history USER`` (relay up or
down, standalone or through the daemon), sealed at rest, and a store from before
schema 2 migrated."""

import glob
import os
import re

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from securechat.client import rpc
from securechat.client.session import Client
from securechat.client.settings import ClientSettings
from securechat.crypto.keystore import KeyStore, KeyStoreError, SCHEMA_VERSION
from tests.processes import DaemonProcess, run_cli, write_client_config
from tests.support import keep_encrypted_outbox_entries, poll_until_async

PASSWORD = "correct horse battery staple"
LINE = re.compile(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] (.*)")


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def registered(tmp_path, port, user):
    path = write_client_config(str(tmp_path / "clients"), user, port)
    await ok(path, "register")
    return path


async def conversation(tmp_path, port):
    """alice and bob registered; alice -> bob "one", bob -> alice "two", alice -> bob
    "three" (each command that connects first stores what waits for it)."""
    alice = await registered(tmp_path, port, "alice")
    bob = await registered(tmp_path, port, "bob")
    await ok(alice, "send", "bob", "one")
    await ok(bob, "send", "alice", "two")
    await ok(alice, "send", "bob", "three")
    return alice, bob


def shown(result):
    """The lines of a text ``history`` without their ``[time]``."""
    return [LINE.fullmatch(line).group(1) for line in result.out.splitlines()]


@pytest_twisted.ensureDeferred
async def test_history_user_shows_both_directions_oldest_first_with_the_relay_down(
        listening_relay, tmp_path):
    """With the relay stopped, `history bob` (standalone) prints alice's conversation with
    bob from her key store, oldest first, her own lines as 'you -> bob'."""
    proc, port = listening_relay, listening_relay.port
    alice, _ = await conversation(tmp_path, port)
    proc.stop()
    result = await ok(alice, "history", "bob")
    assert shown(result) == ["you -> bob: one", "bob (unverified): two", "you -> bob: three"]
    explicit = await ok(alice, "history", "--user", "bob")
    assert shown(explicit) == shown(result)


@pytest_twisted.ensureDeferred
async def test_history_json_marks_outgoing_and_last_gives_the_newest(listening_relay, tmp_path):
    """`history bob --json` prints inbox --json's fields plus "outgoing" (and "to");
    `--last 2` gives the two newest messages, still oldest first."""
    port = listening_relay.port
    alice, _ = await conversation(tmp_path, port)
    lines = (await ok(alice, "history", "bob", "--json")).json_lines()
    assert [(m["from"], m["to"], m["text"], m["outgoing"]) for m in lines] == [
        ("alice", "bob", "one", True), ("bob", "alice", "two", False),
        ("alice", "bob", "three", True)]
    inbox_fields = {"id", "type", "from", "from_device", "room", "text", "sent_at", "verified",
                    "error", "warning", "mid"}
    assert all(set(m) == inbox_fields | {"outgoing", "to"} | ({"status"} if m["outgoing"]
                                                               else set()) for m in lines), lines
    newest = (await ok(alice, "history", "bob", "--json", "--last", "2")).json_lines()
    assert [m["text"] for m in newest] == ["two", "three"]


@pytest_twisted.ensureDeferred
async def test_a_bare_name_of_a_room_you_are_in_still_shows_the_room(listening_relay, tmp_path):
    """`history ops` keeps showing the room ops when alice is in it (old scripts work);
    `history --user ops` is the (empty) 1:1 conversation with a user ops instead."""
    port = listening_relay.port
    alice = await registered(tmp_path, port, "alice")
    await ok(alice, "rooms", "create", "ops")
    await ok(alice, "say", "ops", "room line")
    room = await ok(alice, "history", "ops")
    assert [line.split(" ", 1)[1] for line in room.out.splitlines()] == [
        "you in ops: room line"]
    assert (await ok(alice, "history", "--user", "ops")).out == ""


@pytest_twisted.ensureDeferred
async def test_a_message_sent_from_the_daemons_outbox_after_an_outage_is_in_history_once(
        listening_relay, tmp_path):
    """Through alice's daemon: a send while the relay is down is kept (exit 4) and not in
    the history yet; after the relay is back the daemon sends it and the daemon method
    history {user, last} lists it once, as outgoing, after the earlier line."""
    proc, port = listening_relay, listening_relay.port
    alice = await registered(tmp_path, port, "alice")
    await registered(tmp_path, port, "bob")
    daemon = DaemonProcess(alice, tmp_path / "clients" / "alice")
    try:
        await daemon.ready()
        await ok(alice, "send", "bob", "before", password=None)
        proc.stop()
        await daemon.wait_for("connection to the relay: disconnected")
        kept = await run_cli(alice, "send", "bob", "during the outage", password=None)
        assert kept.code == 4 and "kept in the outbox" in kept.err, kept
        waiting = await ok(alice, "history", "bob", password=None)
        assert shown(waiting) == ["you -> bob: before"]
        proc.start()
        await proc.wait_listening()

        async def outbox_empty():
            return (await ok(alice, "outbox", password=None)).out == ""

        await poll_until_async(outbox_empty, timeout=60, interval=0.5)
        connection = rpc.DaemonConnection.find(str(tmp_path / "clients" / "alice"))
        try:
            result = await threads.deferToThread(
                connection.call, "history", {"user": "bob", "last": 10})
        finally:
            connection.close()
        assert result["more"] is False
        assert [(m["text"], m["outgoing"]) for m in result["messages"]] == [
            ("before", True), ("during the outage", True)]
    finally:
        await daemon.stop()


# -- in-process: the relay over real TLS, the client's own store -------------------------


@pytest.fixture
def server(start_relay):
    return start_relay()


def client_for(server, tmp_path, user):
    settings = ClientSettings(host="127.0.0.1", port=server.port, username=user,
                              data_dir=str(tmp_path / user), ca_file=server.cert_path,
                              server_fingerprint=None, source="test")
    return Client(reactor, settings, PASSWORD)


def store_bytes(directory):
    """Every byte of a key store on disk (its SQLite file and write-ahead log)."""
    data = b""
    for path in sorted(glob.glob(os.path.join(directory, "keystore.sqlite3*"))):
        with open(path, "rb") as f:
            data += f.read()
    return data


@pytest_twisted.ensureDeferred
async def test_a_sent_message_is_kept_sealed_and_once_when_resent_after_a_lost_answer(
        server, tmp_path):
    """The key store keeps alice's sent text only sealed (its bytes never hold it), and an
    outbox entry sent again after a lost "accepted" (duplicate_envelope) stays one record."""
    bob = client_for(server, tmp_path, "bob")
    await bob.register()
    await bob.disconnect()
    alice = client_for(server, tmp_path, "alice")
    await alice.register()
    kept = keep_encrypted_outbox_entries(alice)
    secret = "zebra crossing at 4711 sharp"
    assert await alice.send_text("bob", secret) == 1
    (entry_id, record, envelopes), = kept
    with alice.store.transaction():  # the entry as a crash before its removal leaves it
        alice.store.outbox_add(entry_id, {**record, "envelopes": envelopes})
    await alice.outbox.flush()
    assert alice.outbox_pending() == []
    history = alice.store.conversation("bob", 10)
    assert [(m["text"], m["outgoing"], m["envelopes"]) for m in history] == [
        (secret, True, [envelopes[0]["id"]])]
    await alice.disconnect()
    on_disk = store_bytes(str(tmp_path / "alice"))
    assert on_disk and secret.encode() not in on_disk and b"zebra" not in on_disk


def test_a_store_from_before_schema_2_opens_with_its_messages_filed_by_conversation(tmp_path):
    """A key store as the client before schema 2 left it (no sent table, no peer column,
    no schema_version) opens: its messages are all there, and its 1:1 ones (not the room's)
    make up the conversation history."""
    directory = str(tmp_path / "keys")
    store = KeyStore.create(directory, PASSWORD, {"user": "alice"})
    base = {"type": "msg", "room": None, "from_dev": "D", "verified": False, "error": None,
            "warning": None}
    with store.transaction():
        store.add_message("e1", {**base, "id": "e1", "from": "bob", "text": "hello",
                                 "sent_at": "2026-01-01T10:00:00.000Z"})
        store.add_message("e2", {**base, "id": "e2", "from": "bob", "room": "ops",
                                 "text": "in a room", "sent_at": "2026-01-01T10:01:00.000Z"})
        store.add_message("e3", {**base, "id": "e3", "from": "carol", "text": "other",
                                 "sent_at": "2026-01-01T10:02:00.000Z"})
    db = store._db
    db.executescript("DROP INDEX messages_peer; ALTER TABLE messages DROP COLUMN peer; "
                     "DROP TABLE sent; DELETE FROM meta WHERE key = 'schema_version';")
    store.close()
    store = KeyStore.open(directory, PASSWORD)
    try:
        assert [record["text"] for _, record in store.messages()] == [
            "hello", "in a room", "other"]
        assert [(m["text"], m["outgoing"]) for m in store.conversation("bob", 10)] == [
            ("hello", False)]
        assert store.meta("schema_version") == str(SCHEMA_VERSION)  # every step ran
    finally:
        store.close()


def test_a_store_of_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    """A key store whose schema_version is newer than this code knows is not opened: the
    error says to upgrade, and the lock is released."""
    directory = str(tmp_path / "keys")
    store = KeyStore.create(directory, PASSWORD, {"user": "alice"})
    with store.transaction():
        store.set_meta("schema_version", "99")
    store.close()
    for _ in range(2):  # the second time: not "another process is using" (lock released)
        with pytest.raises(KeyStoreError, match=r"newer securechat \(schema 99.*upgrade"):
            KeyStore.open(directory, PASSWORD)
