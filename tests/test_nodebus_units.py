"""The node bus's parts without a network: the hints' payloads (building, the size limit,
parsing), the numbers a node has heard of (``Heard``), and a relay whose own commit follows
another node's unannounced one (a real SQLite store stands in for the shared database)."""

import json
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, task

from securechat.server.directory import DeviceDirectory
from securechat.server.nodebus import MAX_AHEAD, Heard, NodeBus
from securechat.server.outage import OutageLog
from securechat.server.protocol import WriteGate
from securechat.server.relay import Relay
from securechat.store import hints
from securechat.store.errors import DuplicateEnvelope
from tests.support import poll_until
from tests.test_delivery_cursor import store  # noqa: F401 (a fixture)


def envelope(recipients=(), room=None, members=()):
    item = {"id": "x", "sender": "alice", "sender_device": "A1", "recipients": list(recipients),
            "body": "{}"}
    if room is not None:
        item.update(history=room, members=members)
    return item


def test_a_delivery_hint_names_devices_rooms_and_the_broadcast_with_their_last_seq():
    """One write group: a unicast to two devices, two room messages, a broadcast, an ack and
    a refused call; the hint names each device and room once with its last seq, the
    broadcast's seq and the group's numbers, and never a body."""
    items = [
        ("enqueue", [envelope([("bob", "B1"), ("carol", "C1")])]),
        ("ack", ("bob", "B1", ["old"], None)),
        ("enqueue", [envelope(room="ops", members=("alice", "bob")),
                     envelope([("bob", "B1")]), envelope(room="ops", members=("alice",))]),
        ("enqueue", [envelope([("dave", "D1")])]),
        ("enqueue", [envelope(room="everyone", members=None)]),
    ]
    outcomes = [[(10, None)], None, [(11, 0), (12, None), (13, 1)],
                DuplicateEnvelope("y"), [(14, 7)]]
    hint = json.loads(hints.delivery("node1", items, outcomes))
    assert hint == {"n": "node1", "k": "q", "t": [10, 14],
                    "d": [["bob", "B1", 12], ["carol", "C1", 10]],
                    "r": [["ops", 13]], "b": 14}


def test_a_write_group_that_stored_nothing_sends_no_hint():
    """Acks only, or only refused calls: nothing was numbered, nothing to announce."""
    items = [("ack", ("bob", "B1", ["a"], None)), ("enqueue", [envelope([("bob", "B1")])])]
    assert hints.delivery("n1", items, [None, DuplicateEnvelope("a")]) is None


def test_a_hint_past_the_notify_limit_becomes_read_everything_with_its_numbers():
    """A group for more devices than a NOTIFY holds is announced as "all", keeping the
    group's numbers; every hint fits PostgreSQL's limit."""
    items = [("enqueue", [envelope([(f"user{i:05d}", "DEVICE0001") for i in range(500)])])]
    text = hints.delivery("n1", items, [[(7, None)]])
    assert json.loads(text) == {"n": "n1", "k": "all", "t": [7, 7]}
    small = hints.delivery("n1", [("enqueue", [envelope([("bob", "B1")])])], [[(8, None)]])
    assert len(small.encode()) <= hints.MAX_PAYLOAD and json.loads(small)["k"] == "q"
    control = hints.encode({"n": "n1", "k": "room", "r": ["r" * 40] * 400})
    assert json.loads(control) == {"n": "n1", "k": "all"}


@pytest.mark.parametrize("text, problem", [
    ("not json", "Expecting value"),
    ('["q"]', "JSON object"),
    ('{"k": "q"}', "node's id"),
    ('{"n": "a", "k": "gossip"}', "unknown node hint kind 'gossip'"),
    ('{"n": "a", "k": "q", "t": [5, 2]}', "[first, last]"),
])
def test_a_malformed_hint_is_refused_naming_the_problem(text, problem):
    """Whatever arrives on the channel is parsed, and a bad one named, never acted on."""
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        hints.parse(text)


def test_typing_notices_travel_in_hints_that_each_fit_under_the_notify_limit():
    """64 notices of 2,048 bytes of ciphertext (the most one typing request may carry) are
    split over hints that each fit in a NOTIFY and together carry every notice once, in
    order; a notice too big to fit even alone is left out, never sent as 'read
    everything'."""
    notices = [{"to": f"user{i}", "to_dev": "DEV1", "kind": "olm", "ct": "A" * 2732}
               for i in range(64)]
    texts = hints.typing("node1", "alice", "DEV1", notices)
    assert len(texts) > 1
    assert all(len(text.encode("utf-8")) <= hints.MAX_PAYLOAD for text in texts)
    parsed = [hints.parse(text) for text in texts]
    assert {(h["k"], h["f"], h["fd"]) for h in parsed} == {("typing", "alice", "DEV1")}
    assert [e for h in parsed for e in h["e"]] == notices
    huge = {"to": "bob", "to_dev": "DEV1", "kind": "olm", "ct": "A" * 9000}
    assert [hints.parse(t)["e"] for t in hints.typing("node1", "alice", "DEV1",
                                                      [huge, notices[0]])] == [[notices[0]]]


class Announcements:
    """What a node's store is asked to NOTIFY (the channel's side is played by the test,
    which hands the texts back in the order PostgreSQL would deliver them)."""

    def __init__(self):
        self.texts, self.failing = [], False

    def announce(self, text):
        if self.failing:
            return defer.fail(ConnectionError("the database is down"))
        self.texts.append(text)
        return defer.succeed(None)


def login_bus():
    """A NodeBus whose relay records the devices it is told logged in elsewhere."""
    ended = []
    bus = NodeBus(Announcements(), reactor=None, node="nodeA")
    bus._factory = SimpleNamespace(relay=SimpleNamespace(
        logged_in_elsewhere=lambda user, device: ended.append((user, device))))
    return bus, ended


def hear(bus, text):
    bus._received(SimpleNamespace(channel=hints.CHANNEL, payload=text))


def test_another_nodes_login_hint_older_than_the_login_here_does_not_end_it():
    """bob's device logs in here while node B's hint of its login there is still on its
    way: that hint, arriving before this node's own hint comes back (NOTIFYs arrive in
    commit order), is older and leaves the new connection alone; one arriving after it
    ends the connection; a hint that could not be sent is not waited for."""
    bus, ended = login_bus()
    from_b = hints.encode({"n": "nodeB", "k": "login", "u": "bob", "d": "D1"})
    bus.logged_in("bob", "D1")
    (own,) = bus._store.texts
    hear(bus, from_b)  # B's login committed before this one's hint: older
    assert ended == []
    hear(bus, own)
    hear(bus, from_b)  # after this node's hint came back: a newer login on B
    assert ended == [("bob", "D1")]
    bus._store.failing = True
    bus.logged_in("bob", "D1")  # its hint is lost: nothing to wait for
    hear(bus, from_b)
    assert ended == [("bob", "D1")] * 2 and bus._unechoed == {}


def test_heard_lets_a_group_out_from_memory_only_when_every_earlier_one_was_heard_of():
    """Before the first reset nothing is in order; after it a group right after the mark
    is, one past a gap is not until the gap's hint arrives (in any order)."""
    heard = Heard()
    assert not heard.own(1, 1)
    heard.reset(10)
    assert heard.own(11, 12)
    assert not heard.own(15, 15)  # 13-14: another node's, not heard of yet
    assert heard.last == 12
    heard.heard(13, 14)
    assert heard.last == 15
    assert heard.own(16, 16)


def test_heard_catches_up_on_a_reset_and_says_when_a_gap_stays_open():
    """A gap that stays open from one check to the next is stuck (a hint was lost); a reset
    with the store's last number closes it.  Groups heard of while there is no mark (the
    listener reconnecting) count once it is set."""
    heard = Heard()
    heard.reset(5)
    heard.heard(8, 9)
    assert not heard.stuck()
    assert heard.stuck()
    heard.reset(7)
    assert heard.last == 9 and not heard.stuck()
    heard.forget()
    assert heard.stuck()
    assert not heard.own(10, 10)
    heard.reset(9)
    assert heard.last == 10 and heard.own(11, 11)


def test_heard_keeps_a_bounded_number_of_ranges_past_a_gap():
    """Past MAX_AHEAD ranges beyond a gap it starts over (nothing from memory) rather than
    grow: the next check finds it stuck and catches up."""
    heard = Heard()
    heard.reset(0)
    for first in range(2, 2 * MAX_AHEAD + 4, 2):
        heard.heard(first, first)
    assert heard.last is None and heard.stuck()
    assert len(heard._ahead) == 0




@pytest_twisted.ensureDeferred
async def test_a_commit_after_another_nodes_unheard_one_reads_the_store_in_order(store):
    """bob's cursor is caught up; another node commits seq 1 for bob, its hint still on the
    way; this node commits seq 2 for bob: bob gets 1 then 2 (read from the store), where
    pushing 2 from memory would have left 1 behind for good."""
    await store.create_account("bob", "hash", "idkey")
    await store.set_device_keys("bob", "B1", '{"device":"B1"}', "sig")
    clock, frames = task.Clock(), []
    relay = Relay(store, DeviceDirectory(store), clock, OutageLog(clock))
    relay.heard = Heard()
    relay.heard.reset(await store.last_seq())
    session = SimpleNamespace(push_line=lambda line: frames.append(json.loads(line)),
                              gate=WriteGate())
    await relay.attach("bob", "B1", session).pump()
    await store.enqueue([{"id": "elsewhere", "sender": "alice", "sender_device": "A1",
                          "recipients": [("bob", "B1")], "body": '{"id": "elsewhere"}'}])
    await relay.deliver_server_envelope("here", '{"id": "here"}', [("bob", "B1")])
    await poll_until(lambda: len(frames) == 2)
    assert [frame["envelope"]["id"] for frame in frames] == ["elsewhere", "here"]
    relay.committed_elsewhere([("bob", "B1", 1)], {}, None)  # the hint, late: nothing again
    relay.heard.heard(1, 1)
    await store.queue_length("bob", "B1")
    assert len(frames) == 2 and relay.heard.last == 2
