"""``securechat chat``: an interactive session; messages appear while you type.

A line that does not start with ``/`` goes to the current conversation
(chosen with ``/msg USER``).  Slash commands are listed by ``/help``.

The chat is a client of the daemon, like a script: it talks JSON-RPC on the daemon's
socket and shows its notifications.  With no daemon running it starts one in this
process (unlocking the key store here), which serves the socket to the other commands
until the chat ends: ``chat`` and scripts work side by side, and the unlocked store
lives no longer than the chat the person started.
"""

import shlex
import sys

from twisted.internet import defer, stdio
from twisted.protocols.basic import LineReceiver

from securechat.client import daemon_client
from securechat.client.daemon import Daemon
from securechat.client.methods import as_command_failed
from securechat.client.render import format_history, format_message, safe, terminal_width
from securechat.client.rpc import EXIT_UNREACHABLE, CommandFailed, DaemonConnection
from securechat.client.unlock import read_password

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
    def __init__(self):
        self._daemon = None
        self._peer = None
        self._answers = defer.DeferredQueue()
        self._verifying = False
        self._showing = defer.DeferredLock()  # one inbox read at a time: each message once
        self.done = defer.Deferred()
        self._io = None

    def call(self, method, **params):
        return self._daemon.call(method, **params)

    def show(self, text):
        if self._io is not None:
            self._io.sendLine(text.encode("utf-8"))

    async def start(self, daemon):
        self._daemon = daemon
        status = await self.call("subscribe")
        me = await self.call("status")
        self._io = ChatInput(self)
        stdio.StandardIO(self._io)
        self.show(f"securechat: {me['user']} (device {me['device']}). /help for help.")
        if status["state"] != "connected":
            self.connection_state(status["state"], me["state_detail"])
        self.show_unread()

    def notified(self, method, params):
        if method == "message":
            self.show_unread()
        elif method == "state":
            self.connection_state(params["state"], params["detail"])
        elif method == "verify.show":
            self.show(params["text"])

    def handle_line(self, line):
        if not line:
            return
        if self._verifying:
            self._answers.put(line)
            return
        d = defer.ensureDeferred(self._dispatch(line))
        d.addErrback(self._report)

    def connection_state(self, state, detail):
        """Say each change of the connection (not each attempt: ``connecting``)."""
        if state != "connecting":
            self.show(f"* {state}: {detail}")

    def _report(self, failure):
        error = failure.value
        if isinstance(error, CommandFailed):
            self.show(f"! {safe(error)}")
        else:
            self.show(f"! unexpected error: {safe(repr(error))}")

    async def _dispatch(self, line):
        if not line.startswith("/"):
            if self._peer is None:
                self.show("! choose whom to talk to first: /msg USER or /room ROOM")
            elif self._peer.startswith("#"):
                await self.call("say", room=self._peer[1:], text=line)
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
        result = await self.call("send", user=user, text=text)
        if result["notice"]:
            self.show(f"! {result['notice']}")

    async def do_room(self, rest):
        room, _, text = rest.partition(" ")
        if not room:
            self.show("! usage: /room ROOM [TEXT]")
            return
        self._peer = "#" + room
        self.show(f"talking in {room}")
        if text:
            await self.call("say", room=room, text=text)

    async def do_create(self, rest):
        await self.call("rooms.create", room=rest)
        self.show(f"created {rest}")

    async def do_join(self, rest):
        result = await self.call("join", room=rest)
        self.show(f"joined {rest}: " + ", ".join(map(safe, result["members"])))

    async def do_leave(self, rest):
        await self.call("leave", room=rest)
        self.show(f"left {rest}")

    async def do_history(self, rest):
        for record in (await self.call("history", room=rest))["messages"]:
            self.show(format_history(record, terminal_width(sys.stdout)))

    async def do_invite(self, rest):
        await self._moderate("invite", rest)

    async def do_kick(self, rest):
        await self._moderate("kick", rest)

    async def do_unban(self, rest):
        await self._moderate("unban", rest)

    async def _moderate(self, action, rest):
        room, _, user = rest.partition(" ")
        self.show((await self.call(action, room=room, user=user.strip()))["text"])

    async def do_broadcast(self, rest):
        await self.call("broadcast", text=rest)

    async def do_rooms(self, rest):
        rooms = (await self.call("rooms.list"))["rooms"]
        self.show("rooms: " + (", ".join(map(safe, rooms)) if rooms else "(none)"))

    async def do_who(self, rest):
        members = (await self.call("members", room=rest))["members"]
        for user, devices in members.items():
            self.show(f"  {safe(user)}: {', '.join(map(safe, devices)) or '(no device)'}")

    async def do_fingerprint(self, rest):
        result = await self.call("fingerprint")
        self.show(f"{result['user']}: {result['fingerprint']}")

    async def do_trust(self, rest):
        result = await self.call("trust", user=rest)
        self.show(f"accepted {rest}'s new key" if result["accepted"]
                  else f"{rest}'s key has not changed")

    async def do_verify(self, rest):
        """The daemon runs the exchange (its steps arrive as ``verify.show``); the answer
        to its question is the next line typed."""
        user = shlex.split(rest)[0] if rest else None
        if not user:
            self.show("! usage: /verify USER")
            return
        self._verifying = True
        try:
            question = await self.call("verify", user=user)
            self.show("Do they match? [y/N]")
            answer = await self._answers.get()
            await self.call("verify.confirm", verification=question["verification"],
                            match=answer.lower() in ("y", "yes"))
        finally:
            self._verifying = False

    def show_unread(self):
        """Show every stored message not shown yet (received now or by another command)."""
        d = self._showing.run(lambda: defer.ensureDeferred(self._show_unread()))
        d.addErrback(self._report)

    async def _show_unread(self):
        while True:
            page = await self.call("inbox")
            for record in page["messages"]:
                self.show(format_message(record, terminal_width(sys.stdout)))
            if not page["more"]:
                return

    def quit(self):
        if not self.done.called:
            self.done.callback(0)

    def daemon_lost(self):
        if not self.done.called:
            self.show("! the daemon stopped: the chat ends")
            self.done.callback(EXIT_UNREACHABLE)


async def run_chat(reactor, settings):
    """Chat through the running daemon, or through one started here for the chat's time."""
    own = None
    running = DaemonConnection.find(settings.data_dir)
    if running is not None:
        running.close()
    else:
        own = Daemon(reactor, settings, read_password(settings))
        try:
            await own.start()
        except Exception as e:
            await own.stop()
            raise as_command_failed(e) from None
    chat = Chat()
    connection = await daemon_client.connect(reactor, settings.data_dir, chat.notified)
    connection.closed.addCallback(lambda _: chat.daemon_lost())
    try:
        await chat.start(connection)
        return await chat.done
    finally:
        connection.transport.loseConnection()
        if own is not None:
            await own.stop()
