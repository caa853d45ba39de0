"""What happens to a message after it is written: receipts, replies, reactions, edits, deletes.

Every one of them is an encrypted message of its own (docs/protocol.rst, "Receipts,
typing, replies, reactions, edits and deletes") naming its target by the sealed ``mid``
the target's author chose, which is the same on every device that holds the message.
The relay routes them like any message and cannot read them.

This device keeps, per ``mid``, one sealed record in its key store
(``KeyStore.message_events``): who wrote the message (the first message seen with that
``mid`` decides, so a later one cannot claim it), where it went (the 1:1 peer, or the
room and, for an own room message, its members then), a short excerpt (for the context
of a reply), and what happened to it since: receipts by reader, reactions by emoji, the
latest edit, the deletion.  ``overlay`` lays that record over a stored message when it
is shown (``inbox``, ``history``, the chat).

Who may do what is checked here, by the receiving client (the relay cannot): only the
author edits or deletes (anything else is refused and said in the log); only a reader
of the message (the 1:1 peer, a member of the room) sends its receipts and reactions.
A receipt is never answered by a receipt, nor are edits, deletes and reactions.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger

from securechat.client.event_types import (
    DELETE, EDIT, MESSAGE_TYPES, RECEIPT, RECEIPT_KINDS, valid_emoji, valid_mid)
from securechat.client.file_messages import file_excerpt
from securechat.client.messaging import new_id
from securechat.wire import BROADCAST_ROOM

MAX_RECEIPT_MIDS = 100
"""Message ids one receipt names at most (more go in further receipts)."""
MAX_REACTIONS = 32
"""Different reactions one message keeps at most (more are ignored)."""
EXCERPT_CHARS = 80
"""How much of a message's text is kept for the context of a reply to it."""


def excerpt(text):
    text = " ".join(str(text or "").split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"


def status_of(state):
    """``sent``, ``delivered`` or ``read`` of an own message (``state`` its record), with
    the counts of a room message (known on the device that sent it, which knows whom it
    went to): ``{"status", "delivered_to", "read_by", "members"}``."""
    receipts = state.get("receipts", {})
    if state.get("room") is None:
        got = receipts.get(state.get("peer"), {})
        status = "read" if "read" in got else "delivered" if "delivered" in got else "sent"
        return {"status": status}
    members = state["members"]
    read = sum(1 for r in receipts.values() if "read" in r)
    delivered = sum(1 for r in receipts.values() if "delivered" in r or "read" in r)
    status = ("read" if members and read >= len(members) else
              "delivered" if members and delivered >= len(members) else "sent")
    return {"status": status, "delivered_to": delivered, "read_by": read,
            "members": len(members)}


class Events:
    """The per-message records of one client, and the receipts it owes (batched)."""

    log = Logger()

    def __init__(self, client, clock, delay=0.2):
        self._client = client
        self._clock = clock
        self._delay = delay
        self._owed = {}  # (kind, user) -> [mids] not sent yet
        self._flush_call = None
        self.listeners = []
        """Callables told ``(mid, public fields)`` when an own message's receipts change
        (the daemon tells its subscribers: the chat updates the line's mark)."""

    @property
    def _store(self):
        return self._client.store

    @property
    def _me(self):
        return self._client.user

    # -- the record of a message -----------------------------------------------------

    def state(self, mid):
        return self._store.message_events(mid) if valid_mid(mid) else None

    def written(self, mid, author, text, room=None, peer=None, members=None,
                envelope_id=None, file=None):
        """A message was stored (``envelope_id``: its record's) or sent, inside its
        transaction: note who wrote it and where it went (``file``: a file message's
        summary; such a message is quoted as ``[file] NAME``, cannot be edited, and a
        delete drops its key), unless a message with this ``mid`` was seen before (it
        keeps it)."""
        if not valid_mid(mid) or self._store.message_events(mid) is not None:
            return
        record = {"author": author, "room": room, "peer": peer,
                  "excerpt": excerpt(text if file is None else file_excerpt(file))}
        if file is not None:
            record["file"] = file["id"]
        if members is not None:
            record["members"] = sorted(members)
        if envelope_id is not None:
            record["envelope"] = envelope_id
        self._store.put_message_events(mid, record)

    def overlay(self, record):
        """``record`` (a stored message) with what happened to it since: ``edited`` (the
        text replaced by the latest edit), ``deleted`` (the text gone), ``reactions``
        (``{emoji: count}``), ``in_reply_to`` (the author and excerpt of the message it
        answers, when this device holds it) and, for an own message, its ``status``."""
        if record.get("type") not in MESSAGE_TYPES or record.get("error"):
            return record
        state = self.state(record.get("mid"))
        shown = dict(record)
        reply_to = record.get("reply_to")
        if valid_mid(reply_to):
            target = self.state(reply_to)
            if target is not None:
                shown["in_reply_to"] = {"from": target["author"], "text": target["excerpt"]}
        if state is None or state.get("author") != record.get("from"):
            return shown
        if state.get("deleted"):
            shown.update(text=None, deleted=True)
            shown.pop("file", None)
        elif state.get("edit"):
            shown.update(text=state["edit"]["text"], edited=True)
        reactions = {emoji: len(users) for emoji, users in state.get("reactions", {}).items()
                     if users}
        if reactions:
            shown["reactions"] = reactions
        if record.get("from") == self._me and state.get("peer") != self._me and (
                state.get("room") is None or "members" in state):
            shown.update(status_of(state))
        return shown

    # -- what arrives --------------------------------------------------------------------

    def received(self, record):
        """Apply an arrived change or receipt (inside its transaction); False when it is
        refused (then it is not kept: said in the log)."""
        inner = record["inner"]
        kind = record["type"]
        if kind == RECEIPT:
            self._receipt(record["from"], inner)
            return False
        target = inner.get("target")
        state = self.state(target)
        sender = record["from"]
        if state is None:
            self.log.warn("ignored a {kind} from {user} of a message this device does not "
                          "hold ({mid!r:.70})", kind=kind, user=sender, mid=target)
            return False
        if kind in (EDIT, DELETE) and state["author"] != sender:
            self.log.warn("REFUSED: {user} tried to {kind} a message {author} wrote ({mid}); "
                          "only its author can", user=sender, kind=kind,
                          author=state["author"], mid=target)
            return False
        if kind == EDIT and state.get("file"):
            self.log.warn("REFUSED: {user} tried to edit a file ({mid}); a file cannot be "
                          "edited", user=sender, mid=target)
            return False
        if state.get("room") != record.get("room") or (
                record.get("room") is None and sender not in (self._me, state["peer"])):
            self.log.warn("REFUSED: a {kind} from {user} of a message not in that "
                          "conversation ({mid})", kind=kind, user=sender, mid=target)
            return False
        if kind == EDIT:
            self._edit(state, inner)
        elif kind == DELETE:  # what it said goes from the history and from this record
            state.update(deleted=inner.get("ts") or True, excerpt="(deleted)")
            state.pop("edit", None)
            self._store.forget_text(target, state.get("envelope"))
            if state.get("file"):  # its key goes: 'files get' cannot fetch it any more
                self._store.drop_received_file(state["file"])
        elif not self._reaction(state, sender, inner):
            return False
        self._store.put_message_events(target, state)
        return True

    def _edit(self, state, inner):
        text = inner.get("body")
        at = inner.get("ts") if isinstance(inner.get("ts"), int) else 0
        if isinstance(text, str) and at >= (state.get("edit") or {}).get("at", 0):
            state["edit"] = {"text": text, "at": at}
            state["excerpt"] = excerpt(text)

    def _reaction(self, state, sender, inner):
        emoji = inner.get("emoji")
        if not valid_emoji(emoji):
            self.log.warn("ignored a reaction from {user} that is no emoji", user=sender)
            return False
        reactions = state.setdefault("reactions", {})
        users = set(reactions.get(emoji, ()))
        if inner.get("remove") is True:
            users.discard(sender)
        elif emoji in reactions or len(reactions) < MAX_REACTIONS:
            users.add(sender)
        reactions[emoji] = sorted(users)
        if not users:
            del reactions[emoji]
        return True

    def _receipt(self, sender, inner):
        """Someone's device stored (``delivered``) or showed (``read``) own messages."""
        kind, mids = inner.get("kind"), inner.get("mids")
        if kind not in RECEIPT_KINDS or not isinstance(mids, list) or sender == self._me:
            return
        if kind == "read" and not self._client.settings.send_read_receipts:
            return  # who sends none sees none
        at = inner.get("ts") if isinstance(inner.get("ts"), int) else int(time.time() * 1000)
        for mid in mids[:MAX_RECEIPT_MIDS]:
            state = self.state(mid)
            if state is None or state["author"] != self._me:
                continue
            readers = [state.get("peer")] if state.get("room") is None else state.get(
                "members", ())
            if sender not in readers:  # a room message another device sent: not known
                continue
            got = state.setdefault("receipts", {}).setdefault(sender, {})
            if kind in got:
                continue
            got[kind] = at
            self._store.put_message_events(mid, state)
            fields = status_of(state)
            for listener in self.listeners:
                listener(mid, fields)

    # -- receipts this device owes --------------------------------------------------

    def owe(self, kind, records):
        """Note the receipts of ``records`` (messages stored or shown here) to their
        senders; sent in one receipt per sender after ``delay`` (or ``flush``).  Own
        messages, undecryptable ones, broadcasts and anything but a message (a text or a
        file) get none; ``read`` ones none when ``send_read_receipts`` is off."""
        if kind == "read" and not self._client.settings.send_read_receipts:
            return
        for record in records:
            if (record.get("type") not in MESSAGE_TYPES or record.get("error")
                    or record.get("outgoing")
                    or record.get("from") in (None, self._me)
                    or record.get("room") == BROADCAST_ROOM or not valid_mid(record.get("mid"))):
                continue
            self._owed.setdefault((kind, record["from"]), []).append(record["mid"])
        if self._owed and self._flush_call is None:
            self._flush_call = self._clock.callLater(self._delay, self._flush_later)

    def _flush_later(self):
        self._flush_call = None
        self.flush().addErrback(lambda f: self.log.failure("sending receipts failed", f))

    def flush(self):
        """Put every receipt owed in the outbox and send it now (what cannot go now goes
        after the reconnect); a Deferred that fires when they were handed over."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        owed, self._owed = self._owed, {}
        client, entries = self._client, []
        for (kind, user), mids in sorted(owed.items()):
            for start in range(0, len(mids), MAX_RECEIPT_MIDS):
                entries.append(client.outbox.add(
                    {"type": RECEIPT, "mid": new_id(), "room": None, "kind": kind,
                     "mids": mids[start:start + MAX_RECEIPT_MIDS],
                     "ts": int(time.time() * 1000), "peer": user}, to=user))
        return defer.DeferredList([defer.ensureDeferred(self._send(entry)) for entry in entries])

    async def _send(self, entry):
        try:
            await self._client.deliver(entry)
        except Exception as e:  # a lost connection keeps it in the outbox
            self.log.info("a receipt waits in the outbox ({error})", error=str(e))
