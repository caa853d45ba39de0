"""Shared fixtures: in-process relays and a real PostgreSQL server."""

import pytest
import pytest_twisted
from twisted.internet import defer

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
