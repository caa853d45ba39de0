"""The one receive path of 1:1 (Olm) and room (Megolm) messages: the trust decision and the record.

``messaging.Receiver`` and ``rooms.RoomClient`` differ only in how they
decrypt; both open an envelope with ``open_envelope``, so whether a message
shows as verified, with a changed-key warning, or as an error is decided in
one place and one order: the sender's device keys are checked first (that
pins the identity key on first sight and notes a change), and only then is
the contact's standing read, so a key change noticed by this very message
already makes it unverified and carries the warning.  A message from another device of
this account (what it sent, 1:1 or in a room) is shown as sent by you (``sent_by_you``).

Crash safety (see messaging's docstring): the decryption runs inside the
store transaction that also marks the envelope seen and stores the message,
so a crash leaves either the old ratchet state (the envelope is delivered
again and decrypts again) or the new one with the envelope seen.
"""

import datetime
import time

from securechat import wire
from securechat.client.contacts import TrustError
from securechat.client.event_types import (
    CHANGES, EDIT, MESSAGE_TYPES, REACTION, RECEIPT, valid_mid)
from securechat.client.file_messages import file_message, keep_received
from securechat.client.protocol import RemoteError
from securechat.client.verification import ANSWERS_A_REQUEST, PendingRequests
from securechat.crypto.device import DecryptError


TEXT_TYPES = ("msg", EDIT)
"""Sealed types whose ``body`` is a text shown as the record's ``text``."""


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def public(record):
    """What the history keeps of a message (without the raw inner header, nor a file's
    key: that goes to the key store's received files)."""
    return {k: v for k, v in record.items() if k not in ("inner", "descriptor")}


async def open_envelope(client, env, unseal, keep=True, replaces=None):
    """Decrypt one envelope into a message record; a failure into a record with an ``error``.

    ``unseal(sender_keys)`` decrypts and checks the sealed content, applying
    what it carries (a room key), inside the store transaction; it returns
    the inner message, or None for a duplicate already recorded (then this
    returns None).  ``keep``: mark the envelope seen and store the message
    (``history`` re-reads old ones and keeps nothing).  A message that takes the place of
    one that failed (``replaces``, its envelope id: a room message decrypted once its key
    came again; or a 1:1 message re-sent, whose sealed ``resent_of`` names it, see
    ``healing``) drops that error record, so it is shown once, readable.
    """
    store = client.store
    received_at = iso(env["ts"])
    base = {"id": env["id"], "from": env["from"], "from_dev": env["from_dev"],
            "room": env.get("room"), "received_at": received_at, "sent_at": received_at,
            "type": "msg", "mid": None, "text": None, "error": None}
    try:
        sender = await client.sender_keys(env["from"], env["from_dev"])
        if sender is None and env["kind"] == "olm":
            sender = client.link_peer(env["from"], env["from_dev"])
        standing = client.contacts.standing(env["from"])
        if sender is None:
            raise DecryptError(f"{env['from']}'s device {env['from_dev']} is not one we trust")
        with store.transaction():
            inner = unseal(sender)
            if inner is None:
                return None
            kind = inner.get("type")
            record = {**base, **standing, "type": kind, "mid": inner.get("mid"),
                      "text": inner.get("body") if kind in TEXT_TYPES else None,
                      "inner": inner, **event_fields(inner)}
            if kind == "file":
                record["file"], record["descriptor"] = file_message(inner)
            if env["from"] == client.user:
                record.update(sent_by_you(client, inner, env.get("room")))
            if isinstance(inner.get("ts"), int):
                record["sent_at"] = iso(inner["ts"])
            if inner.get("resent") is True and env.get("room") is None:
                record["resent"] = True
                replaces = inner.get("resent_of")
            if keep:
                _keep(client, record, replaces)
        return record
    except (DecryptError, TrustError, RemoteError) as e:
        # What failed to open proves nothing about its sender: never verified, but a
        # changed key noticed before the failure is still said.
        record = {**base, "verified": False,
                  "warning": client.contacts.standing(env["from"])["warning"],
                  "error": getattr(e, "reason", None) or str(e)}
        if keep:
            with store.transaction():
                _keep(client, record)
        return record


def sent_by_you(client, inner, room):
    """The fields that show a message from another device of this account as sent by you
    (``outgoing``, and for 1:1 ``to``: the sealed ``peer`` the message was written to;
    this user when a client older than that field sent it).  Only the relay's ``from`` says a message is from this
    account, and ``open_envelope`` opens one only from a device in the list this
    account's identity key signed: that device is ours, so it is verified.  A peer can
    claim nothing here: its ``from`` is its own, and a sealed header naming another
    sender or recipient does not open (``messaging.Receiver.check_inner``)."""
    fields = {"outgoing": True, "verified": True, "warning": None}
    if room is None:
        peer = inner.get("peer", client.user)
        if not (isinstance(peer, str) and wire.USERNAME_RE.fullmatch(peer)):
            raise DecryptError("the sealed 'peer' of a message from your other device is not "
                               "a user name")
        fields["to"] = peer
    return fields


def event_fields(inner):
    """What a sealed message says of another one, as its record keeps it: a reply's
    ``reply_to``; a change's ``target`` (and a reaction's ``emoji`` and ``remove``)."""
    kind = inner.get("type")
    if kind == "msg":
        return {"reply_to": inner["reply_to"]} if valid_mid(inner.get("reply_to")) else {}
    if kind not in CHANGES:
        return {}
    fields = {"target": inner.get("target") if valid_mid(inner.get("target")) else None}
    if kind == REACTION:
        fields.update(emoji=inner.get("emoji"), remove=inner.get("remove") is True)
    return fields


def conversation_of(record):
    """``(room, peer)`` of a message: the room, or the other side of a 1:1 conversation."""
    if record["room"] is not None:
        return record["room"], None
    return None, record.get("to") if record.get("outgoing") else record["from"]


def _keep(client, record, replaces=None):
    """Mark the envelope seen; store it if it is a chat message or a file (not a key or a
    control; a file's key goes to the received files), in place of the error record it
    ``replaces``, and note its author (``events.Events.written``); apply a receipt
    or a change to what it names, and store a change that was not refused; keep it if it
    asks for (or calls off) a
    verification."""
    store = client.store
    store.mark_seen(record["id"], int(time.time() * 1000))
    if record["error"]:
        kept = record["type"] == "msg"
    elif record["type"] in MESSAGE_TYPES:
        if record.get("file") is not None:
            keep_received(store, record, record["descriptor"])
        room, peer = conversation_of(record)
        client.events.written(record["mid"], record["from"], record["text"], room, peer,
                              envelope_id=record["id"], file=record.get("file"))
        kept = True
    elif record["type"] in CHANGES:
        kept = client.events.received(record)
        record["refused"] = not kept
    elif record["type"] == RECEIPT:
        kept = client.events.received(record)
    else:
        kept = False
    if kept:
        if not (isinstance(replaces, str) and not record["error"]
                and store.replace_failed(replaces, public(record))):
            store.add_message(record["id"], public(record))
    elif record["type"] in ANSWERS_A_REQUEST and record["room"] is None:
        PendingRequests(store).note(record)
