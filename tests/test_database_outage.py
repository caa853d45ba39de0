"""A relay on PostgreSQL whose database connections are dropped (what a PostgreSQL restart
looks like to it): clients get a clear ``unavailable``, never an accepted send that was not
stored, and the relay recovers by itself."""

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import capturedLogs

from securechat.client.protocol import RemoteError
from securechat.server.outage import LOG_INTERVAL, OutageLog
from securechat.store.errors import StoreUnavailable
from tests.support import ScriptedDevice, cleanup, poll_until, unicast


@pytest.fixture
def server(start_relay, fresh_postgres_dsn):
    relay = start_relay(database=fresh_postgres_dsn)
    relay.dsn = fresh_postgres_dsn
    return relay


def drop_connections(dsn):
    """Terminate every connection to the database but this one, as a restart would."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        (killed,) = cursor.fetchone()
    connection.close()
    return killed


@pytest_twisted.ensureDeferred
async def test_dropped_database_connections_are_refused_clearly_then_recover(server):
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for device in (alice, bob):
        await device.register(server)
        await device.login(server)
    await alice.request("send", envelopes=[unicast("bob", "DEV1", ct=b"before")])
    assert drop_connections(server.dsn) >= 1

    outcomes = []
    for _ in range(150):  # bounded: reconnection is immediate, then 1 s, 1.7 s ...
        try:
            await alice.request("send", envelopes=[unicast("bob", "DEV1", ct=b"after")])
        except RemoteError as e:
            outcomes.append(e.code)
            await task.deferLater(reactor, 0.1, lambda: None)
            continue
        outcomes.append("accepted")
        break
    assert outcomes[-1] == "accepted"
    assert "unavailable" in outcomes and set(outcomes) <= {"unavailable", "accepted"}
    await poll_until(lambda: len(bob.envelopes()) == 2)
    assert (await bob.request("ping"))["pong"] is True
    await cleanup(alice, bob)


def test_an_outage_is_logged_once_per_interval_with_a_count():
    """Thousands of refused requests make a line every 10 s, not a line (and traceback) each."""
    clock = task.Clock()
    outage = OutageLog(clock)
    with capturedLogs() as events:
        for _ in range(1000):
            outage.refused(StoreUnavailable("ConnectionDead"))
        clock.advance(LOG_INTERVAL)
        outage.refused(StoreUnavailable("ConnectionDead"))
    assert [event["count"] for event in events] == [1, 1000]
