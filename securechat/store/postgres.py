"""PostgreSQL through txpostgres: for production and for several relay nodes on one database.

Queries are asynchronous on the reactor thread (no thread pool).  SQL is
shared with SQLite and written with ``?`` placeholders, which this engine
turns into psycopg2's ``%s``.
"""

from twisted.internet import defer
from txpostgres import txpostgres

from securechat.store.sqlstore import SqlStore

POOL_SIZE = 4


class _Txn:
    def __init__(self, cursor):
        self._cursor = cursor

    async def execute(self, sql, args=()):
        await self._cursor.execute(sql.replace("?", "%s"), args)
        return self._cursor.fetchall() if self._cursor.description else []


class PostgresEngine:
    def __init__(self, dsn):
        self._dsn = dsn
        self._pool = None

    async def start(self):
        self._pool = txpostgres.ConnectionPool(None, self._dsn, min=POOL_SIZE)
        await self._pool.start()

    def stop(self):
        if self._pool is None:
            return defer.succeed(None)
        pool, self._pool = self._pool, None
        pool.close()
        return defer.succeed(None)

    def run(self, body, *args):
        # An async def handed straight to runInteraction would never run (and the
        # empty transaction would commit): wrap it in a Deferred.
        return self._pool.runInteraction(lambda cursor: defer.ensureDeferred(body(_Txn(cursor), *args)))


def PostgresStore(dsn):
    return SqlStore(PostgresEngine(dsn))
