"""Shared fixtures: in-process relays and a real PostgreSQL server."""

import os
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.pgserver import TemporaryPostgres, create_database, drop_database
from tests.support import start_server


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
