"""``securechat devices remove`` with a real ``twistd`` relay and the real ``securechat``
processes: the removed device is refused at once (exit 3, told why), its keys and queue are
gone from the relay, and a contact's daemon that cached its keys sends the next room
message on a rotated Megolm session the removed device never received, and its next 1:1
message to the other device only."""

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat.client import settings as client_settings
from securechat.crypto.device import DecryptError
from securechat.crypto.group import RoomCrypto
from securechat.crypto.keystore import KeyStore
from tests.processes import run_cli, write_client_config
from tests.test_daemon import daemons  # noqa: F401 (a fixture)
from tests.two_devices import add_device

PASSWORD = "correct horse battery staple"


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def texts(config):
    """The texts of the messages ``inbox --json`` shows (membership notices aside), each
    checked readable (no error)."""
    lines = (await ok(config, "inbox", "--json")).json_lines()
    messages = [m for m in lines if m["type"] == "msg"]
    assert all(m["error"] is None for m in messages), messages
    return [m["text"] for m in messages]


def relay_rows(relay, sql, args=()):
    """Rows of the twistd relay's own SQLite database (read as its operator could)."""
    connection = sqlite3.connect(str(relay.data_dir / "securechat.sqlite3"))
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def readable_by(config, envelope, bob_curve):
    """Whether the key store of ``config``'s device opens this room envelope."""
    store = KeyStore.open(client_settings.load(config).data_dir, PASSWORD)
    try:
        with store.transaction():
            RoomCrypto(store).decrypt(envelope["room"], envelope["from"], envelope["from_dev"],
                                      bob_curve, envelope["sid"], envelope["id"], envelope["ct"],
                                      for_history=True)
        return True
    except DecryptError:
        return False
    finally:
        store.close()


@pytest.fixture
def people(listening_relay, tmp_path):
    """alice (on two devices: A1 registered, A2 made by hand) and bob, registered on a
    twistd relay, bob owning room ops with alice in it: their inis, and the relay."""
    port = listening_relay.port

    async def setup():
        alice = write_client_config(str(tmp_path / "a1"), "alice", port)
        alice2 = write_client_config(str(tmp_path / "a2"), "alice", port)
        bob = write_client_config(str(tmp_path / "b"), "bob", port)
        await ok(alice, "register")
        await ok(bob, "register")
        await ok(bob, "rooms", "create", "ops")
        await ok(alice, "join", "ops")
        second = await add_device(alice, alice2, PASSWORD)
        return alice, alice2, second, bob

    alice, alice2, second, bob = pytest_twisted.blockon(defer.ensureDeferred(setup()))
    return alice, alice2, second, bob, listening_relay


@pytest_twisted.ensureDeferred
async def test_a_removed_device_is_refused_and_cannot_read_what_is_sent_after(
        people, daemons):  # noqa: F811
    """alice's A2 reads bob's first room message; A1 removes A2 (``devices remove``); A2's
    next command exits 3 saying it was removed; bob's daemon, which cached alice's keys
    with A2, sends the next room message on a new Megolm session that A2 cannot open (and
    the relay holds nothing more for A2), and its 1:1 message reaches A1."""
    alice, alice2, second, bob, relay = people
    bob_daemon = daemons(bob, client_settings.load(bob).data_dir)
    await bob_daemon.ready()
    await ok(bob, "say", "ops", "before the removal")
    assert await texts(alice2) == ["before the removal"]

    removed = await ok(alice, "devices", "remove", second)

    assert f"removed device {second} from alice's account" in removed.out
    refused = await run_cli(alice2, "inbox")
    assert refused.code == 3, refused
    assert f"this device ({second}) was removed from alice's account" in refused.err
    assert relay_rows(relay, "SELECT count(*) FROM devices WHERE device_id = ?",
                      (second,)) == [(0,)]

    await ok(bob, "say", "ops", "after the removal")
    await ok(bob, "send", "alice", "one to one after")
    assert await texts(alice) == ["before the removal", "after the removal",
                                  "one to one after"]
    assert relay_rows(relay, "SELECT count(*) FROM queue WHERE device_id = ?",
                      (second,)) == [(0,)]
    envelopes = [json.loads(body) for (body,) in relay_rows(
        relay, "SELECT body FROM room_history WHERE room = 'ops' ORDER BY pos")]
    before, after = [e for e in envelopes if e["kind"] == "megolm"]
    assert before["sid"] != after["sid"]  # the session was rotated
    (bob_keys,) = relay_rows(relay, "SELECT device_keys FROM devices WHERE user_id = 'bob'")
    bob_curve = json.loads(bob_keys[0])["curve25519"]
    assert readable_by(alice2, before, bob_curve)
    assert not readable_by(alice2, after, bob_curve)


@pytest_twisted.ensureDeferred
async def test_remove_refuses_this_device_and_an_unknown_one(people):
    """``devices remove`` of this very device is refused (exit 2, nothing published); of a
    device not in the list, exit 6; the second device keeps working."""
    alice, alice2, second, _, _ = people
    this = client_settings.load(alice)
    store = KeyStore.open(this.data_dir, PASSWORD)
    own = store.meta("device")
    store.close()
    itself = await run_cli(alice, "devices", "remove", own)
    assert itself.code == 2, itself
    assert f"{own} is this device" in itself.err
    unknown = await run_cli(alice, "devices", "remove", "NOSUCHDEV1")
    assert unknown.code == 6, unknown
    assert "has no device NOSUCHDEV1" in unknown.err
    await ok(alice2, "inbox")


@pytest_twisted.ensureDeferred
async def test_a_removed_devices_daemon_is_told_stops_and_exits_3(people, daemons):  # noqa: F811
    """A2's daemon, connected when A1 removes A2, gets the relay's device_removed event:
    it says "this device (ID) was removed from alice's account" and ends with exit code 3
    instead of reconnecting."""
    alice, alice2, second, _, _ = people
    daemon = daemons(alice2, client_settings.load(alice2).data_dir)
    await daemon.ready()

    await ok(alice, "devices", "remove", second)

    assert await daemon.finish() == 3
    assert f"this device ({second}) was removed from alice's account" in daemon.text()
