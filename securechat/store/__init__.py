"""Storage: one interface (``IStore``), two backends (SQLite and PostgreSQL)."""

import os

from securechat.store.errors import (  # noqa: F401  (re-exported)
    DuplicateEnvelope, KeyConflict, RoomExists, StaleVersion, StoreError, UserExists)
from securechat.store.interface import IStore  # noqa: F401


def is_postgres_url(database):
    return database.startswith(("postgresql://", "postgres://"))


def make_store(database, data_dir, clock=None):
    """The store a ``[store] database`` value names: a PostgreSQL URL or a SQLite path;
    ``clock`` stamps what it writes (the reactor by default)."""
    if is_postgres_url(database):
        from securechat.store.postgres import PostgresStore

        return PostgresStore(database, clock)
    from securechat.store.sqlite import SqliteStore

    return SqliteStore(os.path.join(data_dir, database), clock)
