"""The chat's screen (urwid): a title bar, the scrollback, a status line, the input line.

urwid because it runs on the Twisted reactor the daemon client already uses
(``urwid.TwistedEventLoop``): one event loop for the socket and the keyboard, no thread
and no second loop to bridge (prompt_toolkit would need asyncio beside Twisted).

The screen only draws: what a line says, and that network text in it is safe, is
decided in chat_lines; what a key or a typed line does, in chat.py.  The input line is a
widget of its own, so nothing that arrives touches the line being typed.
"""

import os

import urwid
from twisted.internet import defer

MONO, BOLD, STANDOUT, UNDERLINE = "", "bold", "standout", "underline"
PALETTE = [
    # name, colour foreground, colour background, monochrome (NO_COLOR, no colours)
    ("title", "white", "dark blue", STANDOUT),
    ("status", "white", "dark blue", STANDOUT),
    ("time", "dark cyan", "", MONO),
    ("text", "", "", MONO),
    ("own", "light cyan", "", BOLD),
    ("verified", "light green", "", MONO),
    ("unverified", "yellow", "", UNDERLINE),
    ("notice", "light blue", "", MONO),
    ("warning", "light red", "", BOLD),
    ("day", "light magenta", "", MONO),
    ("prompt", "light cyan", "", BOLD),
]

HISTORY = 200
"""Typed lines Up and Down go back through (passwords and answers are never kept)."""

PROMPT = "> "


def monochrome():
    """No colour: NO_COLOR set and not empty (no-color.org); a terminal without colours
    is found by urwid itself (its terminfo entry)."""
    return bool(os.environ.get("NO_COLOR"))


class InputLine(urwid.Edit):
    """The line being typed: the arrows, Home/End, Backspace and Delete of urwid.Edit,
    Ctrl-A/E/U/W as in a shell, Up/Down through the lines typed before, Enter hands the
    line to ``on_enter``.  ``ask`` borrows it for one answer (masked for a password) and
    gives the half-typed line back afterwards."""

    def __init__(self, on_enter):
        super().__init__(("prompt", PROMPT))
        self._on_enter = on_enter
        self.on_edit = lambda text: None  # told the line after each key that changed it
        self._typed = []
        self._back = 0
        self._draft = ""
        self._question = None  # (Deferred, the line and position it replaced)

    def keypress(self, size, key):
        if key == "enter":
            self._enter()
        elif key == "ctrl a":
            self.set_edit_pos(0)
        elif key == "ctrl e":
            self.set_edit_pos(len(self.edit_text))
        elif key == "ctrl u":
            self.set_edit_text(self.edit_text[self.edit_pos:])
            self.set_edit_pos(0)
        elif key == "ctrl w":
            self._delete_word()
        elif key in ("up", "down") and self._question is None:
            self._recall(1 if key == "up" else -1)
        elif key == "esc" and self._question is not None:
            self._answer(None)
        else:
            before = self.edit_text
            unhandled = super().keypress(size, key)
            if self.edit_text != before and self._question is None:
                self.on_edit(self.edit_text)
            return unhandled
        return None

    def _delete_word(self):
        before, after = self.edit_text[:self.edit_pos], self.edit_text[self.edit_pos:]
        kept = before.rstrip()
        kept = kept[:len(kept) - len(kept.split(" ")[-1])] if kept else ""
        self.set_edit_text(kept + after)
        self.set_edit_pos(len(kept))

    def _recall(self, step):
        if self._back == 0:
            self._draft = self.edit_text
        self._back = max(0, min(len(self._typed), self._back + step))
        self.set_edit_text(self._typed[-self._back] if self._back else self._draft)
        self.set_edit_pos(len(self.edit_text))

    def _enter(self):
        text = self.edit_text
        if self._question is not None:
            self._answer(text)
            return
        self.set_edit_text("")
        self._back = 0
        if text.strip():
            self._typed = (self._typed + [text])[-HISTORY:]
            self._on_enter(text)

    def ask(self, prompt, masked=False):
        """A Deferred that fires with the next line typed after ``prompt`` (None: Esc)."""
        if self._question is not None:
            self._answer(None)
        answer = defer.Deferred()
        self._question = (answer, self.edit_text, self.edit_pos)
        self.set_caption(("prompt", prompt))
        self.set_mask("*" if masked else None)
        self.set_edit_text("")
        return answer

    def _answer(self, text):
        answer, draft, position = self._question
        self._question = None
        self.set_caption(("prompt", PROMPT))
        self.set_mask(None)
        self.set_edit_text(draft)
        self.set_edit_pos(position)
        answer.callback(text)


def line_widget(line):
    """A scrollback line: time, mark, and the body in a column of its own (a wrapped or
    continued row of it starts under the body, never at the left edge)."""
    return urwid.Columns([(5, urwid.Text(("time", f"{line.when:%H:%M}"))),
                          ("pack", urwid.Text((line.mark_style, line.mark))),
                          urwid.Text((line.style, line.body))], dividechars=1)


class ChatView:
    """The screen.  ``keys`` gets what the input line does not take (Alt-N, Ctrl-C)."""

    def __init__(self, reactor, on_enter, on_key):
        self._reactor = reactor
        self._on_key = on_key
        self._title = urwid.Text("", wrap="ellipsis")
        self._status = urwid.Text("", wrap="ellipsis")
        self.input = InputLine(on_enter)
        self._lines = urwid.SimpleFocusListWalker([])
        self._scrollback = urwid.ListBox(self._lines)
        self._frame = urwid.Frame(
            self._scrollback, header=urwid.AttrMap(self._title, "title"),
            footer=urwid.Pile([urwid.AttrMap(self._status, "status"), self.input]),
            focus_part="footer")
        screen = urwid.raw_display.Screen()
        if monochrome():
            screen.set_terminal_properties(colors=1)
        self._loop = urwid.MainLoop(
            self._frame, PALETTE, screen=screen, handle_mouse=False,
            event_loop=urwid.TwistedEventLoop(reactor, manage_reactor=False),
            unhandled_input=self._unhandled)
        self._drawing = None
        self._first = None

    def start(self):
        self._loop.start()
        self._loop.screen.tty_signal_keys(intr="undefined")  # Ctrl-C is a key: it quits
        self.changed()

    def stop(self):
        if self._drawing is not None and self._drawing.active():
            self._drawing.cancel()
        if self._loop.screen.started:
            self._loop.stop()

    def changed(self):
        """Draw soon: urwid redraws after a key by itself, not after the network."""
        if self._drawing is None or not self._drawing.active():
            self._drawing = self._reactor.callLater(0, self._draw)

    def _draw(self):
        if self._loop.screen.started:
            self._loop.draw_screen()

    def _unhandled(self, key):
        if key in ("page up", "page down"):
            columns, rows = self._loop.screen.get_cols_rows()
            self._scrollback.keypress((columns, max(rows - 3, 1)), key)
        else:
            self._on_key(key)

    def bars(self, title, status):
        self._title.set_text(title)
        self._status.set_text(status)
        self.changed()

    def show(self, buffer):
        """Show ``buffer`` from its start, scrolled to its end."""
        self._lines[:] = [w for index in range(len(buffer.lines))
                          for w in self._widgets(buffer, index)]
        self._first = buffer.lines[0] if buffer.lines else None
        if self._lines:
            self._lines.set_focus(len(self._lines) - 1)
        self.changed()

    def append(self, buffer, count):
        """The last ``count`` lines of the shown ``buffer`` are new: add them, and follow
        them unless the person scrolled back."""
        if buffer.lines and buffer.lines[0] is not self._first:  # it dropped its oldest
            self.show(buffer)
            return
        following = not self._lines or self._lines.focus == len(self._lines) - 1
        for index in range(max(len(buffer.lines) - count, 0), len(buffer.lines)):
            self._lines.extend(self._widgets(buffer, index))
        if following and self._lines:
            self._lines.set_focus(len(self._lines) - 1)
        self.changed()

    def redraw(self, buffer, indexes):
        """Lines ``indexes`` of the shown ``buffer`` changed in place (a receipt, a reaction,
        an edit): replace their widgets only, so that a person who scrolled back stays
        where they were reading."""
        position, positions = -1, {}
        for index in range(max(indexes) + 1):
            position += 2 if buffer.day_before(index) else 1
            positions[index] = position
        if buffer.lines[0] is not self._first or position >= len(self._lines):
            self.show(buffer)  # not the lines on the screen: draw them all again
            return
        for index in indexes:
            self._lines[positions[index]] = line_widget(buffer.lines[index])
        self.changed()

    @staticmethod
    def _widgets(buffer, index):
        day = buffer.day_before(index)
        line = line_widget(buffer.lines[index])
        return [urwid.Text(("day", day)), line] if day else [line]

    def watch_edits(self, on_edit):
        """``on_edit(text)`` after each key that changed the line being typed (not an
        answer asked for): the chat's typing notices."""
        self.input.on_edit = on_edit

    def ask(self, prompt, masked=False):
        answer = self.input.ask(prompt, masked)
        self.changed()
        return answer
