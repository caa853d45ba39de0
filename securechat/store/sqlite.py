"""The embedded default: SQLite through twisted.enterprise.adbapi.

One connection in one thread: SQLite has a single writer anyway, and one
connection makes every transaction serial, which is what "claimed exactly
once" and the envelopes' one sequence need.  WAL with
``synchronous=FULL`` fsyncs every commit, so a fired Deferred means on disk.
"""

import os

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.python.failure import Failure

from securechat.store.engine import SQLITE, Txn
from securechat.store.sqlstore import SqlStore


def _interaction(cursor, body, args):
    """Run a transaction body to its end in the pool's thread, then let adbapi commit.

    Every ``txn.execute`` fires at once here, so the body's Deferred has its
    result before ``ensureDeferred`` returns.
    """
    cursor.execute("BEGIN IMMEDIATE")
    outcome = []
    defer.ensureDeferred(body(Txn(SQLITE, cursor), *args)).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("a SQLite transaction body waited for something other than SQLite")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class SqliteStore(SqlStore):
    def __init__(self, path):
        super().__init__()
        self._path = path

    def _open(self):
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), mode=0o700, exist_ok=True)
        # isolation_level=None: the sqlite3 module opens no transactions of its
        # own; _interaction begins each one and adbapi commits or rolls it back.
        self._pool = adbapi.ConnectionPool(
            "sqlite3", self._path, check_same_thread=False, isolation_level=None,
            cp_min=1, cp_max=1, cp_openfun=SQLITE.configure)
        return defer.succeed(None)

    def _run(self, body, *args):
        return self._pool.runInteraction(_interaction, body, args)
