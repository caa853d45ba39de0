"""Membership notices under concurrency: each goes to the members of its own moment."""

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.support import ScriptedDevice, cleanup, poll_until

JOINERS = 30

ROOMY_LIMITS = "[limits]\nlogin_failures_per_address = 200\n"
"""31 registrations from 127.0.0.1 within a minute (each counts against the address)."""


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, start_relay):
    database = None if request.param == "sqlite" else request.getfixturevalue(
        "fresh_postgres_dsn")
    return start_relay(extra=ROOMY_LIMITS, database=database)


def notices(device):
    """The users whose joins ``device`` was told of."""
    return [e["envelope"]["event"]["user"] for e in device.envelopes()
            if e["envelope"]["kind"] == "membership"]


@pytest_twisted.ensureDeferred
async def test_concurrent_joins_notify_exactly_the_members_of_each_join(server):
    """30 devices join one room at once: the k-th join (whatever the order) is told to the
    k+1 members it leaves, so 495 notices in all, and nobody hears of an earlier join."""
    owner = ScriptedDevice("owner")
    await owner.register(server)
    await owner.login(server)
    await owner.request("room.create", room="hall", password=None)
    joiners = [ScriptedDevice(f"user{i:02d}") for i in range(JOINERS)]
    for device in joiners:
        await device.register(server)
        await device.login(server)
    everyone = [owner, *joiners]

    joined = await defer.DeferredList(
        [device.request("room.join", room="hall", password=None) for device in joiners],
        consumeErrors=True)
    assert all(ok for ok, _ in joined)

    store = server.service.store
    queued = sum([await store.queue_length(d.user, d.device) for d in everyone])
    await poll_until(lambda: sum(len(notices(d)) for d in everyone) == queued)
    assert queued == sum(k + 1 for k in range(1, JOINERS + 1))
    # The k-th joiner hears of its own join and the later ones: JOINERS + 1 - k notices.
    position = {d.user: JOINERS + 1 - len(notices(d)) for d in joiners}
    assert sorted(position.values()) == list(range(1, JOINERS + 1))
    assert sorted(notices(owner)) == sorted(position)
    for device in joiners:
        assert all(position[device.user] <= position[user] for user in notices(device))
    await cleanup(*everyone)
