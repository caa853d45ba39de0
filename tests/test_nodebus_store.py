"""What the store does for the node bus, on real databases: the last number taken (both
backends), and on PostgreSQL the delivery hint each write group's commit sends, heard on a
LISTEN connection of another client as a node hears it."""

import json

import psycopg2
import pytest
import pytest_twisted

from securechat.store import hints, make_store
from securechat.store.errors import DuplicateEnvelope
from tests.support import poll_until
from tests.test_store_contract import database, device, envelope, store  # noqa: F401


@pytest.fixture
def listener(fresh_postgres_dsn):
    """A plain psycopg2 connection LISTENing on the nodes' channel: a function listing the
    payloads received so far."""
    connection = psycopg2.connect(fresh_postgres_dsn)
    connection.autocommit = True
    connection.cursor().execute(f"LISTEN {hints.CHANNEL}")

    def heard():
        connection.poll()
        return [json.loads(n.payload) for n in connection.notifies]

    yield heard
    connection.close()


@pytest_twisted.ensureDeferred
async def test_last_seq_is_the_last_number_a_committed_write_took(store):
    """0 on a new database; after two groups, the second one's number."""
    assert await store.last_seq() == 0
    await device(store, "bob")
    await store.enqueue([envelope("e1", [("bob", "D1")])])
    ((seq, _),) = await store.enqueue([envelope("e2", [("bob", "D1")])])
    assert await store.last_seq() == seq


@pytest_twisted.ensureDeferred
async def test_each_committed_write_group_announces_itself_and_a_refused_one_does_not(
        fresh_postgres_dsn, tmp_path, listener):
    """With ``announce_writes`` a group's commit sends its hint (its numbers and recipient
    device, never the body); a group refused as a duplicate, which commits nothing of it,
    sends none; a store that does not announce sends nothing."""
    store = make_store(fresh_postgres_dsn, str(tmp_path))
    await store.start()
    try:
        await device(store, "bob")
        await store.enqueue([envelope("quiet", [("bob", "D1")])])
        store.announce_writes("node1")
        ((seq, _),) = await store.enqueue([envelope("e1", [("bob", "D1")], body='{"x":1}')])
        await poll_until(lambda: len(listener()) >= 1, timeout=10)
        with pytest.raises(DuplicateEnvelope):
            await store.enqueue([envelope("e1", [("bob", "D1")])])
        await store.enqueue([envelope("e2", [("bob", "D1")])])
        await poll_until(lambda: len(listener()) >= 2, timeout=10)
        first, second = listener()
        assert first == {"n": "node1", "k": "q", "t": [seq, seq], "d": [["bob", "D1", seq]],
                         "r": [], "b": None}
        assert second["t"] == [seq + 1, seq + 1]
    finally:
        await store.stop()
