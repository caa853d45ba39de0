"""DeliveryCursor against a real SQLite store: order, exactly once per connection, and what a
device learns from the frames' numbers."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import capturedLogs

from securechat.server.directory import DeviceDirectory
from securechat.server.outage import OutageLog
from securechat.server.protocol import WriteGate
from securechat.server.relay import READ_RETRY_SECONDS, DeliveryCursor, Relay
from securechat.store import make_store
from securechat.store.errors import StoreUnavailable
from tests.support import poll_until


@pytest.fixture
def store(tmp_path):
    store = make_store(str(tmp_path / "store.sqlite3"), str(tmp_path))
    pytest_twisted.blockon(defer.ensureDeferred(store.start()))
    yield store
    pytest_twisted.blockon(defer.ensureDeferred(store.stop()))


async def bob_device(store):
    await store.create_account("bob", "hash", "idkey")
    await store.set_device_keys("bob", "B1", '{"device":"B1"}', "sig")
    await store.create_account("carol", "hash", "idkey")
    await store.set_device_keys("carol", "C1", '{"device":"C1"}', "sig")


async def enqueue(store, envelope_id, recipients=(("bob", "B1"),)):
    body = json.dumps({"id": envelope_id})
    ((seq, _),) = await store.enqueue([{"id": envelope_id, "sender": "alice",
                                        "sender_device": "A1", "recipients": list(recipients),
                                        "body": body}])
    return seq, body.encode("utf-8")


class Pushed:
    def __init__(self):
        self.frames = []

    def __call__(self, line):
        self.frames.append(json.loads(line))

    def ids(self):
        return [frame["envelope"]["id"] for frame in self.frames]


def cursor_for(store, pushed, gate=None):
    return DeliveryCursor(store, "bob", "B1", pushed, gate or WriteGate())


@pytest_twisted.ensureDeferred
async def test_backlog_then_live_envelopes_each_once_in_order(store):
    """The stored backlog comes first; an envelope committed while it is being read is
    pushed once; a repeated announcement is ignored; later ones go straight out."""
    await bob_device(store)
    for i in range(3):
        await enqueue(store, f"old{i}")
    pushed = Pushed()
    cursor = cursor_for(store, pushed)
    pumping = cursor.pump()
    during = await enqueue(store, "during")
    cursor.notify(*during)
    await pumping
    cursor.notify(*during)
    cursor.notify(*await enqueue(store, "live"))
    assert pushed.ids() == ["old0", "old1", "old2", "during", "live"]


@pytest_twisted.ensureDeferred
async def test_frames_number_the_connection_pushes_not_the_store_sequence(store):
    """The store numbers every envelope of every device in one sequence; frames count
    this connection's pushes instead (1, 2, 3 ...), so bob cannot tell how much carol gets."""
    await bob_device(store)
    for i in range(5):
        await enqueue(store, f"to-carol{i}", [("carol", "C1")])
    await enqueue(store, "first")
    pushed = Pushed()
    cursor = cursor_for(store, pushed)
    await cursor.pump()
    seq, body = await enqueue(store, "second")
    assert seq == 7
    cursor.notify(seq, body)
    assert [(frame["seq"], frame["envelope"]["id"]) for frame in pushed.frames] == [
        (1, "first"), (2, "second")]


async def send_to_room(store, envelope_id):
    body = json.dumps({"id": envelope_id})
    ((seq, pos),) = await store.enqueue([{"id": envelope_id, "sender": "alice",
                                          "sender_device": "A1", "recipients": [],
                                          "body": body, "history": "ops"}])
    return seq, body.encode("utf-8"), envelope_id, ("ops", pos)


@pytest_twisted.ensureDeferred
async def test_the_cursor_names_the_room_entries_it_pushed_once(store):
    """Room entries read from the store and pushed live are remembered with their place in
    the room, handed out once for their ack; 1:1 envelopes and unknown ids are left to be
    looked up by id."""
    await bob_device(store)
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    await send_to_room(store, "r1")
    await enqueue(store, "direct")
    pushed = Pushed()
    cursor = cursor_for(store, pushed)
    await cursor.pump()
    cursor.notify(*await send_to_room(store, "r2"))
    assert pushed.ids() == ["r1", "direct", "r2"]
    ids = ["r1", "direct", "r2", "unknown"]
    unknown, positions = cursor.acknowledged(ids)
    assert (unknown, positions) == (["direct", "unknown"], {"ops": [1, 2]})
    assert cursor.acknowledged(ids) == (ids, {})
    assert await store.ack("bob", "B1", unknown, positions) == 3


@pytest_twisted.ensureDeferred
async def test_the_cursor_remembers_a_bounded_number_of_room_entries(store, monkeypatch):
    """A client that never acknowledges cannot grow the relay's memory: past the bound the
    oldest entries are forgotten (their ack is then looked up by id)."""
    monkeypatch.setattr("securechat.server.relay.REMEMBERED_ROOM_ENTRIES", 3)
    await bob_device(store)
    await store.create_room("ops", "alice", None)
    await store.add_member("ops", "bob")
    pushed = Pushed()
    cursor = cursor_for(store, pushed)
    await cursor.pump()
    for i in range(5):
        cursor.notify(*await send_to_room(store, f"r{i}"))
    assert len(pushed.frames) == 5
    assert cursor.acknowledged([f"r{i}" for i in range(5)]) == (["r0", "r1"], {"ops": [3, 4, 5]})
    assert await store.ack("bob", "B1", ["r4"]) == 1
    assert await store.queue_length("bob", "B1") == 0


@pytest_twisted.ensureDeferred
async def test_a_reader_too_slow_for_live_envelopes_gets_them_from_the_store(store,
                                                                           monkeypatch):
    """Once a caught-up connection's send buffer is full, new envelopes are pushed into
    it only up to a bounded overflow (the relay's memory would otherwise grow with every
    message of a busy room); the rest stay in the store and follow, in order, when the
    buffer has room again."""
    monkeypatch.setattr("securechat.server.relay.LIVE_OVERFLOW_BYTES", 20)
    await bob_device(store)
    pushed, gate = Pushed(), WriteGate()
    cursor = cursor_for(store, pushed, gate)
    await cursor.pump()
    cursor.notify(*await enqueue(store, "first"))
    gate.pauseProducing()  # what the transport does past its high-water mark
    for i in range(3):  # bodies of 15 bytes: only the first fits in the overflow
        cursor.notify(*await enqueue(store, f"held{i}"))
    await store.queue_length("bob", "B1")  # a store round trip: nothing was waiting on it
    assert pushed.ids() == ["first", "held0"]
    gate.resumeProducing()
    await poll_until(lambda: len(pushed.frames) == 4)
    cursor.notify(*await enqueue(store, "live"))
    assert pushed.ids() == ["first", "held0", "held1", "held2", "live"]


class UnreachableOnce:
    """The real store, except that its first read fails as in a database restart."""

    def __init__(self, store):
        self._store = store
        self.failed = False

    def fetch_queue(self, *args):
        if not self.failed:
            self.failed = True
            return defer.fail(StoreUnavailable("ConnectionDead"))
        return self._store.fetch_queue(*args)


@pytest_twisted.ensureDeferred
async def test_a_cursor_reads_again_after_the_store_was_unavailable(store):
    """A read refused by an unreachable store is logged as the outage (a warning, no
    traceback) and made again READ_RETRY_SECONDS later: the backlog arrives by itself."""
    await bob_device(store)
    await enqueue(store, "waiting")
    clock, pushed = task.Clock(), Pushed()
    relay = Relay(UnreachableOnce(store), DeviceDirectory(store), clock, OutageLog(clock))
    session = type("Session", (), {"push_line": pushed, "gate": WriteGate()})()
    with capturedLogs() as events:
        await relay.attach("bob", "B1", session).pump()
        assert pushed.ids() == []
        clock.advance(READ_RETRY_SECONDS)
        await poll_until(lambda: pushed.ids() == ["waiting"])
    assert [event.get("what") for event in events] == [StoreUnavailable.log_message]
    assert not any("log_failure" in event for event in events)


@pytest_twisted.ensureDeferred
async def test_a_reader_falling_behind_mid_page_gets_the_rest_of_the_page_later(store,
                                                                              monkeypatch):
    """A page of the backlog is pushed only while the send buffer has room (plus the bounded
    overflow): once the transport says it is full, the rest of the page stays in the store
    and follows, in order and once, when the buffer has drained."""
    monkeypatch.setattr("securechat.server.relay.LIVE_OVERFLOW_BYTES", 20)
    await bob_device(store)
    for i in range(6):
        await enqueue(store, f"old{i}")
    pushed, gate = Pushed(), WriteGate()

    def push_until_full(line):
        pushed(line)
        if len(pushed.frames) == 2:
            gate.pauseProducing()  # the transport's buffer passed its high-water mark

    cursor = cursor_for(store, push_until_full, gate)
    pumping = cursor.pump()
    await poll_until(lambda: len(pushed.frames) == 3)
    await store.queue_length("bob", "B1")  # a store round trip: the cursor stays waiting
    assert pushed.ids() == ["old0", "old1", "old2"] and not pumping.called
    gate.resumeProducing()
    await pumping
    assert pushed.ids() == [f"old{i}" for i in range(6)]
