"""Backups of the relay's store while it runs, and their restore while it is stopped.

SQLite: the online backup API copies a consistent snapshot page by page while the
relay keeps writing (its WAL lets readers and the writer go on together).
PostgreSQL: ``pg_dump`` in its custom format, itself a consistent snapshot, and
``pg_restore`` to bring it back.  A restore replaces the whole store, so it is
refused while a relay answers on the configured port.
"""

import os
import shutil
import socket
import sqlite3
import subprocess

from securechat import database_url
from securechat.filemodes import PRIVATE_FILE, create_private_file
from securechat.store.schema import SCHEMA_VERSION


class AdminError(Exception):
    """What the operator is told, in one line (exit 1)."""


def postgres_tool(name):
    """The path of ``pg_dump`` or ``pg_restore``: on PATH, else in PostgreSQL's bindir."""
    found = shutil.which(name)
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True,
                                text=True).stdout.strip()
        if os.access(os.path.join(bindir, name), os.X_OK):
            return os.path.join(bindir, name)
    raise AdminError(f"{name} is not installed: it comes with PostgreSQL's client tools "
                     "(Debian/Ubuntu: apt-get install postgresql-client)")


def backup(config, path):
    """Write a consistent copy of the store to ``path`` (mode 0600); a one-line summary."""
    if os.path.exists(path):
        raise AdminError(f"{path} exists: give a new file name (nothing was written)")
    if config.uses_postgres:
        _run([postgres_tool("pg_dump"), "--format=custom", "--no-owner", "--file", path],
             "--dbname", config.database)
        os.chmod(path, PRIVATE_FILE)
        return f"backup of {database_url.redact(config.database)} written to {path} (pg_dump)"
    source = _open_sqlite(config.database)
    try:
        create_private_file(path)
        target = sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    return f"backup of {config.database} written to {path} (schema version {SCHEMA_VERSION})"


def restore(config, path):
    """Replace the store with the backup at ``path``; refused while a relay runs."""
    if not os.path.exists(path):
        raise AdminError(f"{path}: no such backup file")
    _refuse_if_running(config)
    if config.uses_postgres:
        _run([postgres_tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
              "--single-transaction", path], "--dbname", config.database)
        return f"{path} restored into {database_url.redact(config.database)}"
    version = _backup_version(path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(config.database + suffix):
            os.remove(config.database + suffix)
    os.makedirs(os.path.dirname(config.database), exist_ok=True)
    staging = config.database + ".restoring"
    shutil.copyfile(path, staging)
    os.chmod(staging, PRIVATE_FILE)
    os.replace(staging, config.database)
    return (f"{path} restored into {config.database} (schema version {version}; the relay "
            "upgrades it at start if it is older)")


def _open_sqlite(database):
    if not os.path.exists(database):
        raise AdminError(f"{database}: no such database (is [server] data_dir right?)")
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True)


def _backup_version(path):
    """The schema version of a SQLite backup; AdminError if it is not one of ours."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (version,) = db.execute("SELECT max(version) FROM schema_version").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise AdminError(f"{path} is not a securechat SQLite backup ({e})") from None
    if version is None or version > SCHEMA_VERSION:
        raise AdminError(f"{path} has schema version {version}; this securechat reads "
                         f"{SCHEMA_VERSION} and older")
    return version


def _refuse_if_running(config):
    """A relay answering on the configured address: restoring under it would lose data."""
    host = "127.0.0.1" if config.interface in ("0.0.0.0", "::") else config.interface
    try:
        with socket.create_connection((host, config.port), timeout=2):
            pass
    except OSError:
        return
    raise AdminError(f"a relay is running on {host}:{config.port}: stop it first "
                     "(a restore replaces its whole store)")


def _run(command, database_option, database):
    """Run a PostgreSQL client tool on ``database``, its password in the environment (not
    on the command line, which other users can read); AdminError with the tool's message
    (never the password)."""
    url, password = database_url.without_password(database)
    environment = dict(os.environ)
    if password is not None:
        environment["PGPASSWORD"] = password
    result = subprocess.run([*command, database_option, url], capture_output=True, text=True,
                            env=environment)
    if result.returncode != 0:
        message = database_url.scrub(result.stderr.strip() or f"exit {result.returncode}",
                                     database)
        raise AdminError(f"{os.path.basename(command[0])} failed: {message}")
