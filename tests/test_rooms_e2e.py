"""Rooms end to end: real ``securechat`` processes against a relay (in-process, to count
what the sender sent and to play the server with its own store)."""

import json
import secrets

import pytest
import pytest_twisted

from tests.processes import run_cli, write_client_config
from tests.test_client_security import record_lines


@pytest.fixture
def server(start_relay):
    return start_relay()


class People:
    def __init__(self, server, tmp_path):
        self.server = server
        self.tmp_path = tmp_path
        self.configs = {}

    async def register(self, *names):
        for name in names:
            self.configs[name] = write_client_config(
                str(self.tmp_path / "clients"), name, self.server.port,
                ca_file=self.server.cert_path)
            await self.ok(name, "register")

    async def ok(self, name, *args, env_password=None):
        extra = {"SECURECHAT_ROOM_PASSWORD": env_password} if env_password else None
        result = await run_cli(self.configs[name], *args, extra_env=extra)
        assert result.code == 0, (name, args, result)
        return result

    async def texts(self, name, room="ops"):
        lines = (await self.ok(name, "inbox", "--json")).json_lines()
        return [m["text"] if not m["error"] else ("ERROR", m["error"])
                for m in lines if m["type"] == "msg" and m["room"] == room]


async def inject_for(server, user, body):
    """As the server: put a stored envelope into ``user``'s queue under a new id."""
    store = server.service.store
    (device,) = [d["device"] for d in await store.get_devices(user)]
    envelope = json.loads(body)
    envelope["id"] = secrets.token_hex(16)
    await store.enqueue([{"id": envelope["id"], "sender": envelope["from"],
                          "sender_device": envelope["from_dev"],
                          "recipients": [(user, device)], "body": json.dumps(envelope)}])


@pytest_twisted.ensureDeferred
async def test_room_lifecycle_offline_leave_and_late_join(server, tmp_path):
    """Offline member gets both messages; a leaver can't decrypt later ones; a late joiner can't read earlier ones; one ciphertext per message."""
    received = record_lines(server)
    people = People(server, tmp_path)
    await people.register("alice", "bob", "carol", "dave")
    await people.ok("alice", "rooms", "create", "ops")
    await people.ok("bob", "join", "ops")
    await people.ok("carol", "join", "ops")
    before = len(received)
    await people.ok("alice", "say", "ops", "first")
    await people.ok("alice", "say", "ops", "second")
    sent = [json.loads(line) for line in received[before:]]
    room_sends = [f for f in sent if f.get("op") == "room.send"]
    assert len(room_sends) == 2 and all(f["kind"] == "megolm" for f in room_sends)
    assert all(e["kind"] == "olm" for f in sent if f.get("op") == "send" for e in f["envelopes"])
    assert await people.texts("bob") == ["first", "second"]
    assert await people.texts("carol") == ["first", "second"]

    await people.ok("bob", "leave", "ops")
    await people.ok("alice", "say", "ops", "after bob left")
    assert await people.texts("carol") == ["after bob left"]
    assert await people.texts("bob") == []
    (last,) = (await server.service.store.room_history("ops", None, 1))
    await inject_for(server, "bob", last["body"])
    (leaked,) = await people.texts("bob")
    assert leaked[0] == "ERROR" and "not decryptable on this device" in leaked[1]

    await people.ok("dave", "join", "ops")
    await people.ok("alice", "say", "ops", "welcome dave")
    assert await people.texts("dave") == ["welcome dave"]
    history = (await people.ok("dave", "history", "ops")).out.splitlines()
    assert [line.split(": ", 1)[1] for line in history] == [
        "(not decryptable on this device)"] * 3 + ["welcome dave"]
    carol_history = (await people.ok("carol", "history", "ops")).out
    assert "first" in carol_history and "welcome dave" in carol_history


@pytest_twisted.ensureDeferred
async def test_wrong_room_password_leaves_no_trace(server, tmp_path):
    """A wrong password is refused and bob is not a member afterwards; the right one admits him."""
    people = People(server, tmp_path)
    await people.register("alice", "bob")
    await people.ok("alice", "rooms", "create", "vault", "--password",
                    env_password="open sesame")
    refused = await run_cli(people.configs["bob"], "join", "vault", "--password",
                            extra_env={"SECURECHAT_ROOM_PASSWORD": "guess"})
    assert refused.code != 0 and "wrong password" in refused.err
    assert await server.service.store.room_members("vault") == ["alice"]
    assert "vault" not in (await people.ok("bob", "rooms", "list")).out
    await people.ok("bob", "join", "vault", "--password", env_password="open sesame")
    assert await server.service.store.room_members("vault") == ["alice", "bob"]


@pytest.fixture
def alice_broadcasts(start_relay):
    return start_relay(extra="[broadcast]\nadmins = alice\n")


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_everyone_encrypted(alice_broadcasts, tmp_path):
    """A broadcast by a server admin is one Megolm ciphertext that every other user
    decrypts; a user who is no admin cannot learn whom to encrypt it for."""
    people = People(alice_broadcasts, tmp_path)
    await people.register("alice", "bob", "carol")
    await people.ok("alice", "broadcast", "maintenance at noon")
    for name in ("bob", "carol"):
        assert await people.texts(name, room="everyone") == ["maintenance at noon"]
    refused = await run_cli(people.configs["bob"], "broadcast", "hello all")
    assert refused.code == 1 and "admins only" in refused.err, refused


@pytest.fixture
def anyone_broadcasts(start_relay):
    return start_relay(extra="[broadcast]\nsenders = anyone\n")


@pytest_twisted.ensureDeferred
async def test_with_senders_anyone_a_user_who_is_no_admin_broadcasts(anyone_broadcasts,
                                                                      tmp_path):
    """With [broadcast] senders = anyone (and no admins), a user's `securechat broadcast`
    works end to end: every other user decrypts it."""
    people = People(anyone_broadcasts, tmp_path)
    await people.register("alice", "bob", "carol")
    await people.ok("bob", "broadcast", "hello all")
    for name in ("alice", "carol"):
        assert await people.texts(name, room="everyone") == ["hello all"]
