"""What one line of the chat's scrollback says: a local time, a mark, a body, a style.

Every text in a line that came from the network passed render.safe here (guarantee 8),
before the screen (chat_view) sees it: names one-line, message text with its further
lines marked.  The screen draws the body in a column of its own, right of the time and
the mark, so neither a long line wrapped by the screen nor a message's further lines
can start where a time or a sender stands.

A message whose text starts with ``/me `` is an action (``/me waves`` from alice shows
as ``* alice waves``): a normal message to every other client, so nothing new travels.
"""

import dataclasses
import datetime

from securechat.client.render import file_line, message_marks, message_text, reply_context, safe

ACTION = "/me "
"""How the text of an action starts (docs/usage.rst, "The chat")."""


@dataclasses.dataclass
class Line:
    """One entry of a buffer.  ``style`` names a palette entry of chat_view; ``id`` is the
    message's id (a message shown twice, from history and live, is kept once)."""

    when: datetime.datetime
    mark: str
    mark_style: str
    body: str
    style: str = "text"
    id: str | None = None
    record: dict | None = None
    """The message this line shows (a receipt, an edit, a reaction redraws it from here)."""


def now():
    return datetime.datetime.now().astimezone()


def local_time(sent_at):
    """An ISO 8601 UTC time (``2026-12-06T17:30:00.000Z``) in this computer's time zone;
    now when the value is no such time (a sender's clock or a relay's field, not ours)."""
    try:
        when = datetime.datetime.fromisoformat(str(sent_at).replace("Z", "+00:00"))
    except ValueError:
        return now()
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone()


def day_text(date):
    """The separator line shown where the day changes: ``--- Monday 7 December 2026 ---``."""
    return f"--- {date:%A} {date.day} {date:%B %Y} ---"


def sender_style(record, me):
    if record.get("outgoing") or record.get("from") == me:
        return "own"
    return "verified" if record.get("verified") else "unverified"


def sender_name(record, me):
    """The sender as shown: a ``?`` after a name says it is not verified (``/verify`` it)."""
    name = safe(record.get("from", ""))
    return name if sender_style(record, me) != "unverified" else name + "?"


def message_lines(record, me):
    """A received (or, from history, sent) message as its lines: the changed-key warning
    first when there is one."""
    when, message_id = local_time(record.get("sent_at")), record.get("id")
    if record.get("type") == "membership":
        return [Line(when, "*", "notice", safe(record.get("text", ""), lines=True), "notice",
                     message_id)]
    if record.get("type") == "verify_request":  # one the daemon could not announce live
        who = safe(record.get("from", ""))
        return [Line(when, "-!-", "warning", f"{who} asks you to verify: /verify {who}",
                     "warning", message_id)]
    lines = []
    if record.get("warning"):
        lines.append(Line(when, "!!", "warning", safe(record["warning"], lines=True), "warning"))
    style, name = sender_style(record, me), sender_name(record, me)
    if record.get("error"):
        lines.append(Line(when, f"<{name}>", style,
                          f"✗ could not decrypt: {safe(record['error'])}", "warning", message_id))
        return lines
    text = record.get("text") or ""
    marks = message_marks(record, receipts=True)
    if record.get("file") and not record.get("deleted"):
        lines.append(Line(when, f"<{name}>", style,
                          file_line(record["file"], style == "own") + marks, "text",
                          message_id, record))
    elif text.startswith(ACTION) and not record.get("deleted"):
        lines.append(Line(when, f"* {name}", style,
                          safe(text[len(ACTION):], lines=True) + marks, "text", message_id,
                          record))
    else:
        lines.append(Line(when, f"<{name}>", style,
                          reply_context(record) + message_text(record) + marks, "text",
                          message_id, record))
    return lines


def redraw(line, changes, me):
    """``line`` showing its message with ``changes`` (an edit, a deletion, reactions,
    receipts) applied."""
    line.record = {**line.record, **changes}
    line.body = message_lines(line.record, me)[-1].body


def own_line(me, text, queued=False, mid=None, reply_to=None, file=None):
    """A line this person just sent (``queued``: kept in the outbox until the reconnect;
    ``mid``: its message id, for its receipts; ``reply_to``: the mid it answers; ``file``:
    the summary of a file sent, shown instead of a text)."""
    record = {"from": me, "outgoing": True, "text": text, "sent_at": now().isoformat(),
              "mid": mid, **({} if queued else {"status": "sent"}),
              **({"reply_to": reply_to} if reply_to else {}),
              **({"type": "file", "file": file} if file else {})}
    line = message_lines(record, me)[0]
    if queued:
        line.body += " (queued: sent after the reconnect)"
    return line


def notice(text, style="notice"):
    """A line of the chat itself (a state change, a command's output, an error): ``-!-``
    before it; each of its rows made safe (what a command prints may quote the network)."""
    rows = "\n".join(safe(row, lines=True) for row in str(text).split("\n"))
    return Line(now(), "!!" if style == "warning" else "-!-", style, rows, style)
