"""The limit tables as the relay runs them: its periodic prune deletes what a registration and
wrong logins wrote once their time has passed (guarantee 7), on SQLite and PostgreSQL, with
the time that stamps the rows and the time that prunes them taken from one fake clock."""

import pytest_twisted

from securechat.client.protocol import RemoteError
from securechat.server.service import PRUNE_INTERVAL
from tests.support import ScriptedDevice, cleanup, poll_until_async
from tests.test_history_retention import HOUR, relay  # noqa: F401

WRONG_LOGINS = 3


async def stored(store):
    """What the limit tables hold of alice at 127.0.0.1: her failures and the address's
    events, whatever their age."""
    row, (events,) = await store.read_limits(("alice", "127.0.0.1"),
                                             [("address", "127.0.0.1", 0, 100)])
    return (row and row[0], len(events))


@pytest_twisted.ensureDeferred
async def test_the_periodic_prune_deletes_the_limits_rows_once_their_time_has_passed(
        relay):  # noqa: F811
    """A registration and three wrong logins leave a pair row and four address events; the
    prune after the address window (60 s) deletes the events and keeps the pair, the prune
    after a day without failures deletes the pair."""
    server, clock = relay
    store = server.service.store
    alice = ScriptedDevice("alice")
    await alice.register(server)
    await alice.close()
    for _ in range(WRONG_LOGINS):
        guess = ScriptedDevice("alice", "GUESS")
        await guess.connect(server)
        try:
            await guess.password_login()
        except RemoteError as e:
            assert e.code == "auth_failed"
        await guess.close()
    assert await stored(store) == (WRONG_LOGINS, WRONG_LOGINS + 1)

    clock.advance(PRUNE_INTERVAL)
    await poll_until_async(lambda: ticked_until(clock, store, (WRONG_LOGINS, 0)))
    clock.advance(24 * HOUR - PRUNE_INTERVAL)
    await poll_until_async(lambda: ticked_until(clock, store, (None, 0)))
    await cleanup(alice)


async def ticked_until(clock, store, expected):
    """Whether the tables hold ``expected``; if not, the prune loop's next tick comes (each
    check moves the clock on by a tick, at most a few seconds of ticks in all: the
    previous prune may still be running when the clock is moved)."""
    if await stored(store) == expected:
        return True
    clock.advance(PRUNE_INTERVAL)
    return False
