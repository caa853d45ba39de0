"""``securechat``: the command line.  One-shot scriptable commands and an interactive chat.

Exit codes: 0 done; 1 error; 2 usage; 3 wrong password or login refused;
4 server unreachable (a message to send is kept in the outbox);
5 server certificate not trusted (pin mismatch); 6 unknown user;
7 sending blocked by trust (changed or unsigned keys);
8 rate limited (try again in the seconds given); 9 server unavailable (its database).

Dispatch only (the commands themselves, their arguments and their output are in
commands.py).  A one-shot command goes to the running daemon of
its data directory when there is one (securechat.client.rpc: no password, no
argon2id, no new TLS connection) and runs standalone otherwise
(securechat.client.standalone, imported only then).  So this module and what it
imports at the top are the standard library and the light settings modules: the
daemon path never imports Twisted or the crypto (tests/test_daemon.py checks it).
"""

import os
import sys

from securechat.client import settings as client_settings
from securechat.client.commands import build_parser, next_page, request_for, show_result
from securechat.client.render import safe
from securechat.client.rpc import EXIT_UNREACHABLE, EXIT_UNTRUSTED, CommandFailed, DaemonConnection
from securechat.client.unlock import PasswordUnavailable
from securechat.config import ConfigError

STANDALONE_ONLY = ("register", "daemon", "chat")
"""Commands that never go to a running daemon (``chat`` starts one when none runs)."""


def check_complete(result):
    """An ``inbox`` that ended without a connection printed what it has; it still fails
    (exit 4): messages may be waiting on the relay."""
    if result.get("unreachable"):
        raise CommandFailed(f"not connected to the server at the end ({result['unreachable']}): "
                            "messages may be waiting there", EXIT_UNREACHABLE)


def through_daemon(connection, args, method, params):
    """Run the command on the daemon; the exit code."""
    if method == "verify":
        return _verify_through_daemon(connection, params)
    while True:
        result = connection.call(method, params)
        show_result(args, result)
        if not result.get("more"):
            check_complete(result)
            return 0
        params = next_page(params)


VERIFY_PATIENCE = 600
"""Seconds a verification step may take on the daemon: it waits up to ``verify_timeout``
(240 s at most) for each of the peer's two first steps, and 180 s for this terminal's
answer."""


def _verify_through_daemon(connection, params):
    """The daemon runs the exchange; the emoji and the question are asked here."""
    def show(method, notification):
        if method == "verify.show":
            print(notification["text"], flush=True)

    try:
        question = connection.call("verify", params, show, VERIFY_PATIENCE)
        print("Do they match? [y/N] ", flush=True)
        answer = sys.stdin.readline().strip().lower() in ("y", "yes")
        connection.call("verify.confirm", {"verification": question["verification"],
                                           "match": answer}, show, VERIFY_PATIENCE)
    except CommandFailed as e:
        if e.exit_code != EXIT_UNTRUSTED:
            raise
        print(safe(e))
        return EXIT_UNTRUSTED
    return 0


def run(args):
    """Parse-time work done: run the command; its exit code."""
    settings = client_settings.load(os.path.expanduser(args.config))
    request = None
    if args.command not in STANDALONE_ONLY:
        request = request_for(args)  # asks for a room password, if one is wanted, once
        connection = DaemonConnection.find(settings.data_dir)
        if connection is not None:
            try:
                return through_daemon(connection, args, *request)
            finally:
                connection.close()
    from securechat.client import standalone

    return standalone.run(settings, args, request)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except (CommandFailed, ConfigError, PasswordUnavailable) as e:
        print(f"securechat: {safe(e)}", file=sys.stderr)
        code = getattr(e, "exit_code", 1)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    sys.exit(main())
