"""Room history retention as the relay runs it: ``[rooms] history_days`` and
``history_max_messages`` applied by its periodic prune, with the time that stamps messages
and the time that prunes them both taken from one fake clock."""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from securechat import config as config_module
from securechat.server.rooms import DAY_MS
from securechat.server.service import PRUNE_INTERVAL, RelayService
from tests.support import RunningServer, ScriptedDevice, cleanup, new_envelope_id, poll_until
from tests.support import poll_until_async, write_config
from tests.test_store_contract import raw_sql

START = 1_800_000_000  # seconds since the epoch on the fake clock when the relay starts
RETENTION = "[rooms]\nhistory_days = 1\nhistory_max_messages = 3\n"
HOUR = 3600


@pytest.fixture(params=["sqlite", "postgres"])
def relay(request, tmp_path):
    """A relay on real TLS and a real store whose stamps and prune loop run on a task.Clock."""
    database = None if request.param == "sqlite" else request.getfixturevalue(
        "fresh_postgres_dsn")
    clock = task.Clock()
    clock.advance(START)
    settings = config_module.load(write_config(str(tmp_path / "srv"), database=database,
                                               extra=RETENTION))
    service = RelayService(settings, reactor, clock)
    service.startService()
    pytest_twisted.blockon(service.started)
    yield RunningServer(service), clock
    pytest_twisted.blockon(service.stopService())


async def say(device, room, count):
    for _ in range(count):
        await device.request("room.send", room=room, id=new_envelope_id(), kind="megolm",
                             sid="c2Vzc2lvbg", ct="Y2lwaGVydGV4dA==")


async def receive_and_ack(device, count):
    """Wait for ``count`` room messages in all, and acknowledge them (an entry a device has
    yet to receive is never pruned)."""
    def room_messages():
        return [e["envelope"] for e in device.envelopes() if e["envelope"]["kind"] == "megolm"]

    await poll_until(lambda: len(room_messages()) == count)
    await device.request("ack", ids=[envelope["id"] for envelope in room_messages()])
    return room_messages()


async def history_stamps(store):
    return [entry["created"] for entry in await store.room_history("ops", None, 100)]


@pytest_twisted.ensureDeferred
async def test_the_periodic_prune_keeps_history_days_and_max_messages(relay):
    """Messages are stamped by the relay's clock; each PRUNE_INTERVAL tick of it drops the
    entries past the newest 3, then those over a day old, and no others."""
    server, clock = relay
    store = server.service.store
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for device in (alice, bob):
        await device.register(server)
        await device.login(server)
    await alice.request("room.create", room="ops", password=None)
    await bob.request("room.join", room="ops", password=None)

    await say(alice, "ops", 2)
    clock.advance(12 * HOUR)
    await say(alice, "ops", 3)
    received = await receive_and_ack(bob, 5)
    first, later = START * 1000, (START + 12 * HOUR) * 1000
    assert [envelope["ts"] for envelope in received] == [first] * 2 + [later] * 3
    assert await history_stamps(store) == [first] * 2 + [later] * 3  # no tick yet

    await next_tick(server, clock, PRUNE_INTERVAL)  # history_max_messages = 3: two go
    await poll_until_async(lambda: _equals(history_stamps(store), [later] * 3))

    clock.advance(12 * HOUR)  # the three are 12 h and a minute old: kept
    await say(alice, "ops", 1)
    await receive_and_ack(bob, 6)
    newest = (START + 24 * HOUR + PRUNE_INTERVAL) * 1000
    await next_tick(server, clock, PRUNE_INTERVAL)  # max 3 again; none is a day old yet
    await poll_until_async(lambda: _equals(history_stamps(store), [later] * 2 + [newest]))

    await next_tick(server, clock, DAY_MS // 1000 - 12 * HOUR)  # the two from 12 h: a day old
    await poll_until_async(lambda: _equals(history_stamps(store), [newest]))
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_the_periodic_prune_sweeps_rows_left_for_a_removed_device(relay):
    """A queue row left for a device removed meanwhile (what a send racing the removal
    commits; written here directly) goes at the prune's next turn; the queue of the device
    that stays is kept."""
    server, clock = relay
    store, database = server.service.store, server.service.config.database
    await store.create_account("alice", "hash", "idkey")
    for name in ("A1", "A2"):
        await store.set_device_keys("alice", name, f'{{"device":"{name}"}}', "sig")
    await store.set_device_list("alice", 1, "list", "sig", ["A1", "A2"], 600_000)
    await store.enqueue([{"id": "kept", "sender": "bob", "sender_device": "B1",
                          "recipients": [("alice", "A1")], "body": "{}"}])
    await store.remove_device("alice", "A2")
    raw_sql(database, "INSERT INTO queue (user_id, device_id, seq, envelope_id, body, "
                      "digest, created) VALUES ('alice', 'A2', 1000, 'late', '{}', 'x', 0)")
    await next_tick(server, clock, PRUNE_INTERVAL)
    await poll_until(lambda: raw_sql(database, "SELECT device_id FROM queue") == [("A1",)])


async def next_tick(server, clock, seconds):
    """Advance ``clock`` by ``seconds`` once the prune loop waits for its next turn: a
    turn still running (it reads the store) when the clock passes its next time would
    take that time as missed, and the loop would wait for the one after."""
    await poll_until(lambda: server.service._pruner.call is not None)
    clock.advance(seconds)


async def _equals(stamps, expected):
    return await stamps == expected

