"""The file commands: ``send-file USER PATH``, ``say-file ROOM PATH``, ``files get ID``,
``files list``: their arguments, the daemon request each makes, and what they print.

Standard library only, like ``commands`` (the daemon path imports it).  Paths are made
absolute here: the daemon that runs the command works in its own directory.
"""

import json
import os

from securechat.client.render import human_size, safe

FILE_METHODS = ("send-file", "say-file", "files.get")
"""Requests that move a file: the daemon tells their progress, and they may take long."""

FILE_PATIENCE = 24 * 3600
"""Seconds the CLI waits for a file command's answer from the daemon (a large file on a
slow link); progress notifications show it is alive meanwhile."""


def add_file_commands(add_command, commands, user_name, add_send_wait):
    send_file = add_command(
        commands, "send-file", "send a file to a user (encrypted)",
        "Encrypt PATH with a fresh key, upload it to the relay in chunks and send USER "
        "(and your other devices) a message with its key.  Interrupted, the same command "
        "run again goes on where the relay's copy stopped.  A progress bar on a terminal.",
        "securechat send-file bob report.pdf")
    send_file.add_argument("user", metavar="USER", type=user_name)
    send_file.add_argument("path", metavar="PATH")
    add_send_wait(send_file)
    say_file = add_command(
        commands, "say-file", "send a file to a room (encrypted)",
        "As send-file, for every member of ROOM.", "securechat say-file ops build.log")
    say_file.add_argument("room", metavar="ROOM")
    say_file.add_argument("path", metavar="PATH")
    add_send_wait(say_file)
    files = add_command(
        commands, "files", "files received (no action: list them)",
        "List the files you were sent, or fetch one: 'files get ID' downloads it, checks "
        "it is the file that was sent and decrypts it.", "securechat files",
        "securechat files get 3kQ9xZ0bLw2vT8mN5pR7sA --out ~/report.pdf")
    files.add_argument("--json", action="store_true", help="one JSON object per file")
    actions = files.add_subparsers(dest="files_command", metavar="ACTION")
    files.set_defaults(files_command="list")
    add_command(actions, "list", "the files you were sent",
                "List the files you were sent: id, size, name, sender, where it was saved.",
                "securechat files list")
    get = add_command(
        actions, "get", "download, check and decrypt a file",
        "Download file ID, check it against the hashes its message carried and decrypt "
        "it to --out (a file, or a directory to put it in), else to the current directory "
        "under the name it was sent with (made safe; never over an existing file).  A "
        "changed file is refused and nothing is written.  Interrupted, the same command "
        "run again goes on where it stopped.",
        "securechat files get 3kQ9xZ0bLw2vT8mN5pR7sA --out ~/Downloads")
    get.add_argument("file_id", metavar="ID")
    get.add_argument("--out", metavar="PATH", help="where to write it")


def file_request(args):
    """The daemon method and params of a file command (None for another command)."""
    if args.command in ("send-file", "say-file"):
        params = {"path": os.path.abspath(args.path), "wait": args.wait}
        params.update({"user": args.user} if args.command == "send-file" else {"room": args.room})
        return args.command, params
    if args.command == "files" and args.files_command == "get":
        params = {"file_id": args.file_id, "directory": os.getcwd()}
        if args.out is not None:
            params["out"] = os.path.abspath(os.path.expanduser(args.out))
        return "files.get", params
    if args.command == "files":
        return "files.list", {}
    return None


def show_file_result(args, result, out, say_sent=True):
    """Print a file command's result; False for another command's.  ``say_sent``: whether
    a file sent says where it went (the chat, which shows its line, says no)."""
    if args.command in ("send-file", "say-file"):
        if result.get("file") and say_sent:
            where = f"room {args.room}" if args.command == "say-file" else args.user
            sent = result["file"]
            out(f"sent {safe(sent['name'])} ({human_size(sent['size'])}) to {safe(where)} "
                f"as file {sent['id']}")
    elif args.command == "files" and args.files_command == "get":
        done = "already saved" if result.get("already_saved") else "saved"
        out(f"{done} {safe(result['file']['name'])} ({human_size(result['file']['size'])}) "
            f"to {safe(result['path'])}")
    elif args.command == "files":
        for described in result["files"]:
            if args.json:
                out(json.dumps(described, ensure_ascii=False))
            else:
                saved = described["saved_to"]
                out(f"{described['id']}  {human_size(described['size']):>10}  "
                    f"{safe(described['name'])}  from {safe(described['from'])}"
                    f"{' in ' + safe(described['room']) if described['room'] else ''}"
                    f"{'  saved to ' + safe(saved) if saved else ''}")
    else:
        return False
    return True
