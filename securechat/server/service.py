"""The running server as a twisted Service: open the store, then listen on TLS."""

import gc
import os
import signal

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

import securechat
from securechat import database_url
from securechat.server.admin_api import AdminAPI, load_or_make_token
from securechat.server.audit import open_audit_log
from securechat.server.auth import SecretHasher
from securechat.server.datadir import prepare_data_dir
from securechat.server.factory import RelayFactory
from securechat.server.fdlimit import raise_open_file_limit
from securechat.server.listener import adopt_tls, listen_tls
from securechat.server.metrics import RelayCollector
from securechat.server.nodebus import LoneNode, NodeBus
from securechat.server.operator_http import operator_site
from securechat.server.startup import StartFailed, StartReport, cannot_listen
from securechat.server.tls import server_context_factory
from securechat.server.tls_memory import IdleSweep
from securechat.server.tls_reload import ReloadableServerTLS
from securechat.store import make_store
from securechat.store.errors import StoreUnavailable

PRUNE_INTERVAL = 60

SWEPT_REMOVALS_MS = 24 * 3600 * 1000
"""How far back each prune looks for removed devices with rows left (a send racing a
removal commits within its milliseconds; a day covers a relay stopped in between)."""

SHUTDOWN_SECONDS = 10
"""How long a stopping relay waits for its connections to get the answers in flight and
close; those still open then are aborted (their clients see a dropped connection)."""

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between collections of the young generation (CPython's default is 700).

Every message allocates a few dozen short-lived objects (frames, dicts,
Deferreds); with the default, the collector ran thousands of times a second
under load and re-scanned the long-lived tables of every connection."""


def tune_garbage_collector():
    """Collect less often, and never re-scan what start-up built (modules, config, pools).

    A setting of the whole process: only the relay's own process (twistd) makes it,
    never a process that merely hosts a relay (the tests).
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class RelayService(service.Service):
    """Starts the store before accepting connections; stops listening before closing it."""

    log = Logger()

    def __init__(self, config, reactor, clock=None, adopted_fd=None, name="securechat relay",
                 supervisor_pid=None):
        self.config = config
        self.reactor = reactor
        # A worker of [server] workers: the listening socket its supervisor opened, the
        # name its log lines carry ("securechat relay worker 1") and its supervisor.
        self.adopted_fd = adopted_fd
        self.name = name
        self.supervisor_pid = supervisor_pid
        # What stamps stored rows and prunes room history by them: the reactor, unless a
        # test drives that time with a task.Clock.
        self.clock = clock if clock is not None else reactor
        self.store = make_store(config.database, config.data_dir, self.clock)
        self.factory = None
        # Other nodes may share a PostgreSQL database; an SQLite file has one.
        self.bus = (NodeBus(self.store, reactor) if config.uses_postgres else LoneNode())
        self.port = None
        self.http_port = None
        self._queued = None  # the store's queued envelopes as of the last /metrics
        self.tls = None  # ReloadableServerTLS, once started
        self._pruner = None
        self._pruning_limits = None  # the limits' prune under way (a Deferred), if any
        self._idle_sweep = None
        self._started = None

    @property
    def fingerprint(self):
        """The SHA-256 fingerprint of the certificate new connections get."""
        return None if self.tls is None else self.tls.fingerprint

    def reload_tls(self):
        """Take a renewed ``[tls] certificate`` / ``private_key`` for new connections (SIGHUP);
        False if it cannot be loaded (logged; the current one stays)."""
        return self.tls is not None and self.tls.reload(self.config)

    def reload_tls_everywhere(self):
        """``reload_tls`` as the operator asks it (``securechat-admin tls reload``): in a
        worker of ``[server] workers``, every worker reloads, not only the one whose
        operator port took the request.  The supervisor is sent SIGHUP, which it passes to
        every worker (this one included, which so reloads twice; harmless), once this one
        has shown the files load."""
        reloaded = self.reload_tls()
        # Only while the supervisor is still the parent: a worker outliving it for a
        # moment must not signal whatever adopted it (init takes SIGHUP as "reload").
        if reloaded and self.supervisor_pid is not None and os.getppid() == self.supervisor_pid:
            os.kill(self.supervisor_pid, signal.SIGHUP)
        return reloaded

    @property
    def listening(self):
        """Whether the TLS port accepts connections (``/ready``)."""
        return self.port is not None and bool(self.port.connected)

    @property
    def started(self):
        """A Deferred that fires once the relay listens, or fails with why it cannot."""
        return self._started

    def startService(self):
        super().startService()
        self._started = defer.ensureDeferred(self._start())

    async def _start(self):
        self.log.info("securechat relay starting (its code: {package})",
                      package=os.path.dirname(securechat.__file__))
        if os.geteuid() == 0:
            self.log.warn("The relay runs as root: a flaw in it would own the machine.  Run it "
                          "as a user of its own (docs/operations.rst, 'Running as its own "
                          "user').")
        prepare_data_dir(self.config.data_dir)
        try:
            self.tls = ReloadableServerTLS(*server_context_factory(self.config))
        except ValueError as e:
            raise StartFailed(str(e)) from None
        await self._open_store()
        hasher = SecretHasher(self.reactor, self.config.argon2_concurrency,
                              self.config.argon2_waiting_per_client)
        relay_id = await self.store.relay_id()
        disabled = await self.store.disabled_users()
        self.factory = RelayFactory(self.config, self.store, self.reactor, hasher, relay_id,
                                    open_audit_log(self.config, self.reactor), self.bus)
        self.factory.disabled.update(disabled)
        await self._start_bus()
        try:
            self.port = self._listen()
        except CannotListenError as e:
            await self.bus.stop()
            await self.store.stop()
            raise cannot_listen(e) from None
        if self.config.http_enabled:
            try:
                self.http_port = self._listen_operator(hasher)
            except CannotListenError as e:
                await self.port.stopListening()
                await self.bus.stop()
                await self.store.stop()
                raise cannot_listen(e, " ([http], the operator's /health, /ready and "
                                       "/metrics; set [http] port, or enabled = no)") from None
        self._pruner = task.LoopingCall(self._prune)
        self._pruner.clock = self.clock
        self._pruner.start(PRUNE_INTERVAL, now=True)
        self._idle_sweep = task.LoopingCall(IdleSweep(self.factory.connections))
        self._idle_sweep.clock = self.reactor
        self._idle_sweep.start(IdleSweep.interval, now=False)
        address = self.port.getHost()
        self.log.info(
            "{name} listening on {host}:{port} (TLS), store {database}, "
            "relay id {relay_id}, node {node}",
            name=self.name, host=address.host, port=address.port, relay_id=relay_id,
            node=self.bus.node,
            database=database_url.redact(self.config.database),
        )
        self.log.info("Registration: {policy} ([accounts] registration{how})",
                      policy=self.config.registration,
                      how="; securechat-admin invites create makes invites"
                      if self.config.registration == "invite" else "")
        if self.http_port is not None:
            http = self.http_port.getHost()
            self.log.info("Operator endpoints on http://{host}:{port}/ (health, ready, metrics)",
                          host=http.host, port=http.port)

    def _listen(self):
        """The TLS port: opened here, or the one the supervisor opened for its workers."""
        if self.adopted_fd is None:
            return listen_tls(self.reactor, self.config.port, self.tls, self.factory,
                              self.config.interface, self.config.proxy_protocol)
        return adopt_tls(self.reactor, self.adopted_fd, self.tls, self.factory,
                         self.config.interface, self.config.proxy_protocol)

    async def _start_bus(self):
        """Hear the other nodes of the database; a StartFailed if it cannot be reached."""
        try:
            await self.bus.start(self.factory)
        except Exception as e:
            await self.bus.stop()
            await self.store.stop()
            raise StartFailed(
                "cannot listen for the other relay nodes on the database "
                f"{database_url.redact(self.config.database)}: "
                f"{database_url.scrub(str(e) or type(e).__name__, self.config.database)}"
            ) from None

    def _listen_operator(self, hasher):
        """Listen for the operator's HTTP requests, the metrics registry fed from here."""
        metrics = self.factory.metrics
        self.store.observe_writes(self._observe_writes)
        self.store.observe_acks(metrics.acked)
        metrics.registry.register(RelayCollector(metrics, lambda: {
            "connections": len(self.factory.connections),
            "argon2_waiting": hasher.queue.waiting(),
            "queued": self._queued,
            "store": "postgresql" if self.config.uses_postgres else "sqlite"}))
        admin = None
        if self.config.admin_token_file:
            admin = AdminAPI(load_or_make_token(self.config.admin_token_file), self,
                             self.factory.audit)
        site = operator_site(self, metrics.registry, self._read_queued, self.reactor, admin)
        return self.reactor.listenTCP(self.config.http_port, site,
                                      interface=self.config.http_interface)

    def _observe_writes(self, commit_seconds, waited_seconds):
        metrics = self.factory.metrics
        metrics.commit_seconds.observe(commit_seconds)
        metrics.push_seconds.observe(waited_seconds)

    async def _read_queued(self):
        """Count the queued envelopes for a scrape; None (the series left out) while the
        store does not answer, so /metrics still shows everything else."""
        try:
            self._queued = await self.store.queued_total()
        except Exception as e:  # the outage shows in /ready; here only the count is missing
            self._queued = None
            self.log.debug("queued count unavailable: {error}", error=e)

    async def _open_store(self):
        """Open the store; a StartFailed naming the database (never its password) if it fails."""
        try:
            await self.store.start()
        except Exception as e:
            reason = getattr(e, "subFailure", None)  # txpostgres's pool: a FirstError
            reason = e if reason is None else reason.value
            database = self.config.database
            raise StartFailed(
                f"cannot open the database {database_url.redact(database)}: "
                f"{database_url.scrub(str(reason) or type(reason).__name__, database)}") from None

    def _prune(self):
        """Forget the limits' expired rows, room history past its retention, files past
        ``[files] keep_days`` and rows a send left for a device removed meanwhile, the
        limits' on their own, so a slow prune of them never holds back the others' next
        turn: the loop waits for the others, and the limits' starts again once the last
        one has ended."""
        if self._pruning_limits is None:
            self._pruning_limits = self.factory.prune_limits()
            self._pruning_limits.addErrback(self._prune_failed)
            self._pruning_limits.addBoth(self._limits_pruned)
        d = defer.ensureDeferred(self.factory.rooms.prune())
        d.addCallback(lambda _: self.factory.files.expire())
        d.addCallback(lambda _: self.store.sweep_removed_devices(
            self.store.now_ms() - SWEPT_REMOVALS_MS))
        d.addErrback(self._prune_failed)
        return d

    def _limits_pruned(self, _):
        self._pruning_limits = None

    def _prune_failed(self, failure):
        if failure.check(StoreUnavailable):  # a database outage: logged as one, tried again
            self.factory.store_outage.refused(failure.value)
        else:
            self.log.failure("pruning old limits, room history, files or removed devices' "
                             "rows failed", failure)

    async def _stop(self):
        for loop in (self._pruner, self._idle_sweep):
            if loop is not None and loop.running:
                loop.stop()
        if self.port is not None:
            await self.port.stopListening()
            await self._close_connections()
        if self.http_port is not None:
            await self.http_port.stopListening()
        if self.factory is not None:
            self.factory.audit.close()
        await self.bus.stop()
        await self.store.stop()
        if self.port is not None:
            self.log.info("{name} stopped: no longer listening, store closed", name=self.name)

    async def _close_connections(self):
        """Tell every connection the relay stops; each closes once its requests in flight
        are answered (their commits done), so the write groups are drained before the store
        closes.  Whatever is still open after SHUTDOWN_SECONDS is aborted."""
        connections = list(self.factory.connections)
        if not connections:
            return
        self.log.info("Stopping: closing {count} connection(s) once what is in flight is "
                      "answered (at most {seconds} s)", count=len(connections),
                      seconds=SHUTDOWN_SECONDS)
        closed = self.factory.all_closed()
        for protocol in connections:
            protocol.shut_down()
        try:
            await closed.addTimeout(SHUTDOWN_SECONDS, self.reactor)
        except defer.TimeoutError:
            left = list(self.factory.connections)
            self.log.warn("Stopping: {count} connection(s) still open after {seconds} s, "
                          "aborted", count=len(left), seconds=SHUTDOWN_SECONDS)
            for protocol in left:
                protocol.transport.abortConnection()

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())


class UnderTwistd(service.MultiService):
    """The relay as twistd runs it: its start reported once known, then the GC tuned."""

    def __init__(self, relay, report):
        super().__init__()
        self._relay = relay
        self._report = report
        relay.setServiceParent(self)

    def startService(self):
        self._report.take_status_pipe()
        raise_open_file_limit()  # the process's, so under twistd only (not in-process tests)
        # SIGHUP reloads the certificate, as for most daemons (a deploy hook sends it after a
        # renewal); the handler only schedules the work on the reactor.
        signal.signal(signal.SIGHUP, lambda signum, frame: self._relay.reactor.callFromThread(
            self._relay.reload_tls))
        super().startService()
        self._relay.started.addCallbacks(self._listening, self._report.failed)

    def _listening(self, _):
        tune_garbage_collector()
        self._report.started()

    def stopService(self):
        self._report.stopping()
        return super().stopService()


def make_service(config, reactor, twistd_options=None):
    """The service tree twistd runs: the relay, exiting the process with one line if it cannot
    start (``twistd_options``: twistd's own, which hold its daemon-mode status pipe)."""
    return UnderTwistd(RelayService(config, reactor), StartReport(reactor, twistd_options))
