"""Moving a relay from its SQLite file to PostgreSQL without anyone registering again.

Every table is copied row for row into an empty PostgreSQL database that the
relay's own schema transaction creates at the same schema version: accounts
(their password keys, which are salted with the relay's id, so the relay's id
moves too), devices and keys, device lists, rooms, memberships, bans, room
history and the device cursors in it, and every queued envelope.  One
PostgreSQL transaction: a failure leaves the target as empty as it was.  The
relay must be stopped (the copy is of a file nobody writes), and the SQLite
file is left as it was, for going back.
"""

import os
import sqlite3

import psycopg2
from psycopg2.extras import execute_values

from securechat import database_url
from securechat.admin.backup import AdminError, _refuse_if_running
from securechat.store.engine import POSTGRES, SqliteTxn, _Ready, _rows
from securechat.store.schema import SCHEMA_VERSION
from securechat.store.sqlite import _to_the_end
from securechat.store.transactions.migrate import txn_migrate

BATCH = 1000


def migrate(config, target_url):
    """Copy the SQLite store of ``config`` into the empty PostgreSQL ``target_url``; the
    summary lines (rows per table)."""
    if config.uses_postgres:
        raise AdminError("the relay already uses PostgreSQL ([store] database): migrate "
                         "copies its SQLite file into PostgreSQL")
    if not target_url.startswith(("postgresql://", "postgres://")):
        raise AdminError("--to takes a postgresql:// URL")
    try:
        database_url.check(target_url)
    except ValueError as e:
        raise AdminError(f"--to: {e}") from None
    _refuse_if_running(config)
    source = _open_source(config.database)
    try:
        target = _connect(target_url)
        try:
            return _copy(source, target, database_url.redact(target_url))
        finally:
            target.close()
    finally:
        source.close()


def _open_source(path):
    if not os.path.exists(path):
        raise AdminError(f"{path}: no such database (is [server] data_dir right?)")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    (version,) = source.execute("SELECT max(version) FROM schema_version").fetchone()
    if version != SCHEMA_VERSION:
        source.close()
        raise AdminError(f"{path} has schema version {version}, this securechat writes "
                         f"{SCHEMA_VERSION}: start the relay once on it (it upgrades the "
                         "database), stop it, then migrate")
    return source


class _ImmediateTxn(SqliteTxn):
    """The store's schema transaction on a plain psycopg2 cursor: every statement runs
    when it is executed, as in SQLite's thread, in PostgreSQL's placeholder style."""

    def execute(self, sql, args=()):
        self._cursor.execute(self.engine.convert(sql), args)
        return _Ready(_rows(self._cursor))


def _create_schema(cursor):
    """Create (or find) the relay's schema in the target, in the copy's transaction."""
    _to_the_end(txn_migrate(_ImmediateTxn(POSTGRES, cursor, 0)))


def _connect(url):
    try:
        return psycopg2.connect(url)
    except psycopg2.Error as e:
        raise AdminError(f"cannot connect to {database_url.redact(url)}: "
                         f"{database_url.scrub(str(e), url)}") from None


def _tables(source):
    return [name for (name,) in source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name <> 'schema_version' ORDER BY name")]


def _copy(source, target, shown_url):
    with target:  # one transaction: committed at the end, rolled back on any error
        cursor = target.cursor()
        _create_schema(cursor)
        cursor.execute("SELECT count(*) FROM accounts")
        (accounts,) = cursor.fetchone()
        if accounts:
            raise AdminError(f"{shown_url} already holds {accounts} account(s): migrate "
                             "into an empty database")
        cursor.execute("DELETE FROM relay_identity")
        cursor.execute("DELETE FROM seq_counter")
        counts = []
        for table in _tables(source):
            counts.append((table, _copy_table(source, cursor, table)))
    return [f"{table}: {rows} row(s)" for table, rows in counts] + [
        f"copied into {shown_url}: set [store] database to it and start the relay"]


def _copy_table(source, cursor, table):
    columns = [row[1] for row in source.execute(f'PRAGMA table_info("{table}")')]
    cursor.execute("SELECT column_name, data_type FROM information_schema.columns "
                   "WHERE table_name = %s", (table,))
    types = dict(cursor.fetchall())
    missing = [c for c in columns if c not in types]
    if missing:
        raise AdminError(f"table {table}: column(s) {', '.join(missing)} missing in the "
                         "target: it was made by another securechat version")
    booleans = [i for i, c in enumerate(columns) if types[c] == "boolean"]
    rows = source.execute(f'SELECT {", ".join(columns)} FROM "{table}"')
    statement = f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES %s'
    copied = 0
    while True:
        batch = rows.fetchmany(BATCH)
        if not batch:
            return copied
        if booleans:
            batch = [tuple(bool(v) if i in booleans and v is not None else v
                           for i, v in enumerate(row)) for row in batch]
        execute_values(cursor, statement, batch)
        copied += len(batch)
