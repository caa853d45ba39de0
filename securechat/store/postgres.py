"""PostgreSQL through txpostgres: for production, and for several relay nodes on one database.

Queries run asynchronously on the reactor thread (no thread pool), on a
pool of connections, so transactions really do run concurrently; the shared
transaction bodies are written to stay correct when they do.  ``dsn`` may be
a ``postgresql://user:password@host:port/database`` URL (psycopg2 accepts it).
"""

from twisted.internet import defer
from txpostgres import reconnection, txpostgres

from securechat.store.engine import POSTGRES, Txn
from securechat.store.sqlstore import SqlStore

POOL_SIZE = 4


def _reconnecting_connection(reactor, cooperator):
    """A connection that reconnects by itself when PostgreSQL restarts or drops it.

    While it is down its queries fail at once (the relay answers an error and
    accepts nothing); txpostgres retries the connection at once, then after
    1 s, 1.7 s ... up to every 10 s, and from then on the relay works again
    without being restarted.
    """
    return txpostgres.Connection(reactor, cooperator,
                                 detector=reconnection.DeadConnectionDetector())


class _ReconnectingPool(txpostgres.ConnectionPool):
    connectionFactory = staticmethod(_reconnecting_connection)


class PostgresStore(SqlStore):
    def __init__(self, dsn):
        super().__init__()
        self._dsn = dsn

    async def _connect(self):
        pool = _ReconnectingPool(None, self._dsn, min=POOL_SIZE)
        await pool.start()
        self._pool = pool

    def _open(self):
        return defer.ensureDeferred(self._connect())

    def _run(self, body, *args):
        # runInteraction wants a Deferred: an async def handed to it directly
        # would never run, and the empty transaction would commit.
        return self._pool.runInteraction(
            lambda cursor: defer.ensureDeferred(body(Txn(POSTGRES, cursor), *args)))
