"""``[server] workers = N``: the twistd process as the supervisor of N relay processes.

One relay process runs one reactor, so it uses one core.  With several workers the
twistd process opens the TLS listening socket once and starts N workers
(``securechat.server.worker``), each a full relay node (its own store connections,
node id and operator port) accepting on that one socket: the kernel hands each new
connection to whichever worker accepts it first.  The supervisor serves nothing itself.

It makes what the workers share before they start (the data directory, the generated
certificate, the admin token), so that they never race to make them; restarts a worker
that ends (after a back-off that doubles while it keeps ending, logged); passes SIGHUP on
(each worker reloads its certificate); and on SIGTERM stops them all, each with its own
graceful shutdown, then exits.  Every worker's log lines come through it into its own
log, marked with the worker's number.
"""

import json
import os
import socket
import sys

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, Logger, globalLogPublisher

from securechat.server import worker
from securechat.server.admin_api import load_or_make_token
from securechat.server.datadir import prepare_data_dir
from securechat.server.listener import LISTEN_BACKLOG
from securechat.server.service import SHUTDOWN_SECONDS, UnderTwistd
from securechat.server.startup import StartFailed, StartReport, cannot_listen
from securechat.server.tls import server_context_factory
from securechat.server.waiters import Waiters

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0
"""A worker that ran this long before it ended is restarted after BACKOFF_FIRST again."""

STOP_SECONDS = SHUTDOWN_SECONDS + 5
"""How long a stopping supervisor waits for its workers (each closes its connections
within SHUTDOWN_SECONDS, then its store); those still running then are killed."""


class Backoff:
    """The delays before restarting one worker: BACKOFF_FIRST, doubling up to BACKOFF_MAX
    while it keeps ending, back to BACKOFF_FIRST once one ran STABLE_SECONDS.  A worker
    that cannot start (its database refuses it, say) is so tried again without a loop
    that fills the log."""

    def __init__(self):
        self._failures = 0

    def delay(self, lived_seconds):
        """The delay before the next start of a worker that ended after ``lived_seconds``."""
        if lived_seconds >= STABLE_SECONDS:
            self._failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** self._failures)
        self._failures += 1
        return delay


def open_listening_socket(interface, port):
    """The TLS port's socket, listening and non-blocking, for the workers to adopt; a
    StartFailed naming the address (as a single relay's) if it cannot listen."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's does
        listening.bind((interface, port))
        listening.listen(LISTEN_BACKLOG)
    except OSError as e:
        listening.close()
        raise cannot_listen(CannotListenError(interface, port, e)) from None
    listening.setblocking(False)
    return listening


class WorkerProcess(protocol.ProcessProtocol):
    """One worker as its supervisor sees it: the outcome of its start (``status``), its
    log lines, its end (``when_ended``)."""

    def __init__(self, index, clock):
        self.index = index
        self.pid = None
        self.started_at = clock.seconds()
        self.status = defer.Deferred()  # None once it listens; StartFailed if it cannot
        self.exit = None  # how it ended, once it has
        self._clock = clock
        self._status_bytes = b""
        self._partial = {1: b"", 2: b""}
        self._waiting = Waiters()  # for the end of the process

    def connectionMade(self):
        self.pid = self.transport.pid

    @property
    def running(self):
        return self.exit is None

    def lived_seconds(self):
        return self._clock.seconds() - self.started_at

    def childDataReceived(self, fd, data):
        if fd == worker.STATUS_FD:
            self._status_bytes += data
            return
        lines = (self._partial[fd] + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._republish(fd, line)

    def _republish(self, fd, line):
        """A worker's log line into the supervisor's log, with its own time and level;
        what it wrote to standard error (before its log began) as a warning."""
        record = None
        if fd == worker.LOG_FD:
            try:
                record = json.loads(line)
            except ValueError:
                pass
        if not isinstance(record, dict):
            record = {"namespace": "stderr", "level": "warn",
                      "text": line.decode("utf-8", "replace")}
        try:
            level = LogLevel.levelWithName(record.get("level", "info"))
        except Exception:
            level = LogLevel.info
        namespace = record.get("namespace", "-")
        globalLogPublisher({
            "log_time": record.get("time") or self._clock.seconds(),
            "log_level": level, "log_namespace": namespace,
            "log_system": f"worker{self.index} {namespace}#{level.name}",
            "log_format": "{text}", "text": str(record.get("text", ""))})

    def childConnectionLost(self, fd):
        if fd == worker.STATUS_FD and not self.status.called:
            answer = self._status_bytes.decode("utf-8", "replace")
            if answer == "0":
                self.status.callback(None)
            else:
                cause = answer[2:] if answer.startswith("1 ") else "it ended before it listened"
                self.status.errback(StartFailed(f"worker {self.index}: {cause}"))

    def processEnded(self, reason):
        code, signal_number = reason.value.exitCode, reason.value.signal
        self.exit = (f"killed by signal {signal_number}" if signal_number
                     else f"exit status {code}")
        if not self.status.called:
            self.status.errback(StartFailed(
                f"worker {self.index}: it ended ({self.exit}) before it listened"))
        self._waiting.fire()

    def when_ended(self):
        """A new Deferred that fires once the worker has ended (at once if it has)."""
        if not self.running:
            return defer.succeed(None)
        return self._waiting.wait()

    def signal(self, name):
        if self.running:
            self.transport.signalProcess(name)


class Supervisor(service.Service):
    """Starts ``config.workers`` workers on one listening socket and keeps them running."""

    log = Logger()

    def __init__(self, config, config_path, reactor, command=worker.command):
        self.config = config
        self.reactor = reactor
        self._config_path = config_path
        self._command = command
        self._socket = None
        self._workers = {}  # index -> the WorkerProcess running (or last run) in that slot
        self._backoffs = {index: Backoff() for index in range(config.workers)}
        self._restarts = {}  # index -> the pending delayed call restarting it
        self._serving = False
        self._started = None

    @property
    def started(self):
        """A Deferred that fires once every worker listens, or fails with why one cannot."""
        return self._started

    def startService(self):
        super().startService()
        self._started = defer.ensureDeferred(self._start())

    async def _start(self):
        config = self.config
        prepare_data_dir(config.data_dir)
        try:
            server_context_factory(config)  # a certificate to generate is made once, here
        except ValueError as e:
            raise StartFailed(str(e)) from None
        if config.http_enabled and config.admin_token_file:
            load_or_make_token(config.admin_token_file)
        self._socket = open_listening_socket(config.interface, config.port)
        workers = [self._spawn(index) for index in range(config.workers)]
        try:
            await defer.gatherResults([w.status for w in workers], consumeErrors=True)
        except defer.FirstError as e:
            self._close_socket()
            await self._stop_workers()
            e.subFailure.raiseException()
        self._serving = True
        host, port = self._socket.getsockname()[:2]
        self.log.info(
            "securechat relay listening on {host}:{port} (TLS) in {count} worker processes "
            "(pids {pids}); worker i answers the operator's HTTP on [http] port + i",
            host=host, port=port, count=len(workers),
            pids=", ".join(str(w.pid) for w in workers))

    def _spawn(self, index):
        process = WorkerProcess(index, self.reactor)
        self._workers[index] = process
        self.reactor.spawnProcess(
            process, sys.executable, self._command(self._config_path, index),
            env=dict(os.environ),
            childFDs={worker.SUPERVISOR_FD: "w", worker.LOG_FD: "r", 2: "r",
                      worker.LISTEN_FD: self._socket.fileno(), worker.STATUS_FD: "r"})
        process.when_ended().addCallback(lambda _: self._ended(process))
        return process

    def _ended(self, process):
        if not self._serving:
            return  # starting (the start fails with its cause) or stopping
        delay = self._backoffs[process.index].delay(process.lived_seconds())
        self.log.warn("Worker {index} (pid {pid}) ended ({how}): restarting it in {delay:g} s",
                      index=process.index, pid=process.pid, how=process.exit, delay=delay)
        self._restarts[process.index] = self.reactor.callLater(
            delay, self._restart, process.index)

    def _restart(self, index):
        del self._restarts[index]
        process = self._spawn(index)
        process.status.addCallbacks(
            lambda _: self.log.info("Worker {index} restarted (pid {pid})", index=index,
                                    pid=process.pid),
            lambda failure: self.log.error("Worker restart failed: {cause}",
                                           cause=failure.value))

    def reload_tls(self):
        """SIGHUP: every worker reloads its certificate (each logs the outcome)."""
        self.log.info("SIGHUP: passed on to the workers (certificate reload)")
        for process in self._workers.values():
            process.signal("HUP")

    def _close_socket(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _stop_workers(self):
        """SIGTERM to every worker (each stops gracefully); SIGKILL to any still running
        after STOP_SECONDS."""
        running = [w for w in self._workers.values() if w.running]
        for process in running:
            process.signal("TERM")
        ended = defer.DeferredList([w.when_ended() for w in running])
        try:
            await ended.addTimeout(STOP_SECONDS, self.reactor)
        except defer.TimeoutError:
            for process in (w for w in running if w.running):
                self.log.warn("Worker {index} (pid {pid}) still running {seconds} s after "
                              "SIGTERM: killed", index=process.index, pid=process.pid,
                              seconds=STOP_SECONDS)
                process.signal("KILL")
            await defer.DeferredList([w.when_ended() for w in running])

    async def _stop(self):
        self._serving = False
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        self._close_socket()  # no new connection waits for a worker that is stopping
        await self._stop_workers()
        self.log.info("securechat relay stopped: its {count} worker processes have ended",
                      count=len(self._workers))

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())


def make_supervisor_service(config, config_path, reactor, twistd_options=None):
    """The service tree twistd runs for ``[server] workers`` > 1."""
    return UnderTwistd(Supervisor(config, config_path, reactor),
                       StartReport(reactor, twistd_options))
