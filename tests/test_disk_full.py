"""A relay whose database disk is full: every write is refused ``unavailable`` with the
reason, the log has one warning (no traceback), nothing refused is stored, and what was
accepted is still delivered; writes work again once space returns."""

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import capturedLogs

from securechat.client.protocol import RemoteError
from securechat.store.errors import StoreFull
from tests.support import ScriptedDevice, cleanup, poll_until, unicast

SENDS_BEFORE_FULL = 200
"""Bound on the sends that may still fit in the database's free pages once it is capped."""


class SqliteDisk:
    """SQLite's ``PRAGMA max_page_count`` at the file's current size: SQLite then answers any
    growth with SQLITE_FULL ("database or disk is full"), exactly as on a full disk."""

    def __init__(self, relay):
        self._pool = relay.service.store._pool

    def _cap(self, full):
        def cap(connection):
            cursor = connection.cursor()
            (pages,) = cursor.execute("PRAGMA page_count").fetchone()
            cursor.execute(f"PRAGMA max_page_count = {pages if full else 2**30}")

        return self._pool.runWithConnection(cap)

    def fill(self):
        return self._cap(True)

    def free(self):
        return self._cap(False)


class PostgresDisk:
    """PostgreSQL answering every insert of an envelope with SQLSTATE 53100 (disk_full), the
    error it gives when it cannot extend a file (raised by a trigger: the server, its
    protocol and the relay's connections are the real ones)."""

    def __init__(self, dsn):
        self._dsn = dsn

    def _sql(self, statements):
        connection = psycopg2.connect(self._dsn)
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        connection.close()
        return defer.succeed(None)

    def fill(self):
        return self._sql([
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device' "
            "USING ERRCODE = 'disk_full'; END $$",
            "CREATE TRIGGER disk_full BEFORE INSERT ON queue "
            "FOR EACH STATEMENT EXECUTE FUNCTION disk_full()"])

    def free(self):
        return self._sql(["DROP TRIGGER disk_full ON queue", "DROP FUNCTION disk_full()"])


@pytest.fixture(params=["sqlite", "postgres"])
def relay_and_disk(request, start_relay):
    if request.param == "sqlite":
        relay = start_relay()
        return relay, SqliteDisk(relay)
    dsn = request.getfixturevalue("fresh_postgres_dsn")
    return start_relay(database=dsn), PostgresDisk(dsn)


async def send(device, ct):
    envelope = unicast("bob", "DEV1", ct=ct)
    await device.request("send", envelopes=[envelope])
    return envelope["id"]


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_unavailable_logged_once_and_loses_nothing(relay_and_disk):
    """Sends on a full disk get ``unavailable`` ("disk is full") and one log warning; the
    ones accepted before reach the recipient, those refused never do, later ones do."""
    server, disk = relay_and_disk
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for device in (alice, bob):
        await device.register(server)
        await device.login(server)
    await bob.close()
    accepted = [await send(alice, b"before the disk filled")]

    with capturedLogs() as events:
        await disk.fill()
        refusal = None
        for number in range(SENDS_BEFORE_FULL):  # free pages inside the file fill first
            try:
                accepted.append(await send(alice, b"%d" % number * 20_000))
            except RemoteError as e:
                refusal = e
                break
        assert refusal is not None and refusal.code == "unavailable"
        assert "disk is full" in refusal.message and "nothing was stored" in refusal.message
        together = await defer.DeferredList(  # several sends sharing one write group
            [defer.ensureDeferred(send(alice, b"refused %d" % i * 20_000)) for i in range(8)],
            consumeErrors=True)
        assert [ok or outcome.value.code for ok, outcome in together] == ["unavailable"] * 8

        await bob.login(server, upload_keys=False)  # reading needs no space
        await poll_until(lambda: len(bob.envelopes()) == len(accepted))
        await disk.free()
        accepted.append(await send(alice, b"after space returned"))
        await poll_until(lambda: len(bob.envelopes()) == len(accepted))

    assert [e["envelope"]["id"] for e in bob.envelopes()] == accepted
    warnings = [event for event in events if event.get("what") == StoreFull.log_message]
    assert len(warnings) == 1 and warnings[0]["count"] == 1
    assert [event for event in events if "log_failure" in event] == []
    await cleanup(alice, bob)
