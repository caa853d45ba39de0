"""The chat's typing notices: who is typing where (the status line says it), and when to
tell the other side that this person types."""

from securechat.client.render import safe

SHOWN_FOR = 6
"""Seconds "bob is typing…" stays without a new notice (a lost "stop" does not leave it)."""
TYPING_EVERY = 3
"""Seconds between two "start" notices while this person keeps typing."""
IDLE_AFTER = 5
"""Seconds without a key after which this person counts as no longer typing ("stop")."""


class TypingShown:
    """Who is typing in which conversation, each for ``SHOWN_FOR`` seconds after their last
    notice; ``changed()`` redraws the status line."""

    def __init__(self, clock, changed):
        self._clock = clock
        self._changed = changed
        self._typing = {}  # (kind, name) -> {user: the call that ends it}

    def notice(self, user, room, state):
        if not isinstance(user, str) or room is not None and not isinstance(room, str):
            return
        where = ("room", room) if room else ("user", user)
        users = self._typing.setdefault(where, {})
        ending = users.pop(user, None)
        if ending is not None and ending.active():
            ending.cancel()
        if state == "start":
            users[user] = self._clock.callLater(SHOWN_FOR, self.notice, user, room, "stop")
        if not users:
            del self._typing[where]
        if ending is not None or state == "start":
            self._changed()

    def text(self, kind, name):
        """``bob is typing…`` (``bob, carol are typing…``) for the conversation shown."""
        users = sorted(self._typing.get((kind, name), ()))
        if not users:
            return ""
        return f"{', '.join(map(safe, users))} {'is' if len(users) == 1 else 'are'} typing…"


class TypingSent:
    """Turns the input line's edits into notices: ``start`` when a message is being typed
    (again every ``TYPING_EVERY`` seconds), ``stop`` when the line is emptied, sent, or
    left alone for ``IDLE_AFTER`` seconds.  ``send(state, buffer)`` sends one;
    ``current()`` is the buffer typed in."""

    def __init__(self, clock, send, current):
        self._clock = clock
        self._send = send
        self._current = current
        self._to = None  # the buffer told "start", until it is told "stop"
        self._sent_at = None
        self._idle = None

    def edited(self, text):
        buffer = self._current()
        if not text.strip() or text.startswith("/") and not text.startswith("//"):
            self.stopped()
            return
        if buffer is not self._to:
            self.stopped()
        now = self._clock.seconds()
        if self._to is None or now - self._sent_at >= TYPING_EVERY:
            self._to, self._sent_at = buffer, now
            self._send("start", buffer)
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self._clock.callLater(IDLE_AFTER, self.stopped)

    def stopped(self):
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._to is not None:
            buffer, self._to = self._to, None
            self._send("stop", buffer)
