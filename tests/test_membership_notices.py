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


def notices(device, action="joined"):
    """The users whose joins (or another ``action``) ``device`` was told of."""
    return [e["envelope"]["event"]["user"] for e in device.envelopes()
            if e["envelope"]["kind"] == "membership"
            and e["envelope"]["event"]["action"] == action]


async def logged_in(server, *users):
    devices = [ScriptedDevice(user) for user in users]
    for device in devices:
        await device.register(server)
        await device.login(server)
    return devices


async def all_delivered(server, devices):
    """Wait until every device has received every membership notice queued for it."""
    store = server.service.store
    queued = sum([await store.queue_length(d.user, d.device) for d in devices])
    await poll_until(lambda: sum(
        len(notices(d, action)) for d in devices for action in ("joined", "kicked")) == queued)


@pytest_twisted.ensureDeferred
async def test_concurrent_joins_notify_exactly_the_members_of_each_join(server):
    """30 devices join one room at once: the k-th join (whatever the order) is told to the
    k+1 members it leaves, so 495 notices in all, and nobody hears of an earlier join."""
    owner, *joiners = await logged_in(server, "owner", *(f"user{i:02d}" for i in range(JOINERS)))
    await owner.request("room.create", room="hall", password=None)
    everyone = [owner, *joiners]

    joined = await defer.DeferredList(
        [device.request("room.join", room="hall", password=None) for device in joiners],
        consumeErrors=True)
    assert all(ok for ok, _ in joined)

    await all_delivered(server, everyone)
    assert sum(len(notices(d)) for d in everyone) == sum(k + 1 for k in range(1, JOINERS + 1))
    # The k-th joiner hears of its own join and the later ones: JOINERS + 1 - k notices.
    position = {d.user: JOINERS + 1 - len(notices(d)) for d in joiners}
    assert sorted(position.values()) == list(range(1, JOINERS + 1))
    assert sorted(notices(owner)) == sorted(position)
    for device in joiners:
        assert all(position[device.user] <= position[user] for user in notices(device))
    await cleanup(*everyone)


@pytest_twisted.ensureDeferred
async def test_a_kick_among_concurrent_joins_is_told_to_exactly_the_members_of_its_moment(
        server):
    """While 30 devices join, the owner kicks a member: each joiner hears of the kick if and
    only if the kicked member heard of its join (the join came first), whatever the order."""
    owner, kicked, *joiners = await logged_in(
        server, "owner", "kicked", *(f"user{i:02d}" for i in range(JOINERS)))
    await owner.request("room.create", room="hall", password=None)
    await kicked.request("room.join", room="hall", password=None)
    half = JOINERS // 2
    requests = [device.request("room.join", room="hall", password=None)
                for device in joiners[:half]]
    requests.append(owner.request("room.kick", room="hall", user="kicked"))
    requests += [device.request("room.join", room="hall", password=None)
                 for device in joiners[half:]]
    done = await defer.DeferredList(requests, consumeErrors=True)
    assert all(ok for ok, _ in done), done

    await all_delivered(server, [owner, kicked, *joiners])
    assert notices(owner, "kicked") == ["kicked"] and notices(kicked, "kicked") == ["kicked"]
    heard_by_kicked = set(notices(kicked))
    told_of_kick = {d.user for d in joiners if notices(d, "kicked") == ["kicked"]}
    assert told_of_kick == heard_by_kicked - {"kicked"}
    await cleanup(owner, kicked, *joiners)
