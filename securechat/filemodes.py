"""Files only the relay's own user may read: created so, and tightened when found looser.

The data directory holds the relay's private key, its database (password
hashes, who talks to whom) and queued ciphertext.  A mode of 0644 or 0755
there hands all of it to every local user and to every backup that copies
modes, so the relay creates its files 0600 and its directories 0700, and at
each start takes group and other permissions away from what it finds, saying
what it changed.
"""

import os
import stat

from twisted.logger import Logger

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

log = Logger()


def tighten(path, mode):
    """Leave ``path`` no permission beyond ``mode``; warn, naming it, when that changed it.

    A path that does not exist is left alone (the relay creates it later, private).
    """
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if current & ~mode:
        os.chmod(path, current & mode)
        log.warn("{path} was open to other users (mode {old}): changed it to {new}",
                 path=path, old=f"{current:04o}", new=f"{current & mode:04o}")


def create_private_file(path):
    """Create ``path`` empty with mode 0600 unless it exists (whatever the umask)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass
