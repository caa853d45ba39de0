"""One device, one live connection across nodes, at the node bus: two real ``NodeBus``
instances on a real PostgreSQL server claim and release the advisory lock of a device
(``NodeBus.claim``/``release``), standing for two nodes the device moves between.  What
the relay does around them is a small recorder of the calls it gets; the end-to-end
tests with real ``twistd`` nodes are in tests/test_nodes_e2e.py."""

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from securechat.server import nodebus
from securechat.server.nodebus import NodeBus
from securechat.store import make_store


class RecordingRelay:
    """The relay's part a bus calls on a (re)connect: no device connected, nothing to end."""

    def __init__(self):
        self.heard = None
        self.online = []
        self.ended = []

    def online_devices(self):
        return list(self.online)

    def logged_in_elsewhere(self, user, device):
        self.ended.append((user, device))

    def end_all_sessions_of(self, user):
        pass

    def read_everything(self):
        pass


def factory():
    forgetful = SimpleNamespace(forget_all=lambda: None)
    return SimpleNamespace(relay=RecordingRelay(), devices=forgetful,
                           rooms=SimpleNamespace(directory=forgetful), disabled=set())


@pytest.fixture
def two_nodes(fresh_postgres_dsn, tmp_path):
    """Two started buses (nodes) on one fresh database, each with its own store."""
    started = []
    for name in ("a", "b"):
        store = make_store(fresh_postgres_dsn, str(tmp_path / name))
        pytest_twisted.blockon(defer.ensureDeferred(store.start()))
        bus = NodeBus(store, reactor)
        pytest_twisted.blockon(defer.ensureDeferred(bus.start(factory())))
        started.append((bus, store))
    yield [bus for bus, _ in started]
    for bus, store in started:
        pytest_twisted.blockon(bus.stop())
        pytest_twisted.blockon(defer.ensureDeferred(store.stop()))


@pytest_twisted.ensureDeferred
async def test_a_claim_waits_until_the_node_holding_the_device_lets_it_go(two_nodes):
    """bob's device is claimed on node A at once; a claim on node B waits while A holds
    it, and fires as soon as A releases it (A's cursor closed); a second claim on B, the
    device already B's, fires at once."""
    a, b = two_nodes
    await a.claim("bob", "B1")
    waiting = b.claim("bob", "B1")
    await b.claim("carol", "C1")  # another device, nobody's: asked after bob's, answered
    assert not waiting.called
    a.release("bob", "B1")
    await waiting
    assert b.claim("bob", "B1").called


@pytest_twisted.ensureDeferred
async def test_a_node_that_stops_lets_its_devices_go_with_its_session(two_nodes):
    """Node A's listening connection ends (its process stopped, or died): PostgreSQL drops
    its locks with its session, and B's waiting claim fires without any release."""
    a, b = two_nodes
    await a.claim("bob", "B1")
    waiting = b.claim("bob", "B1")
    await a.stop()
    await waiting


@pytest_twisted.ensureDeferred
async def test_a_claim_given_up_before_it_was_granted_lets_go_of_the_lock(two_nodes):
    """The device leaves B while B still waits for it (it logged in again elsewhere): once
    A lets go, B must not keep the lock, or the device's next node would wait for B."""
    a, b = two_nodes
    await a.claim("bob", "B1")
    waiting = b.claim("bob", "B1")
    b.release("bob", "B1")
    a.release("bob", "B1")
    await waiting
    await a.claim("bob", "B1")  # free again: A takes it back at once


@pytest_twisted.ensureDeferred
async def test_a_hung_holder_delays_a_claim_by_its_deadline_only(two_nodes, monkeypatch):
    """Node A holds the device and never lets go (hung, its session open): B's claim fires
    after CLAIM_SECONDS all the same, logged naming the device."""
    monkeypatch.setattr(nodebus, "CLAIM_SECONDS", 0.3)
    a, b = two_nodes
    await a.claim("bob", "B1")
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        await b.claim("bob", "B1")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert any("bob/B1 stayed connected to another node" in formatEvent(event)
               for event in logged)


@pytest_twisted.ensureDeferred
async def test_after_a_reconnect_a_node_takes_its_devices_locks_again(two_nodes):
    """A's locks go as its session would on a reconnect (unlocked behind its back); B takes
    carol's device meanwhile.  A's reclaim takes bob's lock again and ends carol's
    connection on A, which B now has; bob's next claim on B waits for A again."""
    a, b = two_nodes
    a._factory.relay.online = [("bob", "B1"), ("carol", "C1")]
    await a.claim("bob", "B1")
    await a.claim("carol", "C1")
    await a._connection.runOperation("SELECT pg_advisory_unlock_all()")
    await b.claim("carol", "C1")
    await a._reclaim()
    assert a._factory.relay.ended == [("carol", "C1")]
    waiting = b.claim("bob", "B1")
    await b.claim("dave", "D1")  # asked after bob's: answered after it
    assert not waiting.called
    a.release("bob", "B1")
    await waiting


@pytest_twisted.ensureDeferred
async def test_a_reclaim_leaves_a_claim_under_way_to_finish(two_nodes):
    """bob just logged in on A, whose claim waits for B; A's listener reconnects meanwhile.
    The reclaim leaves bob to that claim (it neither ends his new connection for B's lock
    nor takes the lock a second time), and the claim finishes once B lets go."""
    a, b = two_nodes
    await b.claim("bob", "B1")
    a._factory.relay.online = [("bob", "B1")]
    waiting = a.claim("bob", "B1")
    await a._reclaim()
    assert a._factory.relay.ended == [] and not waiting.called
    b.release("bob", "B1")
    await waiting
    a.release("bob", "B1")
    await b.claim("bob", "B1")  # let go for good: B takes it at once
