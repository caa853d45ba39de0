"""The daemon's socket: JSON-RPC 2.0, one object a line, and a blocking client for it.

``securechat daemon`` listens on ``DATA_DIR/daemon.sock`` (mode 0600, and every peer's
uid checked with SO_PEERCRED).  This module is what both sides share -- the path, the
error codes, reading a peer's uid -- plus ``DaemonConnection``, the client the one-shot
commands use.  Standard library only: a command handed to a running daemon must start
without importing Twisted or the crypto.

Both sides write ASCII JSON (``\\uXXXX`` escapes), so any text -- a command line's
undecodable bytes, a lone surrogate a sender put in a message -- travels intact.
"""

import json
import os
import socket
import struct
import time

from securechat.client.exit_codes import EXIT_ERROR, EXIT_UNREACHABLE

SOCKET_NAME = "daemon.sock"
MAX_SOCKET_PATH = 107
"""The longest path a UNIX socket may have (Linux's sun_path, less its NUL)."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
COMMAND_FAILED = -32000
"""The command failed as it would have standalone: ``error.data.exit_code`` is the exit code
the CLI uses for it (docs/usage.rst, "Exit codes")."""
REFUSED = -32001
"""The connecting process does not belong to the daemon's user."""
LIMIT = -32002
"""A bound of the daemon was hit (requests in flight, connections, line length)."""


ANSWER_SECONDS = 120
"""How long a command waits for the daemon's answer beyond the ``wait`` it asked for: a
daemon that stopped answering (suspended, wedged) fails the command (exit 4) instead of
hanging it for ever.  The daemon's own requests to the relay give up well before this."""


class CommandFailed(Exception):
    """A command's failure as the person sees it: a message and the CLI's exit code."""

    def __init__(self, message, exit_code=EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def socket_path(data_dir):
    return os.path.join(data_dir, SOCKET_NAME)


def peer_credentials(sock):
    """``(pid, uid, gid)`` of the process at the other end of a connected UNIX socket, as the
    kernel recorded them at connect() (SO_PEERCRED, Linux): what the peer cannot forge."""
    return struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def error_object(code, message, exit_code=None):
    error = {"code": code, "message": message}
    if exit_code is not None:
        error["data"] = {"exit_code": exit_code}
    return error


class DaemonConnection:
    """One connection to a running daemon; ``call`` sends a request and waits for its answer."""

    def __init__(self, sock):
        self._sock = sock
        self._lines = sock.makefile("rb")
        self._ids = iter(range(1, 2**31))

    @classmethod
    def find(cls, data_dir):
        """The daemon serving ``data_dir``, or None when none runs (no socket, or a stale
        one nobody listens on).  A socket served by another user is refused."""
        path = socket_path(data_dir)
        if not hasattr(socket, "SO_PEERCRED") or len(os.fsencode(path)) > MAX_SOCKET_PATH:
            # Not Linux (no way to check who serves it), or a path no daemon can listen
            # on: the command runs standalone.
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            sock.close()
            return None
        except OSError as e:
            sock.close()
            raise CommandFailed(f"cannot use the daemon socket {path}: {e.strerror}") from None
        _, uid, _ = peer_credentials(sock)
        if uid != os.getuid():
            sock.close()
            raise CommandFailed(f"{path} is served by another user (uid {uid}): refusing it")
        return cls(sock)

    def daemon_pid(self):
        return peer_credentials(self._sock)[0]

    def close(self):
        self._lines.close()
        self._sock.close()

    def call(self, method, params=None, on_notification=None, patience=ANSWER_SECONDS):
        """The result of ``method``; CommandFailed with the daemon's message and exit code.

        Notifications that arrive meanwhile go to ``on_notification(method, params)``.  No
        answer within ``patience`` seconds (plus the ``wait`` the params ask for) fails
        with exit code 4.
        """
        params = params or {}
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        deadline = time.monotonic() + patience + float(params.get("wait") or 0)
        try:
            self._sock.sendall(json.dumps(request).encode("ascii") + b"\n")
        except OSError as e:
            raise CommandFailed(f"the daemon closed the connection: {e.strerror}",
                                EXIT_UNREACHABLE) from None
        while True:
            line = self._read_line(deadline)
            if not line:
                raise CommandFailed("the daemon closed the connection before answering",
                                    EXIT_UNREACHABLE)
            message = json.loads(line)
            if "id" not in message:
                if on_notification is not None:
                    on_notification(message["method"], message.get("params") or {})
                continue
            if message["id"] not in (request_id, None):
                continue
            if "error" in message:
                error = message["error"]
                exit_code = (error.get("data") or {}).get("exit_code", EXIT_ERROR)
                raise CommandFailed(error["message"], exit_code)
            return message["result"]

    def _read_line(self, deadline):
        self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            return self._lines.readline()
        except TimeoutError:
            raise CommandFailed(f"the daemon (pid {self.daemon_pid()}) did not answer in time; "
                                "is it suspended? (kill it and run the command again)",
                                EXIT_UNREACHABLE) from None
