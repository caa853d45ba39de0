"""What a hostile or curious server gets: ciphertext only; and what it can't do unnoticed.

The relay runs in-process so the test can record every line it receives and
play the attacker with direct access to its store; the users are real
``securechat`` CLI processes.
"""

import json
import os
import secrets
import sqlite3

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from securechat import wire
from securechat.crypto.keystore import KeyStore
from tests.processes import run_cli, write_client_config

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server(start_relay):
    return start_relay()


def record_lines(server):
    """Keep a copy of every byte the relay receives (after TLS, before parsing), as lines."""
    received = []
    factory = server.service.factory
    build = factory.buildProtocol

    def recording(addr):
        protocol = build(addr)
        handle = protocol.dataReceived
        partial = [b""]

        def record(data):
            *lines, partial[0] = (partial[0] + data).split(b"\n")
            received.extend(lines)
            handle(data)

        protocol.dataReceived = record
        return protocol

    factory.buildProtocol = recording
    return received


def record_log():
    lines = []

    def observer(event):
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observer)
    return lines, lambda: globalLogPublisher.removeObserver(observer)


async def users(server, tmp_path, *names):
    configs = {}
    for name in names:
        configs[name] = write_client_config(str(tmp_path / "clients"), name, server.port,
                                            ca_file=server.cert_path)
        result = await run_cli(configs[name], "register")
        assert result.code == 0, result
    return configs


def file_bytes(directory):
    data = b""
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            data += f.read()
    return data


@pytest_twisted.ensureDeferred
async def test_server_sees_no_plaintext_and_key_store_holds_no_clear_keys(server, tmp_path):
    """After a conversation no plaintext is in the received lines, the database or the log; the key store has no clear keys."""
    received = record_lines(server)
    log_lines, stop_log = record_log()
    try:
        cfg = await users(server, tmp_path, "alice", "bob")
        plaintexts = [f"secret-{secrets.token_hex(6)}" for _ in range(4)]
        for i, text in enumerate(plaintexts):
            sender, recipient = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
            assert (await run_cli(cfg[sender], "send", recipient, text)).code == 0
        got = (await run_cli(cfg["bob"], "inbox", "--json")).json_lines()
        got += (await run_cli(cfg["alice"], "inbox", "--json")).json_lines()
        assert sorted(m["text"] for m in got) == sorted(plaintexts)
    finally:
        stop_log()
    database = server.service.config.database
    dump = "\n".join(sqlite3.connect(database).iterdump()).encode()
    wire_bytes = b"\n".join(received)
    log_text = "\n".join(log_lines).encode()
    assert received and dump and log_text
    for text in plaintexts:
        needle = text.encode()
        assert needle not in wire_bytes and needle not in dump and needle not in log_text
        assert PASSWORD.encode() not in wire_bytes + dump + log_text
    for name in ("alice", "bob"):
        directory = str(tmp_path / "clients" / name)
        on_disk = file_bytes(directory)
        for text in plaintexts:
            assert text.encode() not in on_disk
        store = KeyStore.open(directory, PASSWORD)
        seed = bytes.fromhex(store.secret("identity_seed"))
        pickle_key = store.pickle_key
        store.close()
        for secret in (seed, seed.hex().encode(), wire.b64encode(seed).encode(), pickle_key):
            assert secret not in on_disk
        assert (os.stat(os.path.join(directory, "keystore.sqlite3")).st_mode & 0o077) == 0


async def steal_queued(server, user):
    """As the server operator: take the envelope waiting for ``user`` out of the queue."""
    store = server.service.store
    rows = await store.fetch_queue(user, await device_of(server, user), 0, 10)
    assert len(rows) == 1
    return rows[0]


async def device_of(server, user):
    devices = await server.service.store.get_devices(user)
    return devices[0]["device"]


async def inject(server, user, body):
    device = await device_of(server, user)
    envelope = json.loads(body)
    envelope["id"] = secrets.token_hex(16)
    await server.service.store.enqueue([{
        "id": envelope["id"], "sender": envelope["from"], "sender_device": envelope["from_dev"],
        "recipients": [(user, device)], "body": json.dumps(envelope)}])
    return envelope["id"]


@pytest_twisted.ensureDeferred
async def test_tampered_and_replayed_envelopes_are_reported(server, tmp_path):
    """A bit flipped in the ciphertext and a replay under a new id are reported, never shown as text."""
    cfg = await users(server, tmp_path, "alice", "bob")
    assert (await run_cli(cfg["alice"], "send", "bob", "the original")).code == 0
    original = await steal_queued(server, "bob")
    envelope = json.loads(original["body"])
    raw = bytearray(wire.b64decode(envelope["ct"]))
    raw[len(raw) // 2] ^= 0x01
    tampered = json.dumps({**envelope, "ct": wire.b64encode(bytes(raw))})
    await server.service.store.ack("bob", await device_of(server, "bob"), [original["id"]])
    await inject(server, "bob", tampered)
    await inject(server, "bob", original["body"])
    first = (await run_cli(cfg["bob"], "inbox", "--json")).json_lines()
    assert [m["text"] for m in first] == [None, "the original"]
    assert first[0]["error"] and "tampered" in first[0]["error"]
    await inject(server, "bob", original["body"])
    human = await run_cli(cfg["bob"], "inbox")
    assert human.code == 0 and "could not decrypt" in human.out and "the original" not in human.out
