"""``securechat chat``: an interactive session; messages appear while you type.

A line that does not start with ``/`` goes to the current conversation
(chosen with ``/msg USER``).  Slash commands are listed by ``/help``.
"""

import shlex
import sys

from twisted.internet import defer, stdio
from twisted.protocols.basic import LineReceiver

from securechat.client.render import format_history, format_message, safe, terminal_width
from securechat.client.protocol import RemoteError
from securechat.client.session import NO_OTHER_DEVICE, ClientError
from securechat.client.contacts import TrustError
from securechat.client.verification import VerificationFailed
from securechat.crypto.fingerprint import key_fingerprint
from securechat.wire import BROADCAST_ROOM

HELP = """\
/msg USER [TEXT]   talk to USER from now on (and send TEXT if given)
/room ROOM [TEXT]  talk in ROOM from now on (and say TEXT if given)
/create ROOM       create a room (rooms with passwords: the CLI's 'rooms create --password')
/join ROOM         join a room (rooms with passwords: the CLI's 'join --password')
/leave ROOM        leave a room
/rooms             the rooms you are in
/who ROOM          the members of a room and their devices
/history ROOM      the room's stored messages, decrypted where this device can
/invite ROOM USER  add USER to ROOM (owner and admins)
/kick ROOM USER    remove USER from ROOM (if in it) and ban USER from it (owner and admins)
/unban ROOM USER   lift USER's ban from ROOM (owner and admins)
/broadcast TEXT    send TEXT to every user
/verify USER       compare emoji with USER (they run /verify too)
/trust USER        accept USER's changed identity key (unverified)
/fingerprint       your own fingerprint
/help              this text
/quit              leave"""


class ChatInput(LineReceiver):
    delimiter = b"\n"

    def __init__(self, chat):
        self._chat = chat

    def lineReceived(self, line):
        self._chat.handle_line(line.decode("utf-8", "replace").strip())

    def connectionLost(self, reason):
        self._chat.quit()


class Chat:
    def __init__(self, commands, client):
        self._commands = commands
        self._client = client
        self._peer = None
        self._answers = defer.DeferredQueue()
        self._verifying = False
        self.done = defer.Deferred()
        self._io = None

    def show(self, text):
        if self._io is not None:
            self._io.sendLine(text.encode("utf-8"))

    def start(self):
        self._io = ChatInput(self)
        stdio.StandardIO(self._io)
        self.show(f"securechat: {self._client.user} (device {self._client.device}). /help for help.")

    def handle_line(self, line):
        if not line:
            return
        if self._verifying:
            self._answers.put(line)
            return
        d = defer.ensureDeferred(self._dispatch(line))
        d.addErrback(self._report)

    def _report(self, failure):
        error = failure.value
        if isinstance(error, (ClientError, TrustError, VerificationFailed)):
            self.show(f"! {safe(error)}")
        elif isinstance(error, RemoteError):
            self.show(f"! the server refused: {safe(error.message)}")
        else:
            self.show(f"! unexpected error: {safe(repr(error))}")

    async def _dispatch(self, line):
        if not line.startswith("/"):
            if self._peer is None:
                self.show("! choose whom to talk to first: /msg USER or /room ROOM")
            elif self._peer.startswith("#"):
                await self._client.rooms.say(self._peer[1:], line)
            else:
                await self._send_text(self._peer, line)
            return
        name, _, rest = line[1:].partition(" ")
        handler = getattr(self, "do_" + name, None)
        if handler is None:
            self.show(f"! unknown command /{name}; /help lists them")
            return
        await handler(rest.strip())

    async def do_help(self, rest):
        self.show(HELP)

    async def do_quit(self, rest):
        self.quit()

    async def do_msg(self, rest):
        user, _, text = rest.partition(" ")
        if not user:
            self.show("! usage: /msg USER [TEXT]")
            return
        self._peer = user
        self.show(f"talking to {user}")
        if text:
            await self._send_text(user, text)

    async def _send_text(self, user, text):
        if not await self._client.send_text(user, text):
            self.show(f"! {NO_OTHER_DEVICE}")

    async def do_room(self, rest):
        room, _, text = rest.partition(" ")
        if not room:
            self.show("! usage: /room ROOM [TEXT]")
            return
        self._peer = "#" + room
        self.show(f"talking in {room}")
        if text:
            await self._client.rooms.say(room, text)

    async def do_create(self, rest):
        await self._client.rooms.create(rest)
        self.show(f"created {rest}")

    async def do_join(self, rest):
        result = await self._client.rooms.join(rest)
        self.show(f"joined {rest}: " + ", ".join(map(safe, result["members"])))

    async def do_leave(self, rest):
        await self._client.rooms.leave(rest)
        self.show(f"left {rest}")

    async def do_history(self, rest):
        for record in await self._client.rooms.history(rest):
            self.show(format_history(record, terminal_width(sys.stdout)))

    async def do_invite(self, rest):
        await self._moderate("invite", rest)

    async def do_kick(self, rest):
        await self._moderate("kick", rest)

    async def do_unban(self, rest):
        await self._moderate("unban", rest)

    async def _moderate(self, action, rest):
        room, _, user = rest.partition(" ")
        self.show(await self._client.rooms.moderate(action, room, user.strip()))

    async def do_broadcast(self, rest):
        await self._client.rooms.say(BROADCAST_ROOM, rest)

    async def do_rooms(self, rest):
        rooms = (await self._client.request("rooms.list"))["rooms"]
        self.show("rooms: " + (", ".join(map(safe, rooms)) if rooms else "(none)"))

    async def do_who(self, rest):
        members = (await self._client.request("room.members", room=rest))["members"]
        for user, devices in members.items():
            self.show(f"  {safe(user)}: {', '.join(map(safe, devices)) or '(no device)'}")

    async def do_fingerprint(self, rest):
        self.show(f"{self._client.user}: {key_fingerprint(self._client.crypto.identity_key)}")

    async def do_trust(self, rest):
        await self._client.trusted_devices(rest, sending=False)
        key = self._client.contacts.trust(rest)
        self.show(f"accepted {rest}'s new key" if key else f"{rest}'s key has not changed")

    async def do_verify(self, rest):
        user = shlex.split(rest)[0] if rest else None
        if not user:
            self.show("! usage: /verify USER")
            return
        self._verifying = True
        try:
            await self._commands.run_verification(self._client, user, self._ask)
        finally:
            self._verifying = False

    async def _ask(self):
        self.show("Do they match? [y/N]")
        answer = await self._answers.get()
        return answer.lower() in ("y", "yes")

    def show_unread(self):
        """Show every stored message not shown yet (received now or by another command)."""
        if self._io is not None:
            self._commands.show_unread(self._client, lambda record: self.show(
                format_message(record, terminal_width(sys.stdout))))

    def connection_state(self, state, detail):
        """Say each change of the connection (not each attempt: ``connecting``)."""
        if state != "connecting":
            self.show(f"* {state}: {detail}")

    def quit(self):
        if not self.done.called:
            self.done.callback(0)


async def run_chat(commands):
    holder = {}
    client = commands.client(on_message=lambda record: holder["chat"].show_unread(),
                             on_state=lambda state, detail: holder["chat"].connection_state(
                                 state, detail))
    chat = Chat(commands, client)
    holder["chat"] = chat
    await client.open()
    chat.start()
    chat.show_unread()
    try:
        return await chat.done
    finally:
        await client.disconnect()
