"""The chat's conversations: one buffer per peer or room, the current one, unread counts,
and the two bars that show them.  No screen here (chat_view draws), so this is plain
data the tests can check."""

from securechat.client.chat_lines import day_text

MAX_LINES = 2000
"""Lines one buffer keeps (the oldest go first): a chat left open for weeks stays small."""
TRIM_BATCH = 200
"""Lines a buffer may hold past MAX_LINES before it drops its oldest, all at once (the
screen redraws the buffer then, once per batch rather than once per line)."""


class Buffer:
    """The lines of one conversation: ``kind`` is "status" (the chat's own notices),
    "user" or "room"."""

    def __init__(self, kind, name):
        self.kind, self.name = kind, name
        self.lines = []
        self.unread = 0
        self.unread_mids = []  # messages not shown yet: their read receipts wait
        self._ids = set()

    @property
    def title(self):
        return {"status": "(status)", "room": "#" + self.name}.get(self.kind, self.name)

    def _new(self, line):
        if line.id is None:
            return True
        if line.id in self._ids:
            return False
        self._ids.add(line.id)
        return True

    def _trim(self):
        if len(self.lines) > MAX_LINES + TRIM_BATCH:
            del self.lines[:-MAX_LINES]
            self._ids = {line.id for line in self.lines if line.id is not None}

    def add(self, line):
        """Append ``line``; False when it is a message this buffer already shows."""
        if not self._new(line):
            return False
        self.lines.append(line)
        self._trim()
        return True

    def add_history(self, lines):
        """Put earlier lines (a conversation's history) before the ones shown; True when
        any was new."""
        earlier = [line for line in lines if self._new(line)]
        self.lines[:0] = earlier
        self._trim()
        return bool(earlier)

    def day_before(self, index):
        """The separator to show before line ``index``: its day's text where the day
        differs from the line before (and before the first line), else None."""
        day = self.lines[index].when.date()
        if index and self.lines[index - 1].when.date() == day:
            return None
        return day_text(day)


class Buffers:
    """Every open buffer in the order they opened (``/buffer N``, Alt-N) and the current one."""

    def __init__(self):
        self.status = Buffer("status", "")
        self.all = [self.status]
        self.current = self.status

    def find(self, kind, name):
        return next((b for b in self.all if b.kind == kind and b.name == name), None)

    def open(self, kind, name):
        """The buffer of ``name`` and whether it is new."""
        buffer = self.find(kind, name)
        if buffer is not None:
            return buffer, False
        buffer = Buffer(kind, name)
        self.all.append(buffer)
        return buffer, True

    def number(self, n):
        return self.all[n - 1] if 0 < n <= len(self.all) else None

    def select(self, buffer):
        self.current = buffer
        buffer.unread = 0

    def close(self, buffer):
        if buffer is self.status:
            return
        index = self.all.index(buffer)
        self.all.remove(buffer)
        if self.current is buffer:
            self.select(self.all[index - 1])

    def added(self, buffer, counts):
        """A line was added to ``buffer``: a message (``counts``) there is unread unless
        it is the current buffer."""
        if counts and buffer is not self.current:
            buffer.unread += 1

    def status_line(self, state):
        """``[connected] #ops | bob(2) #dev(5)``: the connection, the current buffer, and
        every other buffer with unread messages."""
        unread = " ".join(f"{b.title}({b.unread})" for b in self.all
                          if b.unread and b is not self.current)
        return f"[{state}] {self.current.title}" + (f" | {unread}" if unread else "")

    def title_line(self, me):
        """The top bar: who this is and the buffers with their numbers (Alt-N)."""
        names = " ".join(f"{n}:{b.title}" for n, b in enumerate(self.all, 1))
        return f"securechat {me} | {names}"
