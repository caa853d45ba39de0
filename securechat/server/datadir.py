"""The data directory: created private, made private again if found open, and usable."""

import os

from securechat.filemodes import PRIVATE_DIR, tighten
from securechat.server.startup import StartFailed, os_reason


def prepare_data_dir(path):
    """Create ``path`` (0700) or tighten it; a StartFailed naming it if the relay cannot use it."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StartFailed(f"the data directory {path} is not a directory")
    try:
        os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
        tighten(path, PRIVATE_DIR)
    except OSError as e:
        raise StartFailed(f"cannot use the data directory {path}: {os_reason(e)}") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartFailed(f"cannot use the data directory {path}: permission denied")
