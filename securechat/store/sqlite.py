"""The embedded default: SQLite through twisted.enterprise.adbapi.

One connection in one thread: SQLite has a single writer anyway, and a
single connection makes every transaction serial, which is what "claimed
exactly once" and the per-device sequence numbers need.  ``synchronous=FULL``
in WAL mode fsyncs every commit, so "accepted" means on disk.
"""

import os

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.python.failure import Failure

from securechat.store.sqlstore import SqlStore


class _Txn:
    """Runs statements on the pool thread's cursor; results are ready at once."""

    def __init__(self, cursor):
        self._cursor = cursor

    def execute(self, sql, args=()):
        self._cursor.execute(sql, args)
        return defer.succeed(self._cursor.fetchall() if self._cursor.description else [])


def _configure(connection):
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=10000")


def _interaction(cursor, body, args):
    """Run a transaction body to completion inside the pool thread (see sqlstore)."""
    cursor.execute("BEGIN IMMEDIATE")
    outcome = []
    defer.ensureDeferred(body(_Txn(cursor), *args)).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("a SQLite transaction body waited on something other than the database")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class SqliteEngine:
    def __init__(self, path):
        self._path = path
        self._pool = None

    def start(self):
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._pool = adbapi.ConnectionPool(
            "sqlite3", self._path, check_same_thread=False, isolation_level=None,
            cp_min=1, cp_max=1, cp_openfun=_configure)
        return defer.succeed(None)

    def stop(self):
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        return defer.succeed(None)

    def run(self, body, *args):
        return self._pool.runInteraction(_interaction, body, args)


def SqliteStore(path):
    return SqlStore(SqliteEngine(path))
