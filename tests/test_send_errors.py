"""Sends the relay cannot store for anybody: an empty send, a note to yourself from your
only device, and a bad send sharing its write group with good ones."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import capturedLogs

from securechat.client.protocol import RemoteError
from securechat.client.session import NO_OTHER_DEVICE
from securechat.store import make_store
from securechat.store.errors import DuplicateEnvelope
from tests.processes import run_cli, write_client_config
from tests.support import ScriptedDevice, cleanup, poll_until, unicast


@pytest.fixture
def server(start_relay):
    return start_relay()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    database = (str(tmp_path / "store.sqlite3") if request.param == "sqlite"
                else request.getfixturevalue("fresh_postgres_dsn"))
    store = make_store(database, str(tmp_path))
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())


async def logged_in(server, user, device="DEV1"):
    scripted = ScriptedDevice(user, device)
    await scripted.register(server)
    await scripted.login(server)
    return scripted


def errors_logged(events):
    """The log events that would reach an operator as failures (tracebacks)."""
    return [event for event in events if "log_failure" in event]


@pytest_twisted.ensureDeferred
async def test_an_empty_send_is_a_bad_request_and_logs_nothing(server):
    """``send`` with no envelope is answered ``bad_request`` naming the problem, not ``internal``."""
    alice = await logged_in(server, "alice")
    with capturedLogs() as events:
        with pytest.raises(RemoteError) as refused:
            await alice.request("send", envelopes=[])
    assert refused.value.code == "bad_request"
    assert "at least one envelope" in refused.value.message
    assert errors_logged(events) == []
    assert (await alice.request("ping"))["pong"] is True
    await cleanup(alice)


@pytest_twisted.ensureDeferred
async def test_a_note_to_yourself_goes_to_your_other_devices(server):
    """A send addressed to your own other device is accepted and delivered to it alone."""
    laptop = await logged_in(server, "alice", "LAPTOP")
    phone = ScriptedDevice("alice", "PHONE", password=laptop.password, identity=laptop.identity)
    await phone.login(server)
    note = unicast("alice", "PHONE", ct=b"note to self")
    assert (await laptop.request("send", envelopes=[note]))["accepted"] == [note["id"]]
    await poll_until(lambda: len(phone.envelopes()) == 1)
    assert phone.envelopes()[0]["envelope"]["id"] == note["id"] and laptop.envelopes() == []
    await cleanup(laptop, phone)


@pytest_twisted.ensureDeferred
async def test_a_bad_send_among_concurrent_senders_fails_only_itself(server):
    """Sends in flight together (one write group): the empty and the mis-addressed one are
    refused, every good one is accepted and delivered."""
    bob = await logged_in(server, "bob")
    senders = [await logged_in(server, f"user{i}") for i in range(6)]
    good = {sender.user: unicast("bob", "DEV1", ct=sender.user.encode()) for sender in senders}
    requests = []
    for index, sender in enumerate(senders):
        requests.append(sender.request("send", envelopes=[good[sender.user]]))
        if index == 2:
            requests.append(senders[0].request("send", envelopes=[]))
            requests.append(senders[1].request("send", envelopes=[unicast("bob", "GHOST")]))
    outcomes = await defer.DeferredList(requests, consumeErrors=True)
    codes = [result["accepted"] if ok else result.value.code for ok, result in outcomes]
    assert codes[3:5] == ["bad_request", "devices_mismatch"]
    assert codes[:3] + codes[5:] == [[good[s.user]["id"]] for s in senders]
    await poll_until(lambda: len(bob.envelopes()) == len(senders))
    await cleanup(bob, *senders)


@pytest_twisted.ensureDeferred
async def test_an_empty_enqueue_in_a_write_group_fails_nobody(store):
    """A write group whose only standing call stores nothing (beside a duplicate and an ack)
    answers each caller its own outcome; before, ``KeyError`` failed the whole group."""
    await store.create_account("bob", "hash", "idkey")
    await store.set_device_keys("bob", "D1", '{"device":"D1"}', "sig")

    def envelope(envelope_id):
        return {"id": envelope_id, "sender": "alice", "sender_device": "A1",
                "recipients": [("bob", "D1")], "body": "{}"}

    await store.enqueue([envelope("queued")])
    await task.deferLater(reactor, 0, lambda: None)  # that group is finished, not just answered
    groups = []
    body = store._writes._group_body

    def recording_body(txn, items):
        groups.append([kind for kind, _ in items])
        return body(txn, items)

    store._writes._group_body = recording_body
    first = store.enqueue([envelope("first")])  # commits alone; the rest wait and share one
    duplicate = store.enqueue([envelope("queued")])
    empty = store.enqueue([])
    ack = store.ack("bob", "D1", ["queued"])
    outcomes = await defer.DeferredList([first, duplicate, empty, ack], consumeErrors=True)
    await task.deferLater(reactor, 0, lambda: None)
    alone = await store.enqueue([])  # a group of its own, standing with nothing
    assert groups == [["enqueue"], ["enqueue", "enqueue", "ack"], ["enqueue"]]
    assert outcomes[0][0] and outcomes[2] == (True, []) and outcomes[3] == (True, 1)
    assert not outcomes[1][0] and outcomes[1][1].check(DuplicateEnvelope)
    assert alone == []


@pytest_twisted.ensureDeferred
async def test_the_cli_says_a_note_from_your_only_device_went_nowhere(server, tmp_path):
    """``securechat send`` to yourself from your only device succeeds and says no device
    got it (the chat's /msg: tests/test_chat.py)."""
    config = write_client_config(str(tmp_path / "clients"), "alice", server.port,
                                 ca_file=server.cert_path)
    assert (await run_cli(config, "register")).code == 0
    result = await run_cli(config, "send", "alice", "remember", "the", "milk")
    assert result.code == 0, result
    assert NO_OTHER_DEVICE in result.out
