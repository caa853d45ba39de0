"""Shared fixtures: in-process relays and a real PostgreSQL server.

Every process the tests start (``twistd``, ``securechat``, ``securechat-bench``)
runs the code of this checkout, as the in-process tests do: its directory goes
first on their PYTHONPATH, so their imports and twistd's plugin scan (which
looks in ``twisted/plugins`` of every ``sys.path`` entry) find this source tree
before any copy installed in the venv.  Without it a plain ``pip install .``
leaves the processes running the installed copy, and a run after an edit
tests two versions at once.  The entry points themselves (and the installed
plugin, see test_server_process) still come from the installation.
"""

import os
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.pgserver import TemporaryPostgres, create_database, drop_database
from tests.processes import ServerProcess, free_port
from tests.support import start_server, write_config

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _children_run_the_source_tree():
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([SOURCE_TREE] + inherited)


_children_run_the_source_tree()


@pytest.fixture
def start_relay(tmp_path):
    """Start in-process relays on 127.0.0.1 (stopped after the test): ``start_relay(extra=ini)``."""
    started = []

    def start(extra="", database=None, name="srv"):
        running = pytest_twisted.blockon(
            defer.ensureDeferred(start_server(tmp_path / name, database=database, extra=extra)))
        started.append(running)
        return running

    yield start
    for running in started:
        pytest_twisted.blockon(running.stop())


@pytest.fixture
def twistd_relay(tmp_path):
    """A real ``twistd -n securechat`` on a free port, its data in ``tmp_path``/relay;
    ``.port`` and ``.data_dir`` say where (wait for ``wait_listening()`` before use)."""
    data_dir = tmp_path / "relay"
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(str(data_dir), port=port))
    proc.data_dir, proc.port = data_dir, port
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def listening_relay(twistd_relay):
    """``twistd_relay`` once it listens."""
    pytest_twisted.blockon(defer.ensureDeferred(twistd_relay.wait_listening()))
    return twistd_relay


@pytest.fixture
def open_broadcast(start_relay):
    """A relay whose [broadcast] senders = anyone: every user may broadcast (and so is given
    the everyone room's members)."""
    return start_relay(extra="[broadcast]\nsenders = anyone\n")


@pytest.fixture(scope="session")
def postgres_dsn():
    """A real PostgreSQL server: SECURECHAT_TEST_DATABASE, or a throwaway one started here."""
    configured = os.environ.get("SECURECHAT_TEST_DATABASE")
    if configured:
        yield configured
        return
    server = TemporaryPostgres().start()
    yield server.dsn()
    server.stop()


@pytest.fixture
def fresh_postgres_dsn(postgres_dsn):
    """A new, empty database on that server for one test (dropped afterwards)."""
    name = f"sc_{uuid.uuid4().hex[:16]}"
    yield create_database(postgres_dsn, name)
    drop_database(postgres_dsn, name)
