"""``securechat init``: the first run, from nothing to a client ini the person trusts.

It asks for (or takes as flags) the relay and the user name, shows the fingerprint of
the certificate the relay presents and has the person confirm it against what the
operator published -- "yes" typed in full, as ssh asks -- or compares it with
``--fingerprint``.  Only then does it write the ini (``settings.default_config_path``,
mode 0600, in a directory it creates 0700), all at once: a refusal, an unreachable relay
or Ctrl-C leaves nothing behind.  Then it offers to register.

The fingerprint is read over a TLS handshake that verifies nothing and sends nothing:
showing what the relay presents is its whole point.  Every later connection is verified
against the pin written here.  Standard library only until registering (standalone).
"""

import argparse
import hashlib
import os
import socket
import ssl
import sys
import tempfile

from securechat import wire
from securechat.client import settings as client_settings
from securechat.client.exit_codes import EXIT_CERTIFICATE, EXIT_UNREACHABLE, EXIT_USAGE
from securechat.client.rpc import CommandFailed

HANDSHAKE_TIMEOUT = 15
"""Seconds to reach the relay and finish the TLS handshake."""
ASK_TRIES = 3
"""How many times a question is asked again after an answer that is not valid."""


def _not_registered_yet(path):
    """What to say of an existing client ini whose device was never made (an ``init``
    stopped before it registered, say): the command that goes on from there."""
    from securechat.crypto.keystore import KeyStore

    try:
        settings = client_settings.load(path)
    except Exception:  # not ours to judge here: the next command names what is wrong
        return ""
    if KeyStore.exists(settings.data_dir):
        return ""
    config = "" if path == client_settings.default_config_path() else f" --config {path}"
    return (f" (for {settings.username} on {settings.server}, with no device yet: "
            f"'securechat{config} register' registers it, or 'securechat{config} devices "
            "link' adds this machine to an account you have)")


def run(args):
    """``securechat init`` with its parsed ``args``; the exit code."""
    if args.yes and not args.fingerprint:
        args.usage_error("--yes needs --fingerprint: a relay's certificate is never "
                         "trusted unseen")
    expected = None
    if args.fingerprint:
        try:
            expected = client_settings.normalise_fingerprint(args.fingerprint)
        except ValueError as e:
            args.usage_error(f"--fingerprint: {e}")
    path = os.path.abspath(os.path.expanduser(args.config))
    if os.path.exists(path) and not args.force:
        raise CommandFailed(f"{path} already exists{_not_registered_yet(path)}: pass --force "
                            "to replace it (or --config FILE to write another)")
    host, port = ask("Relay (host:port): ", args.server, "--server HOST:PORT",
                     client_settings.parse_server)
    user = ask("Your user name: ", args.user, "--user NAME", lowercase_username)
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    seen = relay_fingerprint(host, port, server)
    confirm(server, seen, expected)
    write_config(path, [
        "# written by 'securechat init' (docs/configuration.rst lists every key)",
        "[client]",
        f"server = {server}",
        f"username = {user}",
        "# the relay certificate's SHA-256 fingerprint, as confirmed at init",
        f"server_fingerprint = {seen}",
        f"data_dir = {client_settings.default_data_dir(user)}",
    ])
    print(f"wrote {path}")
    return offer_registration(args, client_settings.load(path), path)


def answer(prompt):
    """A line typed at ``prompt``; None at the end of input (Ctrl-D)."""
    try:
        return input(prompt).strip()
    except EOFError:
        print()
        return None


def ask(prompt, given, flag, parse):
    """``parse(given)``, or of an answer to ``prompt`` (asked again while it is not valid);
    without a terminal to ask on, ``flag`` is needed."""
    if given is not None:
        try:
            return parse(given)
        except ValueError as e:
            raise CommandFailed(f"{flag.split()[0]} {given!r}: {e}", EXIT_USAGE) from None
    if not sys.stdin.isatty():
        raise CommandFailed(f"pass {flag} (or run in a terminal to be asked)", EXIT_USAGE)
    for _ in range(ASK_TRIES):
        text = answer(prompt)
        if text is None:
            break
        try:
            return parse(text)
        except ValueError as e:
            print(f"{text!r}: {e}", file=sys.stderr)
    raise CommandFailed(f"no valid answer: pass {flag}", EXIT_USAGE)


def lowercase_username(text):
    """A user name as the relay knows it: lowercased, with a note when that changed it."""
    name = text.strip().lower()
    if not wire.USERNAME_RE.fullmatch(name):
        raise ValueError(f"a user name is {client_settings.USERNAME_RULE}")
    if name != text.strip():
        print(f"note: user names are lowercase; using {name}", file=sys.stderr)
    return name


def relay_fingerprint(host, port, server):
    """The SHA-256 fingerprint of the certificate the relay at ``host:port`` presents, in
    the form of ``server_fingerprint``; CommandFailed (exit 4) when it cannot be had."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to show what it presents: nothing is sent
    try:
        with socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT) as sock:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                certificate = tls.getpeercert(binary_form=True)
    except OSError as e:  # refused, no such host, timed out, not TLS
        raise CommandFailed(f"cannot reach the relay at {server}: {e.strerror or e}; "
                            "nothing written", EXIT_UNREACHABLE) from None
    return client_settings.normalise_fingerprint(hashlib.sha256(certificate).hexdigest())


def confirm(server, seen, expected):
    """Go on only if ``seen`` is the relay's certificate: equal to ``expected`` (given with
    --fingerprint), else confirmed by the person; CommandFailed (exit 5) otherwise."""
    if expected is not None:
        if seen != expected:
            raise CommandFailed(
                f"REFUSED: the relay at {server} presents the certificate fingerprint {seen}, "
                f"not {expected} (given with --fingerprint): someone may be intercepting the "
                "connection, or the operator published another; nothing written",
                EXIT_CERTIFICATE)
        print(f"The relay at {server} presents the fingerprint given with --fingerprint:\n"
              f"  {seen}")
        return
    if not sys.stdin.isatty():
        raise CommandFailed("no terminal to confirm the relay's fingerprint on: pass "
                            "--fingerprint FP, as its operator published it", EXIT_USAGE)
    print(f"The relay at {server} presents a certificate with the SHA-256 fingerprint\n"
          f"  {seen}\n"
          "Compare it with the fingerprint the relay's operator gave you (the relay logs it\n"
          "when it starts).  If they differ, someone may be between you and the relay.")
    if (answer('Is it the same? Type "yes" to trust it: ') or "").lower() != "yes":
        raise CommandFailed("the fingerprint was not confirmed: nothing written",
                            EXIT_CERTIFICATE)


def write_config(path, lines):
    """Write ``path`` (0600) whole or not at all: a temporary file in its directory, then
    linked into place (replacing an old one only with --force, checked before)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory)
        os.chmod(directory, 0o700)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".init-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def offer_registration(args, settings, path):
    """Register now if asked to (--register, --yes, or "Y" at the question); else say how."""
    wanted = args.register
    if wanted is None and args.yes:
        wanted = True
    if wanted is None and sys.stdin.isatty():
        print(f"(If {settings.username} is already your account on another device, answer n "
              "and add this machine with 'securechat devices link'.)")
        reply = answer(f"Register {settings.username} on {settings.server} now? [Y/n] ")
        wanted = reply is not None and reply.lower() in ("", "y", "yes")
    config = "" if path == client_settings.default_config_path() else f" --config {path}"
    if not wanted:
        print(f"When you are ready: securechat{config} register (a new account), or "
              f"securechat{config} devices link (a new device of an account you have)")
        return 0
    from securechat.client import standalone
    from securechat.crypto.keystore import KeyStore

    if KeyStore.exists(settings.data_dir):
        print(f"{settings.data_dir} already holds a device of {settings.username}: not "
              f"registering (securechat{config} login checks it)")
        return 0
    return standalone.run(settings, argparse.Namespace(command="register"))
