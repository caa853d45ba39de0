"""A real PostgreSQL restart under a connected relay whose clients keep sending: the log gets
the promised outage warning and no traceback, and nothing accepted is lost."""

import gc
import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.logger import capturedLogs

from securechat.client.protocol import RemoteError
from securechat.server.outage import LOG_INTERVAL
from securechat.store.errors import StoreUnavailable
from tests.pgserver import TemporaryPostgres, create_database
from tests.support import ScriptedDevice, cleanup, poll_until, unicast

SENDS = 600
"""Bound on each sender's sends: enough to span the restart and the reconnection after."""

ACCEPTED_AFTER = 20
"""Sends accepted after the restart that show the relay is back (each sender stops then)."""


class RestartablePostgres(TemporaryPostgres):
    """A throwaway server this test may stop and start again (its own: other tests share
    the session's)."""

    def halt(self, mode):
        self._run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop")

    def resume(self):
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root}")
        self._run("pg_ctl", "-D", self.datadir, "-l", os.path.join(self.root, "server.log"),
                  "-o", options, "-w", "start")


@pytest.fixture
def postgres():
    server = RestartablePostgres().start()
    yield server
    server.stop()


@pytest.fixture
def server(postgres, start_relay):
    return start_relay(database=create_database(postgres.dsn(), "relay"))


class Sender:
    """Sends to bob one envelope after another; keeps what was accepted and what refused."""

    def __init__(self, device):
        self.device = device
        self.accepted, self.refused = [], []
        self.restarted = self.recovered = False

    async def run(self):
        accepted_after = 0
        for _ in range(SENDS):
            envelope = unicast("bob", "DEV1")
            try:
                await self.device.request("send", envelopes=[envelope])
            except RemoteError as e:
                self.refused.append(e.code)
                await task.deferLater(reactor, 0.05, lambda: None)
                continue
            self.accepted.append(envelope["id"])
            accepted_after += self.restarted
            if accepted_after >= ACCEPTED_AFTER:
                self.recovered = True
                return
            await task.deferLater(reactor, 0.01, lambda: None)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest_twisted.ensureDeferred
async def test_a_postgres_restart_logs_warnings_not_tracebacks(postgres, server, mode):
    """While PostgreSQL stops (cleanly or by crash) and starts under load, the relay logs
    "The database cannot be reached" once per 10 s, no "Unhandled Error" nor any
    traceback; senders get ``unavailable``, then ``accepted`` again; bob receives every
    accepted envelope."""
    devices = [ScriptedDevice(name) for name in ("alice", "carol", "bob")]
    for device in devices:
        await device.register(server)
        await device.login(server)
    bob = devices[2]
    senders = [Sender(device) for device in devices[:2]]

    with capturedLogs() as events:
        sending = defer.gatherResults([defer.ensureDeferred(s.run()) for s in senders])
        await poll_until(lambda: all(len(s.accepted) >= 5 for s in senders))
        halted = time.monotonic()
        await threads.deferToThread(postgres.halt, mode)
        await poll_until(lambda: all(s.refused for s in senders))
        await threads.deferToThread(postgres.resume)
        for sender in senders:
            sender.restarted = True
        await sending
        outage = time.monotonic() - halted
        accepted = senders[0].accepted + senders[1].accepted
        await poll_until(lambda: set(accepted) <= {e["envelope"]["id"] for e in bob.envelopes()},
                         timeout=30)
        gc.collect()  # a Deferred failing unhandled is logged when it is collected
        await task.deferLater(reactor, 0, lambda: None)

    assert all(s.recovered for s in senders)
    assert {code for s in senders for code in s.refused} == {"unavailable"}
    warnings = [event for event in events if event.get("what") == StoreUnavailable.log_message]
    assert 1 <= len(warnings) <= 1 + outage // LOG_INTERVAL, (outage, warnings)
    failures = [event for event in events
                if "log_failure" in event or event.get("isError")
                or "Unhandled" in str(event.get("log_format", ""))]
    assert failures == []
    received = [e["envelope"]["id"] for e in bob.envelopes()]
    assert len(received) == len(set(received))
    await cleanup(*devices)
