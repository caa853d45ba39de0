"""The client's ini file: which server, which user, where the device's keys live.

::

    [client]
    server = chat.example.org:6697
    username = alice
    data_dir = ~/.local/share/securechat/alice  ; relative paths: from this file's directory
    ca_file = /etc/ssl/certs/ca.pem       ; verify with a CA ...
    server_fingerprint = AB:CD:...        ; ... or pin the relay's certificate (one is needed)
    password_command = pass show chat     ; optional: a command printing the password
    verify_timeout = 120                  ; optional: seconds to wait for each verify step
    send_read_receipts = yes              ; optional: no = send (and see) no read receipts
    send_typing = yes                     ; optional: no = never say you are typing

``securechat init`` writes it where ``default_config_path`` says, and the data
directory defaults to ``default_data_dir`` (the XDG base directories).

It imports nothing beyond the standard library, ``securechat.config`` and
``securechat.wire``: the path that hands a command to a running daemon reads
it and must start fast (no Twisted, no crypto).
"""

import os
import shlex
from dataclasses import dataclass

from securechat import wire
from securechat.config import ConfigError, _yes_no as yes_no, read_ini

USERNAME_RULE = "1-32 of a-z 0-9 . _ -, starting with a letter or digit"
LEGACY_DATA_ROOT = os.path.join("~", ".securechat")
"""Where data directories defaulted to before the XDG ones: a device already there stays."""


class NoConfiguration(ConfigError):
    """There is no client ini at all: a first run, which ``securechat init`` is for."""

    exit_code = 2

    def __init__(self, path):
        super().__init__(f"no configuration at {path}: run 'securechat init' (or pass --config)")


def _xdg_home(variable, fallback):
    """An XDG base directory: ``$variable`` when set to an absolute path (the specification
    ignores a relative one), else ``~/fallback``."""
    value = os.environ.get(variable, "")
    return value if os.path.isabs(value) else os.path.join(os.path.expanduser("~"), fallback)


def default_config_path():
    """``$SECURECHAT_CONFIG``, else ``$XDG_CONFIG_HOME/securechat/client.ini`` (default
    ``~/.config/securechat/client.ini``)."""
    return os.environ.get("SECURECHAT_CONFIG") or os.path.join(
        _xdg_home("XDG_CONFIG_HOME", ".config"), "securechat", "client.ini")


def default_data_dir(username):
    """Where ``username``'s device lives when the ini names no ``data_dir``:
    ``$XDG_DATA_HOME/securechat/USER`` (default ``~/.local/share/securechat/USER``), unless
    a device already lives in the old default ``~/.securechat/USER`` (its keys stay found)."""
    legacy = os.path.join(os.path.expanduser(LEGACY_DATA_ROOT), username)
    if os.path.isdir(legacy):
        return legacy
    return os.path.join(_xdg_home("XDG_DATA_HOME", os.path.join(".local", "share")),
                        "securechat", username)


DEFAULT_PORT = 6697
"""The relay's port when ``server`` names none (the relay's own default, ``[server] port``)."""


def parse_server(text):
    """``(host, port)`` of ``host:port`` (``[v6]:port`` too), or of a bare ``host`` (the
    default port, as people type it); ValueError when it is neither."""
    text = text.strip()
    if text and ":" not in text or text.startswith("[") and text.endswith("]"):
        text = f"{text}:{DEFAULT_PORT}"
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port (or a host name: port 6697)")
    return host.strip("[]"), int(port)


KEYS = ("server", "username", "data_dir", "ca_file", "server_fingerprint", "password_command",
        "verify_timeout", "resend_days", "send_read_receipts", "send_typing")

VERIFY_TIMEOUT = 120
"""Seconds a verification waits for each answer of the other side (the first one: that
they run ``verify`` too) before it fails naming them."""
MAX_VERIFY_TIMEOUT = 240
"""The longest ``verify_timeout``: a one-shot ``verify`` handed to the daemon waits for two
such steps within rpc's patience (cli.VERIFY_PATIENCE), and a request older than this is
dropped by the one asked (its sender has given up)."""
RESEND_DAYS = 7
"""Days an own 1:1 message may be sent again to a recipient device that could not decrypt
it (``healing``); an older one is refused (its record stays: it is the history)."""
MAX_RESEND_DAYS = 365


@dataclass(frozen=True)
class ClientSettings:
    host: str
    port: int
    username: str
    data_dir: str
    ca_file: str
    server_fingerprint: str
    source: str
    password_command: tuple = ()
    """The argv of ``password_command`` (split like a shell would, run without one)."""
    verify_timeout: float = VERIFY_TIMEOUT
    resend_days: float = RESEND_DAYS
    send_read_receipts: bool = True
    """Tell senders when their message was shown here; off, theirs are not shown either."""
    send_typing: bool = True
    """Tell the other side of a chat while this person types."""

    @property
    def server(self):
        """The server's name as used in derivations and pins: ``host:port``."""
        return f"{self.host.lower()}:{self.port}"


def normalise_fingerprint(text):
    hexdigits = text.replace(":", "").strip().upper()
    if len(hexdigits) != 64 or any(c not in "0123456789ABCDEF" for c in hexdigits):
        raise ValueError(f"not a SHA-256 fingerprint: {text!r}")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))


def load(path):
    if not os.path.exists(path):
        raise NoConfiguration(path)
    parser = read_ini(path)
    if not parser.has_section("client"):
        raise ConfigError(f"{path}: [client] section is missing")
    section = parser["client"]
    for key in section:
        if key not in KEYS:
            raise ConfigError(f"{path}: [client] {key}: unknown key")

    def bad(key, problem):
        return ConfigError(f"{path}: [client] {key} = {section.get(key)!r}: {problem}")

    try:
        host, port = parse_server(section.get("server", ""))
    except ValueError as e:
        raise bad("server", str(e)) from None
    username = section.get("username", "")
    if not wire.USERNAME_RE.fullmatch(username):
        raise bad("username", USERNAME_RULE)
    base = os.path.dirname(os.path.abspath(path))
    data_dir = section.get("data_dir", "") or default_data_dir(username)
    data_dir = os.path.join(base, os.path.expanduser(data_dir))
    ca_file = section.get("ca_file", "")
    if ca_file:
        ca_file = os.path.join(base, os.path.expanduser(ca_file))
        if not os.path.exists(ca_file):
            raise bad("ca_file", "no such file")
    fingerprint = section.get("server_fingerprint", "")
    if fingerprint:
        try:
            fingerprint = normalise_fingerprint(fingerprint)
        except ValueError as e:
            raise bad("server_fingerprint", str(e)) from None
    try:
        password_command = tuple(shlex.split(section.get("password_command", "")))
    except ValueError as e:
        raise bad("password_command", str(e)) from None
    try:
        verify_timeout = float(section.get("verify_timeout", VERIFY_TIMEOUT))
    except ValueError:
        verify_timeout = 0
    if not 1 <= verify_timeout <= MAX_VERIFY_TIMEOUT:
        raise bad("verify_timeout", f"must be a number of seconds, 1-{MAX_VERIFY_TIMEOUT}")
    try:
        resend_days = float(section.get("resend_days", RESEND_DAYS))
    except ValueError:
        resend_days = -1
    if not 0 <= resend_days <= MAX_RESEND_DAYS:
        raise bad("resend_days", f"must be a number of days, 0-{MAX_RESEND_DAYS} (0: never "
                                 "send a message again)")
    switches = {}
    for key in ("send_read_receipts", "send_typing"):
        try:
            switches[key] = yes_no(section.get(key, "yes"))
        except ValueError as e:
            raise bad(key, str(e)) from None
    return ClientSettings(host, port, username, data_dir, ca_file, fingerprint,
                          path, password_command, verify_timeout, resend_days, **switches)
