"""Where the password that unlocks the key store comes from, first found wins.

1. ``SECURECHAT_PASSWORD``: the password itself (scripts, tests);
2. ``SECURECHAT_PASSWORD_FILE``: a file holding it (its first line), readable by its owner
   only -- a file group or others may read is refused, as ssh refuses such a key;
3. ``password_command`` in the client ini's ``[client]`` section: run without a shell, the
   first line of its standard output (``pass show chat``, ``secret-tool lookup ...``);
4. a no-echo prompt, when standard input is a terminal.

Registering a new account (``read_new_password``) asks twice on a terminal unless the
password comes from 1-3, and refuses one under ``MIN_NEW_PASSWORD`` characters wherever it
comes from; logging in to an existing account takes any password (it may predate the rule).
``securechat password`` reads the current password from 1-4 and the new one
(``read_changed_password``) from ``SECURECHAT_NEW_PASSWORD`` or the same two questions, under
the same rule.  ``securechat recover`` reads the recovery key (``read_recovery_key``) from
``SECURECHAT_RECOVERY_KEY`` or a prompt, and the new password as ``securechat password`` does.
Every prompt here is read before the reactor runs: Ctrl-C then raises KeyboardInterrupt
(exit 130) instead of being swallowed by the reactor's signal handler.
Standard library only: the daemon and the standalone commands share it.
"""

import getpass
import os
import signal
import stat
import subprocess
import sys

EXIT_USAGE = 2
"""The CLI's exit code when no password is available (the same as a usage error)."""

MIN_NEW_PASSWORD = 10
"""The fewest characters a new account's password may have."""
TOO_SHORT = f"password too short (at least {MIN_NEW_PASSWORD} characters)"
PROMPT_TRIES = 3
"""How many times registering asks for a new password on a terminal before giving up."""

NO_PASSWORD = ("no password: set SECURECHAT_PASSWORD or SECURECHAT_PASSWORD_FILE, "
               "set password_command in the [client] section, or run in a terminal")
"""Why a command stops when no source gives the password and there is no terminal."""

COMMAND_TIMEOUT = 60
"""Seconds a ``password_command`` may take (a keyring may ask the person to unlock it)."""


class PasswordUnavailable(Exception):
    """No password could be read; the message says where it was looked for and why not."""

    exit_code = EXIT_USAGE


def read_password(settings):
    """The password for ``settings``' key store, from the first source that has one."""
    given = _given_password(settings)
    if given is not None:
        return given[0]
    _need_terminal()
    return _getpass("Password: ")


def read_new_password(settings):
    """The password of an account being registered: from the first source that has one,
    at least ``MIN_NEW_PASSWORD`` characters (``_new_password``)."""
    return _new_password(_given_password(settings), NO_PASSWORD)


def read_changed_password():
    """The new password of ``securechat password``: ``SECURECHAT_NEW_PASSWORD``, else asked
    twice on a terminal, under the registration rule (the other sources give the current
    password, which this replaces)."""
    given = os.environ.get("SECURECHAT_NEW_PASSWORD")
    return _new_password(None if given is None else (given, "SECURECHAT_NEW_PASSWORD"),
                         "no new password: set SECURECHAT_NEW_PASSWORD or run in a terminal")


def read_recovery_key():
    """The recovery key as typed: ``SECURECHAT_RECOVERY_KEY``, else a no-echo prompt on a
    terminal (it takes the whole account over: not for the screen's scrollback)."""
    given = os.environ.get("SECURECHAT_RECOVERY_KEY")
    if given is not None:
        return given
    _need_terminal("no recovery key: set SECURECHAT_RECOVERY_KEY or run in a terminal")
    return _getpass("Recovery key (the groups 'register' printed; spaces do not matter): ")


def _new_password(given, missing):
    """``given`` (``(password, where)`` or None) when it has at least ``MIN_NEW_PASSWORD``
    characters; without one, a terminal asks, and asks again after a short one or a
    mismatched confirmation (``PROMPT_TRIES`` times in all); a given short one is refused
    at once (a script cannot answer again).  ``missing``: the error without either."""
    if given is not None:
        password, where = given
        if len(password) < MIN_NEW_PASSWORD:
            raise PasswordUnavailable(f"{where}: {TOO_SHORT}")
        return password
    _need_terminal(missing)
    for _ in range(PROMPT_TRIES):
        password = _getpass(f"New password (at least {MIN_NEW_PASSWORD} characters): ")
        if len(password) < MIN_NEW_PASSWORD:
            print(TOO_SHORT, file=sys.stderr)
        elif _getpass("Password again: ") != password:
            print("passwords do not match; try again", file=sys.stderr)
        else:
            return password
    raise PasswordUnavailable(f"no password chosen after {PROMPT_TRIES} tries")


def _given_password(settings):
    """``(password, where it came from)`` from the first of sources 1-3, or None."""
    password = os.environ.get("SECURECHAT_PASSWORD")
    if password is not None:
        return password, "SECURECHAT_PASSWORD"
    path = os.environ.get("SECURECHAT_PASSWORD_FILE")
    if path:
        return _from_file(path), f"SECURECHAT_PASSWORD_FILE {path}"
    if settings.password_command:
        return (_from_command(settings.password_command, settings.source),
                f"password_command (in {settings.source})")
    return None


def _need_terminal(missing=NO_PASSWORD):
    if not sys.stdin.isatty():
        raise PasswordUnavailable(missing)


def _getpass(prompt):
    """A password prompt that Ctrl-C ends (KeyboardInterrupt: the CLI exits 130), even
    inside a running reactor, whose own SIGINT handler would only stop the reactor once
    the blocked read returned, that is after Enter."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return getpass.getpass(prompt)
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_line(data, where):
    line = data.split("\n", 1)[0].rstrip("\r")
    if not line:
        raise PasswordUnavailable(f"{where} gave an empty password")
    return line


def _from_file(path):
    where = f"SECURECHAT_PASSWORD_FILE {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise PasswordUnavailable(f"{where}: {e.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise PasswordUnavailable(
                f"{where} may be read by other users (mode {mode:04o}): "
                f"run 'chmod 600 {path}' and try again")
        return _first_line(f.read(), where)


def _from_command(argv, config):
    where = f"password_command {' '.join(argv)!r} (in {config})"
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=None, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PasswordUnavailable(f"{where} could not run: {e}") from None
    if done.returncode != 0:
        raise PasswordUnavailable(f"{where} failed with exit status {done.returncode}")
    return _first_line(done.stdout.decode("utf-8", "replace"), where)


class UnlockingNotice:
    """One "unlocking..." line on a terminal's stderr while argon2id runs (about a second),
    erased when done; nothing when stderr is not a terminal (scripts, logs)."""

    TEXT = "securechat: unlocking the key store..."

    def __init__(self, stream=None):
        self._stream = stream or sys.stderr
        self._shown = False

    def __enter__(self):
        if self._stream.isatty():
            self._stream.write(self.TEXT)
            self._stream.flush()
            self._shown = True
        return self

    def __exit__(self, *exc):
        if self._shown:
            self._stream.write("\r" + " " * len(self.TEXT) + "\r")
            self._stream.flush()
