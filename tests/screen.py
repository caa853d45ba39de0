"""``securechat chat`` in a real pseudo-terminal, read from the screen.

pexpect runs the installed ``securechat`` in a pseudo-terminal of a fixed size; what it
writes goes into a pyte screen, a VT100/xterm emulator, so a test reads the rows a
person would see (and each cell's colours), not the byte stream.  Waiting is polling
with a deadline that lets the reactor run (an in-process relay, ``run_cli``): no sleeps.
"""

import time

import pexpect
import pyte
from twisted.internet import reactor, task

from tests.processes import cli_environment, executable

ROWS, COLUMNS = 24, 100
KEYS = {"enter": "\r", "up": "\x1b[A", "down": "\x1b[B", "left": "\x1b[D", "right": "\x1b[C",
        "home": "\x1b[H", "end": "\x1b[F", "backspace": "\x7f", "ctrl a": "\x01",
        "ctrl e": "\x05", "ctrl u": "\x15", "ctrl w": "\x17", "ctrl c": "\x03", "esc": "\x1b",
        "page up": "\x1b[5~", "page down": "\x1b[6~"}


class ChatScreen:
    """One ``securechat --config CONFIG chat`` process and the screen it draws."""

    def __init__(self, config, password="correct horse battery staple", extra_env=None,
                 rows=ROWS, columns=COLUMNS):
        env = cli_environment(password, {"TERM": "xterm-256color", "TZ": "UTC",
                                         **(extra_env or {})})
        self.screen = pyte.Screen(columns, rows)
        self._stream = pyte.ByteStream(self.screen)
        self.child = pexpect.spawn(executable("securechat"), ["--config", str(config), "chat"],
                                   env=env, dimensions=(rows, columns))
        self.code = None

    def _pump(self):
        """Feed what the process wrote so far into the screen."""
        while not self.child.closed:
            try:
                data = self.child.read_nonblocking(65536, timeout=0)
            except pexpect.TIMEOUT:
                return
            except pexpect.EOF:
                if self.code is None and not self.child.isalive():
                    self.child.close()
                    self.code = self.child.exitstatus
                return
            self._stream.feed(data)

    def rows(self):
        self._pump()
        return [row.rstrip() for row in self.screen.display]

    def text(self):
        return "\n".join(self.rows())

    @property
    def status_row(self):
        return self.rows()[-2]

    @property
    def input_row(self):
        return self.rows()[-1]

    def cells(self):
        """Every non-blank character cell of the screen (pyte Char: data, fg, bg, ...)."""
        self._pump()
        return [char for row in self.screen.buffer.values() for char in row.values()
                if char.data.strip()]

    def type(self, text):
        self.child.send(text.encode("utf-8"))

    def press(self, key):
        self.child.send(KEYS.get(key, key).encode("ascii"))

    def line(self, text):
        """Type ``text`` and Enter."""
        self.type(text)
        self.press("enter")

    async def wait_for(self, check, timeout=60, what=None):
        """Wait until ``check(self)`` is true (a string: until the screen shows it), or
        fail at the deadline with the screen as it was."""
        if isinstance(check, str):
            what, needle = what or check, check
            check = lambda screen: needle in screen.text()  # noqa: E731
        deadline = time.monotonic() + timeout
        while not check(self):
            if self.code is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what or check!r} not on the screen within {timeout} s "
                                     f"(exit code {self.code}):\n{self.text()}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def finish(self, timeout=30):
        """Wait for the process to end; its exit code (killed at the deadline)."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            self._pump()
            if self.code is None and not self.child.isalive():
                self.child.close()
                self.code = self.child.exitstatus
            if time.monotonic() > deadline:
                self.child.terminate(force=True)
                raise AssertionError(f"the chat did not end within {timeout} s:\n{self.text()}")
            await task.deferLater(reactor, 0.05, lambda: None)
        return self.code

    def kill(self):
        if self.child.isalive():
            self.child.terminate(force=True)
