"""The chat's slash commands.

Commands of the chat itself (buffers: ``/query``, ``/msg``, ``/join``, ``/part``, ``/me``,
``/reply``,
``/names``, ``/buffer``, ``/quit``, ``/help``) are here.  Every command that is also a CLI
command (``/invite``, ``/kick``, ``/rooms``, ``/history``, ``/fingerprint``, ``/trust``,
``/verify``, ``/broadcast``, ``/create``, ``/leave``, ...) is parsed by the CLI's own parser
and answered by its own ``show_result`` (Chat.command): one command layer, one wording.
"""

import argparse
import shlex

from securechat.client.commands import build_parser
from securechat.client.exit_codes import EXIT_USAGE
from securechat.client.rpc import CommandFailed

HELP = """\
Type a line to send it to the current buffer's person or room (//text sends /text).
/query USER          open the conversation with USER (/query #ROOM: a room's buffer)
/msg USER [TEXT]     send TEXT to USER without leaving this buffer (no TEXT: /query)
/join ROOM           join ROOM (#ROOM too) and open its buffer; asks for a password if it has one
/create ROOM         create ROOM and open its buffer (--password: asks for one to set)
/part [ROOM]         leave ROOM (default: this buffer's room) and close its buffer
/me ACTION           say ACTION as an action: * alice ACTION
/file PATH           send the file PATH (encrypted) to this buffer's person or room
/reply ID TEXT       answer message ID (its mid) here, shown with its context
/names [ROOM]        ROOM's members (default: this buffer's room)
/buffer N, /win N    go to buffer N (or Alt-N)
/invite ROOM USER, /kick ROOM USER, /unban ROOM USER, /rooms list|bans|mode|admin,
/members ROOM, /history USER|ROOM, /leave ROOM, /broadcast TEXT, /fingerprint [USER], /verify USER, /trust USER, /outbox [--drop ID],
/react ID EMOJI, /edit ID TEXT, /delete ID, /send USER TEXT --reply-to ID:
                     as the CLI commands of the same name (/COMMAND --help; ID: a
                     message's mid, as history --json shows it)
/quit                leave (Ctrl-C too)
Keys: Alt-1..9 buffers, PgUp/PgDn scroll, Up/Down typed lines, Ctrl-A/E/U/W edit.
A ? after a name: that person is not verified (/verify NAME)."""

NOT_IN_CHAT = ("register", "chat", "daemon", "inbox", "password", "account", "recover")
"""CLI commands the chat does not run: it shows the inbox itself, and the others start or
set up what the chat runs in (``password`` needs the key store the chat holds, ``recover``
makes a new one)."""

def cli_commands():
    """The chat's names of the CLI's commands (the subcommands of its parser)."""
    subcommands = next(action for action in build_parser()._actions
                       if isinstance(action, argparse._SubParsersAction))
    return set(subcommands.choices) - set(NOT_IN_CHAT)


class SlashCommands:
    """``run(line)`` for a line that starts with ``/``; the chat does the work."""

    def __init__(self, chat):
        self._chat = chat
        self._cli = cli_commands()

    async def run(self, line):
        name, _, rest = line[1:].partition(" ")
        handler = getattr(self, "do_" + name.lower(), None)
        if handler is not None:
            await handler(rest.strip())
        elif name in self._cli:
            await self._chat.command([name] + self._words(rest))
        else:
            self._chat.warn(f"unknown command /{name}; /help lists them")

    @staticmethod
    def _words(rest):
        """The words of a command line, quoted as in a shell."""
        try:
            return shlex.split(rest)
        except ValueError as e:
            raise CommandFailed(f"cannot read the command: {e}", EXIT_USAGE) from None

    def _room_or_current(self, rest, usage):
        room = rest.lstrip("#") or self._chat.current_room()
        if room is None:
            self._chat.warn(f"usage: {usage} (or run it in a room's buffer)")
        return room

    async def do_help(self, rest):
        self._chat.say(HELP)

    async def do_quit(self, rest):
        self._chat.quit()

    async def do_query(self, rest):
        if not rest:
            self._chat.warn("usage: /query USER or /query #ROOM")
            return
        await self._chat.open(rest.split()[0], switch=True)

    async def do_msg(self, rest):
        to, _, text = rest.partition(" ")
        if not to:
            self._chat.warn("usage: /msg USER [TEXT]")
        elif not text.strip():
            await self._chat.open(to, switch=True)
        else:
            buffer = await self._chat.open(to, switch=False)
            await self._chat.send(buffer, text)

    async def do_me(self, rest):
        if not rest:
            self._chat.warn("usage: /me ACTION")
            return
        await self._chat.send_here("/me " + rest)

    async def do_reply(self, rest):
        mid, _, text = rest.partition(" ")
        if not mid or not text.strip():
            self._chat.warn("usage: /reply ID TEXT (ID: the message's mid)")
            return
        await self._chat.send_here(text, reply_to=mid)

    async def do_join(self, rest):
        given = self._room_and_options(rest, "/join ROOM (or #ROOM)")
        if given is not None:
            await self._chat.join(*given)

    async def do_create(self, rest):
        given = self._room_and_options(rest, "/create ROOM [--password] (or #ROOM)")
        if given is not None:
            await self._chat.create(*given)

    def _room_and_options(self, rest, usage):
        """A room command's room (without its ``#``) and its other words; None, the usage
        said, when it names no room."""
        words = self._words(rest)
        if not words:
            self._chat.warn(f"usage: {usage}")
            return None
        return words[0].lstrip("#"), words[1:]

    async def do_part(self, rest):
        room = self._room_or_current(rest, "/part ROOM")
        if room is not None:
            await self._chat.part(room)

    async def do_names(self, rest):
        room = self._room_or_current(rest, "/names ROOM")
        if room is not None:
            await self._chat.command(["members", room])

    async def do_buffer(self, rest):
        if not rest.isdigit():
            self._chat.warn("usage: /buffer N (the numbers are in the top line)")
            return
        self._chat.switch(int(rest))

    do_win = do_buffer

    async def do_file(self, rest):
        """``/file PATH``: ``send-file`` or ``say-file`` to the current buffer's person or
        room; its ``files get`` line shows in the recipients' chats, its own line here."""
        words, current = self._words(rest), self._chat.buffers.current
        if len(words) != 1 or current.kind == "status":
            self._chat.warn("usage: /file PATH (in a person's or a room's buffer)")
            return
        await self._chat.send_file(current, words[0])

    async def do_verify(self, rest):
        await self._chat.verify(["verify"] + self._words(rest))
