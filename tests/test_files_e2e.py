"""Encrypted files end to end: a real ``twistd -n securechat`` relay and real ``securechat``
processes sending, interrupting, resuming and fetching files."""

import hashlib
import os
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from tests.processes import (
    DaemonProcess, ServerProcess, cli_environment, executable, free_port, run_cli,
    write_client_config)
from tests.support import poll_until, write_config

MIB = 1024 * 1024
MARKER = b"PLAINTEXT-MARKER-5e1f0c"
"""Written all through the files sent: it must never be found on the relay."""
NAME = "quarterly-secret-report.bin"
"""A file name that must never reach the relay."""


def make_file(path, size):
    """``size`` bytes of random data with MARKER every 64 KiB; its SHA-256."""
    block = os.urandom(64 * 1024 - len(MARKER)) + MARKER
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[:size % len(block)])
    return sha256_of(path)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for data in iter(lambda: f.read(MIB), b""):
            digest.update(data)
    return digest.hexdigest()


class Relay:
    """A twistd relay (SQLite) and the people registered on it."""

    def __init__(self, tmp_path, extra=""):
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "relay"
        self.port = free_port()
        self.process = ServerProcess(tmp_path, write_config(str(self.data_dir), port=self.port,
                                                            extra=extra))
        self.configs = {}

    def sql(self, statement, args=()):
        """Read (or change) the relay's database beside it."""
        connection = sqlite3.connect(str(self.data_dir / "securechat.sqlite3"), timeout=30)
        try:
            with connection:
                return connection.execute(statement, args).fetchall()
        finally:
            connection.close()

    async def register(self, *names):
        for name in names:
            self.configs[name] = write_client_config(
                str(self.tmp_path / "clients"), name, self.port,
                ca_file=os.path.join(str(self.data_dir), "tls", "server-cert.pem"))
            await self.ok(name, "register")

    async def ok(self, name, *args):
        result = await run_cli(self.configs[name], *args, timeout=300)
        assert result.code == 0, (name, args, result)
        return result

    async def run(self, name, *args):
        return await run_cli(self.configs[name], *args, timeout=300)


@pytest.fixture
def relay(tmp_path):
    relay = Relay(tmp_path)
    relay.process.start()
    pytest_twisted.blockon(defer.ensureDeferred(relay.process.wait_listening()))
    yield relay
    relay.process.stop()


@pytest.fixture
def limited_relay(tmp_path):
    relay = Relay(tmp_path, extra="[files]\nmax_size = 1 MiB\nquota = 2 MiB\n")
    relay.process.start()
    pytest_twisted.blockon(defer.ensureDeferred(relay.process.wait_listening()))
    yield relay
    relay.process.stop()


class Killable(protocol.ProcessProtocol):
    """A ``securechat`` process a test kills midway."""

    def __init__(self, config, *args):
        self.ended = defer.Deferred()
        self.transport = reactor.spawnProcess(
            self, executable("securechat"), ["securechat", "--config", str(config), *args],
            env=cli_environment("correct horse battery staple", None))

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    async def kill_when(self, check, what):
        """SIGKILL it as soon as ``check()`` holds (polled); fails when it ended first."""
        await poll_until(lambda: self.ended.called or check(), timeout=120, interval=0.005)
        assert not self.ended.called, f"it ended before {what}"
        self.transport.signalProcess("KILL")
        assert await self.ended is None  # killed, no exit code


async def send_cut_once(relay, command, target, path):
    """Run ``securechat COMMAND TARGET PATH``, kill it once the relay holds 40 chunks of
    the upload (of 320), run it again; the file id, the same both times."""
    sender = Killable(relay.configs["alice"], command, target, str(path))
    await sender.kill_when(lambda: relay.sql(
        "SELECT count(*) FROM file_chunks c JOIN files f ON f.file_id = c.file_id "
        "WHERE f.finished IS NULL")[0][0] >= 40, "40 chunks were uploaded")
    ((file_id, chunks, finished),) = relay.sql(
        "SELECT file_id, chunks, finished FROM files WHERE finished IS NULL")
    assert finished is None and 40 <= chunks < 320
    result = await relay.ok("alice", command, target, str(path))
    assert relay.sql("SELECT chunks, finished IS NOT NULL FROM files WHERE file_id = ?",
                     (file_id,)) == [(320, 1)]
    return file_id, result


@pytest_twisted.ensureDeferred
async def test_a_20_mib_file_cut_halfway_arrives_byte_equal_1to1_and_in_a_room(relay, tmp_path):
    """A 20 MiB file sent 1:1 and one sent to a room, each upload killed after 40 of its 320
    chunks and run again, resume (the same relay file) and arrive byte-equal; bob's
    download of the first, killed midway, resumes too; the relay's disk and log never
    hold the file name or a plaintext marker, and both files are deleted from the relay
    once bob's only device (their one recipient device) has them."""
    await relay.register("alice", "bob")
    await relay.ok("alice", "rooms", "create", "ops")
    await relay.ok("bob", "join", "ops")
    source = tmp_path / NAME
    digest = make_file(source, 20 * MIB)

    direct_id, _ = await send_cut_once(relay, "send-file", "bob", source)
    room_id, _ = await send_cut_once(relay, "say-file", "ops", source)
    assert relay.sql("SELECT count(*) FROM file_chunks") == [(640,)]
    assert_blind(relay)  # while the relay holds both files

    inbox = [m for m in (await relay.ok("bob", "inbox", "--json")).json_lines()
             if m["type"] == "file"]
    assert [(m["room"], m["file"]) for m in inbox] == [
        (None, {"id": direct_id, "name": NAME, "size": 20 * MIB}),
        ("ops", {"id": room_id, "name": NAME, "size": 20 * MIB})]

    out = tmp_path / "received.bin"
    part = tmp_path / "clients" / "bob" / "files" / f"{direct_id}.part"
    getter = Killable(relay.configs["bob"], "files", "get", direct_id, "--out", str(out))
    await getter.kill_when(lambda: part.exists() and part.stat().st_size >= 4 * MIB,
                           "4 MiB were downloaded")
    assert not out.exists()
    await relay.ok("bob", "files", "get", direct_id, "--out", str(out))
    assert sha256_of(out) == digest
    room_out = tmp_path / "from-the-room.bin"
    await relay.ok("bob", "files", "get", room_id, "--out", str(room_out))
    assert sha256_of(room_out) == digest

    # Every recipient device (bob's one; alice has no other) has both: the relay dropped them.
    assert relay.sql("SELECT count(*) FROM files") == [(0,)]
    assert relay.sql("SELECT count(*) FROM file_chunks") == [(0,)]
    assert_blind(relay)


def assert_blind(relay):
    """No file of the relay's data directory (its database included) and not its log holds
    the file name or the plaintext marker."""
    for directory, _, names in os.walk(relay.data_dir):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
            assert NAME.encode() not in data and MARKER not in data, name
    log = relay.process.log_text()
    assert NAME not in log and MARKER.decode() not in log


@pytest_twisted.ensureDeferred
async def test_size_and_quota_limits_are_refused_with_their_own_exit_codes(limited_relay,
                                                                           tmp_path):
    """With [files] max_size = 1 MiB and quota = 2 MiB, a 1.5 MiB file is refused as too
    large (exit 10) and the third 0.9 MiB file as over the quota (exit 11), each saying
    so; the two that fit were sent."""
    relay = limited_relay
    await relay.register("alice", "bob")
    large, small = tmp_path / "large.bin", tmp_path / "small.bin"
    make_file(large, 3 * MIB // 2)
    make_file(small, 9 * MIB // 10)
    too_large = await relay.run("alice", "send-file", "bob", str(large))
    assert too_large.code == 10 and "at most 1048576 bytes" in too_large.err, too_large
    for _ in range(2):
        await relay.ok("alice", "send-file", "bob", str(small))
        os.utime(small)  # another file to the relay: a new upload, not a resumed one
    over = await relay.run("alice", "send-file", "bob", str(small))
    assert over.code == 11 and "quota" in over.err, over
    assert len([m for m in (await relay.ok("bob", "inbox", "--json")).json_lines()
                if m["type"] == "file"]) == 2


@pytest_twisted.ensureDeferred
async def test_a_tampered_chunk_on_the_relay_is_refused_and_nothing_is_written(relay, tmp_path):
    """A chunk changed in the relay's store (its digest too, so the relay serves it) makes
    'files get' fail with exit 12 naming the problem, and leaves no file, not even a
    temporary one, in the target directory; the untouched file still arrives."""
    await relay.register("alice", "bob")
    source = tmp_path / "notes.txt"
    digest = make_file(source, 300 * 1024)
    await relay.ok("alice", "send-file", "bob", str(source))
    ((file_id,),) = relay.sql("SELECT file_id FROM files")
    ((data,),) = relay.sql("SELECT data FROM file_chunks WHERE file_id = ? AND idx = 2",
                           (file_id,))
    changed = bytes([data[0] ^ 1]) + data[1:]
    relay.sql("UPDATE file_chunks SET data = ?, digest = ? WHERE file_id = ? AND idx = 2",
              (changed, hashlib.sha256(changed).hexdigest(), file_id))
    target = tmp_path / "downloads"
    target.mkdir()
    await relay.ok("bob", "inbox")
    refused = await relay.run("bob", "files", "get", file_id, "--out", str(target))
    assert refused.code == 12 and "was refused" in refused.err, refused
    assert os.listdir(target) == []
    relay.sql("UPDATE file_chunks SET data = ?, digest = ? WHERE file_id = ? AND idx = 2",
              (data, hashlib.sha256(data).hexdigest(), file_id))
    await relay.ok("bob", "files", "get", file_id, "--out", str(target))
    assert os.listdir(target) == ["notes.txt"] and sha256_of(target / "notes.txt") == digest


@pytest_twisted.ensureDeferred
async def test_a_target_directory_that_does_not_exist_is_named_before_anything_is_fetched(
        relay, tmp_path):
    """'files get ID --out' into a directory that does not exist: exit 2 naming it, no
    partial download kept; the same command with a directory that exists then works."""
    await relay.register("alice", "bob")
    source = tmp_path / "notes.txt"
    digest = make_file(source, 100 * 1024)
    await relay.ok("alice", "send-file", "bob", str(source))
    ((file_id,),) = relay.sql("SELECT file_id FROM files")
    await relay.ok("bob", "inbox")
    missing = tmp_path / "no" / "such" / "dir" / "notes.txt"
    refused = await relay.run("bob", "files", "get", file_id, "--out", str(missing))
    assert refused.code == 2 and str(missing.parent) in refused.err, refused
    assert "internal error" not in refused.err and "nothing was fetched" in refused.err
    assert not list((tmp_path / "clients" / "bob").rglob("*.part"))
    await relay.ok("bob", "files", "get", file_id, "--out", str(tmp_path / "notes.out"))
    assert sha256_of(tmp_path / "notes.out") == digest


@pytest_twisted.ensureDeferred
async def test_a_file_saved_before_is_shown_where_it_is_not_refused(relay, tmp_path):
    """'files get ID' of a file this device saved: 'already saved ... to PATH', exit 0
    (the relay let it go once fetched); with that copy deleted: exit 6 naming where it was
    saved and why it cannot come again, not the relay's bare 'no file for you'."""
    await relay.register("alice", "bob")
    source = tmp_path / "notes.txt"
    make_file(source, 10 * 1024)
    await relay.ok("alice", "send-file", "bob", str(source))
    ((file_id,),) = relay.sql("SELECT file_id FROM files")
    await relay.ok("bob", "inbox")
    saved = tmp_path / "saved.txt"
    await relay.ok("bob", "files", "get", file_id, "--out", str(saved))
    again = await relay.ok("bob", "files", "get", file_id)
    assert again.out.strip() == f"already saved notes.txt (10.0 KiB) to {saved}", again
    saved.unlink()
    gone = await relay.run("bob", "files", "get", file_id)
    assert gone.code == 6, gone
    assert f"was saved to {saved} before, and it is no longer there" in gone.err, gone


@pytest_twisted.ensureDeferred
async def test_files_go_through_a_running_daemon_too(relay, tmp_path):
    """With alice's daemon running, send-file (a path relative to the command's directory)
    and bob's files get run on the daemons, not alone, and the file arrives byte-equal;
    'files' lists it with where it was saved."""
    await relay.register("alice", "bob")
    work = tmp_path / "work"
    work.mkdir()
    digest = make_file(work / "photo.jpg", 200 * 1024)
    daemons = [DaemonProcess(relay.configs[name], tmp_path / "clients" / name)
               for name in ("alice", "bob")]
    try:
        for daemon in daemons:
            await daemon.ready()
        sent = await run_cli(relay.configs["alice"], "send-file", "bob", "photo.jpg",
                             password=None, cwd=str(work))
        assert sent.code == 0, sent
        (message,) = [m for m in (await run_cli(relay.configs["bob"], "inbox", "--json",
                                                password=None)).json_lines()
                      if m["type"] == "file"]
        got = await run_cli(relay.configs["bob"], "files", "get", message["file"]["id"],
                            password=None, cwd=str(tmp_path))
        assert got.code == 0, got
        assert sha256_of(tmp_path / "photo.jpg") == digest
        listed = await run_cli(relay.configs["bob"], "files", "--json", password=None)
        assert [(f["name"], f["saved_to"]) for f in listed.json_lines()] == [
            ("photo.jpg", str(tmp_path / "photo.jpg"))]
    finally:
        for daemon in daemons:
            await daemon.stop()
