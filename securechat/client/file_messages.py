"""The ``file`` message: what a received one must hold, and where its key is kept.

A module of its own, below both the receive path (``inbound``) and the
transfers (``files``): a received ``file`` message is checked here, its
summary (``{"id", "name", "size"}``) goes into the history like any message,
and its descriptor (the key, the stream header and the two hashes) into the
key store's ``received_files`` for ``securechat files get``.  The records of
uploads kept for resuming are bounded here too (``prune_uploads``): the session
prunes them when it opens the key store.
"""

from securechat import wire
from securechat.crypto.device import DecryptError

NAME_MAX = 255
"""Longest file name kept (a file system's usual limit, in characters)."""

_CHECKS = {
    "id": wire.FILE_ID_RE.fullmatch,
    "name": lambda v: 0 < len(v) <= 4 * NAME_MAX,
    "key": lambda v: len(_b64(v)) == 32,
    "header": lambda v: len(_b64(v)) == 24,
    "hash": wire.SHA256_RE.fullmatch,
    "sha256": wire.SHA256_RE.fullmatch,
}
"""Each text field of a file message's ``file`` and its check."""


def _b64(text):
    try:
        return wire.b64decode(text)
    except ValueError:
        return b""


def safe_file_name(name, fallback):
    """A received name as a file name in a directory of our choosing: its last path
    component, control characters replaced, no leading dot or space (no hidden file, no
    ``..``), at most ``NAME_MAX`` characters; ``fallback`` when nothing is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isprintable() else "_" for c in name).lstrip(". ")[:NAME_MAX]
    return name or fallback


def file_message(inner):
    """The ``(summary, descriptor)`` of a received ``file`` message: the summary is what
    ``inbox --json`` shows, the descriptor what ``files get`` needs.  DecryptError (the
    message is shown as one that failed) when a field is missing or malformed."""
    described = inner.get("file")
    if not isinstance(described, dict):
        raise DecryptError("a file message without its 'file'")
    for field, check in _CHECKS.items():
        value = described.get(field)
        if not isinstance(value, str) or not check(value):
            raise DecryptError(f"a file message whose '{field}' is malformed")
    size = described.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 2**50:
        raise DecryptError("a file message whose 'size' is malformed")
    summary = file_summary(described)
    return summary, {**summary, **{field: described[field] for field in _CHECKS}}


def file_summary(described):
    """What the history and ``--json`` show of a file: ``{"id", "name", "size"}`` (never
    its key)."""
    return {"id": described["id"], "name": described["name"], "size": described["size"]}


def file_excerpt(summary):
    """A file message as the context of a reply to it shows it: ``[file] NAME``."""
    return f"[file] {summary['name']}"


def keep_received(store, record, descriptor):
    """Keep a received file's descriptor with who sent it where (inside the receive's
    transaction); the same file received again (another copy) keeps the first."""
    if store.received_file(descriptor["id"]) is None:
        store.put_received_file(descriptor["id"], {
            **descriptor, "from": record["from"], "room": record.get("room"),
            "received_at": record["received_at"], "saved_to": None})


UPLOAD_KEEP_DAYS = 7
"""Days an upload's record is kept for resuming it: a relay drops an unfinished upload
``[files] keep_days`` after it began (7 by default), so an older record resumes nothing."""
MAX_UPLOADS_KEPT = 64
"""Upload records kept at most (the newest): abandoned ones cannot pile up."""
DAY_MS = 24 * 3600 * 1000


def prune_uploads(store, now_ms):
    """Drop (inside the caller's transaction) the records of uploads begun more than
    ``UPLOAD_KEEP_DAYS`` before ``now_ms``, and all but the ``MAX_UPLOADS_KEPT`` newest:
    an abandoned upload (its command never run again) would stay otherwise.  A record
    without its ``begun`` time (kept by a client before it had one) is given ``now_ms``."""
    uploads = store.file_uploads()
    uploads.sort(key=lambda item: item[1].get("begun", now_ms), reverse=True)
    for n, (tag, record) in enumerate(uploads):
        begun = record.get("begun")
        if n >= MAX_UPLOADS_KEPT or (begun is not None
                                     and begun < now_ms - UPLOAD_KEEP_DAYS * DAY_MS):
            store.drop_file_upload(tag)
        elif begun is None:
            store.put_file_upload(tag, {**record, "begun": now_ms})
