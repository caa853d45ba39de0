"""The process's open-file limit, raised to what the system allows when the relay starts.

Every connection holds a file descriptor, and the usual soft limit of 1,024
let about a thousand half-open connections lock every other client out.  The
hard limit is what the operator (``ulimit -Hn``, systemd's ``LimitNOFILE``)
allows; the soft limit is raised to it, and the result is logged so an
operator sees what the relay can hold.
"""

import resource

from twisted.logger import Logger

UNLIMITED_FALLBACK = 1 << 20
"""Tried when the hard limit is "unlimited" (Linux refuses that for open files; this is
its default ceiling, ``fs.nr_open``)."""

log = Logger()


def raise_open_file_limit():
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("Open-file limit: {soft} (its hard limit)", soft=soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warn("Cannot raise the open-file limit from {soft} to {target}: {error}; "
                 "raise it with ulimit -n or systemd's LimitNOFILE",
                 soft=soft, target=target, error=e)
        return soft
    log.info("Open-file limit raised from {soft} to {target} (its hard limit)",
             soft=soft, target=target)
    return target
