"""``securechat-admin backup``, ``restore`` and ``migrate`` on real relays: a backup taken
while the relay runs restores into a relay that delivers what was queued (SQLite and
PostgreSQL), and a SQLite relay moved to PostgreSQL keeps its users, rooms and queues."""

import os
import subprocess
import uuid

import pytest
import pytest_twisted

from tests.pgserver import create_database, drop_database
from tests.processes import RelayEndpoint, ServerProcess, executable, free_port
from tests.support import ScriptedDevice, cleanup, poll_until, unicast, write_config


def admin(config, *args):
    """Run ``securechat-admin --config CONFIG ARGS`` to its end: the CompletedProcess."""
    return subprocess.run([executable("securechat-admin"), "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


class Relay:
    """A twistd relay with its own data dir and config (its store: SQLite or ``database``)."""

    def __init__(self, tmp_path, name, database=None):
        self.data_dir, self.port = tmp_path / name, free_port()
        self.config = write_config(str(self.data_dir), port=self.port, database=database)
        self.process = ServerProcess(tmp_path / name, self.config)
        self.endpoint = RelayEndpoint(self.port, self.data_dir)

    async def start(self):
        self.process.start()
        await self.process.wait_listening()

    def stop(self):
        self.process.stop()


async def queue_for_bob(relay, count=5):
    """alice and bob registered, bob offline with ``count`` envelopes from alice queued:
    ``(alice, bob, ids)`` (the devices disconnected, their keys kept for logging in)."""
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for device in (alice, bob):
        await device.register(relay.endpoint)
        await device.login(relay.endpoint)
    await alice.request("room.create", room="ops")
    await alice.request("room.invite", room="ops", user="bob")
    await bob.close()
    envelopes = [unicast("bob", "DEV1", b"queued %d" % n) for n in range(count)]
    for envelope in envelopes:
        await alice.request("send", envelopes=[envelope])
    await alice.close()
    return alice, bob, [e["id"] for e in envelopes]


async def bob_receives(relay, bob, ids):
    """bob logs in on ``relay`` by his device key and gets exactly ``ids`` from alice, in
    order, and the room still has both members."""
    bob = bob.again()
    try:
        # his queue: alice's envelopes and the relay's event of his joining the room
        assert (await bob.login(relay.endpoint, upload_keys=False))["queued"] == len(ids) + 1
        await poll_until(lambda: len(bob.envelopes()) >= len(ids) + 1)
        assert [e["envelope"]["id"] for e in bob.envelopes()
                if e["envelope"]["from"] == "alice"] == ids
        members = await bob.request("room.members", room="ops")
        assert sorted(members["members"]) == ["alice", "bob"]
    finally:
        await cleanup(bob)


async def restored_delivers(relay, backup_file, bob, ids):
    """``backup_file`` restored into the stopped ``relay``, which then delivers ``ids`` to
    bob (``bob_receives``)."""
    restored = admin(relay.config, "restore", str(backup_file))
    assert restored.returncode == 0, restored
    await relay.start()
    try:
        await bob_receives(relay, bob, ids)
    finally:
        relay.stop()


@pytest_twisted.ensureDeferred
async def test_a_backup_of_a_running_sqlite_relay_restores_into_a_relay_that_delivers(
        tmp_path):
    """backup while the relay runs (exit 0, a 0600 file); restore refused while a relay
    runs on the target's port; restored into another relay's (stopped) data dir, that
    relay delivers bob's queued envelopes to his device and knows the room."""
    first, second = Relay(tmp_path, "first"), Relay(tmp_path, "second")
    await first.start()
    try:
        _, bob, ids = await queue_for_bob(first)
        backup_file = tmp_path / "relay.backup"
        made = admin(first.config, "backup", str(backup_file))
        assert made.returncode == 0, made
        assert oct(os.stat(backup_file).st_mode & 0o777) == "0o600"
        again = admin(first.config, "backup", str(backup_file))
        assert again.returncode == 1 and "exists" in again.stderr, again
        refused = admin(first.config, "restore", str(backup_file))
        assert refused.returncode == 1, refused
        assert f"a relay is running on 127.0.0.1:{first.port}: stop it first" in refused.stderr
    finally:
        first.stop()
    await restored_delivers(second, backup_file, bob, ids)


@pytest.fixture
def databases(postgres_dsn):
    """Two fresh PostgreSQL databases on the tests' server (dropped afterwards)."""
    names = [f"sc_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    yield [create_database(postgres_dsn, name) for name in names]
    for name in names:
        drop_database(postgres_dsn, name)


@pytest_twisted.ensureDeferred
async def test_a_pg_dump_backup_of_a_running_relay_restores_into_another_database(
        tmp_path, databases):
    """With PostgreSQL, backup runs pg_dump while the relay runs; restored into an empty
    database, a relay on it delivers bob's queued envelopes."""
    first = Relay(tmp_path, "first", database=databases[0])
    second = Relay(tmp_path, "second", database=databases[1])
    await first.start()
    try:
        _, bob, ids = await queue_for_bob(first)
        backup_file = tmp_path / "relay.dump"
        made = admin(first.config, "backup", str(backup_file))
        assert made.returncode == 0, made
        assert "pg_dump" in made.stdout
    finally:
        first.stop()
    await restored_delivers(second, backup_file, bob, ids)


@pytest_twisted.ensureDeferred
async def test_migrate_moves_a_sqlite_relay_to_postgresql_with_its_users_and_queues(
        tmp_path, databases):
    """A SQLite relay with two users, a room and envelopes queued for offline bob is
    stopped and migrated into an empty PostgreSQL database; a relay on it lets alice log
    in and delivers bob's queue.  Migrating again into that (now full) database, or
    while a relay runs, is refused and changes nothing."""
    sqlite_relay = Relay(tmp_path, "sqlite")
    await sqlite_relay.start()
    try:
        alice, bob, ids = await queue_for_bob(sqlite_relay)
        running = admin(sqlite_relay.config, "migrate", "--to", databases[0])
        assert running.returncode == 1 and "stop it first" in running.stderr, running
    finally:
        sqlite_relay.stop()
    moved = admin(sqlite_relay.config, "migrate", "--to", databases[0])
    assert moved.returncode == 0, moved
    for copied in ("accounts: 2 row(s)", "devices: 2 row(s)", "rooms: 1 row(s)",
                   "room_members: 2 row(s)", "relay_identity: 1 row(s)"):
        assert copied in moved.stdout.splitlines(), moved.stdout
    assert "password" not in moved.stdout + moved.stderr
    twice = admin(sqlite_relay.config, "migrate", "--to", databases[0])
    assert twice.returncode == 1 and "already holds 2 account(s)" in twice.stderr, twice
    on_postgres = Relay(tmp_path, "pg", database=databases[0])
    await on_postgres.start()
    try:
        alice = alice.again()
        await alice.login(on_postgres.endpoint, upload_keys=False)
        await cleanup(alice)
        await bob_receives(on_postgres, bob, ids)
    finally:
        on_postgres.stop()


def test_admin_commands_explain_a_missing_database_and_a_bad_target(tmp_path):
    """A config whose SQLite file does not exist, or a --to that is not a PostgreSQL URL:
    exit 1 with one line naming the problem."""
    config = write_config(str(tmp_path / "empty"), port=free_port())
    missing = admin(config, "backup", str(tmp_path / "x.backup"))
    assert missing.returncode == 1 and "no such database" in missing.stderr, missing
    bad = admin(config, "migrate", "--to", "mysql://nope")
    assert bad.returncode == 1 and "--to takes a postgresql:// URL" in bad.stderr, bad
