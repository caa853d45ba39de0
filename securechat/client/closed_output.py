"""What a command does when its reader stops reading (``securechat inbox | head -1``).

The next write to standard output raises BrokenPipeError.  That is no error
of the command: it stops at once, says nothing, and exits 141 (128 + SIGPIPE,
what a shell reports for a program that the signal stopped), so a pipeline
with ``pipefail`` sees the same as for any other Unix tool.  Standard output
is pointed at the null device first, so the interpreter's final flush does
not fail again on the closed pipe.

Standard library only: both command-line tools (``securechat``,
``securechat-admin``) use it.
"""

import os
import sys

from securechat.client.exit_codes import EXIT_OUTPUT_CLOSED


def output_closed():
    """Stop writing to the closed standard output; the exit code to end with."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_OUTPUT_CLOSED
