"""One worker of ``[server] workers``: a full relay on the listening socket its supervisor
opened (``securechat.server.supervisor``), logging through the supervisor, and ending
when the supervisor ends.

The supervisor runs each worker as ``python -m securechat.server.worker`` (twistd in the
foreground: ``command``) with these descriptors:

* 0: a pipe from the supervisor, never written to.  Its end of file means the supervisor
  is gone (even killed by SIGKILL): the worker then stops as on SIGTERM, rather than
  serve on with nobody to restart it or to stop it.
* 1: its log, one JSON object a line per event, which the supervisor writes into its
  own log (one log for the relay, whatever the number of processes).
* 3: the listening TLS socket, adopted (``listener.adopt_tls``).
* 4: the outcome of its start, as twistd's daemon mode reports one: "0" once it listens,
  or "1 " and the cause in one line.

Worker ``i`` differs from a relay of its own in two settings only (``worker_config``):
its operator HTTP port is ``[http] port + i``, and its audit log is a file of its own.
"""

import dataclasses
import json
import os
import sys

from twisted.internet import main
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import ILogObserver, LogLevel, Logger, eventAsText
from zope.interface import implementer, provider

from securechat.server.service import RelayService, UnderTwistd
from securechat.server.startup import StartReport

SUPERVISOR_FD = 0
LOG_FD = 1
LISTEN_FD = 3
STATUS_FD = 4


def command(config_path, index):
    """The command line of worker ``index`` of the relay configured by ``config_path``
    (None: the defaults)."""
    config = [] if config_path is None else ["--config", config_path]
    return [sys.executable, "-m", "securechat.server.worker", "--nodaemon", "--pidfile=",
            "--logger", "securechat.server.worker.log_to_supervisor",
            "securechat", *config, "--worker", str(index)]


def worker_config(config, index):
    """The settings of worker ``index``: its own operator port and audit log."""
    audit_file = config.audit_file
    if audit_file:
        root, extension = os.path.splitext(audit_file)
        audit_file = f"{root}.worker{index}{extension}"
    return dataclasses.replace(
        config, audit_file=audit_file,
        http_port=config.http_port + index if config.http_port else 0)


def log_to_supervisor():
    """twistd's ``--logger`` of a worker: every event as one JSON line on descriptor 1,
    its text formatted here (the supervisor adds the time and the worker's number)."""
    out = os.fdopen(os.dup(LOG_FD), "w", encoding="utf-8", buffering=1)

    @provider(ILogObserver)
    def observe(event):
        level = event.get("log_level") or LogLevel.info
        out.write(json.dumps({
            "time": event.get("log_time"), "namespace": event.get("log_namespace", "-"),
            "level": level.name,
            "text": eventAsText(event, includeTimestamp=False, includeSystem=False)}) + "\n")

    return observe


@implementer(IReadDescriptor)
class SupervisorGone:
    """Stops the worker's reactor (a graceful stop, as SIGTERM's) once the supervisor's
    pipe reaches its end: the supervisor has ended."""

    log = Logger()

    def __init__(self, reactor, fd=SUPERVISOR_FD):
        self._reactor = reactor
        self._fd = fd

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "supervisor"

    def doRead(self):
        if not os.read(self._fd, 512):  # the supervisor writes nothing: only the end counts
            return main.CONNECTION_DONE
        return None

    def connectionLost(self, reason):
        if reason.check(ConnectionDone):  # not the reactor's own stop, which also ends this
            self.log.warn("The supervisor has ended: this worker stops")
            self._reactor.stop()


def make_worker_service(config, index, reactor, twistd_options):
    """The service tree of worker ``index``: a relay on the adopted socket, its start
    reported on the status descriptor."""
    twistd_options["statusPipe"] = STATUS_FD  # taken by StartReport, as in daemon mode
    reactor.callWhenRunning(reactor.addReader, SupervisorGone(reactor))
    relay = RelayService(worker_config(config, index), reactor, adopted_fd=LISTEN_FD,
                         name=f"securechat relay worker {index}", supervisor_pid=os.getppid())
    return UnderTwistd(relay, StartReport(reactor, twistd_options))


if __name__ == "__main__":
    from twisted.scripts.twistd import run

    run()
