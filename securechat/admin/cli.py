"""``securechat-admin``: what an operator does to a relay besides starting it.

Every command reads the relay's ini file (``--config``, as ``twistd securechat``
takes it) and says in one line what it did or why it could not (exit 1).
"""

import argparse
import sys

from securechat import config as server_config
from securechat.admin.backup import AdminError, backup, restore
from securechat.admin.migrate import migrate


def build_parser():
    parser = argparse.ArgumentParser(
        prog="securechat-admin", description="Operate a securechat relay: backups, restores "
        "and the move from SQLite to PostgreSQL (docs/operations.rst).")
    parser.add_argument("--config", metavar="FILE",
                        help="the relay's ini file (default: every option's default)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        config = server_config.load(args.config)
        if args.command == "backup":
            lines = [backup(config, args.file)]
        elif args.command == "restore":
            lines = [restore(config, args.file)]
        else:
            lines = migrate(config, args.to)
    except (AdminError, server_config.ConfigError) as e:
        print(f"securechat-admin: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
