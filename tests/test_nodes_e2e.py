"""Several relay nodes on one PostgreSQL database, end to end: three real ``twistd -n securechat``
processes (each its own TLS port and certificate), the real ``securechat`` CLI for the 1:1
case, scripted devices over real TLS for the rest.  What one node commits reaches the devices
connected to another at once (the node bus's hints), and what one node changes (a kick, a
device removed, a login) holds on every node."""

import signal

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from securechat import wire
from securechat.client.protocol import ConnectionClosed, RemoteError
from tests.pgserver import create_database
from tests.processes import RelayEndpoint, ServerProcess, free_port, run_cli, write_client_config
from tests.screen import ChatScreen
from tests.support import (cleanup, expect_error, new_envelope_id, poll_until,
                           poll_until_async, unicast, write_config)
from tests.test_admin_api import admin
from tests.test_device_removal import publish, second_device
from tests.test_postgres_restart import postgres  # noqa: F401 (a fixture)
from tests.test_relay_tls import registered
from tests.test_typing import notice, typing_events

ROOM_MESSAGE = {"kind": "megolm", "sid": "bWVnb2xt", "ct": wire.b64encode(b"opaque")}

LOAD_SENDS = 150
"""Sends of each sender in the kill -9 test (one at a time: a bounded, steady load)."""


class Node:
    """One ``twistd -n securechat`` node of the database: its process, its TLS endpoint."""

    def __init__(self, root, name, database):
        self.name = name
        self.data_dir = root / name / "data"
        self.port, self.http_port = free_port(), free_port()
        self.config = write_config(
            str(self.data_dir), port=self.port, database=database,
            extra=f"[http]\nport = {self.http_port}\n[broadcast]\nsenders = anyone\n")
        (root / name).mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(root / name, self.config)
        self.endpoint = RelayEndpoint(self.port, self.data_dir)

    @property
    def cert_path(self):
        return self.endpoint.cert_path

    async def start(self):
        self.process.start()
        await self.process.wait_listening()

    def stop(self):
        self.process.stop()


async def started_nodes(root, database, count=3):
    nodes = [Node(root, f"node{i + 1}", database) for i in range(count)]
    try:
        for node in nodes:  # one at a time: the first creates the schema
            await node.start()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


@pytest.fixture
def nodes(tmp_path, fresh_postgres_dsn):
    """Three nodes on one fresh PostgreSQL database (broadcast open to every user; each with
    its operator port, the admin API on it)."""
    running = pytest_twisted.blockon(defer.ensureDeferred(
        started_nodes(tmp_path, fresh_postgres_dsn)))
    yield running
    for node in running:
        node.stop()


async def moved(person, node):
    """``person``'s device, logged in again on ``node`` (a new connection, same keys)."""
    twin = person.again()
    try:
        await twin.login(node, upload_keys=False)
    except BaseException:
        await twin.close()
        raise
    return twin


async def database_holds(dsn, text):
    """Whether any envelope the database keeps (queues, room histories) holds ``text``."""
    def query():
        connection = psycopg2.connect(dsn)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT (SELECT count(*) FROM queue WHERE body LIKE %s) + "
                               "(SELECT count(*) FROM room_history WHERE body LIKE %s)",
                               (f"%{text}%", f"%{text}%"))
                return cursor.fetchone()[0] > 0
        finally:
            connection.close()
    return await threads.deferToThread(query)


def received_ids(device):
    return [event["envelope"]["id"] for event in device.envelopes()]


def membership(device):
    return [(e["envelope"]["event"]["user"], e["envelope"]["event"]["action"])
            for e in device.envelopes() if e["envelope"]["kind"] == "membership"]


def room_message(room):
    return {"room": room, "id": new_envelope_id(), **ROOM_MESSAGE}


@pytest_twisted.ensureDeferred
async def test_alice_on_node_1_reaches_bob_chatting_on_node_2_live(nodes, tmp_path):
    """The real CLI: bob's chat is connected to node 2 when alice sends with `securechat
    send` through node 1, and the message shows in bob's chat without bob reconnecting."""
    node1, node2, _ = nodes
    clients = str(tmp_path / "clients")
    alice = write_client_config(clients, "alice", node1.port)
    bob = write_client_config(clients, "bob", node2.port)
    for config in (alice, bob):
        registered = await run_cli(config, "register")
        assert registered.code == 0, registered
    chat = ChatScreen(bob)
    try:
        await chat.wait_for("/help for help")
        await chat.wait_for(lambda c: c.status_row.startswith("[connected]"), what="connected")
        sent = await run_cli(alice, "send", "bob", "hello", "across", "nodes")
        assert sent.code == 0, sent
        await chat.wait_for(lambda c: "alice(1)" in c.status_row, timeout=30,
                            what="a message from alice")
        chat.line("/query alice")
        await chat.wait_for("<alice?> hello across nodes")
        chat.line("/quit")
        await chat.finish()
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_a_room_with_members_on_all_three_nodes_reaches_each_live(nodes):
    """alice (node 1), bob (node 2) and carol (node 3) share a room: a message each sends
    is pushed to the two others, on their nodes, once each."""
    node1, node2, node3 = nodes
    (alice,), (bob,), (carol,) = [await registered(n, name) for n, name in
                                  zip(nodes, ("alice", "bob", "carol"))]
    await alice.request("room.create", room="ops")
    await bob.request("room.join", room="ops")
    await carol.request("room.join", room="ops")
    sent = {}
    for person in (alice, bob, carol):
        message = room_message("ops")
        answer = await person.request("room.send", **message)
        assert answer["recipients"] == 2
        sent[person.user] = message["id"]
    for person in (alice, bob, carol):
        expected = {i for sender, i in sent.items() if sender != person.user}
        await poll_until(lambda p=person, e=expected: e <= set(received_ids(p)), timeout=15)
        ids = [i for i in received_ids(person) if i in sent.values()]
        assert sorted(ids) == sorted(expected), (person.user, ids)
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_broadcast_reaches_every_node(nodes):
    """A broadcast sent through node 1 is pushed to the users connected to nodes 2 and 3."""
    (alice,), (bob,), (carol,) = [await registered(n, name) for n, name in
                                  zip(nodes, ("alice", "bob", "carol"))]
    message = {"id": new_envelope_id(), **ROOM_MESSAGE}
    await alice.request("broadcast", **message)
    for person in (bob, carol):
        await poll_until(lambda p=person: message["id"] in received_ids(p), timeout=15)
        assert received_ids(person).count(message["id"]) == 1
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_typing_notice_reaches_a_device_on_another_node_and_is_never_stored(
        nodes, fresh_postgres_dsn):
    """alice on node 1 types to bob on node 2 and carol on node 3: each gets the notice
    from alice's device, once; a notice for a device connected nowhere is dropped, and no
    notice's ciphertext is in the database."""
    (alice,), (bob,), (carol,) = [await registered(n, name) for n, name in
                                  zip(nodes, ("alice", "bob", "carol"))]
    await registered(nodes[0], "dave")  # registered, then offline: its notice goes nowhere
    secret = b"typing-across-the-nodes-0001"
    notices = [notice(name, "DEV1", secret) for name in ("bob", "carol", "dave")]
    assert await alice.request("typing", envelopes=notices) == {}
    for person in (bob, carol):
        await poll_until(lambda p=person: typing_events(p), timeout=15)
        (pushed,) = typing_events(person)
        assert (pushed["envelope"]["from"], pushed["envelope"]["from_dev"]) == ("alice", "DEV1")
        assert pushed["envelope"]["ct"] == wire.b64encode(secret)
    assert not await database_holds(fresh_postgres_dsn, wire.b64encode(secret))
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_bob_offline_gets_his_messages_on_another_node_then_live_ones(nodes):
    """bob leaves node 2; alice sends him two messages through node 1; bob logs in on
    node 3 and gets both, in order, once; a third one is pushed to him there live."""
    node1, node2, node3 = nodes
    (alice,) = await registered(node1, "alice")
    (bob,) = await registered(node2, "bob")
    await bob.close()
    first, second = unicast("bob", "DEV1"), unicast("bob", "DEV1")
    await alice.request("send", envelopes=[first])
    await alice.request("send", envelopes=[second])
    again = await moved(bob, node3)
    await poll_until(lambda: len(received_ids(again)) >= 2, timeout=15)
    assert received_ids(again) == [first["id"], second["id"]]
    third = unicast("bob", "DEV1")
    await alice.request("send", envelopes=[third])
    await poll_until(lambda: len(received_ids(again)) >= 3, timeout=15)
    assert received_ids(again) == [first["id"], second["id"], third["id"]]
    await cleanup(alice, again)


@pytest_twisted.ensureDeferred
async def test_a_kick_on_node_1_stops_pushes_on_node_2_at_once(nodes):
    """bob (node 2) is kicked from ops by alice on node 1; carol, also on node 2 and whose
    node had the room's members cached, sends to ops right after bob heard of the kick: the
    message reaches alice, never bob (a unicast sent after it reaches bob: his stream went
    past it)."""
    node1, node2, _ = nodes
    (alice,) = await registered(node1, "alice")
    bob, carol = await registered(node2, "bob", "carol")
    await alice.request("room.create", room="ops")
    await bob.request("room.join", room="ops")
    await carol.request("room.join", room="ops")
    warm = room_message("ops")
    await carol.request("room.send", **warm)  # node 2 now holds the members of ops
    await poll_until(lambda: warm["id"] in received_ids(bob), timeout=15)
    await alice.request("room.kick", room="ops", user="bob")
    await poll_until(lambda: ("bob", "kicked") in membership(bob), timeout=15)
    after = room_message("ops")
    assert (await carol.request("room.send", **after))["recipients"] == 1
    await poll_until(lambda: after["id"] in received_ids(alice), timeout=15)
    marker = unicast("bob", "DEV1")
    await carol.request("send", envelopes=[marker])
    await poll_until(lambda: marker["id"] in received_ids(bob), timeout=15)
    assert after["id"] not in received_ids(bob)
    await cleanup(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_device_removed_on_node_1_is_ended_on_node_2_and_refused_on_node_3(nodes):
    """alice's DEV2 is connected to node 2 when her device list, published through node 1,
    leaves it out: node 2 tells it and closes it at once, and its login on node 3 is
    refused as `device_removed`."""
    node1, node2, node3 = nodes
    (first,) = await registered(node1, "alice")
    await publish(first, 1, first)
    second = second_device(first, "DEV2")
    await second.login(node2)
    await publish(first, 2, first, second)
    assert (await publish(first, 3, first))["removed"] == ["DEV2"]
    await poll_until(lambda: any(e.get("event") == "device_removed" for e in second.events),
                     timeout=15)
    await second.protocol.closed_d
    elsewhere = second.again()
    await elsewhere.connect(node3)
    refused = await expect_error("device_removed", elsewhere.key_login())
    assert "DEV2" in refused.message
    await cleanup(first, elsewhere)


@pytest_twisted.ensureDeferred
async def test_a_device_logging_in_on_node_2_replaces_its_connection_on_node_1(nodes):
    """bob's device is connected to node 1, then logs in on node 2: node 1 closes the old
    connection with `replaced`, and what alice sends afterwards reaches the new one only,
    each envelope once."""
    node1, node2, _ = nodes
    alice, bob = await registered(node1, "alice", "bob")
    before = unicast("bob", "DEV1")
    await alice.request("send", envelopes=[before])
    await poll_until(lambda: before["id"] in received_ids(bob), timeout=15)
    await bob.request("ack", ids=[before["id"]])
    again = await moved(bob, node2)
    await poll_until(lambda: any(e.get("event") == "replaced" for e in bob.events), timeout=15)
    await bob.protocol.closed_d
    after = [unicast("bob", "DEV1") for _ in range(5)]
    for envelope in after:
        await alice.request("send", envelopes=[envelope])
    await poll_until(lambda: len(received_ids(again)) >= len(after), timeout=15)
    assert received_ids(again) == [e["id"] for e in after]
    assert received_ids(bob) == [before["id"]]
    await cleanup(alice, again)


HELD_CHECK_SECONDS = 1.0
"""How long the tests of a held device watch that nothing is pushed (well inside the new
node's wait of nodebus.CLAIM_SECONDS, so that only a fault of the hold can push)."""


async def logged_in_while_node_1_is_stopped(nodes):
    """bob connected to node 1, which is then stopped (SIGSTOP: hung, its database session
    open); his device logs in on node 2 and alice (node 2) sends him ``X``: bob's two
    connections, and ``X``'s id.  Nothing reaches the new connection meanwhile."""
    node1, node2, _ = nodes
    (bob,), (alice,) = await registered(node1, "bob"), await registered(node2, "alice")
    node1.process.process.send_signal(signal.SIGSTOP)
    try:
        again = await moved(bob, node2)
        envelope = unicast("bob", "DEV1")
        await alice.request("send", envelopes=[envelope])
        await task.deferLater(reactor, HELD_CHECK_SECONDS, lambda: None)
        assert received_ids(again) == [], "pushed while node 1 still had bob's connection"
    except BaseException:
        node1.process.process.send_signal(signal.SIGCONT)  # so that it can be stopped
        raise
    return alice, bob, again, envelope["id"]


@pytest_twisted.ensureDeferred
async def test_a_device_is_pushed_to_on_its_new_node_only_once_the_old_one_let_it_go(nodes):
    """One device, one live connection: bob moves from node 1 (hung for a moment) to node
    2.  Node 2 pushes nothing until node 1, running again, has closed bob's old connection
    (`replaced`) and let the device go; then ``X`` reaches the new connection, once, and
    never the old one."""
    node1, node2, _ = nodes
    alice, bob, again, sent = await logged_in_while_node_1_is_stopped(nodes)
    node1.process.process.send_signal(signal.SIGCONT)
    await poll_until(lambda: sent in received_ids(again), timeout=15)
    await bob.protocol.closed_d
    assert any(e.get("event") == "replaced" for e in bob.events)
    assert received_ids(again) == [sent]
    assert sent not in received_ids(bob)
    assert "served here all the same" not in node2.process.new_log_text()
    await cleanup(alice, again)


@pytest_twisted.ensureDeferred
async def test_a_killed_node_lets_its_devices_go_at_once(nodes):
    """bob's old node (hung) is killed with SIGKILL: PostgreSQL ends its session and the
    device's lock with it, so node 2 pushes ``X`` without waiting out its deadline."""
    node1, node2, _ = nodes
    alice, bob, again, sent = await logged_in_while_node_1_is_stopped(nodes)
    node1.process.kill()
    await poll_until(lambda: sent in received_ids(again), timeout=15)
    assert received_ids(again) == [sent]
    assert "served here all the same" not in node2.process.new_log_text()
    await cleanup(alice, again)


@pytest_twisted.ensureDeferred
async def test_disabling_an_account_on_node_1_closes_its_connections_on_every_node(nodes):
    """securechat-admin disables alice through node 1: her devices connected to nodes 2 and
    3 are told and closed within a second, her login on node 3 is refused; enabled again
    through node 2, she logs in on node 3."""
    node1, node2, node3 = nodes
    (first,) = await registered(node2, "alice")
    second = second_device(first, "DEV2")
    await second.login(node3)
    done = admin(node1.config, "users", "disable", "alice")
    assert done.returncode == 0, done
    for device in (first, second):
        await poll_until(lambda d=device: d.protocol.closed, timeout=1.0)
        assert [e for e in device.events if e.get("event") == "account_disabled"]
    again = first.again()
    await again.connect(node3)
    await expect_error("account_disabled", again.key_login())
    assert admin(node2.config, "users", "enable", "alice").returncode == 0
    welcome = first.again()
    await poll_until_async(lambda: _logs_in(welcome, node3), timeout=5)
    await cleanup(again, welcome)


async def _logs_in(device, node):
    """Whether ``device`` logs in on ``node`` (a new connection each try)."""
    await device.close()
    try:
        await device.login(node, upload_keys=False)
    except RemoteError as e:
        assert e.code == "account_disabled", e
        return False
    return True


class Receiver:
    """A device that acknowledges what it gets, and follows its node when it dies."""

    def __init__(self, device):
        self.device = device
        self.acked = set()  # ids whose ack was answered: never to be pushed again
        self.twice = []  # ids pushed after their ack was answered
        self.ids = set()
        self._seen = 0

    def take(self):
        """Acknowledge what arrived since the last call."""
        events = self.device.envelopes()
        fresh = [e["envelope"]["id"] for e in events[self._seen:]]
        self._seen = len(events)
        self.twice.extend(i for i in fresh if i in self.acked)
        self.ids.update(fresh)
        if not fresh:
            return defer.succeed(None)
        d = self.device.request("ack", ids=fresh)
        d.addCallback(lambda _: self.acked.update(fresh))
        d.addErrback(lambda f: f.trap(RemoteError, ConnectionClosed))
        return d


async def send_steadily(device, recipients, accepted, reconnect):
    """Send LOAD_SENDS envelopes, one at a time, to ``recipients`` in turn; each accepted
    id goes to ``accepted[recipient]``; a lost connection is replaced by ``reconnect()``."""
    for number in range(LOAD_SENDS):
        recipient = recipients[number % len(recipients)]
        envelope = unicast(recipient, "DEV1")
        try:
            await device.request("send", envelopes=[envelope])
        except (ConnectionClosed, RemoteError):
            device = await reconnect()
            continue
        accepted[recipient].add(envelope["id"])
        await task.deferLater(reactor, 0.005, lambda: None)


@pytest_twisted.ensureDeferred
async def test_kill_9_of_a_node_under_load_loses_and_repeats_nothing(nodes):
    """Senders on nodes 1 and 2 send steadily to bob (node 3) and carol (node 1); node 1 is
    killed with SIGKILL meanwhile and its clients reconnect to node 2: every accepted
    envelope reaches its recipient, and none is pushed again after its ack was answered."""
    node1, node2, node3 = nodes
    (alice, carol), (dave,), (bob,) = (await registered(node1, "alice", "carol"),
                                       await registered(node2, "dave"),
                                       await registered(node3, "bob"))
    receivers = {"bob": Receiver(bob), "carol": Receiver(carol)}
    accepted = {"bob": set(), "carol": set()}
    current = {"alice": alice}

    async def reconnect_alice():
        current["alice"] = await moved(alice, node2)
        return current["alice"]

    async def reconnect_carol():
        receivers["carol"].device = carol_again = await moved(carol, node2)
        receivers["carol"]._seen = 0
        return carol_again

    async def node2_never_dies():
        raise AssertionError("dave's connection to node 2 was lost")

    acking = task.LoopingCall(lambda: defer.gatherResults(
        [r.take() for r in receivers.values()]))
    acking.start(0.02)
    senders = [defer.ensureDeferred(send_steadily(alice, ["bob", "carol"], accepted,
                                                  reconnect_alice)),
               defer.ensureDeferred(send_steadily(dave, ["bob", "carol"], accepted,
                                                  node2_never_dies))]
    await poll_until(lambda: sum(map(len, accepted.values())) >= 60, timeout=60)
    node1.process.kill()
    await carol.protocol.closed_d
    await reconnect_carol()
    await defer.gatherResults(senders)
    for name, receiver in receivers.items():
        await poll_until(lambda r=receiver, n=name: accepted[n] <= r.ids, timeout=30)
    acking.stop()
    assert sum(map(len, accepted.values())) > 100
    for name, receiver in receivers.items():
        assert receiver.twice == [], name
    await cleanup(current["alice"], dave, bob, receivers["carol"].device)


async def once_available(action):
    """``action()``'s result, tried again while the node answers ``unavailable`` (its store
    connections may come back a moment after its listener)."""
    done = []

    async def attempt():
        try:
            done.append(await action())
        except RemoteError as e:
            assert e.code == "unavailable", e
            return False
        return True

    await poll_until_async(attempt, timeout=30)
    return done[0]


@pytest_twisted.ensureDeferred
async def test_a_postgres_restart_brings_the_listeners_back_and_loses_nothing(
        postgres, tmp_path):
    """PostgreSQL restarts under two nodes: what alice (node 1) sent before it reaches bob
    (node 2) once he is back, and after it sends through either node are pushed live to
    the other one's device (both LISTEN connections came back)."""
    database = create_database(postgres.dsn(), "relay")
    node1, node2 = await started_nodes(tmp_path, database, count=2)
    try:
        (alice,) = await registered(node1, "alice")
        (bob,) = await registered(node2, "bob")
        before = unicast("bob", "DEV1")
        await alice.request("send", envelopes=[before])
        await poll_until(lambda: before["id"] in received_ids(bob), timeout=15)
        await bob.close()
        waiting = unicast("bob", "DEV1")
        await alice.request("send", envelopes=[waiting])
        postgres.halt("fast")
        postgres.resume()
        for node in (node1, node2):
            await poll_until(lambda n=node: "the listening connection is back"
                             in n.process.new_log_text(), timeout=60)
        bob = await once_available(lambda: moved(bob, node2))
        await poll_until(lambda: waiting["id"] in received_ids(bob), timeout=30)
        after = unicast("bob", "DEV1")
        await once_available(lambda: alice.request("send", envelopes=[after]))
        await poll_until(lambda: after["id"] in received_ids(bob), timeout=15)
        assert received_ids(bob).count(waiting["id"]) == 1
        reply = unicast("alice", "DEV1")
        await once_available(lambda: bob.request("send", envelopes=[reply]))
        await poll_until(lambda: reply["id"] in received_ids(alice), timeout=15)
        await cleanup(alice, bob)
    finally:
        node1.stop()
        node2.stop()
