"""A file transfer's progress bar: on a terminal's stderr only, with its rate and the time left.

Drawn on one line with ``\\r``, at most ``REDRAWS_PER_SECOND`` times a second
(a fast transfer does not spend its time drawing), and ended with a newline.
On anything but a terminal it draws nothing: a script's stderr gets no bar.
Standard library only (the daemon path of the CLI draws it).
"""

import sys
import time

REDRAWS_PER_SECOND = 8
BAR_WIDTH = 24
MIB = 1024 * 1024


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(done, total, rate):
    """The bar's text: ``[#####-----]  45%  9.0/20.0 MiB  8.5 MiB/s  ETA 0:00:01``
    (``rate``: bytes a second)."""
    share = done / total if total else 1.0
    filled = int(share * BAR_WIDTH)
    eta = _clock((total - done) / rate) if rate > 0 else "-:--:--"
    return (f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {share:4.0%}  "
            f"{done / MIB:.1f}/{total / MIB:.1f} MiB  {rate / MIB:.1f} MiB/s  ETA {eta}")


def status_text(done, total):
    """A transfer as the chat's status line shows it: ``file 45% 9.0/20.0 MiB``."""
    share = done / total if total else 1.0
    return f"file {share:.0%} {done / MIB:.1f}/{total / MIB:.1f} MiB"


class ProgressBar:
    """``bar(done, total)`` redraws; ``bar(None, total)`` ends the line.  The rate counts
    from the first call, so a resumed transfer's rate is that of what it moves now."""

    def __init__(self, stream=None, clock=time.monotonic):
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._enabled = self._stream.isatty()
        self._started = None  # (time, bytes done) at the first call
        self._drawn_at = None
        self._drawn = False

    def __call__(self, done, total):
        if not self._enabled:
            return
        now = self._clock()
        if done is None:
            if self._drawn:
                self._stream.write("\n")
                self._stream.flush()
            self._started, self._drawn = None, False
            return
        if self._started is None:
            self._started = (now, done)
        if (self._drawn_at is not None and now - self._drawn_at < 1 / REDRAWS_PER_SECOND
                and done < total):
            return
        self._drawn_at, self._drawn = now, True
        start_time, start_done = self._started
        elapsed = now - start_time
        text = describe(done, total, (done - start_done) / elapsed if elapsed > 0 else 0.0)
        self._stream.write("\r" + text)
        self._stream.flush()
