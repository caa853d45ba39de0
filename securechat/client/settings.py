"""The client's ini file: which server, which user, where the device's keys live.

::

    [client]
    server = chat.example.org:6697
    username = alice
    data_dir = ~/.securechat/alice        ; relative paths: from this file's directory
    ca_file = /etc/ssl/certs/ca.pem       ; optional: verify with a CA instead of pinning
    server_fingerprint = AB:CD:...        ; optional: the pin, instead of trusting on first use
    password_command = pass show chat     ; optional: a command printing the password
    verify_timeout = 120                  ; optional: seconds to wait for each verify step

It imports nothing beyond the standard library, ``securechat.config`` and
``securechat.wire``: the path that hands a command to a running daemon reads
it and must start fast (no Twisted, no crypto).
"""

import os
import shlex
from dataclasses import dataclass

from securechat import wire
from securechat.config import ConfigError, read_ini

KEYS = ("server", "username", "data_dir", "ca_file", "server_fingerprint", "password_command",
        "verify_timeout")

VERIFY_TIMEOUT = 120
"""Seconds a verification waits for each answer of the other side (the first one: that
they run ``verify`` too) before it fails naming them."""
MAX_VERIFY_TIMEOUT = 240
"""The longest ``verify_timeout``: a one-shot ``verify`` handed to the daemon waits for two
such steps within rpc's patience (cli.VERIFY_PATIENCE), and a request older than this is
dropped by the one asked (its sender has given up)."""


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
    parser = read_ini(path)
    if not parser.has_section("client"):
        raise ConfigError(f"{path}: [client] section is missing")
    section = parser["client"]
    for key in section:
        if key not in KEYS:
            raise ConfigError(f"{path}: [client] {key}: unknown key")

    def bad(key, problem):
        return ConfigError(f"{path}: [client] {key} = {section.get(key)!r}: {problem}")

    host, _, port = section.get("server", "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad("server", "must be host:port")
    username = section.get("username", "")
    if not wire.USERNAME_RE.fullmatch(username):
        raise bad("username", "1-32 of a-z 0-9 . _ -, starting with a letter or digit")
    base = os.path.dirname(os.path.abspath(path))
    data_dir = section.get("data_dir", "") or os.path.join("~", ".securechat", username)
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
    return ClientSettings(host.strip("[]"), int(port), username, data_dir, ca_file, fingerprint,
                          path, password_command, verify_timeout)
