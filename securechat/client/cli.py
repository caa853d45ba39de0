"""``securechat``: the command line.  One-shot scriptable commands and an interactive chat.

Exit codes: 0 done; 1 error; 2 usage; 3 wrong password or login refused;
4 server unreachable; 5 server certificate not trusted (pin mismatch);
6 unknown user; 7 sending blocked by trust (changed or unsigned keys).
"""

import argparse
import getpass
import json
import os
import sys

from twisted.internet import defer, task, threads
from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver)

from securechat import config as server_config
from securechat.client import settings as client_settings
from securechat.client.contacts import TrustError
from securechat.client.protocol import RemoteError
from securechat.client.session import EXIT_UNTRUSTED, Client, ClientError
from securechat.client.verification import Verification, VerificationFailed
from securechat.crypto.fingerprint import key_fingerprint, safety_number

DEFAULT_CONFIG = os.path.join("~", ".config", "securechat", "client.ini")


def build_parser():
    parser = argparse.ArgumentParser(prog="securechat", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.environ.get("SECURECHAT_CONFIG", DEFAULT_CONFIG),
                        help="client ini file (default: $SECURECHAT_CONFIG or %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("register", help="create this device's keys and the account")
    commands.add_parser("login", help="check the password and the server, top up keys")
    send = commands.add_parser("send", help="send a message to a user")
    send.add_argument("user")
    send.add_argument("text", nargs="+")
    inbox = commands.add_parser("inbox", help="fetch, decrypt, acknowledge and print messages")
    inbox.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                       help="if nothing is waiting, wait this long for a message")
    inbox.add_argument("--json", action="store_true", help="one JSON object per line")
    commands.add_parser("chat", help="interactive chat (type /help)")
    fingerprint = commands.add_parser("fingerprint", help="your fingerprint, or the safety number with USER")
    fingerprint.add_argument("user", nargs="?")
    verify = commands.add_parser("verify", help="compare emoji with USER (both run this)")
    verify.add_argument("user")
    trust = commands.add_parser("trust", help="accept USER's changed identity key (unverified)")
    trust.add_argument("user")
    return parser


def read_password(confirm=False):
    password = os.environ.get("SECURECHAT_PASSWORD")
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise ClientError("set SECURECHAT_PASSWORD or run in a terminal to type the password", 2)
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password again: ") != password:
        raise ClientError("the passwords differ", 2)
    return password


def format_message(record):
    mark = "verified" if record.get("verified") else "unverified"
    where = f" in {record['room']}" if record.get("room") else ""
    head = f"[{record['sent_at']}] {record['from']}{where} ({mark})"
    lines = []
    if record.get("warning"):
        lines.append(record["warning"])
    if record.get("error"):
        lines.append(f"{head}: ✗ could not decrypt: {record['error']}")
    else:
        lines.append(f"{head}: {record['text']}")
    return "\n".join(lines)


def message_json(record):
    return json.dumps({
        "id": record["id"], "from": record["from"], "from_device": record["from_dev"],
        "room": record.get("room"), "text": record.get("text"), "sent_at": record["sent_at"],
        "verified": bool(record.get("verified")), "error": record.get("error"),
        "warning": record.get("warning"),
    }, ensure_ascii=False)


class Commands:
    """Each ``cmd_*`` is one CLI command; it returns the exit code."""

    def __init__(self, reactor, args, out=print):
        self.reactor = reactor
        self.args = args
        self.out = out
        self.settings = client_settings.load(os.path.expanduser(args.config))
        self.verifications = []
        self.pending_starts = []

    def client(self, confirm=False, on_message=None):
        return Client(self.reactor, self.settings, read_password(confirm),
                      on_message=on_message, on_control=self._control)

    def _control(self, record):
        if record.get("type") == "verify.start":
            self.pending_starts.append(record)
        for verification in self.verifications:
            verification.deliver(record)

    async def cmd_register(self):
        client = self.client(confirm=True)
        await client.register()
        self.out(f"registered {client.user}, device {client.device}")
        self.out(f"your fingerprint: {key_fingerprint(client.crypto.identity_key)}")
        await client.disconnect()
        return 0

    async def cmd_login(self):
        client = self.client()
        await client.open()
        self.out(f"logged in as {client.user} (device {client.device}); "
                 f"{client.queued_at_login} message(s) waiting")
        await client.disconnect()
        return 0

    async def cmd_send(self):
        client = self.client()
        await client.open()
        try:
            await client.send_text(self.args.user, " ".join(self.args.text))
        finally:
            await client.disconnect()
        return 0

    async def cmd_inbox(self):
        client = self.client()
        await client.open()
        try:
            await client.drain(timeout=60)
            if not client.unread() and self.args.wait > 0:
                await client.wait_for(lambda: client.unread(), self.args.wait)
            await client.wait_for(client.receiver.idle, 10)
            self.show_unread(client)
        finally:
            await client.disconnect()
        return 0

    def show_unread(self, client, show=None):
        """Print what was received and not yet shown, then remember it was shown."""
        show = show or (lambda record: self.out(
            message_json(record) if self.args.json else format_message(record)))
        unread = client.unread()
        for _, record in unread:
            show(record)
        sys.stdout.flush()
        if unread:
            client.mark_read(unread[-1][0])

    async def cmd_fingerprint(self):
        client = self.client()
        await client.open()
        try:
            own = client.crypto.identity_key
            if self.args.user is None:
                self.out(f"{client.user}: {key_fingerprint(own)}")
                return 0
            await client.trusted_devices(self.args.user, sending=False)
            record = client.contacts.record(self.args.user)
            theirs = record.get("pending") or record["identity_key"]
            self.out(f"{self.args.user}: {key_fingerprint(theirs)}"
                     f" ({'verified' if client.contacts.is_verified(self.args.user) else 'unverified'})")
            self.out("safety number: " + safety_number(client.user, own, self.args.user, theirs))
            return 0
        finally:
            await client.disconnect()

    async def cmd_trust(self):
        client = self.client()
        await client.open()
        try:
            await client.trusted_devices(self.args.user, sending=False)
            key = client.contacts.trust(self.args.user)
            if key is None:
                self.out(f"{self.args.user}'s identity key has not changed; nothing to accept")
            else:
                self.out(f"accepted {self.args.user}'s new identity key {key_fingerprint(key)}"
                         " (unverified: run 'securechat verify' to verify it)")
            return 0
        finally:
            await client.disconnect()

    async def cmd_verify(self):
        client = self.client()
        await client.open()
        try:
            await client.drain(timeout=60)
            await self.run_verification(client, self.args.user, self._ask_yes)
            return 0
        except VerificationFailed as e:
            self.out(f"verification failed: {e}")
            return EXIT_UNTRUSTED
        finally:
            await client.disconnect()

    async def run_verification(self, client, user, confirm):
        verification = Verification(client, user, confirm, self.out)
        self.verifications.append(verification)
        try:
            starts = [r for r in self.pending_starts if r["from"] == user]
            if starts:
                self.pending_starts = [r for r in self.pending_starts if r["from"] != user]
                await verification.respond(starts[-1]["inner"])
            else:
                await verification.initiate()
            self.out(f"{user} is verified")
        finally:
            self.verifications.remove(verification)

    async def _ask_yes(self):
        """Read the answer in a thread, so the reactor keeps receiving meanwhile."""
        self.out("Do they match? [y/N] ")
        answer = await threads.deferToThread(sys.stdin.readline)
        return answer.strip().lower() in ("y", "yes")

    async def cmd_chat(self):
        from securechat.client.chat import run_chat

        return await run_chat(self)


def log_problems_to_stderr():
    """Warnings and errors (never message contents) go to stderr; the rest is dropped."""
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv=None):
    args = build_parser().parse_args(argv)
    log_problems_to_stderr()

    async def run(reactor):
        try:
            commands = Commands(reactor, args)
            code = await getattr(commands, "cmd_" + args.command)()
        except (ClientError, server_config.ConfigError, TrustError) as e:
            print(f"securechat: {e}", file=sys.stderr)
            code = getattr(e, "exit_code", 1)
        except RemoteError as e:
            print(f"securechat: the server refused: {e.message}", file=sys.stderr)
            code = 1
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    sys.exit(main())
