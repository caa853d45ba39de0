"""The CLI's exit codes: one table, read by the code (the constants), the docs and the
man page (``securechat manpage``), so a script, the man page and the program agree.

Standard library only: the daemon path (cli.py, rpc.py) imports it.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_CERTIFICATE = 5
EXIT_NOT_FOUND = 6
EXIT_UNTRUSTED = 7
EXIT_RATE_LIMITED = 8
EXIT_UNAVAILABLE = 9
EXIT_FILE_TOO_LARGE = 10
EXIT_QUOTA = 11
EXIT_FILE_CORRUPT = 12
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a command stopped by Ctrl-C."""

EXIT_OUTPUT_CLOSED = 141
"""128 + SIGPIPE (see closed_output)."""

EXIT_UNKNOWN_USER = EXIT_NOT_FOUND
"""The first kind of "not found" (a user); rooms share the code (see TABLE)."""

TABLE = (
    (EXIT_OK, "done"),
    (EXIT_ERROR, "an error (the message says which)"),
    (EXIT_USAGE, "usage error: a wrong argument, a message too long, no password available, "
                 "a mistyped recovery key"),
    (EXIT_AUTH, "wrong password, or login refused (this device removed from its account "
                "included), or a recovery key refused"),
    (EXIT_UNREACHABLE, "the server cannot be reached (send: the message is kept in the "
                       "outbox and sent later)"),
    (EXIT_CERTIFICATE, "the server's certificate is not the trusted one"),
    (EXIT_NOT_FOUND, "not found: no such user (or one who deleted their account), no such "
                     "room (or you are not in it), or no device waiting to link with a code"),
    (EXIT_UNTRUSTED, "sending blocked by trust: a changed or unsigned key; a verification "
                     "or a device link that did not succeed"),
    (EXIT_RATE_LIMITED, "rate limited: the message says how many seconds to wait"),
    (EXIT_UNAVAILABLE, "the server is unavailable (its database or disk): try again later"),
    (EXIT_FILE_TOO_LARGE, "a file larger than the relay's [files] max_size"),
    (EXIT_QUOTA, "a file the relay refused for your quota ([files] quota) or your number of "
                 "unfinished uploads: wait until recipients fetched earlier files"),
    (EXIT_FILE_CORRUPT, "a file whose download is not what was sent (changed or cut on the "
                        "relay): nothing was written"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_OUTPUT_CLOSED, "its output was closed before it ended (the reader of a pipe, like "
                         "head, stopped reading): nothing more is written, nothing is said"),
)
"""``(code, meaning)`` for every exit code, in order."""
