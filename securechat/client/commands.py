"""The command layer: what each command is (its arguments), the daemon request it
makes, and the text its result prints.  ``securechat COMMAND`` (cli.py) and the chat's
slash commands both go through here, so a command reads and answers the same wherever
it is typed.

Standard library and light modules only: the daemon path imports this (see cli.py).
"""

import argparse
import datetime
import getpass
import json
import os
import sys
import textwrap

from securechat import wire
from securechat.client.event_types import CHANGES as EVENT_CHANGES
from securechat.client.exit_codes import EXIT_USAGE
from securechat.client.file_commands import add_file_commands, file_request, show_file_result
from securechat.client.message_size import check_message_size
from securechat.client.render import (
    format_history, format_message, history_json, message_json, safe, terminal_width)
from securechat.client.rpc import CommandFailed
from securechat.client.settings import default_config_path

STANDALONE_ONLY = ("register", "daemon", "chat", "password", "account", "recover")
"""Commands that never go to a running daemon (``chat`` starts one when none runs;
``password`` re-wraps the key store a daemon holds open and ``account delete`` removes
it: they refuse while one runs; so do ``devices approve`` and ``devices recovery-key``,
which makes what takes the whole account over and so asks for the password; ``devices
link`` and ``recover`` run where no device is yet)."""

ROOM_MODE_NAMES = ("invite-only", "open")
"""``rooms mode`` choices: the names of rooms.ROOM_MODES (not imported: it needs Twisted)."""


def add_send_wait(parser):
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="if the server is unreachable, keep the message in the outbox and "
                             "wait this long for the server to take it (default 0: exit 4 at "
                             "once; the next command or the daemon sends it)")


def add_reply_to(parser):
    parser.add_argument("--reply-to", metavar="ID",
                        help="answer the message ID (its \"mid\" in inbox --json or "
                             "history --json): shown with its context")


CHANGES = ("react", "edit", "delete")
"""Commands that change an earlier message (they go through the outbox, like a send)."""


def add_changes(commands):
    """``react``, ``edit`` and ``delete``: changes of an earlier message, by its mid."""
    id_help = "the message's \"mid\" (inbox --json, history --json)"
    react = add_command(
        commands, "react", "react to a message with an emoji (or --remove it)",
        "React to message ID with EMOJI; everyone in its conversation sees the counts. "
        "--remove takes your reaction back.",
        "securechat react mD3x9Qk2Lw8bTz1vYp0aHg 👍",
        "securechat react mD3x9Qk2Lw8bTz1vYp0aHg 👍 --remove")
    react.add_argument("id", metavar="ID", help=id_help)
    react.add_argument("emoji", metavar="EMOJI")
    react.add_argument("--remove", action="store_true", help="take your reaction back")
    add_send_wait(react)
    edit = add_command(
        commands, "edit", "replace the text of a message you sent",
        "Replace the text of your message ID with TEXT on every device of its "
        "recipients (shown '(edited)').  Only its author can: the recipients' clients "
        "refuse anyone else's edit.", 'securechat edit mD3x9Qk2Lw8bTz1vYp0aHg "at 1pm"')
    edit.add_argument("id", metavar="ID", help=id_help)
    edit.add_argument("text", nargs="+", metavar="TEXT")
    add_send_wait(edit)
    delete = add_command(
        commands, "delete", "delete a message you sent, for everyone",
        "Delete your message ID on every device of its recipients (shown as deleted). "
        "Only its author can.", "securechat delete mD3x9Qk2Lw8bTz1vYp0aHg")
    delete.add_argument("id", metavar="ID", help=id_help)
    add_send_wait(delete)


class ParseStopped(Exception):
    """What the parser would have printed before exiting (a usage error, ``--help``), with
    its exit status: the chat shows it instead of letting argparse end the process."""

    def __init__(self, text, status):
        super().__init__(text)
        self.status = status


class QuietParser(argparse.ArgumentParser):
    """The parser of the chat's slash commands: it raises ParseStopped where argparse would
    print on the terminal (drawn by the chat's screen) and exit."""

    def _print_message(self, message, file=None):
        raise ParseStopped(message or "", 0)

    def error(self, message):
        raise ParseStopped(f"{self.format_usage()}{self.prog}: error: {message}", 2)

    def exit(self, status=0, message=None):
        raise ParseStopped(message or "", status)


def user_name(text):
    """A USER argument: user names are lowercase, so ``Bob`` is taken as ``bob`` (with a
    note on stderr); anything that is still no user name is a usage error naming it."""
    name = text.lower()
    if not wire.USERNAME_RE.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a user name (1-32 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)")
    if name != text:
        print(f"securechat: user names are lowercase: using {name}", file=sys.stderr)
    return name


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written, except that an unindented line is wrapped
    to the terminal: examples (indented) stay as typed, long sentences still fit."""

    def _fill_text(self, text, width, indent):
        return "\n".join(line if line.startswith(" ") or not line
                         else textwrap.fill(line, width, initial_indent=indent,
                                            subsequent_indent=indent)
                         for line in text.splitlines())


class ShowVersion(argparse.Action):
    """``--version``: the installed package's version, read only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        parser._print_message(f"securechat {version('securechat')}\n", sys.stdout)
        parser.exit()


def add_command(commands, name, help, description, *examples):
    """Declare subcommand ``name`` once: ``help`` for the command list, ``description``
    and the ``examples`` for its ``--help`` (and the man page and completions, which
    read the same parser)."""
    return commands.add_parser(name, help=help, description=description,
                               epilog="example:\n" + "\n".join(f"  {e}" for e in examples))


def subcommands(parser, path=()):
    """``(path, parser, help)`` of every subcommand under ``parser``, depth first
    (``("rooms", "create")`` for ``securechat rooms create``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from subcommands(sub, (*path, name))


def _conventions(parser):
    """What every subcommand gets, including those declared without add_command: its
    description and epilog printed as written, and ``--config`` anywhere on the line
    (default SUPPRESS: given after the subcommand it overrides the one before it, absent
    it leaves the main parser's default alone)."""
    for _, sub, _ in subcommands(parser):
        sub.formatter_class = HelpFormatter
        if "--config" not in sub._option_string_actions:
            sub.add_argument("--config", default=argparse.SUPPRESS,
                             help="client ini file (as before the command)")


def build_parser(parser_class=argparse.ArgumentParser):
    """The parser of every command (``parser_class=QuietParser``: one that never exits)."""
    parser = parser_class(
        prog="securechat", description="securechat: an end-to-end encrypted messenger for "
        "the terminal", epilog="'securechat COMMAND --help' tells what a command does, with "
        "an example.", formatter_class=HelpFormatter)
    parser.add_argument("--config", default=default_config_path(),
                        help="client ini file (default: $SECURECHAT_CONFIG, else "
                             "$XDG_CONFIG_HOME/securechat/client.ini, else "
                             "~/.config/securechat/client.ini)")
    parser.add_argument("--version", action=ShowVersion, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_init(commands)
    register = add_command(
        commands, "register", "create this device's keys and the account",
        "Create this device's keys and your account on the server named in the config "
        "file; asks for the password twice.  A relay that registers by invitation takes "
        "the invite its operator gave you (--invite).", "securechat register",
        "securechat register --invite 7Gq2v9KpXbWmN4rT")
    register.add_argument("--invite", metavar="TOKEN",
                          help="the invite the relay's operator gave you")
    add_command(commands, "recover", "make this machine your account's only device, with "
                                     "the recovery key (every device lost)",
                "With the recovery key that 'register' printed: log in on a new machine "
                "(the config names your user and an empty data directory), take back your "
                "account's identity (contacts who verified you stay verified), choose a new "
                "password, and remove every other device of the account.  Then prints a new "
                "recovery key: the one you typed stops working.  The key comes from "
                "$SECURECHAT_RECOVERY_KEY or a prompt, the new password from "
                "$SECURECHAT_NEW_PASSWORD or two prompts.  Messages sent before are not "
                "brought back.", "securechat recover",
                "SECURECHAT_RECOVERY_KEY='...' SECURECHAT_NEW_PASSWORD=... securechat recover")
    add_command(commands, "login", "check the password and the server, top up keys",
                "Unlock the key store, log in, top up the published one-time keys and say "
                "how many messages wait.", "securechat login")
    send = add_command(commands, "send", "send a message to a user",
                       "Encrypt a message for every device of USER (and your other devices) "
                       "and hand it to the server; on a terminal, says to how many devices.",
                       'securechat send bob "meet at noon"',
                       "securechat send bob 'the build failed' --wait 60")
    send.add_argument("user", metavar="USER", type=user_name)
    send.add_argument("text", nargs="+", metavar="TEXT")
    add_reply_to(send)
    add_send_wait(send)
    inbox = add_command(commands, "inbox", "fetch, decrypt, acknowledge and print messages",
                        "Print every message not shown before, each once, oldest first.",
                        "securechat inbox --wait 60 --json")
    inbox.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                       help="if nothing is waiting, wait this long for a message (through "
                            "reconnects)")
    inbox.add_argument("--json", action="store_true", help="one JSON object per line")
    add_command(commands, "chat", "interactive chat (type /help)",
                "An interactive chat: incoming messages as they arrive, your lines sent "
                "to the conversation you chose.", "securechat chat")
    outbox = add_command(
        commands, "outbox", "messages not yet accepted by the server (works without the server)",
        "List the messages kept until the server accepts them, or drop one that failed.",
        "securechat outbox --drop Qm9yZWQgbm93Pw")
    outbox.add_argument("--drop", metavar="ID", help="remove one entry (one that failed)")
    add_command(commands, "daemon", "unlock once and serve this device to the other "
                                    "commands, scripts and bots (foreground)",
                "Unlock once and keep this device connected; other commands, scripts and "
                "the chat then use it through a private socket, without the password.",
                "securechat daemon &")
    fingerprint = add_command(
        commands, "fingerprint", "your fingerprint, or the safety number with USER",
        "Print your identity key's fingerprint, or USER's and the safety number you "
        "share, to compare out of band.", "securechat fingerprint bob")
    fingerprint.add_argument("user", metavar="USER", nargs="?", type=user_name)
    verify = add_command(commands, "verify", "compare emoji with USER (both run this)",
                         "Verify USER by comparing seven emoji; both of you run it at once.",
                         "securechat verify bob")
    verify.add_argument("user", metavar="USER", type=user_name)
    trust = add_command(commands, "trust", "accept USER's changed identity key (unverified)",
                        "Accept USER's new identity key after a change, as unverified.",
                        "securechat trust bob")
    trust.add_argument("user", metavar="USER", type=user_name)
    _rooms_commands(add_command(
        commands, "rooms", "create or list rooms (no action: list them)",
        "Create rooms and manage those you own; with no action, list the rooms you are in.",
        "securechat rooms", "securechat rooms create ops --password"))
    join = add_command(commands, "join", "join a room",
                       "Join ROOM (an open room, one you were invited to, or one with a "
                       "password).", "securechat join ops",
                       "SECURECHAT_ROOM_PASSWORD=... securechat join ops --password")
    join.add_argument("room", metavar="ROOM")
    join.add_argument("--password", action="store_true",
                      help="the room needs a password ($SECURECHAT_ROOM_PASSWORD or a prompt)")
    for name, text, description in (
            ("leave", "leave a room", "Leave ROOM; what is said there afterwards is not "
                                      "readable by you."),
            ("members", "a room's members and devices", "List ROOM's members and their "
                                                        "devices.")):
        add_command(commands, name, text, description,
                    f"securechat {name} ops").add_argument("room", metavar="ROOM")
    add_history(commands)
    say = add_command(commands, "say", "send a message to a room",
                      "Send a message to every member of ROOM.",
                      'securechat say ops "deploy at 5"')
    say.add_argument("room", metavar="ROOM")
    say.add_argument("text", nargs="+", metavar="TEXT")
    add_reply_to(say)
    add_send_wait(say)
    add_file_commands(add_command, commands, user_name, add_send_wait)
    add_changes(commands)
    broadcast = add_command(commands, "broadcast", "send a message to every user",
                            "Send a message to every user of the server (if the server lets "
                            "you).", 'securechat broadcast "maintenance at 22:00"')
    broadcast.add_argument("text", nargs="+", metavar="TEXT")
    add_send_wait(broadcast)
    for name, text, description in (
            ("invite", "add USER to ROOM (owner/admins)", "Add USER to ROOM."),
            ("kick", "remove USER from ROOM (if in it) and ban USER from it (owner/admins)",
             "Remove USER from ROOM and ban them from it until 'unban'."),
            ("unban", "lift USER's ban from ROOM (owner/admins)",
             "Lift USER's ban from ROOM.")):
        action = add_command(commands, name, text, description, f"securechat {name} ops bob")
        action.add_argument("room", metavar="ROOM")
        action.add_argument("user", metavar="USER", type=user_name)
    completion = add_command(
        commands, "completion", "print the shell completion script (bash or zsh)",
        "Print a completion script for SHELL, generated from these commands.",
        'eval "$(securechat completion bash)"    # in ~/.bashrc',
        "securechat completion zsh > ~/.zfunc/_securechat")
    completion.add_argument("shell", choices=("bash", "zsh"))
    add_command(commands, "manpage", "print the man page (troff)",
                "Print securechat(1), generated from these commands.",
                "securechat manpage | man -l -")
    add_command(commands, "password", "change your password (stop the daemon first)",
                "Change the password: the relay's login secret and this device's key "
                "store, from the current password (as every command reads it) to the new "
                "one ($SECURECHAT_NEW_PASSWORD, or asked twice).  Your other devices keep "
                "working; run it there too to lock their key stores with the new one.",
                "securechat password",
                "SECURECHAT_PASSWORD_FILE=~/.pw SECURECHAT_NEW_PASSWORD=... securechat password")
    account = add_command(
        commands, "account", "delete your account (stop the daemon first)",
        "Act on the whole account on the relay: 'delete' removes it for good.",
        "securechat account delete")
    account_commands = account.add_subparsers(dest="account_command", metavar="ACTION",
                                              required=True)
    add_command(account_commands, "delete", "delete the account and this device's data",
                "Delete the account on the relay for good: its devices, keys, waiting "
                "messages and room memberships (a room you own passes to its oldest admin, "
                "else its oldest member).  Asks for the password, then for your user name "
                "typed again on standard input; then removes this device's data directory. "
                "The name can be registered again only after the relay's quarantine "
                "(30 days by default).",
                "securechat account delete",
                "echo alice | SECURECHAT_PASSWORD_FILE=~/.pw securechat account delete")
    _devices_commands(add_command(
        commands, "devices", "your account's devices (no action: list them)",
        "List your account's devices (id, name, when added, when last seen; this one "
        "marked), name one of them, remove one, or make a new recovery key.",
        "securechat devices", "securechat devices --json",
        'securechat devices rename Xb3kQ9 "work laptop"', "securechat devices remove Xb3kQ9"))
    _conventions(parser)  # last: it completes every subcommand declared above
    return parser


def _devices_commands(devices):
    """``devices`` lists (as ``devices list``); ``devices rename ID NAME`` names one;
    ``devices remove ID`` removes one; ``devices recovery-key`` makes a new recovery key."""
    devices.add_argument("--json", action="store_true",
                         help="one JSON object per device and line: id, name, added, "
                              "last_seen (ISO UTC or null), this")
    devices_commands = devices.add_subparsers(dest="devices_command", metavar="ACTION")
    devices.set_defaults(devices_command="list")
    add_command(devices_commands, "list", "your account's devices",
                "List your account's devices, one a line; this one marked.",
                "securechat devices list")
    rename = add_command(devices_commands, "rename", "name one of your devices",
                         "Name device ID (as 'devices' lists it) NAME: up to 64 printable "
                         "characters.", 'securechat devices rename Xb3kQ9 "work laptop"')
    rename.add_argument("device", metavar="ID")
    rename.add_argument("name", metavar="NAME")
    remove = add_command(devices_commands, "remove", "remove one of your devices",
                         "Sign your account's device list without device ID (as 'devices' "
                         "lists it) and publish it: the relay refuses that device's logins "
                         "at once and drops what waits for it, and your contacts stop "
                         "encrypting to it.  Not this device itself.  A device that was "
                         "stolen still holds your account key in its data directory: change "
                         "your password too.", "securechat devices remove Xb3kQ9")
    remove.add_argument("device", metavar="ID")
    add_command(devices_commands, "link", "make this machine a new device of your account",
                "On a new machine (its ini names your user and its own data_dir): log in "
                "with the password, print 'link code: CODE' and wait for one of your devices "
                "to run 'securechat devices approve CODE'; both then show seven emoji and "
                "ask whether they match (y/n on standard input).  The new device reads what "
                "is sent to you from then on, not earlier messages.",
                "securechat --config ~/.config/securechat/laptop.ini devices link")
    approve = add_command(
        devices_commands, "approve", "add the device showing CODE to your account",
        "Compare emoji with the new device that printed 'link code: CODE' (y/n on "
        "standard input); if both say yes, sign it into your account's device list and "
        "hand it the account key.  Stop this device's daemon first.",
        "securechat devices approve K7QM2XW9PA")
    approve.add_argument("code", metavar="CODE")
    add_command(devices_commands, "recovery-key",
                "make a new recovery key; the old one stops working (stop the daemon first)",
                "Make a new recovery key for your account and print it once: write it down. "
                "The previous one stops working at once.  With it, 'securechat recover' "
                "brings the account back on a new machine when every device is lost.",
                "securechat devices recovery-key")


def _rooms_commands(rooms):
    rooms_commands = rooms.add_subparsers(dest="rooms_command", metavar="ACTION")
    rooms.set_defaults(rooms_command="list")
    create = add_command(rooms_commands, "create", "create a room (you own it)",
                         "Create ROOM; you own it.", "securechat rooms create ops",
                         "securechat rooms create ops --password")
    create.add_argument("room", metavar="ROOM")
    create.add_argument("--password", action="store_true",
                        help="protect it with a password ($SECURECHAT_ROOM_PASSWORD or a prompt)")
    add_command(rooms_commands, "list", "the rooms you are in",
                "List the rooms you are in, one a line.", "securechat rooms list")
    add_command(rooms_commands, "bans", "who is banned from a room, by whom (owner/admins)",
                "List who is banned from ROOM, by whom and when.",
                "securechat rooms bans ops").add_argument("room", metavar="ROOM")
    mode = add_command(rooms_commands, "mode",
                       "open a room you own to anyone, or make it invite-only",
                       "Open ROOM to anyone, or make it invite-only (its owner only).",
                       "securechat rooms mode ops invite-only")
    mode.add_argument("room", metavar="ROOM")
    mode.add_argument("mode", choices=ROOM_MODE_NAMES)
    admin = add_command(
        rooms_commands, "admin", "make USER an admin of ROOM, or a plain member again (owner only)",
        "Make USER an admin of ROOM (admins invite, kick members and lift their bans), or "
        "with --remove a plain member again. Only the room's owner names admins; USER must "
        "be a member.", "securechat rooms admin ops carol",
        "securechat rooms admin ops carol --remove")
    admin.add_argument("room", metavar="ROOM")
    admin.add_argument("user", metavar="USER", type=user_name)
    admin.add_argument("--remove", action="store_true", help="take the admin role away")


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


def add_init(commands):
    init = commands.add_parser(
        "init", help="first run: choose the relay (checking its certificate) and your user "
                     "name, write the client ini, register",
        description="Write the client ini (--config) for a relay whose certificate "
                    "fingerprint you confirm against what its operator published, then "
                    "offer to register.",
        epilog="example: securechat init --server chat.example.org:6697 --user alice")
    init.add_argument("--server", metavar="HOST:PORT", help="the relay (asked if not given)")
    init.add_argument("--user", metavar="NAME", help="your user name (asked if not given)")
    init.add_argument("--fingerprint", metavar="FP",
                      help="the relay certificate's SHA-256 fingerprint its operator published: "
                           "compared instead of asking you")
    init.add_argument("--yes", action="store_true",
                      help="answer yes to the questions (only with --fingerprint)")
    init.add_argument("--force", action="store_true", help="replace an existing ini")
    register = init.add_mutually_exclusive_group()
    register.add_argument("--register", action="store_true", default=None,
                          help="register without asking")
    register.add_argument("--no-register", dest="register", action="store_false",
                          help="do not register now")
    init.set_defaults(usage_error=init.error)


def read_room_password(wanted):
    if not wanted:
        return None
    password = os.environ.get("SECURECHAT_ROOM_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise CommandFailed("set SECURECHAT_ROOM_PASSWORD or run in a terminal", 2)
        password = getpass.getpass("Room password: ")
    return password


LINKING = ("link", "approve")
"""``devices`` actions that run standalone only: a SAS exchange on this terminal."""

STANDALONE_DEVICES_ACTIONS = (*LINKING, "recovery-key")


def standalone_only(args):
    """Whether ``args`` names a command that never goes to a running daemon."""
    return args.command in STANDALONE_ONLY or (
        args.command == "devices" and args.devices_command in STANDALONE_DEVICES_ACTIONS)


def request_for(args, room_password=read_room_password):
    """The daemon method and params that do what ``args`` asks; ``room_password(wanted)``
    gives a room's password when ``--password`` asks for one (the chat asks on its screen)."""
    command = args.command
    if file_request(args) is not None:
        return file_request(args)
    if command in ("send", "say", "broadcast"):
        params = {"text": " ".join(args.text), "wait": args.wait}
        check_message_size(params["text"])
        if command != "broadcast":
            params.update({"user": args.user} if command == "send" else {"room": args.room})
        if getattr(args, "reply_to", None):
            params["reply_to"] = args.reply_to
        return command, params
    if command in CHANGES:
        params = {"id": args.id, "wait": args.wait}
        if command == "react":
            params.update(emoji=args.emoji, remove=args.remove)
        elif command == "edit":
            params["text"] = " ".join(args.text)
            check_message_size(params["text"])
        return command, params
    if command == "inbox":
        return "inbox", {"wait": args.wait}
    if command == "rooms":
        params = {"room": args.room} if args.rooms_command != "list" else {}
        if args.rooms_command == "create":
            params.update(_room_password(args, room_password))
        elif args.rooms_command == "mode":
            params["mode"] = args.mode
        elif args.rooms_command == "admin":
            params.update({"user": args.user, "remove": args.remove})
        return "rooms." + args.rooms_command, params
    if command == "devices" and args.devices_command in LINKING:  # only the chat gets here
        raise CommandFailed(f"'devices {args.devices_command}' runs in a terminal of its own "
                            "(securechat devices ...), not in the chat", EXIT_USAGE)
    if command == "devices":
        params = ({"device": args.device} if args.devices_command in ("rename", "remove")
                  else {})
        if args.devices_command == "rename":
            params["name"] = args.name
        return "devices." + args.devices_command, params
    if command == "join":
        return "join", {"room": args.room, **_room_password(args, room_password)}
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


def _room_password(args, room_password):
    password = room_password(args.password)
    return {} if password is None else {"password": password}


def next_page(params):
    """The params that fetch the rest of an answer that said ``more`` (no new wait)."""
    return {key: value for key, value in params.items() if key != "wait"}


def warn_on_stderr(text):
    print(f"securechat: warning: {safe(text)}", file=sys.stderr, flush=True)


def show_result(args, result, out=print, say_sent=None, warn=warn_on_stderr):
    """Print what a command's result says, as the standalone commands always have (what
    others wrote passes render.safe).  ``say_sent``: whether a message sent says where it
    went (default: when a person watches, stdout a terminal; the chat, which shows the
    line itself, says no).  ``warn`` says the result's warnings (devices a message was
    not encrypted to), on stderr unless the chat shows them."""
    command = args.command
    width = terminal_width(sys.stdout)
    for warning in result.get("warnings") or ():
        warn(warning)
    if show_file_result(args, result, out, say_sent is not False):
        return
    if command == "login":
        out(f"logged in as {result['user']} (device {result['device']}); "
            f"{result['queued']} message(s) waiting")
    elif command in ("send", "say", "broadcast"):
        if result.get("notice"):
            out(result["notice"])
        elif sys.stdout.isatty() if say_sent is None else say_sent:  # a script wants silence
            out(sent_to(args, result))
    elif command in CHANGES:
        if result.get("notice"):
            out(result["notice"])
        elif sys.stdout.isatty() if say_sent is None else say_sent:
            out(changed(args, result))
    elif command == "inbox":
        # A change of a message printed in the same batch is in that message's line
        # already ("(edited) [+1 1]"): a person reads it once; a script gets every record.
        printed = set() if args.json else {
            record.get("mid") for record in result["messages"]
            if record.get("type") not in EVENT_CHANGES}
        for record in result["messages"]:
            if record.get("type") in EVENT_CHANGES and record.get("target") in printed:
                continue
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
    elif command == "devices":
        _show_devices_result(args, result, out)
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


def sent_to(args, result):
    """``sent to bob (2 devices)``, or ``sent to bob (1 device; a copy to 1 other device
    of yours)``: where a message went, as the command's result says."""
    where = {"send": lambda: args.user, "say": lambda: args.room,
             "broadcast": lambda: "everyone"}[args.command]()
    devices = result.get("devices")
    if not devices:  # a room message, or one the reconnect sent (count unknown)
        return f"sent to {where}"
    own = result.get("own_devices") or 0
    theirs = devices - own
    text = f"sent to {where} ({theirs} device{'s' if theirs != 1 else ''}"
    if own:
        text += f"; a copy to {own} other device{'s' if own != 1 else ''} of yours"
    return text + ")"


def changed(args, result):
    """``reacted 👍 to ID``, ``edited ID``, ``deleted ID``, and where it went."""
    where = f"in {result['room']}" if result.get("room") else f"with {result.get('user')}"
    if args.command == "react":
        done = (f"removed your reaction {safe(args.emoji)} from" if args.remove
                else f"reacted {safe(args.emoji)} to")
        return f"{done} {args.id} ({where})"
    return f"{args.command.rstrip('e')}ed {args.id} ({where})"


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


def _show_devices_result(args, result, out):
    if args.devices_command == "rename":
        out(f"device {safe(result['device'])} is now named {safe(result['name'])}")
        return
    if args.devices_command == "remove":
        out(f"removed device {safe(result['device'])} from {safe(result['user'])}'s account "
            f"(device list version {result['version']}): the relay refuses it from now on")
        return
    for device in result["devices"]:
        if args.json:  # ASCII escapes: no byte of a name reaches the terminal as it came
            out(json.dumps(device))
            continue
        name = safe(device["name"]) if device["name"] else "(no name)"
        seen = _local_minute(device["last_seen"]) if device["last_seen"] else "never"
        out(f"{safe(device['id'])}  {name}  added {_local_minute(device['added'])}  "
            f"last seen {seen}" + ("  (this device)" if device["this"] else ""))


def _local_minute(when):
    """An ISO UTC time (``...Z``) as local ``YYYY-MM-DD HH:MM``."""
    moment = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


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
