"""The client's batched acknowledgements (securechat.client.acks), under task.Clock."""

import pytest_twisted
from twisted.internet import defer, task

from securechat import wire
from securechat.client.acks import ACK_DELAY, AckBatcher
from securechat.client.messaging import Receiver


class Requests:
    def __init__(self):
        self.sent = []

    def __call__(self, op, **fields):
        d = defer.Deferred()
        self.sent.append((op, fields["ids"], d))
        return d


def test_ids_processed_within_the_delay_share_one_request():
    clock, requests = task.Clock(), Requests()
    removed = []
    acks = AckBatcher(requests, clock, on_acked=removed.append)
    acks.add("a")
    clock.advance(ACK_DELAY / 2)
    for envelope_id in ("b", "c"):
        acks.add(envelope_id)
    assert requests.sent == [] and not acks.settled()
    clock.advance(ACK_DELAY / 2)
    assert [(op, ids) for op, ids, _ in requests.sent] == [("ack", ["a", "b", "c"])]
    assert not acks.settled()  # sent, not yet answered
    requests.sent[0][2].callback({"removed": 3})
    assert acks.settled() and removed == [3]
    acks.add("d")
    clock.advance(ACK_DELAY)
    assert [ids for _, ids, _ in requests.sent] == [["a", "b", "c"], ["d"]]


def test_a_full_batch_goes_at_once_and_the_rest_after_the_delay():
    clock, requests = task.Clock(), Requests()
    acks = AckBatcher(requests, clock)
    for i in range(wire.MAX_BATCH_ITEMS + 2):
        acks.add(f"id{i}")
    assert [len(ids) for _, ids, _ in requests.sent] == [wire.MAX_BATCH_ITEMS]
    clock.advance(ACK_DELAY)
    assert [len(ids) for _, ids, _ in requests.sent] == [wire.MAX_BATCH_ITEMS, 2]


def test_a_failed_ack_is_logged_and_settles():
    """A lost ack only means a redelivery (skipped by id): it must not wedge the client."""
    clock = task.Clock()

    def not_connected(op, **fields):
        raise ConnectionError("not connected")

    acks = AckBatcher(not_connected, clock)
    acks.add("a")
    clock.advance(ACK_DELAY)
    assert acks.settled()


class _Rooms:
    """Opens room messages; one of them fails the way a full disk or a bug would."""

    async def open_room_message(self, env):
        if env["id"] == "broken":
            raise OSError("the key store could not be written")
        return {"type": "msg", "error": None, "room": env["room"]}


class _Client:
    def __init__(self):
        self.request = Requests()
        self.rooms = _Rooms()
        self.store = self
        self.events = self

    def seen(self, envelope_id):
        return False

    def owe(self, kind, records):
        """The receipts a stored message is owed (none here: no sender)."""


@pytest_twisted.ensureDeferred
async def test_after_a_room_message_fails_that_room_is_no_longer_acknowledged():
    """The relay takes a room ack as covering the room's earlier messages, so once one could
    not be stored, later ones of that room are not acknowledged (the relay delivers again
    from the failed one next time); other rooms are acknowledged as usual."""
    client = _Client()
    receiver = Receiver(client, lambda record: None, lambda record: None)
    for envelope_id, room in (("a1", "ops"), ("broken", "ops"), ("a2", "ops"), ("b1", "dev")):
        frame = {"event": "envelope", "seq": 1,
                 "envelope": {"id": envelope_id, "kind": "megolm", "room": room}}
        await receiver.envelope_event(frame)
    receiver.acks.flush()
    assert [ids for _, ids, _ in client.request.sent] == [["a1", "b1"]]
    assert receiver.processed == 4
