"""The schema's transaction: create a fresh database or upgrade an older one, once per start.

A module of its own: it runs before any aggregate's transaction
(``SqlStore.start``) and touches only ``securechat.store.schema``'s
statements and version table.
"""

from securechat.store.errors import StoreError
from securechat.store.schema import MIGRATIONS, SCHEMA_VERSION, STATEMENTS, VERSION_TABLE
from securechat.store.transactions.common import _first


async def txn_migrate(txn):
    """Create or upgrade the schema; refuse a database written by a newer securechat.

    An empty database is created at version 1 and then migrated like any
    other, so every migration runs on every fresh start too.
    """
    if txn.engine.schema_lock:
        await txn.execute(txn.engine.schema_lock)
    await txn.execute(VERSION_TABLE)
    row = await _first(txn, "SELECT max(version) FROM schema_version")
    version = row[0] or 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this securechat "
            f"understands ({SCHEMA_VERSION}); upgrade securechat")
    if version == 0:
        for statement in STATEMENTS:
            await txn.execute(statement)
        await txn.execute("INSERT INTO schema_version (version) VALUES (1)")
        version = 1
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[target]:
            await txn.execute(statement)
        await txn.execute("UPDATE schema_version SET version = ?", (target,))
