"""How the relay under twistd says it has started, or in one line why it could not.

twistd takes an application as started once ``startService`` returns, and in
daemon mode tells the waiting shell so at once (a "0" on its status pipe).
The relay starts later, asynchronously: the store opens, then the port
listens.  Left to twistd, a relay that could not listen looked started
(exit status 0, nothing printed), or stayed alive listening on nothing.  So
the relay takes over twistd's status pipe and its exit status:

* listening: "0" on the status pipe (daemon mode), as twistd would have written;
* failed: one line naming the cause, in the log and where the operator looks
  (the terminal with ``-n``; in daemon mode the status pipe, whose waiting
  parent prints it), then the reactor stops and the process exits with 1.
"""

import atexit
import os
import sys

from twisted.logger import Logger

EXIT_FAILED = 1
STATUS_PIPE_BYTES = 98
"""twistd's waiting parent reads 100 bytes of the status pipe: "1 " and the cause."""


class StartFailed(Exception):
    """A start-up problem phrased for the operator: the data dir, the TLS files, the store,
    the port.  Its text is the cause in the one line the relay prints."""


def os_reason(error):
    """An OSError's reason as the end of a line: "address already in use"."""
    strerror = getattr(error, "strerror", None)
    return strerror.lower() if strerror else str(error)


def cannot_listen(error, what=""):
    """A StartFailed for a port the relay could not listen on (say, already in use);
    ``what`` names the listener when it is not the relay's own TLS port."""
    return StartFailed(f"cannot listen on {error.interface or '0.0.0.0'}:{error.port}"
                       f"{what}: {os_reason(error.socketError)}")


def _exit_failed():
    """The last thing the process does after twistd's own clean-up: exit with 1.

    twistd offers a service no way to choose the exit status (it exits 0 once the
    reactor stops), and this runs after its log and pid file are closed.
    """
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(EXIT_FAILED)


class StartReport:
    """Tells whoever started twistd the outcome of the relay's asynchronous start."""

    log = Logger()

    def __init__(self, reactor, twistd_options=None, terminal=None):
        self._reactor = reactor
        self._twistd_options = twistd_options
        self._terminal = terminal or sys.__stderr__
        self._status_pipe = None

    def take_status_pipe(self):
        """Keep twistd from telling the shell "started" before the relay listens.

        In daemon mode twistd has forked by now and keeps the pipe's write end
        in its options; without ``-n`` there is none and this does nothing.
        """
        if self._twistd_options is not None:
            self._status_pipe = self._twistd_options.get("statusPipe")
            self._twistd_options["statusPipe"] = None

    def started(self):
        self._answer(b"0")

    def failed(self, failure):
        """Say why in one line, stop the reactor and make the process exit with 1."""
        if failure.check(StartFailed):
            cause = str(failure.value)
        else:
            cause = f"unexpected {type(failure.value).__name__}: {failure.value}"
            self.log.failure("The relay's start failed unexpectedly", failure)
        line = f"securechat relay failed to start: {cause}"
        self.log.critical("{line}", line=line)
        if self._status_pipe is not None:
            self._answer(b"1 " + cause.encode("utf-8", "replace")[:STATUS_PIPE_BYTES])
        else:
            print(line, file=self._terminal, flush=True)
        atexit.register(_exit_failed)
        self._reactor.callWhenRunning(self._reactor.stop)

    def stopping(self):
        """The relay is stopped before it listened (SIGTERM during the start): say so, or the
        waiting parent would wait for ever (it holds the pipe's write end open itself)."""
        self._answer(b"1 stopped before it listened")

    def _answer(self, status):
        pipe, self._status_pipe = self._status_pipe, None
        if pipe is None:
            return
        try:
            os.write(pipe, status)
        except OSError:
            pass  # the waiting parent is gone (interrupted): nobody to tell
        finally:
            os.close(pipe)

