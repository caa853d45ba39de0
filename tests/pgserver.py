"""A throwaway PostgreSQL server for the tests, on 127.0.0.1 and a free port.

``initdb`` and ``pg_ctl`` refuse to run as root, so when the tests run as
root the server is created and run by the unprivileged ``postgres`` user
(which Debian's postgresql package creates).  When no PostgreSQL can be
started this raises: a store test never silently skips.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2

START_TIMEOUT = 60


class PostgresUnavailable(Exception):
    pass


def find_bindir():
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        bindir = out.stdout.strip()
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if candidates:
        return os.path.dirname(candidates[-1])
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb) found: install PostgreSQL "
        "(apt-get install postgresql) or set SECURECHAT_TEST_DATABASE to a postgresql:// URL")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    def __init__(self):
        self.bindir = find_bindir()
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="securechat-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.user = None
        self._as_user = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run initdb as") from None
            os.chmod(self.root, 0o755)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
            self.user = "postgres"
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *command):
        result = subprocess.run([*self._as_user, *command], capture_output=True, text=True,
                                cwd=self.root)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
        return result

    def start(self):
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", self.user,
                  "--auth=trust", "--encoding=UTF8", "--no-instructions")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=on "
                   f"-c max_connections=200")
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                  os.path.join(self.root, "server.log"), "-o", options, "-w", "-t",
                  str(START_TIMEOUT), "start")
        self._wait_ready()
        return self

    def dsn(self, database="postgres"):
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg2.connect(self.dsn()).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable("PostgreSQL did not accept connections in time")
                time.sleep(0.1)

    def stop(self):
        try:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "immediate",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def create_database(server_dsn, name):
    """A new empty database on the server of ``server_dsn``; its DSN."""
    connection = psycopg2.connect(server_dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    base, _, _ = server_dsn.rpartition("/")
    return f"{base}/{name}"
