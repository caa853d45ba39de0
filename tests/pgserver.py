"""A throwaway PostgreSQL server for the tests, on 127.0.0.1 and a free port.

Reused by every test that needs a real PostgreSQL (store contract tests and
end-to-end tests of the server process).  ``initdb`` and ``pg_ctl`` refuse
to run as root, so when the tests run as root the server is created and run
by the unprivileged ``postgres`` user (which Debian's postgresql package
creates).  When no PostgreSQL can be started this raises with the reason:
a test that needs PostgreSQL fails, it never silently skips.
"""

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse

import psycopg2

START_TIMEOUT = 60


class PostgresUnavailable(Exception):
    pass


def find_bindir():
    """The directory of initdb/pg_ctl: ``pg_config --bindir``, else the newest Debian install."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        bindir = found.stdout.strip()
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    installed = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if installed:
        newest = max(installed, key=lambda path: [int(n) for n in re.findall(r"\d+", path)])
        return os.path.dirname(newest)
    if shutil.which("initdb"):
        return os.path.dirname(shutil.which("initdb"))
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb) found: install PostgreSQL "
        "(apt-get install postgresql) or set SECURECHAT_TEST_DATABASE to a postgresql:// URL")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_prefix(root):
    """The prefix running initdb/pg_ctl as ``postgres`` when we are root (who then owns ``root``)."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root and there is no 'postgres' user to run initdb as") from None
    if not shutil.which("runuser"):
        raise PostgresUnavailable("running as root and runuser (util-linux) is missing")
    os.chmod(root, 0o755)
    os.chown(root, account.pw_uid, account.pw_gid)
    return ["runuser", "-u", "postgres", "--"], "postgres"


class TemporaryPostgres:
    """``TemporaryPostgres().start()``, then ``dsn()``; ``stop()`` also deletes its files."""

    def __init__(self):
        self.bindir = find_bindir()
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="securechat-pg-")
        self.datadir = os.path.join(self.root, "data")
        self._as_user, self.user = _unprivileged_prefix(self.root)

    def _run(self, program, *args):
        command = [*self._as_user, os.path.join(self.bindir, program), *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def start(self):
        try:
            self._run("initdb", "-D", self.datadir, "-U", self.user, "--auth=trust",
                      "--encoding=UTF8", "--no-instructions")
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                       f"-c unix_socket_directories={self.root} -c max_connections=200")
            self._run("pg_ctl", "-D", self.datadir, "-l", os.path.join(self.root, "server.log"),
                      "-o", options, "-w", "-t", str(START_TIMEOUT), "start")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def dsn(self, database="postgres"):
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg2.connect(self.dsn()).close()
                return
            except psycopg2.OperationalError as e:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"PostgreSQL did not accept connections within {START_TIMEOUT}s: {e}")
            time.sleep(0.1)

    def stop(self):
        try:
            if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _autocommit(server_dsn, statement):
    connection = psycopg2.connect(server_dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def create_database(server_dsn, name):
    """A new empty database on the server of ``server_dsn``; its DSN."""
    _autocommit(server_dsn, f'CREATE DATABASE "{name}"')
    return urllib.parse.urlsplit(server_dsn)._replace(path=f"/{name}").geturl()


def drop_database(server_dsn, name):
    """Drop a database made by ``create_database``, disconnecting whoever still uses it."""
    _autocommit(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
