"""The command layer: what each command is (its arguments), the daemon request it
makes, and the text its result prints.  ``securechat COMMAND`` (cli.py) and the chat's
slash commands both go through here, so a command reads and answers the same wherever
it is typed.

Standard library and light modules only: the daemon path imports this (see cli.py).
"""

import argparse
import getpass
import json
import os
import sys

from securechat.client.render import (
    format_history, format_message, history_json, message_json, safe, terminal_width)
from securechat.client.rpc import CommandFailed

DEFAULT_CONFIG = os.path.join("~", ".config", "securechat", "client.ini")
ROOM_MODE_NAMES = ("invite-only", "open")
"""``rooms mode`` choices: the names of rooms.ROOM_MODES (not imported: it needs Twisted)."""


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
    commands.add_parser("daemon", help="unlock once and serve this device to the other "
                                       "commands, scripts and bots (foreground)")
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
    mode.add_argument("mode", choices=ROOM_MODE_NAMES)
    admin = rooms_commands.add_parser(
        "admin", help="make USER an admin of ROOM, or a plain member again (owner only)",
        description="Make USER an admin of ROOM (admins invite, kick members and lift "
                    "their bans), or with --remove a plain member again. Only the room's "
                    "owner names admins; USER must be a member.",
        epilog="example: securechat rooms admin ops carol")
    admin.add_argument("room")
    admin.add_argument("user")
    admin.add_argument("--remove", action="store_true", help="take the admin role away")
    join = commands.add_parser("join", help="join a room")
    join.add_argument("room")
    join.add_argument("--password", action="store_true",
                      help="the room needs a password ($SECURECHAT_ROOM_PASSWORD or a prompt)")
    for name, text in (("leave", "leave a room"), ("members", "a room's members and devices")):
        commands.add_parser(name, help=text).add_argument("room")
    add_history(commands)
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


HISTORY_LAST = 50
"""Messages of a 1:1 conversation ``history`` shows when ``--last`` is not given."""
HISTORY_MAX = 1000
"""The most ``history --last`` (the daemon method's ``last``) gives at once."""


def _history_count(text):
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 0 < count <= HISTORY_MAX:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {HISTORY_MAX}")
    return count


def add_history(commands):
    history = commands.add_parser(
        "history", help="a 1:1 conversation from this device's store, or a room's history",
        description="Print a conversation, oldest first.  With a user: your 1:1 messages "
                    "both ways, from this device's encrypted store (works while the relay "
                    "is down; your own lines are marked 'you -> USER').  With a room: the "
                    "messages the relay keeps for it, decrypted where you can.  A bare NAME "
                    "is the room when you are in a room of that name (asked of the relay), "
                    "else the user; --room, --user or '#NAME' say which.",
        epilog="example: securechat history bob --last 20")
    history.add_argument("name", metavar="NAME", help="a user, or a room ('#ops')")
    kind = history.add_mutually_exclusive_group()
    kind.add_argument("--room", dest="kind", action="store_const", const="room",
                      help="NAME is a room")
    kind.add_argument("--user", dest="kind", action="store_const", const="user",
                      help="NAME is a user")
    history.add_argument("--last", type=_history_count, metavar="N",
                         help=f"only the newest N messages (1:1 default {HISTORY_LAST}; "
                              f"at most {HISTORY_MAX})")
    history.add_argument("--json", action="store_true",
                         help="one JSON object per line (as inbox --json, plus \"outgoing\")")


def _history_request(args):
    """``#NAME`` and ``--room`` name a room, ``--user`` a user; a bare name is decided by
    the method (``Methods.history``)."""
    params = {} if args.last is None else {"last": args.last}
    if args.kind == "room" or args.name.startswith("#") and args.kind is None:
        return "history", {"room": args.name.removeprefix("#"), **params}
    return "history", {"user" if args.kind == "user" else "name": args.name, **params}


def read_room_password(wanted):
    if not wanted:
        return None
    password = os.environ.get("SECURECHAT_ROOM_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise CommandFailed("set SECURECHAT_ROOM_PASSWORD or run in a terminal", 2)
        password = getpass.getpass("Room password: ")
    return password


def request_for(args):
    """The daemon method and params that do what ``args`` asks."""
    command = args.command
    if command in ("send", "say", "broadcast"):
        params = {"text": " ".join(args.text), "wait": args.wait}
        if command != "broadcast":
            params.update({"user": args.user} if command == "send" else {"room": args.room})
        return command, params
    if command == "inbox":
        return "inbox", {"wait": args.wait}
    if command == "rooms":
        params = {"room": args.room} if args.rooms_command != "list" else {}
        if args.rooms_command == "create":
            params.update(_room_password(args))
        elif args.rooms_command == "mode":
            params["mode"] = args.mode
        elif args.rooms_command == "admin":
            params.update({"user": args.user, "remove": args.remove})
        return "rooms." + args.rooms_command, params
    if command == "join":
        return "join", {"room": args.room, **_room_password(args)}
    if command in ("leave", "members"):
        return command, {"room": args.room}
    if command == "history":
        return _history_request(args)
    if command in ("invite", "kick", "unban"):
        return command, {"room": args.room, "user": args.user}
    if command in ("fingerprint", "trust", "verify"):
        return command, {"user": args.user} if args.user else {}
    if command == "outbox":
        return "outbox", {"drop": args.drop} if args.drop else {}
    return command, {}


def _room_password(args):
    password = read_room_password(args.password)
    return {} if password is None else {"password": password}


def next_page(params):
    """The params that fetch the rest of an answer that said ``more`` (no new wait)."""
    return {key: value for key, value in params.items() if key != "wait"}


def show_result(args, result, out=print):
    """Print what a command's result says, as the standalone commands always have (what
    others wrote passes render.safe)."""
    command = args.command
    width = terminal_width(sys.stdout)
    if command == "login":
        out(f"logged in as {result['user']} (device {result['device']}); "
            f"{result['queued']} message(s) waiting")
    elif command in ("send", "say", "broadcast"):
        if result.get("notice"):
            out(result["notice"])
    elif command == "inbox":
        for record in result["messages"]:
            out(message_json({**record, "from_dev": record["from_device"]}) if args.json
                else format_message(record, width))
        sys.stdout.flush()
    elif command == "outbox":
        _show_outbox(result, out)
    elif command == "history":
        for record in result["messages"]:
            out(history_json(record) if args.json else format_history(record, width))
    elif command == "rooms":
        _show_rooms_result(args, result, out)
    elif command == "join":
        out(f"joined {args.room}: {', '.join(map(safe, result['members']))}")
    elif command == "leave":
        out(f"left {args.room}")
    elif command == "members":
        for user, devices in result["members"].items():
            out(f"{safe(user)} ({_member_marks(user, result)}): "
                f"{', '.join(map(safe, devices)) or '(no device)'}")
    elif command in ("invite", "kick", "unban"):
        out(result["text"])
    elif command == "fingerprint":
        if "safety_number" not in result:
            out(f"{result['user']}: {result['fingerprint']}")
        else:
            state = "verified" if result["verified"] else "unverified"
            out(f"{result['user']}: {result['fingerprint']} ({state})")
            out("safety number: " + result["safety_number"])
    elif command == "trust":
        if result["accepted"] is None:
            out(f"{args.user}'s identity key has not changed; nothing to accept")
        else:
            out(f"accepted {args.user}'s new identity key {result['accepted']}"
                " (unverified: run 'securechat verify' to verify it)")


def _member_marks(user, result):
    """``owner``/``admin`` and ``verified``/``unverified`` (by this device), or ``you``."""
    role = result.get("roles", {}).get(user, "member")
    marks = [] if role == "member" else [role]
    if user == result.get("you"):
        marks.append("you")
    else:
        marks.append("verified" if result.get("verified", {}).get(user) else "unverified")
    return ", ".join(marks)


def _show_outbox(result, out):
    if "dropped" in result:
        out(f"dropped {result['dropped']}")
        return
    for entry in result["entries"]:
        where = f"in {entry['room']}" if entry["room"] else f"to {entry['to']}"
        state = f"failed: {entry['error']}" if entry["error"] else "pending"
        out(f"{entry['id']} [{entry['queued_at']}] {where} ({state}): "
            + json.dumps(entry["text"], ensure_ascii=False))


def _show_rooms_result(args, result, out):
    action = args.rooms_command
    if action == "create":
        out(f"created {args.room}" + (" (password protected)" if result["password"] else ""))
    elif action == "list":
        for room in result["rooms"]:
            out(safe(room))
    elif action == "mode":
        out(result["text"])
    elif action == "admin":
        out(f"{safe(result['user'])} is now an admin of {safe(result['room'])}"
            if result["role"] == "admin" else
            f"{safe(result['user'])} is now a plain member of {safe(result['room'])}")
    elif action == "bans":
        for ban in result["bans"]:
            out(f"{safe(ban['user'])}: banned by {safe(ban['by'])} at {ban['created']} "
                f"(a former {safe(ban['role'])})")
        if not result["bans"]:
            out(f"nobody is banned from {args.room}")
