"""What differs between SQLite and PostgreSQL, in one object per database (as Synapse does).

The SQL of ``securechat.store.transactions`` is written once, with ``?``
placeholders and only syntax both databases accept (``RETURNING``,
``ON CONFLICT``).  The few remaining differences live here, so no query
ever asks which database it runs on.

``Txn`` is what a transaction body receives; a body awaits what its
``execute`` returns.  With txpostgres that is a Deferred of the result rows,
answered asynchronously; in SQLite's thread (``SqliteTxn``) the statement
has already run and the rows are handed back as a plain awaitable, so the
very same ``async def`` runs to completion there without ever yielding.
"""

from twisted.internet import defer


class SqliteEngine:
    """SQLite 3.35+: placeholders as written; BEGIN IMMEDIATE already serialises writers."""

    schema_lock = None

    def convert(self, sql):
        return sql

    def configure(self, connection):
        """Settings of every new connection: fsync each commit, so "committed" means on disk."""
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=10000")


class PostgresEngine:
    """PostgreSQL through psycopg2: ``%s`` placeholders; nodes starting at once take turns.

    The conversion is a plain replacement: the shared SQL never contains a
    literal ``?`` or ``%``.
    """

    # Held until commit: two nodes starting on an empty database would both
    # try to create the schema (CREATE TABLE IF NOT EXISTS races in PostgreSQL).
    schema_lock = "SELECT pg_advisory_xact_lock(7301)"

    def convert(self, sql):
        return sql.replace("?", "%s")


SQLITE = SqliteEngine()
POSTGRES = PostgresEngine()


def _rows(cursor):
    return cursor.fetchall() if cursor.description else []


def _rowcount(cursor):
    return cursor.rowcount


class Txn:
    """One open transaction, as the shared transaction bodies see it; ``now_ms`` is the
    store's time as it began (what the transaction stamps rows with)."""

    def __init__(self, engine, cursor, now_ms):
        self.engine = engine
        self.now_ms = now_ms
        self._cursor = cursor
        self._riding = ""

    def with_next(self, sql):
        """Run a statement whose results may be lost (a SAVEPOINT) together with the next one.

        On PostgreSQL that saves a round trip: both go in one call, the rows
        and row count are the second one's, and this gives [].  SQLite's
        ``SqliteTxn`` runs it at once and gives its rows (the sqlite3 module
        runs one statement per call).
        """
        self._riding += sql + "; "
        return defer.succeed([])

    def execute(self, sql, args=()):
        """Run one statement; a Deferred firing with its rows (tuples), [] when it has none.

        Both cursors give themselves back from ``execute`` (txpostgres inside
        a Deferred), so one callback reads the rows of either.
        """
        return self._execute(sql, args).addCallback(_rows)

    def count(self, sql, args=()):
        """Run one INSERT, UPDATE or DELETE; a Deferred firing with the rows it changed.

        Cheaper than ``RETURNING`` when only the number matters: no row
        comes back to Python.
        """
        return self._execute(sql, args).addCallback(_rowcount)

    def _execute(self, sql, args):
        sql, self._riding = self._riding + self.engine.convert(sql), ""
        return defer.maybeDeferred(self._cursor.execute, sql, args)


class SqliteTxn(Txn):
    """A transaction in SQLite's thread, where every statement has run when ``execute``
    returns: its result is handed back as a plain awaitable (``_Ready``), so a body
    never suspends and no Deferred is made per statement (this runs several times for
    every message)."""

    def with_next(self, sql):
        return self.execute(sql)

    def execute(self, sql, args=()):
        return _Ready(_rows(self._cursor.execute(sql, args)))

    def count(self, sql, args=()):
        return _Ready(self._cursor.execute(sql, args).rowcount)


class _Ready:
    """A result already there: ``await`` gives it at once."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return self.value
        yield  # a generator that returns at once: awaiting it never suspends
