"""The embedded default: SQLite through twisted.enterprise.adbapi.

One connection in one thread: SQLite has a single writer anyway, and one
connection makes every transaction serial, which is what "claimed exactly
once" and the envelopes' one sequence need.  WAL with
``synchronous=FULL`` fsyncs every commit, so a fired Deferred means on disk.

The database file is created 0600 before SQLite opens it (SQLite gives its
``-wal`` and ``-shm`` files the database's mode), and one found looser is
tightened, with a warning.
"""

import os
import sqlite3

from twisted.enterprise import adbapi
from twisted.internet import defer

from securechat.filemodes import PRIVATE_DIR, PRIVATE_FILE, create_private_file, tighten
from securechat.store.engine import SQLITE, SqliteTxn
from securechat.store.errors import StoreFull
from securechat.store.sqlstore import SqlStore


SQLITE_FULL = 13


def _interaction(cursor, body, args, now_ms):
    """Run a transaction body to its end in the pool's thread, and commit it.

    Every ``txn.execute`` has run when it returns (``SqliteTxn``), so the body
    coroutine finishes in one step, without the reactor.  COMMIT is ours, not
    adbapi's, so that a full disk met while writing the WAL at commit is
    StoreFull like one met by a statement (adbapi then rolls back whatever is
    still open, and its own commit finds nothing to do).
    """
    cursor.execute("BEGIN IMMEDIATE")
    try:
        result = _to_the_end(body(SqliteTxn(SQLITE, cursor, now_ms), *args))
        cursor.execute("COMMIT")
    except sqlite3.OperationalError as error:
        if _disk_full(error):
            raise StoreFull(f"SQLite: {error}") from None
        raise
    return result


def _to_the_end(coroutine):
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    raise RuntimeError("a SQLite transaction body waited for something other than SQLite")


def _disk_full(error):
    """Whether SQLite answered SQLITE_FULL (Python before 3.11 only gives its message)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code == SQLITE_FULL if code is not None else str(error) == "database or disk is full"


class SqliteStore(SqlStore):
    def __init__(self, path, clock=None):
        super().__init__(clock)
        self._path = path

    def _open(self):
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), mode=PRIVATE_DIR, exist_ok=True)
        create_private_file(self._path)
        for path in (self._path, self._path + "-wal", self._path + "-shm"):
            tighten(path, PRIVATE_FILE)
        # isolation_level=None: the sqlite3 module opens no transactions of its
        # own; _interaction begins each one and adbapi commits or rolls it back.
        self._pool = adbapi.ConnectionPool(
            "sqlite3", self._path, check_same_thread=False, isolation_level=None,
            cp_min=1, cp_max=1, cp_openfun=SQLITE.configure)
        return defer.succeed(None)

    def _run(self, body, *args):
        return self._pool.runInteraction(_interaction, body, args, self.now_ms())
