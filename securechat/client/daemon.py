"""``securechat daemon``: one unlocked device, one connection, served on a UNIX socket.

The daemon unlocks the key store once, keeps one authenticated connection to the
relay, and serves ``DATA_DIR/daemon.sock`` (JSON-RPC 2.0, one object a line; see
securechat.client.rpc and docs/usage.rst) to the one-shot commands, ``chat``, scripts
and bots of the same user.  The unlocked store never leaves this process: callers get
results, never keys.

Who may connect: the socket is created 0600 (under a umask, so it is never wider
for an instant) in the data directory, and every connection's peer uid is checked
with SO_PEERCRED, so a socket whose mode was loosened still serves only its owner.

What one caller can make the daemon hold is bounded: a request line
(``MAX_REQUEST_BYTES``), requests in flight per connection (``MAX_IN_FLIGHT``),
connections (``MAX_CONNECTIONS``), and the answers and notifications written to a
caller that does not read (``MAX_BACKLOG_BYTES``: past it the caller is dropped).
"""

import json
import os
import socket
import stat

from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from securechat.client import rpc
from securechat.client.exit_codes import (
    EXIT_AUTH, EXIT_ERROR, EXIT_RATE_LIMITED, EXIT_USAGE)
from securechat.client.methods import (
    InvalidParams, Methods, UnknownMethod, Verifications, as_command_failed, public)
from securechat.client.rpc import CommandFailed
from securechat.client.session import Client
from securechat.client.standalone import log_to_stderr, open_or_reconnect
from securechat.client.unlock import read_password
from securechat.client.verification import PendingRequests

MAX_REQUEST_BYTES = 256 * 1024
"""The longest request line (a message's text fits many times over)."""
MAX_IN_FLIGHT = 16
"""Requests one connection may have unanswered (``inbox`` with ``wait`` counts)."""
MAX_CONNECTIONS = 64
"""Connections served at once; more are refused with an error line."""
MAX_BACKLOG_BYTES = 1024 * 1024
"""Answers and notifications written to a connection whose reader does not keep up, on
top of the socket's own buffer; past it the connection is closed (a slow subscriber is
dropped rather than growing the daemon's memory)."""


class DaemonRunning(Exception):
    """Another daemon already serves this data directory."""


def running_daemon(data_dir):
    """The pid of the daemon serving ``data_dir``, or None (no socket or a stale one)."""
    connection = rpc.DaemonConnection.find(data_dir)
    if connection is None:
        return None
    try:
        return connection.daemon_pid()
    finally:
        connection.close()


@implementer(IPushProducer)
class RpcConnection(LineReceiver):
    """One caller: requests in, answers and notifications out."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_BYTES
    log = Logger()

    def __init__(self, daemon):
        self._daemon = daemon
        self._in_flight = 0
        self._paused = False
        self._backlog = 0
        self.subscribed = False

    def connectionMade(self):
        uid = self._peer_uid()
        if uid != os.getuid():
            self.log.warn("refused a connection to the daemon socket from uid {uid}", uid=uid)
            self._refuse(rpc.REFUSED, f"refused: uid {uid} is not the daemon's owner "
                                      f"(uid {os.getuid()})")
            return
        if len(self._daemon.connections) >= MAX_CONNECTIONS:
            self._refuse(rpc.LIMIT, f"the daemon serves {MAX_CONNECTIONS} connections at most",
                         EXIT_RATE_LIMITED)
            return
        self._daemon.connections.add(self)
        self.transport.registerProducer(self, True)

    def _peer_uid(self):
        try:
            return rpc.peer_credentials(self.transport.socket)[1]
        except OSError:
            return None

    def _refuse(self, code, message, exit_code=None):
        self.transport.write(self._encode({"jsonrpc": "2.0", "id": None,
                                           "error": rpc.error_object(code, message, exit_code)}))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self._daemon.connections.discard(self)

    # -- output, bounded ---------------------------------------------------------

    def pauseProducing(self):
        """The socket's buffer is full: stop reading requests until the caller reads."""
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        self._backlog = 0
        self.transport.resumeProducing()

    def stopProducing(self):
        pass

    @staticmethod
    def _encode(message):
        """ASCII JSON: a text holding a lone surrogate (valid JSON from a sender, not
        encodable as UTF-8) still travels, as its ``\\uXXXX`` escape."""
        return json.dumps(message).encode("ascii") + b"\n"

    def _write(self, message):
        if self.transport is None or self.transport.disconnecting:
            return
        data = self._encode(message)
        if self._paused:
            self._backlog += len(data)
            if self._backlog > MAX_BACKLOG_BYTES:
                self.log.warn("dropped a daemon client that does not read "
                              "({size} bytes waiting for it)", size=self._backlog)
                self.transport.abortConnection()
                return
        self.transport.write(data)

    def notify(self, method, params):
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    # -- requests ------------------------------------------------------------------

    def lineLengthExceeded(self, line):
        self._write({"jsonrpc": "2.0", "id": None, "error": rpc.error_object(
            rpc.LIMIT, f"request longer than {MAX_REQUEST_BYTES} bytes", EXIT_USAGE)})
        self.transport.loseConnection()

    def lineReceived(self, line):
        try:
            request = json.loads(line)
        except ValueError:
            self._error(None, rpc.PARSE_ERROR, "not JSON", EXIT_USAGE)
            return
        if (not isinstance(request, dict) or request.get("jsonrpc") != "2.0"
                or not isinstance(request.get("method"), str)):
            self._error(request.get("id") if isinstance(request, dict) else None,
                        rpc.INVALID_REQUEST, "not a JSON-RPC 2.0 request", EXIT_USAGE)
            return
        request_id = request.get("id")
        if self._in_flight >= MAX_IN_FLIGHT:
            self._error(request_id, rpc.LIMIT,
                        f"{MAX_IN_FLIGHT} requests in flight on this connection at most",
                        EXIT_RATE_LIMITED)
            return
        self._in_flight += 1
        d = defer.ensureDeferred(self._daemon.call(self, request["method"],
                                                   request.get("params", {})))
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request_id,),
                       errbackArgs=(request_id,))

    def _answer(self, result, request_id):
        self._in_flight -= 1
        if request_id is not None:
            self._write({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _failed(self, failure, request_id):
        self._in_flight -= 1
        error = failure.value
        if isinstance(error, CommandFailed):
            self._error(request_id, rpc.COMMAND_FAILED, str(error), error.exit_code)
        elif isinstance(error, (InvalidParams, UnknownMethod)):
            self._error(request_id, error.code, str(error), EXIT_USAGE)
        else:
            self.log.failure("a daemon method failed", failure)
            self._error(request_id, rpc.INTERNAL_ERROR, f"internal error: {error!r}")

    def _error(self, request_id, code, message, exit_code=EXIT_ERROR):
        if request_id is not None or code in (rpc.PARSE_ERROR, rpc.INVALID_REQUEST):
            self._write({"jsonrpc": "2.0", "id": request_id,
                         "error": rpc.error_object(code, message, exit_code)})


class RpcFactory(protocol.Factory):
    def __init__(self, daemon):
        self._daemon = daemon

    def buildProtocol(self, addr):
        return RpcConnection(self._daemon)


class Daemon:
    """The unlocked client, its socket, and who is subscribed to what it receives."""

    log = Logger()

    def __init__(self, reactor, settings, password):
        self.reactor = reactor
        self.settings = settings
        self.connections = set()
        self.verifications = Verifications(settings.verify_timeout, self._verify_request)
        self.client = Client(reactor, settings, password, on_message=self._message,
                             on_control=self.verifications.control, on_state=self._state)
        self.methods = Methods(self.client, self.verifications)
        self.client.events.listeners.append(self._receipts)
        self.client.typing.listeners.append(self._typing)
        self.port = None
        self.removed = defer.Deferred()  # fires with why, once this device is removed

    @property
    def socket_path(self):
        return rpc.socket_path(self.settings.data_dir)

    async def start(self):
        """Unlock and log in (or, with the relay unreachable, keep reconnecting), then serve
        the socket.  The key store's lock (taken by ``open``) makes this the only process
        of the device, so a socket file still there was left by one that crashed: it is
        replaced."""
        path = self.socket_path
        if len(os.fsencode(path)) > rpc.MAX_SOCKET_PATH:
            raise CommandFailed(f"the daemon socket path {path} is too long for a UNIX socket "
                                f"({rpc.MAX_SOCKET_PATH} bytes at most): choose a shorter "
                                "data_dir")
        await open_or_reconnect(self.client, keep_trying=True)
        if self.client.state == "connected":
            await self.client.drain(timeout=60)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        previous = os.umask(0o177)  # bind() creates the file 0600: never wider, not for an instant
        try:
            self.port = self.reactor.listenUNIX(path, RpcFactory(self), mode=0o600)
        except CannotListenError as e:
            raise CommandFailed(f"cannot listen on {path}: {e.socketError}") from None
        finally:
            os.umask(previous)
        self.log.info("securechat daemon: serving {path} for {user} (device {device})",
                      path=path, user=self.client.user, device=self.client.device)

    async def stop(self):
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        for connection in list(self.connections):
            connection.transport.loseConnection()
        await self.client.disconnect()

    async def call(self, connection, method, params):
        if method == "subscribe":
            connection.subscribed = True
            return {"subscribed": True, "state": self.client.state}
        return await self.methods.call(
            method, params, lambda text: connection.notify("verify.show", {"text": text}),
            lambda done, total: connection.notify("files.progress",
                                                  {"done": done, "total": total}))

    def _message(self, record):
        """A message was received and stored: tell the subscribers (it stays unread for
        ``inbox``)."""
        subscribers = [c for c in self.connections if c.subscribed]
        if subscribers:
            params = public(record)
            for connection in subscribers:
                connection.notify("message", params)

    def _notify(self, method, params):
        for connection in list(self.connections):
            if connection.subscribed:
                connection.notify(method, params)

    def _receipts(self, mid, fields):
        """An own message's receipts changed: the chat updates its mark."""
        self._notify("receipt", {"mid": mid, **fields})

    def _typing(self, user, room, state):
        """Someone started or stopped typing (never stored: only subscribers hear it)."""
        self._notify("typing", {"user": user, "room": room, "state": state})

    def _verify_request(self, user, device):
        """Someone asks this user to verify: tell the subscribers (the chat shows it), and
        then ``inbox`` need not say it again."""
        subscribers = [c for c in self.connections if c.subscribed]
        for connection in subscribers:
            connection.notify("verify.request", {"user": user, "device": device})
        if subscribers:
            PendingRequests(self.client.store).mark_shown(user)

    def _state(self, state, detail=None):
        self.log.info("connection to the relay: {state} ({detail})", state=state, detail=detail)
        for connection in list(self.connections):
            if connection.subscribed:
                connection.notify("state", {"state": state, "detail": detail})
        if state == "removed" and not self.removed.called:
            self.removed.callback(detail)


def serve(settings):
    """``securechat daemon``: refuse when one already serves the data directory, unlock,
    then serve until SIGTERM or SIGINT (the socket is removed on the way out)."""
    from twisted.internet import reactor

    if not hasattr(socket, "SO_PEERCRED"):
        raise CommandFailed("securechat daemon needs SO_PEERCRED (Linux) to check who connects")
    pid = running_daemon(settings.data_dir)
    if pid is not None:
        raise CommandFailed(f"a securechat daemon (pid {pid}) already serves "
                            f"{settings.data_dir}: one daemon per device")
    daemon = Daemon(reactor, settings, read_password(settings))
    log_to_stderr(LogLevel.info)
    failures = []

    async def start():
        try:
            await daemon.start()
        except Exception as e:
            failures.append(as_command_failed(e))
            reactor.stop()

    def removed(detail):  # nothing can reconnect this device: the daemon ends, exit 3
        if daemon.port is not None:  # else start() fails with it, and stops the reactor
            failures.append(CommandFailed(detail, EXIT_AUTH))
            reactor.stop()

    daemon.removed.addCallback(removed)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(daemon.stop()))
    reactor.run()
    if failures:
        raise failures[0]
    return 0
