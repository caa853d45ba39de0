"""The audit log: what an operator must be able to reconstruct after an incident.

One JSON object a line (``[audit] file``, in the data directory by default):
registrations, failed logins (with the reason and the client's address),
devices added, limits hit, and later admin actions.  Never a message, a key, a
signature, a password or a token: only names, addresses, reasons and times, so
the file can be kept and read without it becoming a secret itself.  It is
rotated by size (``max_bytes``, ``keep`` files), so it cannot fill the disk.

Writes are synchronous and flushed line by line: the events are rare (a
login that failed, a registration), and the ones an attacker could repeat
quickly are the ones the rate limits cap.
"""

import datetime
import json
import os

from twisted.python.logfile import LogFile

from securechat.filemodes import PRIVATE_FILE


class AuditLog:
    def __init__(self, path, max_bytes, keep, clock):
        self._clock = clock
        self._file = LogFile(os.path.basename(path), os.path.dirname(path),
                             rotateLength=max_bytes, maxRotatedFiles=keep,
                             defaultMode=PRIVATE_FILE)

    def record(self, event, **fields):
        """Append ``event`` with ``fields`` (names, addresses, reasons: never a secret)."""
        moment = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc)
        line = json.dumps({"ts": moment.isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"), "event": event, **fields}, ensure_ascii=False, sort_keys=True)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


class NoAuditLog:
    """``[audit] file`` left empty: nothing is recorded."""

    def record(self, event, **fields):
        pass

    def close(self):
        pass


def open_audit_log(config, clock):
    if not config.audit_file:
        return NoAuditLog()
    return AuditLog(config.audit_file, config.audit_max_bytes, config.audit_keep, clock)
