"""``securechat``: the command line.  One-shot scriptable commands and an interactive chat.

Exit codes: 0 done; 1 error; 2 usage; 3 wrong password or login refused;
4 server unreachable (a message to send is kept in the outbox);
5 server certificate not trusted (pin mismatch); 6 unknown user;
7 sending blocked by trust (changed or unsigned keys);
8 rate limited (try again in the seconds given); 9 server unavailable (its database).
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
from securechat.client.messaging import iso
from securechat.client.protocol import ConnectionClosed, RemoteError
from securechat.client.render import (
    EscapingStream, format_history, format_message, message_json, safe, terminal_width)
from securechat.client.rooms import ROOM_MODES
from securechat.client.session import (
    EXIT_UNREACHABLE, EXIT_UNTRUSTED, NO_OTHER_DEVICE, Client, ClientError, Queued, refusal)
from securechat.client.verification import Verification, VerificationFailed
from securechat.crypto.fingerprint import key_fingerprint, safety_number
from securechat.wire import BROADCAST_ROOM

DEFAULT_CONFIG = os.path.join("~", ".config", "securechat", "client.ini")


def add_send_wait(parser):
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="if the server is unreachable, keep the message in the outbox and "
                             "wait this long for the server to take it (default 0: exit 4 at "
                             "once; the next command or the daemon sends it)")


def build_parser():
    parser = argparse.ArgumentParser(prog="securechat", description="securechat: an end-to-end encrypted messenger for the terminal")
    parser.add_argument("--config", default=os.environ.get("SECURECHAT_CONFIG", DEFAULT_CONFIG),
                        help="client ini file (default: $SECURECHAT_CONFIG or %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("register", help="create this device's keys and the account")
    commands.add_parser("login", help="check the password and the server, top up keys")
    send = commands.add_parser("send", help="send a message to a user")
    send.add_argument("user")
    send.add_argument("text", nargs="+")
    add_send_wait(send)
    inbox = commands.add_parser("inbox", help="fetch, decrypt, acknowledge and print messages")
    inbox.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                       help="if nothing is waiting, wait this long for a message (through "
                            "reconnects)")
    inbox.add_argument("--json", action="store_true", help="one JSON object per line")
    commands.add_parser("chat", help="interactive chat (type /help)")
    outbox = commands.add_parser(
        "outbox", help="messages not yet accepted by the server (works without the server)")
    outbox.add_argument("--drop", metavar="ID", help="remove one entry (one that failed)")
    fingerprint = commands.add_parser("fingerprint", help="your fingerprint, or the safety number with USER")
    fingerprint.add_argument("user", nargs="?")
    verify = commands.add_parser("verify", help="compare emoji with USER (both run this)")
    verify.add_argument("user")
    trust = commands.add_parser("trust", help="accept USER's changed identity key (unverified)")
    trust.add_argument("user")
    rooms = commands.add_parser("rooms", help="create or list rooms")
    rooms_commands = rooms.add_subparsers(dest="rooms_command", required=True, metavar="ACTION")
    create = rooms_commands.add_parser("create", help="create a room (you own it)")
    create.add_argument("room")
    create.add_argument("--password", action="store_true",
                        help="protect it with a password ($SECURECHAT_ROOM_PASSWORD or a prompt)")
    rooms_commands.add_parser("list", help="the rooms you are in")
    rooms_commands.add_parser(
        "bans", help="who is banned from a room, by whom (owner/admins)").add_argument("room")
    mode = rooms_commands.add_parser(
        "mode", help="open a room you own to anyone, or make it invite-only")
    mode.add_argument("room")
    mode.add_argument("mode", choices=sorted(ROOM_MODES))
    join = commands.add_parser("join", help="join a room")
    join.add_argument("room")
    join.add_argument("--password", action="store_true",
                      help="the room needs a password ($SECURECHAT_ROOM_PASSWORD or a prompt)")
    for name, text in (("leave", "leave a room"), ("members", "a room's members and devices"),
                       ("history", "the room's stored messages, decrypted where you can")):
        commands.add_parser(name, help=text).add_argument("room")
    say = commands.add_parser("say", help="send a message to a room")
    say.add_argument("room")
    say.add_argument("text", nargs="+")
    add_send_wait(say)
    broadcast = commands.add_parser("broadcast", help="send a message to every user")
    broadcast.add_argument("text", nargs="+")
    add_send_wait(broadcast)
    for name, text in (("invite", "add USER to ROOM (owner/admins)"),
                       ("kick", "remove USER from ROOM (if in it) and ban USER from it (owner/admins)"),
                       ("unban", "lift USER's ban from ROOM (owner/admins)")):
        action = commands.add_parser(name, help=text)
        action.add_argument("room")
        action.add_argument("user")
    return parser


def read_room_password(wanted):
    if not wanted:
        return None
    password = os.environ.get("SECURECHAT_ROOM_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise ClientError("set SECURECHAT_ROOM_PASSWORD or run in a terminal", 2)
        password = getpass.getpass("Room password: ")
    return password


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


class Commands:
    """Each ``cmd_*`` is one CLI command; it returns the exit code."""

    def __init__(self, reactor, args, out=print):
        self.reactor = reactor
        self.args = args
        self.out = out
        self.settings = client_settings.load(os.path.expanduser(args.config))
        self.verifications = []
        self.pending_starts = []

    def client(self, confirm=False, on_message=None, on_state=None):
        return Client(self.reactor, self.settings, read_password(confirm),
                      on_message=on_message, on_control=self._control, on_state=on_state)

    async def open_or_reconnect(self, client, keep_trying):
        """Open ``client``; when the server is unreachable and ``keep_trying``, keep the
        store open and go on reconnecting in the background instead of failing."""
        try:
            await client.open()
        except ClientError as e:
            if e.exit_code != EXIT_UNREACHABLE or not keep_trying:
                raise
            client.reconnect()

    async def connected(self, action):
        """Run ``action(client)`` on an open client, then disconnect; the exit code is 0.

        What was waiting is processed first (room keys, new sessions, key
        changes), so the action sees the same state ``inbox`` would.
        """
        client = self.client()
        await client.open()
        try:
            await client.drain(timeout=60)
            await action(client)
        finally:
            await client.disconnect()
        return 0

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
        async def report(client):
            self.out(f"logged in as {client.user} (device {client.device}); "
                     f"{client.queued_at_login} message(s) waiting")

        return await self.connected(report)

    async def cmd_send(self):
        if await self.send_or_keep(
                lambda client: client.send_text(self.args.user, " ".join(self.args.text))) == 0:
            self.out(NO_OTHER_DEVICE)
        return 0

    async def send_or_keep(self, send):
        """Run ``send(client)`` (a message send); with the server unreachable the message
        waits in the outbox (Queued: exit 4) unless ``--wait`` gives the reconnect time to
        send it.  What ``send`` fires with (None when the reconnect sent it)."""
        client = self.client()
        await self.open_or_reconnect(client, keep_trying=True)
        try:
            if client.state == "connected":
                await client.drain(timeout=60)
            try:
                return await send(client)
            except Queued as queued:
                return await self._wait_sent(client, queued)
        finally:
            await client.disconnect()

    async def _wait_sent(self, client, queued):
        """Wait (``--wait``) for the reconnect to send an outbox entry; Queued again at
        the deadline, the reason if the server refused it."""
        entry = queued.entry_id
        if self.args.wait <= 0:
            raise queued
        client.reconnect()
        await client.wait_for(lambda: not client.outbox.holds(entry)
                              or client.outbox.error(entry) is not None
                              or client.state in ("replaced", "closed"), self.args.wait)
        error = client.outbox.error(entry)
        if error is not None:
            client.outbox.drop(entry)
            raise ClientError(f"the server refused the message: {error}")
        if client.outbox.holds(entry):
            raise queued
        return None

    async def cmd_inbox(self):
        client = self.client()
        await self.open_or_reconnect(client, keep_trying=self.args.wait > 0)
        try:
            if client.state == "connected":
                await client.drain(timeout=60)
            if not client.unread() and self.args.wait > 0:
                await client.wait_for(lambda: client.unread(), self.args.wait)
            await client.wait_for(client.receiver.idle, 10)
            self.show_unread(client)
            if client.state != "connected":
                raise ClientError(f"not connected to the server at the end "
                                  f"({client.state_detail}): messages may be waiting there",
                                  EXIT_UNREACHABLE)
            return 0
        finally:
            await client.disconnect()

    async def cmd_outbox(self):
        """List (or drop one of) the messages the server has not accepted yet."""
        client = self.client()
        client.unlock()
        try:
            if self.args.drop:
                if not client.outbox.drop(self.args.drop):
                    raise ClientError(f"no entry {self.args.drop} in the outbox")
                self.out(f"dropped {self.args.drop}")
                return 0
            for entry in client.outbox_pending():
                where = f"in {entry['room']}" if entry["room"] else f"to {entry['to']}"
                state = f"failed: {entry['error']}" if entry["error"] else "pending"
                self.out(f"{entry['id']} [{iso(entry['queued_at'])}] {where} ({state}): "
                         + json.dumps(entry["text"], ensure_ascii=False))
            return 0
        finally:
            client.close()

    def show_unread(self, client, show=None):
        """Print what was received and not yet shown, then remember it was shown."""
        show = show or (lambda record: self.out(
            message_json(record) if self.args.json
            else format_message(record, terminal_width(sys.stdout))))
        unread = client.unread()
        for _, record in unread:
            show(record)
        sys.stdout.flush()
        if unread:
            client.mark_read(unread[-1][0])

    async def cmd_fingerprint(self):
        async def fingerprint(client):
            own = client.crypto.identity_key
            if self.args.user is None:
                self.out(f"{client.user}: {key_fingerprint(own)}")
                return
            await client.trusted_devices(self.args.user, sending=False)
            record = client.contacts.record(self.args.user)
            theirs = record.get("pending") or record["identity_key"]
            state = "verified" if client.contacts.is_verified(self.args.user) else "unverified"
            self.out(f"{self.args.user}: {key_fingerprint(theirs)} ({state})")
            self.out("safety number: " + safety_number(client.user, own, self.args.user, theirs))

        return await self.connected(fingerprint)

    async def cmd_trust(self):
        async def trust(client):
            await client.trusted_devices(self.args.user, sending=False)
            key = client.contacts.trust(self.args.user)
            if key is None:
                self.out(f"{self.args.user}'s identity key has not changed; nothing to accept")
            else:
                self.out(f"accepted {self.args.user}'s new identity key {key_fingerprint(key)}"
                         " (unverified: run 'securechat verify' to verify it)")

        return await self.connected(trust)

    async def cmd_verify(self):
        client = self.client()
        await client.open()
        try:
            await client.drain(timeout=60)
            await self.run_verification(client, self.args.user, self._ask_yes)
            return 0
        except VerificationFailed as e:
            self.out(f"verification failed: {safe(e)}")
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

    async def cmd_rooms(self):
        if self.args.rooms_command == "create":
            password = read_room_password(self.args.password)

            async def create(client):
                await client.rooms.create(self.args.room, password)
                self.out(f"created {self.args.room}" + (" (password protected)" if password else ""))

            return await self.connected(create)
        if self.args.rooms_command == "mode":
            async def mode(client):
                self.out(await client.rooms.set_mode(self.args.room, self.args.mode))

            return await self.connected(mode)
        if self.args.rooms_command == "bans":
            return await self.connected(self._list_bans)

        async def listing(client):
            for room in (await client.request("rooms.list"))["rooms"]:
                self.out(safe(room))

        return await self.connected(listing)

    async def _list_bans(self, client):
        bans = await client.rooms.bans(self.args.room)
        for ban in bans:
            self.out(f"{safe(ban['user'])}: banned by {safe(ban['by'])} at "
                     f"{iso(ban['created'])} (a former {safe(ban['role'])})")
        if not bans:
            self.out(f"nobody is banned from {self.args.room}")

    async def cmd_join(self):
        password = read_room_password(self.args.password)

        async def join(client):
            result = await client.rooms.join(self.args.room, password)
            self.out(f"joined {self.args.room}: {', '.join(map(safe, result['members']))}")

        return await self.connected(join)

    async def cmd_leave(self):
        async def leave(client):
            await client.rooms.leave(self.args.room)
            self.out(f"left {self.args.room}")

        return await self.connected(leave)

    async def cmd_members(self):
        async def members(client):
            result = await client.request("room.members", room=self.args.room)
            for user, devices in result["members"].items():
                self.out(f"{safe(user)}: {', '.join(map(safe, devices)) or '(no device)'}")

        return await self.connected(members)

    async def cmd_say(self):
        await self.send_or_keep(
            lambda client: client.rooms.say(self.args.room, " ".join(self.args.text)))
        return 0

    async def cmd_broadcast(self):
        await self.send_or_keep(
            lambda client: client.rooms.say(BROADCAST_ROOM, " ".join(self.args.text)))
        return 0

    async def cmd_history(self):
        async def history(client):
            for record in await client.rooms.history(self.args.room):
                self.out(format_history(record, terminal_width(sys.stdout)))

        return await self.connected(history)

    async def _moderate(self):
        async def moderate(client):
            self.out(await client.rooms.moderate(
                self.args.command, self.args.room, self.args.user))

        return await self.connected(moderate)

    cmd_invite = cmd_kick = cmd_unban = _moderate

    async def cmd_chat(self):
        from securechat.client.chat import run_chat

        return await run_chat(self)


def log_problems_to_stderr():
    """Warnings and errors (never message contents) go to stderr; the rest is dropped."""
    observer = FilteringLogObserver(
        textFileLogObserver(EscapingStream(sys.stderr)),
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
            print(f"securechat: {safe(e)}", file=sys.stderr)
            code = getattr(e, "exit_code", 1)
        except RemoteError as e:
            error = refusal(e)
            print(f"securechat: {safe(error)}", file=sys.stderr)
            code = error.exit_code
        except ConnectionClosed as e:
            print(f"securechat: {e} (the command may not have completed)", file=sys.stderr)
            code = EXIT_UNREACHABLE
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    sys.exit(main())
