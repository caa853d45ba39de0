"""What the operator's HTTP endpoints read (``/ready``, ``/metrics``): read-only and cheap,
never a row of anyone's content."""

from securechat.store.transactions.common import _first


async def txn_ping(txn):
    """A round trip to the database: it answers (``/ready``)."""
    await _first(txn, "SELECT 1")
    return True


async def txn_queued_total(txn):
    """Envelopes waiting in the 1:1 queues of every device (a count, for ``/metrics``).

    A full count: on a very large PostgreSQL queue it reads the whole table, once per
    scrape, which is why scrapes every 15 s or more are what docs/operations.rst shows."""
    (queued,) = await _first(txn, "SELECT count(*) FROM queue")
    return queued
