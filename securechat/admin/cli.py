"""``securechat-admin``: what an operator does to a relay besides starting it.

Every command reads the relay's ini file (``--config``, as ``twistd securechat``
takes it) and says in one line what it did or why it could not (exit 1); with
``--json`` it prints one JSON document instead.  ``backup``, ``restore`` and ``migrate``
work on the store itself; the others ask the running relay through its admin API.
"""

import argparse
import json
import sys

from securechat import config as server_config
from securechat.admin import api_client, show
from securechat.admin.backup import AdminError, backup, restore
from securechat.admin.migrate import migrate
from securechat.client.closed_output import output_closed
from securechat.client.render import safe


def build_parser():
    parser = argparse.ArgumentParser(
        prog="securechat-admin", description="Operate a securechat relay: its users, rooms "
        "and figures (through the running relay), backups, restores and the move from "
        "SQLite to PostgreSQL (docs/operations.rst).")
    parser.add_argument("--config", metavar="FILE",
                        help="the relay's ini file (default: every option's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    users = commands.add_parser("users", help="the relay's accounts").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    users.add_parser("list", help="every account: devices, created, last seen, queued")
    users.add_parser("show", help="one account: its devices and rooms").add_argument(
        "name", metavar="NAME")
    users.add_parser("disable", help="refuse an account's logins and close its connections"
                     ).add_argument("name", metavar="NAME")
    users.add_parser("enable", help="let a disabled account log in again").add_argument(
        "name", metavar="NAME")
    users.add_parser("delete", help="delete an account for good (its name is quarantined)"
                     ).add_argument("name", metavar="NAME")
    rooms = commands.add_parser("rooms", help="the relay's rooms").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    rooms.add_parser("list", help="every room: owner, members, messages kept")
    rooms.add_parser("show", help="one room: its members and roles (never content)"
                     ).add_argument("room", metavar="ROOM")
    devices = commands.add_parser("devices", help="an account's devices").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    remove = devices.add_parser("remove", help="remove a device of an account for good")
    remove.add_argument("name", metavar="USER")
    remove.add_argument("device", metavar="DEVICE")
    invites = commands.add_parser("invites", help="registration invites").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    create = invites.add_parser("create", help="make an invite (its token shown once)")
    create.add_argument("--uses", type=int, default=1, metavar="N",
                        help="registrations it allows (default 1)")
    create.add_argument("--expires-days", type=float, metavar="D",
                        help="days it stays valid (default: until used up)")
    invites.add_parser("list", help="the invites with uses left")
    invites.add_parser("revoke", help="revoke an invite").add_argument(
        "token", metavar="TOKEN_OR_ID")
    commands.add_parser("stats", help="the relay's totals")
    tls = commands.add_parser("tls", help="the relay's certificate").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    tls.add_parser("reload", help="take a renewed [tls] certificate (as SIGHUP does)")
    made = commands.add_parser(
        "backup", help="write a consistent copy of the store (the relay may run)",
        description="Write a consistent copy of the relay's store to FILE while it runs: "
                    "SQLite's online backup, or pg_dump for PostgreSQL.")
    made.add_argument("file", metavar="FILE")
    back = commands.add_parser(
        "restore", help="replace the store with a backup (the relay must be stopped)",
        description="Replace the relay's store with the backup FILE.  Refused while a "
                    "relay answers on the configured port.")
    back.add_argument("file", metavar="FILE")
    move = commands.add_parser(
        "migrate", help="copy the SQLite store into an empty PostgreSQL database",
        description="Copy every account, device, key, room, membership and queued envelope "
                    "from the relay's SQLite file into an empty PostgreSQL database (the "
                    "relay must be stopped); then point [store] database at it.")
    move.add_argument("--to", required=True, metavar="URL", help="postgresql://...")
    return parser


def run(config, args):
    """The command's JSON document and the lines that say it to a person."""
    command, action = args.command, getattr(args, "action", None)
    if command == "users" and action == "list":
        users = _all(config, "users")
        return {"users": users}, show.users(users)
    if command == "users" and action == "delete":
        done = api_client.call(config, "DELETE", f"users/{args.name}")
        return done, [f"{args.name} deleted: {done['devices']} device(s) removed; the name is "
                      "quarantined as after any deletion"]
    if command == "users" and action in ("disable", "enable"):
        done = api_client.call(config, "POST", f"users/{args.name}/{action}")
        return done, [f"{args.name} {action}d"]
    if command == "users":
        found = api_client.call(config, "GET", f"users/{args.name}")
        return found, show.user(found)
    if command == "rooms" and action == "list":
        rooms = _all(config, "rooms")
        return {"rooms": rooms}, show.rooms(rooms)
    if command == "rooms":
        found = api_client.call(config, "GET", f"rooms/{args.room}")
        return found, show.room(found)
    if command == "devices":
        done = api_client.call(config, "DELETE", f"users/{args.name}/devices/{args.device}")
        return done, [f"removed device {args.device} of {args.name}: the relay refuses it "
                      "from now on"]
    if command == "invites":
        return invite_command(config, args)
    if command == "stats":
        stats = api_client.call(config, "GET", "stats")
        return stats, [f"{name}: {value}" for name, value in stats.items()]
    if command == "tls":
        done = api_client.call(config, "POST", "tls/reload")
        return done, [f"certificate reloaded: new connections get {done['fingerprint']}"]
    if command == "migrate":
        lines = migrate(config, args.to)
        return {"done": lines}, lines
    line = (backup if command == "backup" else restore)(config, args.file)
    return {"done": line}, [line]


def invite_command(config, args):
    if args.action == "create":
        made = api_client.call(config, "POST", "invites", body={
            "uses": args.uses, "expires_days": args.expires_days})
        return made, [f"invite: {made['token']}", show.invite(made)]
    if args.action == "list":
        listed = api_client.call(config, "GET", "invites")
        return listed, [show.invite(i) for i in listed["invites"]] or ["no invites"]
    done = api_client.call(config, "DELETE", f"invites/{args.token}")
    return done, [f"invite {done['revoked']} revoked"]


def _all(config, what):
    """Every entry of a paged list (``users`` or ``rooms``), page after page."""
    entries, after = [], ""
    while True:
        page = api_client.call(config, "GET", what, {"after": after})[what]
        entries += page
        if len(page) < 1000:
            return entries
        after = page[-1]["user" if what == "users" else "room"]


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        document, lines = run(server_config.load(args.config), args)
    except (AdminError, server_config.ConfigError) as e:
        if args.json:
            print(json.dumps({"error": str(e)}))
        print(f"securechat-admin: {safe(str(e))}", file=sys.stderr)  # may quote the relay
        return 1
    try:
        if args.json:
            print(json.dumps(document, sort_keys=True, ensure_ascii=False))
        else:
            for line in lines:
                print(line)
        sys.stdout.flush()  # here, where a closed pipe is understood, not at exit
    except BrokenPipeError:  # the reader stopped reading (| head): no error of ours
        return output_closed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
