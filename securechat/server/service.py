"""The running server as a twisted Service: open the store, then listen on TLS."""

import gc
import os
import re

from nacl.utils import random as random_bytes
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from securechat.server.auth import LOGIN_WORK, SecretHasher
from securechat.server.factory import RelayFactory
from securechat.server.listener import listen_tls
from securechat.server.tls import server_context_factory
from securechat.server.tls_memory import IdleSweep
from securechat.store import make_store
from securechat.store.errors import StoreUnavailable

PRUNE_INTERVAL = 60

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between collections of the young generation (CPython's default is 700).

Every message allocates a few dozen short-lived objects (frames, dicts,
Deferreds); with the default, the collector ran thousands of times a second
under load and re-scanned the long-lived tables of every connection."""


def redact(database):
    """A database URL fit for a log line: the password is replaced."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", database)


def tune_garbage_collector():
    """Collect less often, and never re-scan what start-up built (modules, config, pools)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class RelayService(service.Service):
    """Starts the store before accepting connections; stops listening before closing it."""

    log = Logger()

    def __init__(self, config, reactor, clock=None):
        self.config = config
        self.reactor = reactor
        # What stamps stored rows and prunes room history by them: the reactor, unless a
        # test drives that time with a task.Clock.
        self.clock = clock if clock is not None else reactor
        self.store = make_store(config.database, config.data_dir, self.clock)
        self.factory = None
        self.port = None
        self.fingerprint = None
        self._pruner = None
        self._idle_sweep = None
        self._started = None

    def startService(self):
        super().startService()
        os.makedirs(self.config.data_dir, mode=0o700, exist_ok=True)
        self._started = defer.ensureDeferred(self._start())

    async def _start(self):
        context, self.fingerprint = server_context_factory(self.config)
        await self.store.start()
        hasher = SecretHasher(self.reactor, self.config.argon2_concurrency,
                              self.config.argon2_waiting_per_client)
        dummy_hash = await hasher.hash(random_bytes(32), LOGIN_WORK, "start-up")
        self.factory = RelayFactory(self.config, self.store, self.reactor, hasher, dummy_hash)
        self.port = listen_tls(self.reactor, self.config.port, context, self.factory,
                               self.config.interface)
        tune_garbage_collector()
        self._pruner = task.LoopingCall(self._prune)
        self._pruner.clock = self.clock
        self._pruner.start(PRUNE_INTERVAL, now=True)
        self._idle_sweep = task.LoopingCall(IdleSweep(self.factory.connections))
        self._idle_sweep.clock = self.reactor
        self._idle_sweep.start(IdleSweep.interval, now=False)
        address = self.port.getHost()
        self.log.info(
            "securechat relay listening on {host}:{port} (TLS), store {database}",
            host=address.host, port=address.port, database=redact(self.config.database),
        )

    def _prune(self):
        """Forget old rate-limit entries and room history past its retention."""
        self.factory.prune_limits()
        d = defer.ensureDeferred(self.factory.rooms.prune())
        d.addErrback(self._prune_failed)
        return d

    def _prune_failed(self, failure):
        if failure.check(StoreUnavailable):  # a database outage: logged as one, tried again
            self.factory.store_outage.refused(failure.value)
        else:
            self.log.failure("pruning room history failed", failure)

    def stop_reactor_if_start_fails(self):
        """Under twistd a relay that cannot start must exit, not sit there doing nothing."""

        def failed(failure):
            self.log.failure("securechat relay failed to start", failure)
            self.reactor.stop()

        self._started.addErrback(failed)

    async def _stop(self):
        for loop in (self._pruner, self._idle_sweep):
            if loop is not None and loop.running:
                loop.stop()
        if self.port is not None:
            await self.port.stopListening()
            for protocol in list(self.factory.connections):
                protocol.transport.abortConnection()
        await self.store.stop()

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())


class _TwistdRoot(service.MultiService):
    def startService(self):
        super().startService()
        for child in self:
            child.stop_reactor_if_start_fails()


def make_service(config, reactor):
    """The service tree twistd runs: the relay, exiting the process if it cannot start."""
    top = _TwistdRoot()
    RelayService(config, reactor).setServiceParent(top)
    return top
