"""PostgreSQL through txpostgres: for production, and for several relay nodes on one database.

Queries run asynchronously on the reactor thread (no thread pool), on a
pool of connections, so transactions really do run concurrently; the shared
transaction bodies are written to stay correct when they do.  ``dsn`` may be
a ``postgresql://user:password@host:port/database`` URL (psycopg2 accepts it).
"""

import psycopg2
from psycopg2.errors import DiskFull
from psycopg2.extensions import TransactionRollbackError
from twisted.internet import defer
from txpostgres import reconnection, txpostgres

from securechat.store import hints
from securechat.store.engine import POSTGRES, Txn
from securechat.store.errors import StoreFull, StoreUnavailable
from securechat.store.sqlstore import SqlStore

POOL_SIZE = 4


class _Connection(txpostgres.Connection):
    """txpostgres's connection, except that a transaction's BEGIN is not a query of its own.

    txpostgres sends "begin" and waits for it before the transaction's first
    statement; ``PostgresStore._run`` has BEGIN ride with that statement
    instead (``Txn.with_next``), one round trip to PostgreSQL fewer for every
    transaction, and the relay commits a group per message at low rates.
    """

    def doRead(self):
        """Watch the idle connection (txpostgres's ``doRead``, for NOTIFY), without a
        traceback when the server closes it.

        When PostgreSQL restarts it closes every connection; on an idle one no
        query waits to be told, so txpostgres lets psycopg2's error escape to
        the reactor (or, when psycopg2 has already let the socket go, asks the
        reactor to watch descriptor -1), which logs "Unhandled Error" with a
        traceback for each.  Handed back instead, the error makes the reactor
        close the connection all the same (``connectionLost``, and the
        dead-connection detector reconnects): one warning of the outage per
        interval is what the log gets, from the requests it refuses
        (``securechat.server.outage``).
        """
        try:
            txpostgres._PollingMixin.doRead(self)
        except psycopg2.Error as error:
            return error
        self.checkForNotifies()
        if self._connection.closed:
            return None
        if self.fileno() == -1:
            return psycopg2.InterfaceError("PostgreSQL closed the connection")
        self.reactor.addReader(self)
        return None

    def _runInteraction(self, interaction, *args, **kwargs):
        cursor = self.cursor()
        d = defer.maybeDeferred(interaction, cursor, *args, **kwargs)
        d.addCallback(self._commit, cursor)
        d.addErrback(self._roll_back, cursor)
        return d

    @staticmethod
    def _commit(result, cursor):
        """COMMIT, with the hint the transaction announces (``PostgresTxn.announce``) in the
        same round trip: PostgreSQL sends it when, and only if, the commit succeeds."""
        hint = getattr(cursor, "announcement", None)
        if hint is None:
            done = cursor.execute("COMMIT")
        else:
            done = cursor.execute("SELECT pg_notify(%s, %s); COMMIT", (hints.CHANNEL, hint))
        return done.addCallback(lambda _: result)

    def _roll_back(self, failure, cursor):
        """Undo, then pass the failure on; if even ROLLBACK fails the connection is suspect,
        which txpostgres's RollbackFailed says (and ``_unreachable`` understands)."""
        d = defer.maybeDeferred(cursor.execute, "ROLLBACK")
        d.addCallbacks(lambda _: failure,
                       lambda _: defer.fail(txpostgres.RollbackFailed(self, failure)))
        return d


def _reconnecting_connection(reactor, cooperator):
    """A connection that reconnects by itself when PostgreSQL restarts or drops it.

    While it is down its queries fail at once (the relay answers an error and
    accepts nothing); txpostgres retries the connection at once, then after
    1 s, 1.7 s ... up to every 10 s, and from then on the relay works again
    without being restarted.
    """
    return _Connection(reactor, cooperator, detector=reconnection.DeadConnectionDetector())


class _ReconnectingPool(txpostgres.ConnectionPool):
    connectionFactory = staticmethod(_reconnecting_connection)


class PostgresStore(SqlStore):
    def __init__(self, dsn, clock=None):
        super().__init__(clock)
        self._dsn = dsn

    async def _connect(self):
        pool = _ReconnectingPool(None, self._dsn, min=POOL_SIZE)
        await pool.start()
        self._pool = pool

    def _open(self):
        return defer.ensureDeferred(self._connect())

    def announce(self, hint):
        """Send ``hint`` (text) to the other relay nodes now (a change already committed)."""
        return self._pool.runOperation("SELECT pg_notify(%s, %s)", (hints.CHANNEL, hint)
                                       ).addErrback(_unreachable)

    def listener(self, reactor):
        """A connection of its own for LISTEN (the pool's connections come and go between
        transactions), that reconnects like the pool's; connect it with ``dsn``."""
        return _reconnecting_connection(reactor, None)

    @property
    def dsn(self):
        return self._dsn

    def _run(self, body, *args):
        # runInteraction wants a Deferred: an async def handed to it directly
        # would never run, and the empty transaction would commit.
        now_ms = self.now_ms()
        d = self._pool.runInteraction(lambda cursor: defer.ensureDeferred(
            body(_transaction(cursor, now_ms), *args)))
        return d.addErrback(_unreachable)

    def _read(self, body, *args):
        """One statement on its own, with no BEGIN and no COMMIT (psycopg2's asynchronous
        connections commit every statement by themselves): one round trip to PostgreSQL
        where a transaction takes two.  This is how a cursor reads what another node
        committed for its device, on the way of every cross-node push."""
        return defer.ensureDeferred(
            body(_Statement(self._pool, self.now_ms()), *args)).addErrback(_unreachable)


class _Statement(Txn):
    """What a one-statement read (``PostgresStore._read``) sees as its transaction: its
    ``execute`` runs on its own, on any connection of the pool, and gives the rows."""

    def __init__(self, pool, now_ms):
        super().__init__(POSTGRES, None, now_ms)
        self._pool = pool

    def execute(self, sql, args=()):
        return self._pool.runQuery(self.engine.convert(sql), args)


class PostgresTxn(Txn):
    def announce(self, hint):
        """Send ``hint`` (text) on the nodes' channel as this transaction commits."""
        self._cursor.announcement = hint


def _transaction(cursor, now_ms):
    """A Txn whose first statement begins the transaction (see ``_Connection``)."""
    txn = PostgresTxn(POSTGRES, cursor, now_ms)
    txn.with_next("BEGIN")
    return txn


def _unreachable(failure):
    """A full disk becomes StoreFull, a lost or refused connection StoreUnavailable; other
    errors pass through.

    (A deadlock or serialization failure is an OperationalError too, but the
    connection is fine: those stay what they are.  DiskFull is one as well.)
    """
    if failure.check(DiskFull):
        raise StoreFull(str(failure.value).strip().splitlines()[0])
    lost = failure.check(reconnection.ConnectionDead, txpostgres.RollbackFailed,
                         psycopg2.InterfaceError, psycopg2.OperationalError)
    if lost and not failure.check(TransactionRollbackError):
        raise StoreUnavailable(lost.__name__)
    return failure
