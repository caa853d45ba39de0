"""The daemon's socket from Twisted code (``chat``): requests as Deferreds, notifications
to a callback.  The one-shot commands use the blocking client in rpc.py instead."""

import itertools
import json

from twisted.internet import defer, endpoints
from twisted.protocols.basic import LineReceiver

from securechat.client import rpc
from securechat.client.exit_codes import EXIT_ERROR, EXIT_UNREACHABLE
from securechat.client.message_size import check_message_size
from securechat.client.rpc import CommandFailed

MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The longest line read from the daemon (an ``inbox`` page of large messages); the
daemon is this user's own process, so this only stops a runaway."""


class DaemonError(CommandFailed):
    """The daemon answered with an error; ``code`` is its JSON-RPC code (a method this
    daemon does not have: ``rpc.METHOD_NOT_FOUND``)."""

    def __init__(self, message, exit_code, code):
        super().__init__(message, exit_code)
        self.code = code


class DaemonClient(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_ANSWER_BYTES

    def __init__(self, on_notification):
        self._ids = itertools.count(1)
        self._pending = {}
        self._on_notification = on_notification
        self.closed = defer.Deferred()

    def call(self, method, **params):
        """Fire with the result of ``method``, or fail with CommandFailed (a message too
        long fails here: its request would be longer than the daemon reads)."""
        if method in ("send", "say", "broadcast"):
            try:
                check_message_size(params.get("text", ""))
            except CommandFailed as e:
                return defer.fail(e)
        request_id = next(self._ids)
        d = self._pending[request_id] = defer.Deferred()
        self.sendLine(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                  "params": params}).encode("ascii"))
        return d

    def lineReceived(self, line):
        message = json.loads(line)
        if "id" not in message:
            self._on_notification(message["method"], message.get("params") or {})
            return
        d = self._pending.pop(message["id"], None)
        if d is None:
            return
        if "error" in message:
            error = message["error"]
            d.errback(DaemonError(error["message"],
                                  (error.get("data") or {}).get("exit_code", EXIT_ERROR),
                                  error.get("code")))
        else:
            d.callback(message["result"])

    def connectionLost(self, reason):
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(CommandFailed("the daemon closed the connection", EXIT_UNREACHABLE))
        self.closed.callback(None)


async def connect(reactor, data_dir, on_notification):
    endpoint = endpoints.UNIXClientEndpoint(reactor, rpc.socket_path(data_dir))
    return await endpoints.connectProtocol(endpoint, DaemonClient(on_notification))
