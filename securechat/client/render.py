"""What reaches the terminal: every text from the network passes ``safe`` (DESIGN.md, guarantee 8).

A message, a name, a room or a relay's reason is written by someone else, so
it must not be able to move the cursor, recolour the screen, retitle the
window, reorder text (bidi overrides) or start a line of its own: otherwise a
message could draw a line that looks like another message, a verification
state or a prompt.  So every character that is not visible text is shown as
a visible escape, and the lines of a multi-line message after the first are
indented and marked (``CONTINUATION``), so only the client itself ever starts
a line.

The escapes (docs/usage.rst, "What the terminal shows"):

- C0 controls and DEL in caret notation, as ``cat -v`` does: ESC ``^[``,
  CR ``^M``, BEL ``^G``, backspace ``^H``, DEL ``^?``;
- every other invisible or format character as ``<U+XXXX>``: C1 controls
  (U+0080-U+009F), bidi controls (U+202A-202E, U+2066-2069, U+200E/200F,
  U+061C), zero-width and other format characters, line and paragraph
  separators, lone surrogates.

In message text (``lines=True``) a line feed (or CR LF) starts a marked
continuation line, a tab becomes spaces, and the joiners that emoji and some
scripts need (ZWJ, ZWNJ, an emoji flag's tag sequence) stay.  In a name or a
reason (one line) nothing is kept: a line feed is ``^J``, a tab ``^I``, and
anything that ``str.isprintable`` rejects is escaped.

On a terminal, ``fit`` also cuts a line wider than the terminal into marked
rows: a row the terminal wrapped by itself would start unmarked at column 0.

This module imports neither Twisted nor the crypto: what prints a daemon's
answer can use it and still start fast.
"""

import json
import os
import re
import unicodedata

from securechat.client.receipt_marks import status_text

MARK = "  | "
CONTINUATION = "\n" + MARK
"""What starts each further line of a multi-line message: it cannot pass for a message's
``[time]`` header, a ``!!`` warning or a verification state."""

NARROWEST = 10
"""The fewest columns a row is cut to, however narrow the terminal claims to be."""

TAB_STOP = 8

_KEPT_IN_TEXT = {"\u200c", "\u200d"}
"""ZWNJ and ZWJ: invisible, but Persian, Indic scripts and emoji sequences need them, and
they cannot move or hide anything."""

_EMOJI_FLAG_TAGS = re.compile("\U0001F3F4[\U000E0020-\U000E007E]+\U000E007F")
"""A subdivision flag (England, Scotland, Wales): a black flag, tag letters, a cancel tag.
Tag characters elsewhere are invisible text and are escaped."""

_LINE_BREAK = re.compile("\r?\n")


def _escape_char(char):
    code = ord(char)
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def _hidden_in_text(char):
    """In message text: a control, format, separator or surrogate character (not text)."""
    return (unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")
            and char not in _KEPT_IN_TEXT)


def _escape_text_line(line):
    kept = {m.start(): m.end() for m in _EMOJI_FLAG_TAGS.finditer(line)}
    out, i = [], 0
    while i < len(line):
        if i in kept:
            out.append(line[i:kept[i]])
            i = kept[i]
            continue
        char = line[i]
        out.append(_escape_char(char) if char != "\t" and _hidden_in_text(char) else char)
        i += 1
    return "".join(out).expandtabs(TAB_STOP)


def safe(text, lines=False):
    """``text`` made harmless for a terminal (see the module docstring for the escapes).

    ``lines=False`` (names, rooms, reasons): the result is one line.
    ``lines=True`` (the text of a message): each further line starts with
    ``CONTINUATION``.  Anything that is not a string is shown as ``str()`` of it.
    """
    text = text if isinstance(text, str) else str(text)
    if not lines:
        return "".join(c if c.isprintable() else _escape_char(c) for c in text)
    return CONTINUATION.join(_escape_text_line(line) for line in _LINE_BREAK.split(text))


def _columns(char):
    """How many columns a terminal may give ``char``, rounded up where terminals differ
    (East Asian ambiguous width, flag letters, emoji presentation, characters newer than
    this Python's tables): a row is never wider than counted."""
    if char == "\ufe0f":  # emoji presentation: the character before may take two columns
        return 1
    if unicodedata.combining(char) or char in _KEPT_IN_TEXT:
        return 0
    if ("\U0001F1E6" <= char <= "\U0001F1FF"
            or unicodedata.east_asian_width(char) in ("W", "F", "A")
            or unicodedata.category(char) == "Cn"):
        return 2
    return 1


def fit(text, width):
    """``text`` (already safe) with no line wider than ``width`` columns: a longer line is cut
    and its further rows marked like continuation lines.  Left to itself the terminal
    would wrap it, and a wrapped row starts at column 0 unmarked, where padding could put
    a line that passes for another message.  ``width`` None: not a terminal, nothing cut."""
    if not width:
        return text
    lines = []
    for line in text.split("\n"):
        rows, row, used, limit = [], [], 0, max(width, NARROWEST)
        for char in line:
            columns = _columns(char)
            if row and used + columns > limit:
                rows.append("".join(row))
                row, used, limit = [], 0, max(width - len(MARK), NARROWEST)
            row.append(char)
            used += columns
        rows.append("".join(row))
        lines.append(CONTINUATION.join(rows))
    return "\n".join(lines)


def terminal_width(stream):
    """The columns a line printed on ``stream`` may use (one less than the terminal's, so
    no terminal wraps early), or None when ``stream`` is no terminal (a pipe, a file)."""
    try:
        if not stream.isatty():
            return None
        return os.get_terminal_size(stream.fileno()).columns - 1
    except (AttributeError, ValueError, OSError):
        return None


class EscapingStream:
    """A text stream for log lines (stderr): what a line quotes from the network (an
    envelope id, a relay's error) is escaped too; the log's own line breaks (and the tabs
    that indent a traceback, as spaces) stay."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        self._stream.write("\n".join(safe(line, lines=True) for line in text.split("\n")))

    def flush(self):
        self._stream.flush()


# -- messages ---------------------------------------------------------------------------


def format_message(record, width=None):
    """A received message as the terminal shows it: ``[time] sender[ in room] (state): text``
    (an own one ``[time] you -> bob: text`` or ``[time] you in room: text``), after the
    changed-key warning if there is one; no row wider than ``width`` (``fit``)."""
    if record.get("type") == "membership":
        return fit(f"[{safe(record['sent_at'])}] * {safe(record['text'])}", width)
    if record.get("type") == "verify_request":
        who = safe(record["from"])
        return fit(f"[{safe(record['sent_at'])}] {who} asks to verify your keys: "
                   f"run 'securechat verify {who}'", width)
    resent = " (re-sent)" if record.get("resent") else ""
    head = f"[{safe(record['sent_at'])}] {_sender(record)}{resent}"
    lines = []
    if record.get("warning"):
        lines.append(safe(record["warning"]))
    if record.get("error"):
        lines.append(f"{head}: ✗ could not decrypt: {safe(record['error'])}")
    elif record.get("file") and not record.get("deleted"):
        lines.append(f"{head}: {file_line(record['file'], record.get('outgoing'))}"
                     f"{message_marks(record)}")
    elif record.get("type") in CHANGE_WORDS:
        lines.append(f"{head} {change_text(record)}")
    else:
        lines.append(f"{head}: {reply_context(record)}{message_text(record)}"
                     f"{message_marks(record)}")
    return fit("\n".join(lines), width)


def human_size(size):
    """``size`` bytes as a person reads it: ``512 B``, ``1.5 KiB``, ``20.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def file_line(summary, own=False):
    """A file as one line: its name (through ``safe``: it came from the network), its
    size and, unless it is one this person sent (``own``), the command that fetches it."""
    line = f"[file] {safe(summary['name'])} ({human_size(summary['size'])})"
    return line if own else f"{line}: securechat files get {safe(summary['id'])}"


CHANGE_WORDS = {"edit": "edited", "delete": "deleted", "reaction": "reacted"}


def change_text(record):
    """What a change of an earlier message says: ``edited MID: text``, ``deleted MID``,
    ``reacted 👍 to MID`` (``removed the reaction 👍 from MID``)."""
    target = safe(record.get("target"))
    if record["type"] == "edit":
        return f"edited {target}: {safe(record.get('text'), lines=True)}"
    if record["type"] == "delete":
        return f"deleted {target}"
    if record.get("remove"):
        return f"removed the reaction {safe(record.get('emoji'))} from {target}"
    return f"reacted {safe(record.get('emoji'))} to {target}"


def reply_context(record):
    """``(↪ bob: first words) `` before a reply, when the message it answers is known."""
    quoted = record.get("in_reply_to")
    if quoted:
        return f"(↪ {safe(quoted['from'])}: {safe(quoted['text'])}) "
    return "(↪ an earlier message) " if record.get("reply_to") else ""


def message_text(record):
    """A message's text as shown: ``(deleted)`` once its author deleted it."""
    if record.get("deleted"):
        return "(deleted)"
    return safe(record.get("text"), lines=True)


def message_marks(record, receipts=False):
    """What follows a message's text: `` (edited)``, the reactions `` [👍 2]`` (neither
    once it is deleted), and with
    ``receipts`` (the chat) an own message's marks (`` ✓``, `` ✓✓``, `` ✓✓ read``:
    ``receipt_marks.status_text``; the commands print them in ``--json`` only)."""
    deleted = record.get("deleted")
    marks = " (edited)" if record.get("edited") and not deleted else ""
    reactions = {} if deleted else record.get("reactions") or {}  # gone with what they were to
    if reactions:
        marks += " [" + " ".join(f"{safe(emoji)} {count}"
                                 for emoji, count in sorted(reactions.items())) + "]"
    if receipts and record.get("status"):
        marks += " " + status_text(record)
    return marks


def _sender(record):
    """Who wrote a message, as its line starts: ``bob (verified)``, ``bob in ops
    (unverified)``; an own one (``outgoing``: sent from this device or another of this
    account) ``you -> bob`` or ``you in ops``."""
    room = record.get("room")
    if record.get("outgoing"):
        return f"you in {safe(room)}" if room else f"you -> {safe(record.get('to'))}"
    mark = "verified" if record.get("verified") else "unverified"
    where = f" in {safe(room)}" if room else ""
    return f"{safe(record['from'])}{where} ({mark})"


def format_history(record, width=None):
    """A history line: what this device cannot decrypt is said so, not shown as an error."""
    if record.get("error"):
        record = {**record, "error": None, "text": "(not decryptable on this device)"}
    return format_message(record, width)


_SURROGATE = re.compile("[\ud800-\udfff]")


def message_json(record, **extra):
    """A message as one JSON line (``--json``): the exact text, escaped by JSON itself;
    ``extra`` fields follow the message's own; a message sent again after this device
    could not decrypt it (``healing``) has ``"resent": true``; one another device of this
    account sent has ``"outgoing": true`` and, 1:1, ``to`` (whom it was sent to); a file
    (``"type": "file"``) has ``"file": {"id", "name", "size"}``.

    Non-ASCII text stays readable; a lone surrogate (valid in JSON, not in UTF-8) is
    written as its ``\\uXXXX`` escape, which decodes to the same string.
    """
    line = json.dumps({
        "id": record["id"], "type": record.get("type", "msg"), "from": record["from"],
        "from_device": record["from_dev"],
        "room": record.get("room"), "text": record.get("text"), "sent_at": record["sent_at"],
        "verified": bool(record.get("verified")), "error": record.get("error"),
        "warning": record.get("warning"), **({"resent": True} if record.get("resent") else {}),
        **({"file": record["file"]} if record.get("file") else {}),
        "mid": record.get("mid"), **_sent_fields(record),
        **{key: record[key] for key in EVENT_KEYS if key in record}, **extra,
    }, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


EVENT_KEYS = ("reply_to", "in_reply_to", "edited", "deleted", "reactions", "status",
              "delivered_to", "read_by", "members", "target", "emoji", "remove")
"""What ``--json`` says of replies, reactions, edits, deletes and receipts, where a record
has it (docs/usage.rst, "Receipts, typing, replies, reactions, edits and deletes")."""


def _sent_fields(record):
    """``outgoing`` (and, 1:1, ``to``) of a message sent by this account, for ``--json``."""
    if not record.get("outgoing"):
        return {}
    return {"outgoing": True} if record.get("room") else {"outgoing": True,
                                                           "to": record.get("to")}


def history_json(record):
    """A ``history`` message (as the method gives it) as one JSON line: ``inbox --json``'s
    fields, plus ``outgoing`` (an own line) and, for a 1:1 message, ``to``."""
    extra = {"outgoing": bool(record.get("outgoing"))}
    if record.get("room") is None:
        extra["to"] = record.get("to")
    return message_json({**record, "from_dev": record["from_device"]}, **extra)
