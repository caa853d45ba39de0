"""``securechat``: the command line.  One-shot scriptable commands and an interactive chat.

Exit codes: exit_codes.TABLE (docs/usage.rst, "Exit codes"; the man page prints it).
Every failure is one line on stderr: Ctrl-C exits 130 ("interrupted"), an unexpected
error exits 1 saying so (SECURECHAT_DEBUG=1 shows its traceback).

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
from securechat.client.commands import (
    build_parser, next_page, request_for, show_result, standalone_only)
from securechat.client.closed_output import output_closed
from securechat.client.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED
from securechat.client.file_commands import FILE_METHODS, FILE_PATIENCE
from securechat.client.progress import ProgressBar
from securechat.client.render import safe
from securechat.client.exit_codes import EXIT_UNREACHABLE, EXIT_UNTRUSTED
from securechat.client.rpc import CommandFailed, DaemonConnection
from securechat.client.unlock import PasswordUnavailable
from securechat.config import ConfigError

GENERATED = ("completion", "manpage")
"""Commands that print what is generated from the parser: no config file, no daemon."""


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
    if method in FILE_METHODS:
        bar = ProgressBar()

        def progress(name, note):
            if name == "files.progress":
                bar(note["done"], note["total"])

        show_result(args, connection.call(method, params, progress, FILE_PATIENCE))
        return 0
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
    if args.command == "init":  # writes the configuration the others read
        from securechat.client import firstrun

        return firstrun.run(args)
    if args.command in GENERATED:
        from securechat.client import shell_help

        print(shell_help.generate(build_parser(), args), end="")
        return 0
    settings = client_settings.load(os.path.expanduser(args.config))
    request = None
    if not standalone_only(args):
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
    """The ``securechat`` command: every way it can end is an exit code and at most one
    line on stderr (a traceback only when SECURECHAT_DEBUG=1 asks for one)."""
    try:
        code = run(build_parser().parse_args(argv))
        sys.stdout.flush()  # here, where a closed pipe is understood, not at exit
    except (CommandFailed, ConfigError, PasswordUnavailable) as e:
        print(f"securechat: {safe(e)}", file=sys.stderr)
        code = getattr(e, "exit_code", EXIT_ERROR)
    except BrokenPipeError:  # the reader of our output stopped reading: no error of ours
        code = output_closed()
    except KeyboardInterrupt:
        start = "\n" if sys.stderr.isatty() else ""  # after the ^C, not beside it
        print(f"{start}securechat: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as e:  # a bug: said in one line, the traceback on request
        if os.environ.get("SECURECHAT_DEBUG") == "1":
            raise
        print(f"securechat: internal error: {safe(type(e).__name__)}: {safe(e)} "
              "(run with SECURECHAT_DEBUG=1 for the traceback)", file=sys.stderr)
        code = EXIT_ERROR
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    sys.exit(main())
