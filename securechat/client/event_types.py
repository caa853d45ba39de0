"""The sealed types that refer to an earlier message, and what their fields must look like
(shared by the receive path, ``inbound``, and their bookkeeping, ``events``)."""

import re

RECEIPT = "receipt"
REACTION = "reaction"
EDIT = "edit"
DELETE = "delete"
CHANGES = (REACTION, EDIT, DELETE)
"""Sealed types that change an earlier message: kept in the history, shown in ``inbox``
as their own types, and allowed in rooms besides ``msg``."""
RECEIPT_KINDS = ("delivered", "read")
MESSAGE_TYPES = ("msg", "file")
"""Sealed types a person writes and reads: each takes receipts, replies, reactions and
its author's delete (and a ``msg`` its author's edit)."""

MID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""A message id as senders make them (``messaging.new_id``), with room to spare."""
MAX_EMOJI_CHARS = 16
"""The longest reaction (an emoji with its modifiers and joiners fits)."""


def valid_mid(value):
    return isinstance(value, str) and MID_RE.fullmatch(value) is not None


def valid_emoji(value):
    return isinstance(value, str) and 0 < len(value) <= MAX_EMOJI_CHARS and value.isprintable()
