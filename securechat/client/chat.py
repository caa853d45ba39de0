"""``securechat chat``: a terminal chat -- buffers per person and room, a status line, an
input line with editing and history (the screen: chat_view; its lines: chat_lines; its
buffers: chat_buffers; its slash commands: chat_commands).

The chat is a client of the daemon, like a script: it talks JSON-RPC on the daemon's
socket and shows its notifications.  With no daemon running it starts one in this
process (unlocking the key store here), which serves the socket to the other commands
until the chat ends: ``chat`` and scripts work side by side, and the unlocked store
lives no longer than the chat the person started.  The daemon reconnects to the relay by
itself and keeps what is sent meanwhile in its outbox; the chat says so.
"""

import logging
import sys

from twisted.internet import defer

from securechat.client import daemon_client
from securechat.client.chat_buffers import Buffers
from securechat.client.chat_commands import SlashCommands
from securechat.client.chat_lines import message_lines, notice, own_line, redraw
from securechat.client.chat_typing import TypingSent, TypingShown
from securechat.client.commands import CHANGES as COMMAND_CHANGES
from securechat.client.commands import (
    ParseStopped, QuietParser, build_parser, next_page, request_for, show_result)
from securechat.client.exit_codes import (
    EXIT_AUTH, EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE)
from securechat.client.event_types import CHANGES
from securechat.client.progress import status_text
from securechat.client.render import safe
from securechat.client.rpc import (
    INVALID_PARAMS, METHOD_NOT_FOUND, CommandFailed, DaemonConnection)

HISTORY_LINES = 50
"""Messages a 1:1 buffer shows from the local store when it opens."""


def needs_password(error):
    """The relay refused a join for want of the room's password."""
    return "needs a password" in str(error)


class Chat:
    """The daemon's notifications into buffers, typed lines into commands."""

    def __init__(self, daemon, me, view_factory, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self._daemon = daemon
        self._clock = clock
        self.me = me
        self.buffers = Buffers()
        self.state = "connecting"
        self.typing = TypingShown(clock, self._bars)
        self._typing_out = TypingSent(clock, self._send_typing, lambda: self.buffers.current)
        self._parser = build_parser(QuietParser)
        self._slash = SlashCommands(self)
        self._showing = defer.DeferredLock()  # one inbox read at a time: each message once
        self._sending = defer.DeferredLock()  # lines leave in the order they were typed
        self.done = defer.Deferred()
        self.removed = None  # why the chat ended, when this device was removed
        self.transfer = None  # (done, total) bytes of the /file being sent, for the status line
        self.view = view_factory(self._typed, self._key)

    def call(self, method, **params):
        return self._daemon.call(method, **params)

    # -- what the screen shows -------------------------------------------------------

    def _bars(self):
        current = self.buffers.current
        typing = self.typing.text(current.kind, current.name)
        transfer = status_text(*self.transfer) if self.transfer else ""
        self.view.bars(self.buffers.title_line(self.me),
                       self.buffers.status_line(self.state)
                       + "".join(f" | {part}" for part in (transfer, typing) if part))

    def add(self, buffer, lines, counts=False):
        """Add ``lines`` to ``buffer`` (a message ``counts`` as unread elsewhere)."""
        new = [line for line in lines if buffer.add(line)]
        if not new:
            return
        self.buffers.added(buffer, counts)
        if buffer is self.buffers.current:
            self.view.append(buffer, len(new))
        self._bars()

    def say(self, text, style="notice"):
        """A line of the chat in the current buffer (a command's output, a notice)."""
        self.add(self.buffers.current, [notice(text, style)])

    def warn(self, text):
        self.say(text, "warning")

    def announce(self, text, style="notice"):
        """A notice for the current buffer and the status buffer (state changes)."""
        self.say(text, style)
        if self.buffers.current is not self.buffers.status:
            self.add(self.buffers.status, [notice(text, style)])

    def switch(self, number):
        buffer = self.buffers.number(number)
        if buffer is None:
            self.warn(f"no buffer {number}: the top line lists them")
            return
        self._select(buffer)

    def _select(self, buffer):
        self.buffers.select(buffer)
        self.view.show(buffer)
        self._bars()
        self._read(buffer)

    def current_room(self):
        current = self.buffers.current
        return current.name if current.kind == "room" else None

    # -- start, notifications, the end -----------------------------------------------

    async def start(self):
        status = await self.call("subscribe")
        me = await self.call("status")
        self.state = status["state"]
        self.view.start()
        self.say(f"securechat: {me['user']} (device {me['device']}). /help for help.")
        if self.state != "connected":
            self.say(f"{self.state}: {me['state_detail']}", "warning")
        self._bars()
        self.view.show(self.buffers.current)
        self.view.watch_edits(self._typing_out.edited)
        self.show_unread()

    def notified(self, method, params):
        if method == "message":
            self.show_unread()
        elif method == "receipt":
            self.update(params.get("mid"), {key: params.get(key) for key in (
                "status", "delivered_to", "read_by", "members")})
        elif method == "files.progress":
            done, total = params.get("done"), params.get("total")
            self.transfer = (done, total) if isinstance(done, int) and isinstance(
                total, int) else None
            self._bars()
        elif method == "typing":
            self.typing.notice(params.get("user"), params.get("room"), params.get("state"))
        elif method == "state":
            self.state_changed(params["state"], params.get("detail"))
        elif method == "verify.show":
            self.say(params["text"])
        elif method == "verify.request":
            user = safe(params.get("user"))
            self.announce(f"{user} (device {safe(params.get('device'))}) asks you to verify: "
                          f"/verify {user}", "warning")

    def state_changed(self, state, detail):
        """Say each change of the connection, not each attempt (``connecting``); this
        device removed from its account ends the chat (nothing can reconnect it)."""
        if state == "connecting" or state == self.state:
            return
        self.state = state
        self.announce(f"{state}: {detail}", "notice" if state == "connected" else "warning")
        if state == "removed":
            self.removed = detail
            self.quit(EXIT_AUTH)

    def show_unread(self):
        """Show every stored message not shown yet (received now or by another command)."""
        d = self._showing.run(lambda: defer.ensureDeferred(self._show_unread()))
        d.addErrback(self._report)

    async def _show_unread(self):
        while True:
            page = await self.call("inbox", read=False)  # read: once a buffer shows it
            for record in page["messages"]:
                self.deliver(record)
            if not page["more"]:
                return

    def deliver(self, record):
        """A message into its buffer (opened for it, with the history before it); a
        membership change into its room's buffer, or the status buffer when none is open
        (one's own /part does not open the room again).  What another device of this
        account sent (``outgoing``) goes to the buffer of whom it was sent to, as this
        person's own line, and is not counted unread."""
        room, outgoing = record.get("room"), bool(record.get("outgoing"))
        kind, name = ("room", room) if room else (
            "user", record.get("to") if outgoing else record.get("from"))
        if record.get("type") in CHANGES:
            self._in_background(self._changed(record.get("target")))
            return
        self.typing.notice(record.get("from"), room, "stop")  # its message came
        lines = message_lines(record, self.me)
        if record.get("type") == "membership":
            self.add(self.buffers.find(kind, name) or self.buffers.status, lines)
            return
        buffer, new = self.buffers.open(kind, name)
        self.add(buffer, lines, counts=not outgoing)
        if not outgoing and record.get("mid"):
            buffer.unread_mids.append(record["mid"])
            if buffer is self.buffers.current:
                self._read(buffer)
        if new and kind == "user":
            self._in_background(self._load_history(buffer))

    def _read(self, buffer):
        """The messages ``buffer`` got while it was not shown are shown now: their read
        receipts go (a daemon that has no ``read`` is left alone)."""
        mids, buffer.unread_mids = buffer.unread_mids, []
        if mids:
            self.call("read", mids=mids).addErrback(lambda failure: None)

    async def _changed(self, mid):
        """A message was edited, deleted or reacted to: its lines show it as it is now."""
        self.update(mid, await self.call("message", mid=mid))

    def update(self, mid, changes):
        """Redraw every line that shows message ``mid`` with ``changes``."""
        if not mid:
            return
        for buffer in self.buffers.all:
            indexes = [index for index, line in enumerate(buffer.lines)
                       if line.record is not None and line.record.get("mid") == mid]
            for index in indexes:
                redraw(buffer.lines[index], changes, self.me)
            if indexes and buffer is self.buffers.current:
                self.view.redraw(buffer, indexes)

    def _key(self, key):
        if key == "ctrl c":
            self.quit(EXIT_INTERRUPTED)
        elif key.startswith("meta ") and key[5:].isdigit():
            self.switch(int(key[5:]) or 10)

    def quit(self, code=0):
        if not self.done.called:
            self.done.callback(code)

    def daemon_lost(self):
        if not self.done.called:
            self.announce("the daemon stopped: the chat ends", "warning")
            self.done.callback(EXIT_UNREACHABLE)

    # -- typed lines -----------------------------------------------------------------

    def _typed(self, line):
        self._typing_out.stopped()
        if line.startswith("/") and not line.startswith("//"):
            work = self._slash.run(line)
        else:
            work = self.send_here(line[1:] if line.startswith("//") else line)
        self._in_background(work)

    def _in_background(self, work):
        defer.ensureDeferred(work).addErrback(self._report)

    def _report(self, failure):
        error = failure.value
        if isinstance(error, CommandFailed):
            self.warn(str(error))
        else:
            self.warn(f"unexpected error: {error!r}")

    async def send_here(self, text, reply_to=None):
        buffer = self.buffers.current
        if buffer is self.buffers.status:
            self.warn("this is the status buffer: /query USER or /join ROOM first")
            return
        await self.send(buffer, text, reply_to)

    def send(self, buffer, text, reply_to=None):
        """Send ``text`` to ``buffer``'s person or room (answering message ``reply_to``)
        and show it there as this person's line; with the relay away it waits in the
        daemon's outbox (shown "queued")."""
        return self._sending.run(
            lambda: defer.ensureDeferred(self._send(buffer, text, reply_to)))

    async def _send(self, buffer, text, reply_to):
        command = "send" if buffer.kind == "user" else "say"
        replying = ["--reply-to", reply_to] if reply_to else []
        try:
            result = await self.command([command, buffer.name, *replying, "--", text],
                                        strict=True, quiet=True)
        except CommandFailed as e:
            if e.exit_code != EXIT_UNREACHABLE:
                raise
            self.add(buffer, [own_line(self.me, text, queued=True, reply_to=reply_to)])
            return
        if result is not None:
            self.add(buffer, [own_line(self.me, text, mid=result.get("id"),
                                       reply_to=reply_to)])

    async def send_file(self, buffer, path):
        """``/file PATH``: ``send-file`` (``say-file`` in a room) through the daemon, how
        far it got in the status line meanwhile (``files.progress``); then the file's own
        line in ``buffer``, whose marks follow its receipts as a message's do."""
        command = "say-file" if buffer.kind == "room" else "send-file"
        try:
            result = await self.command([command, buffer.name, path], quiet=True)
        finally:
            self.transfer = None
            self._bars()
        if result and result.get("file"):
            self.add(buffer, [own_line(self.me, None, mid=result.get("id"),
                                       file=result["file"])])

    def _send_typing(self, state, buffer):
        """Tell ``buffer``'s person or room that this person types (or stopped); a notice
        that cannot go (a limit, no connection) is not worth a line."""
        if buffer.kind in ("user", "room"):
            self.call("typing", state=state, **{buffer.kind: buffer.name}).addErrback(
                lambda failure: None)

    async def command(self, words, password=None, strict=False, into=None, quiet=False):
        """Run a CLI command (``words`` as typed after ``securechat``) through the command
        layer and show what it prints (in the current buffer, or the one ``into()`` opens
        when it succeeded); its result, or None when it could not run (its usage error is
        shown).  ``strict``: its failure is raised, not shown; ``quiet``: a message sent
        is not confirmed (its line in the buffer says it)."""
        args = self._parse(words)
        if args is None:
            return None
        if getattr(args, "password", False) and password is None:
            password = await self.view.ask(f"password for {args.room}: ", masked=True)
            if password is None:
                self.say("cancelled")
                return None
        method, params = request_for(args, lambda wanted: password if wanted else None)
        try:
            while True:
                result = await self.call(method, **params)
                buffer = into() if into else self.buffers.current
                show_result(args, result, out=lambda text: self.add(buffer, [notice(text)]),
                            say_sent=not quiet,
                            warn=lambda text: self.add(buffer, [notice(text, "warning")]))
                if not result.get("more"):
                    if args.command in COMMAND_CHANGES:  # its lines show it at once
                        self._in_background(self._changed(args.id))
                    return result
                params = next_page(params)
        except CommandFailed as e:
            if strict:
                raise
            self.warn(str(e))
            return None

    def _parse(self, words):
        try:
            return self._parser.parse_args(words)
        except ParseStopped as stopped:
            self.say(str(stopped).rstrip("\n"), "warning" if stopped.status else "notice")
            return None

    # -- buffers ---------------------------------------------------------------------

    async def open(self, name, switch):
        """The buffer of a user or (``#name``) a room, opened (with its recent history)
        if it was not; made current if ``switch``."""
        kind = "room" if name.startswith("#") else "user"
        buffer, new = self._opened(kind, name.lstrip("#").lower(), switch)
        if new:
            await self._load_history(buffer)
        return buffer

    def _opened(self, kind, name, switch):
        buffer, new = self.buffers.open(kind, name)
        if switch:
            self._select(buffer)
        else:
            self._bars()
        return buffer, new

    async def join(self, room, options):
        """Join ``room`` and open its buffer; a room with a password asks for it here."""
        opened = []

        def into():
            opened[:] = self._opened("room", room, switch=True)
            return opened[0]

        try:
            await self.command(["join", room, *options], strict=True, into=into)
        except CommandFailed as e:
            if not needs_password(e) or "--password" in options:
                raise
            self.say(f"{room} has a password")
            await self.command(["join", room, "--password", *options], into=into)
        if opened and opened[1]:
            await self._load_history(opened[0])

    async def create(self, room, options):
        """Create ``room`` and open its buffer (its creator is its first member), as
        ``join`` opens the room joined."""
        await self.command(["rooms", "create", room, *options],
                           into=lambda: self._opened("room", room, switch=True)[0])

    async def part(self, room):
        """Leave ``room``: its buffer closes first, so what ``leave`` says shows where
        the person is then."""
        buffer = self.buffers.find("room", room)
        if buffer is not None:
            self.buffers.close(buffer)
            self.view.show(self.buffers.current)
            self._bars()
        await self.command(["leave", room])

    async def _load_history(self, buffer):
        """What the conversation said before: a 1:1 buffer from the local store (the
        last HISTORY_LINES), a room's from the relay.  A daemon without 1:1 history
        shows none."""
        params = ({"user": buffer.name, "last": HISTORY_LINES} if buffer.kind == "user"
                  else {"room": buffer.name})
        try:
            result = await self.call("history", **params)
        except daemon_client.DaemonError as e:
            if e.code in (METHOD_NOT_FOUND, INVALID_PARAMS):
                return
            raise
        lines = [line for record in result["messages"]
                 for line in message_lines(record, self.me)]
        if buffer.add_history(lines) and buffer is self.buffers.current:
            self.view.show(buffer)

    async def verify(self, words):
        """``/verify USER``: the daemon runs the exchange (its steps arrive as
        ``verify.show``); the question is asked in the input line."""
        args = self._parse(words)
        if args is None:
            return
        method, params = request_for(args)
        question = await self.call(method, **params)
        answer = await self.view.ask("Do they match? [y/N] ")
        await self.call("verify.confirm", verification=question["verification"],
                        match=(answer or "").strip().lower() in ("y", "yes"))


class LogLines:
    """Where the chat's log lines go: stderr until the screen is up, then the status
    buffer (the screen owns the terminal)."""

    def __init__(self):
        self.chat = None

    def write(self, text):
        if self.chat is None:
            sys.stderr.write(text)
        elif text.strip():
            self.chat.add(self.chat.buffers.status, [notice(text.rstrip("\n"), "warning")])

    def flush(self):
        if self.chat is None:
            sys.stderr.flush()


async def run_chat(reactor, settings, log_lines):
    """Chat through the running daemon, or through one started here for the chat's time."""
    from securechat.client.chat_view import ChatView
    from securechat.client.daemon import Daemon
    from securechat.client.methods import as_command_failed
    from securechat.client.unlock import read_password

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CommandFailed("securechat chat needs a terminal (scripts: 'securechat daemon' "
                            "and its socket, or send and inbox --json)", EXIT_USAGE)
    urwid_log = logging.getLogger("urwid")  # its errors too: stderr is under the screen
    urwid_log.addHandler(logging.StreamHandler(log_lines))
    urwid_log.propagate = False
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
    connection = await daemon_client.connect(  # notifications start with "subscribe"
        reactor, settings.data_dir, lambda method, params: chat.notified(method, params))
    chat = Chat(connection, settings.username,
                lambda on_enter, on_key: ChatView(reactor, on_enter, on_key), reactor)
    connection.closed.addCallback(lambda _: chat.daemon_lost())
    log_lines.chat = chat
    try:
        await chat.start()
        code = await chat.done
    finally:
        log_lines.chat = None
        chat.view.stop()
        connection.transport.loseConnection()
        if own is not None:
            await own.stop()
    if code == EXIT_UNREACHABLE:
        raise CommandFailed("the daemon stopped: the chat ended", EXIT_UNREACHABLE)
    return code
