"""Where the password that unlocks the key store comes from, first found wins.

1. ``SECURECHAT_PASSWORD``: the password itself (scripts, tests);
2. ``SECURECHAT_PASSWORD_FILE``: a file holding it (its first line), readable by its owner
   only -- a file group or others may read is refused, as ssh refuses such a key;
3. ``password_command`` in the client ini's ``[client]`` section: run without a shell, the
   first line of its standard output (``pass show chat``, ``secret-tool lookup ...``);
4. a no-echo prompt, when standard input is a terminal.

Registering a new account always asks twice on a terminal unless the password comes
from 1-3.  Standard library only: the daemon and the standalone commands share it.
"""

import getpass
import os
import signal
import stat
import subprocess
import sys

EXIT_USAGE = 2
"""The CLI's exit code when no password is available (the same as a usage error)."""

COMMAND_TIMEOUT = 60
"""Seconds a ``password_command`` may take (a keyring may ask the person to unlock it)."""


class PasswordUnavailable(Exception):
    """No password could be read; the message says where it was looked for and why not."""

    exit_code = EXIT_USAGE


def read_password(settings, confirm=False):
    """The password for ``settings``' key store, from the first source that has one."""
    password = os.environ.get("SECURECHAT_PASSWORD")
    if password is not None:
        return password
    path = os.environ.get("SECURECHAT_PASSWORD_FILE")
    if path:
        return _from_file(path)
    if settings.password_command:
        return _from_command(settings.password_command, settings.source)
    if not sys.stdin.isatty():
        raise PasswordUnavailable(
            "no password: set SECURECHAT_PASSWORD or SECURECHAT_PASSWORD_FILE, "
            "set password_command in the [client] section, or run in a terminal")
    password = _getpass("Password: ")
    if confirm and _getpass("Password again: ") != password:
        raise PasswordUnavailable("the passwords differ")
    return password


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
