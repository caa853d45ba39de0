"""The outbox: messages written but not yet accepted by the relay, kept in the key store.

A message enters the outbox before anything else happens to it, sealed like
the history (its recipients and text are as private as a received
message).  When it is encrypted, its envelopes are written to its entry in
the same transaction as the ratchet state that produced them, so the
envelopes that may have left are always the ones kept.  The entry goes
when the relay answers "accepted", and in the same transaction a 1:1
message enters its conversation's history as sent (``sent_record``): once,
however often it was sent again.  If the connection drops first, the
entry stays, and after the reconnect it is sent again with its ORIGINAL
envelope ids: the relay refuses an id it still holds (``duplicate_envelope``,
which means it was accepted before) and a recipient drops an id it has seen,
so a message is never shown twice.  A message written while disconnected
waits in the outbox unencrypted and is encrypted when the connection is back
(the recipient's devices are known only then).

If the recipient's devices changed while a message waited
(``devices_mismatch``), it is encrypted again for the devices there are now.
One send runs at a time, in the order the messages were written.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger

from securechat.client.event_types import CHANGES, MESSAGE_TYPES, RECEIPT
from securechat.client.file_messages import file_summary
from securechat.client.inbound import iso
from securechat.client.messaging import new_id
from securechat.client.protocol import ConnectionClosed, RemoteError

TRANSIENT_REFUSALS = ("rate_limited", "unavailable")
"""Refusals that say "later": a message refused so stays pending (retried after the next
connect) instead of failing."""


def sent_record(client, record):
    """An accepted 1:1 message (a text or a file) as its conversation's history keeps it:
    the fields of a received one (``inbox --json``; a file's ``file`` summary, never its
    key), from this device, plus ``to``, the envelope ids and the device each went to
    (``to_devices``: only such a device is ever sent it again, see ``healing``)."""
    payload = record["payload"]
    envelopes = record["envelopes"] or ()
    kept = {"id": payload["mid"], "type": payload["type"], "mid": payload["mid"],
            "from": client.user, "from_dev": client.device, "to": record["to"], "room": None,
            "text": payload.get("body"), "sent_at": iso(payload["ts"]),
            "accepted_at": iso(int(time.time() * 1000)), "verified": True, "warning": None,
            "error": None, "envelopes": [env["id"] for env in envelopes],
            "to_devices": {env["id"]: [env["to"], env["to_dev"]] for env in envelopes}}
    if payload["type"] == "file":
        kept["file"] = file_summary(payload["file"])
    return kept


def resend_window_ms(settings):
    """How long (ms) an accepted 1:1 message may be sent again (``[client] resend_days``)."""
    return int(settings.resend_days * 24 * 3600 * 1000)


class NotSent(Exception):
    """The connection was not there to take the message: it waits in the outbox."""

    def __init__(self, entry_id, reason):
        super().__init__(reason)
        self.entry_id = entry_id


class Outbox:
    log = Logger()

    def __init__(self, client):
        self._client = client
        self._lock = defer.DeferredLock()
        self._live = set()  # entries a caller is sending itself (a flush leaves them alone)

    @property
    def _store(self):
        return self._client.store

    # -- entries ----------------------------------------------------------------------

    def add(self, payload, to=None, room=None):
        """Keep a message (its inner payload, to a user or a room); its entry id."""
        entry_id = new_id()
        record = {"to": to, "room": room, "payload": payload,
                  "queued_at": int(time.time() * 1000), "envelopes": None, "error": None}
        with self._store.transaction():
            self._store.outbox_add(entry_id, record)
        return entry_id

    def encrypted(self, entry_id, envelopes, members=None):
        """Record what an entry was encrypted to (call inside the encryption's transaction);
        a room message's ``members`` then (whose receipts it waits for: ``events``)."""
        record = self._store.outbox_entry(entry_id)
        extra = {} if members is None else {"members": members}
        self._store.outbox_update(entry_id, {**record, "envelopes": envelopes, **extra})

    def holds(self, entry_id):
        return self._store.outbox_entry(entry_id) is not None

    def error(self, entry_id):
        """Why an entry could not be sent (None while it is pending or once it is sent)."""
        record = self._store.outbox_entry(entry_id)
        return None if record is None else record["error"]

    def entries(self):
        """Every message in the outbox (receipts are not listed), oldest first: id, to, room, text, queued_at (ms),
        encrypted (its envelope ids are fixed), error (None: pending; else why it failed)."""
        return [{"id": entry_id, "to": record["to"], "room": record["room"],
                 "text": record["payload"].get("body"), "queued_at": record["queued_at"],
                 "encrypted": record["envelopes"] is not None, "error": record["error"]}
                for entry_id, record in self._store.outbox_entries()
                if record["payload"].get("type") != RECEIPT]

    def drop(self, entry_id):
        """Remove an entry (a failed one the user gives up on); False when there is none."""
        if not self.holds(entry_id):
            return False
        with self._store.transaction():
            self._store.outbox_remove(entry_id)
        return True

    def _remove(self, entry_id):
        with self._store.transaction():
            self._store.outbox_remove(entry_id)

    def _accepted(self, entry_id):
        """The relay took an entry: it leaves the outbox; a 1:1 message (or file) is kept
        as sent; a message's author is noted, and a change (``events``) applied here too."""
        with self._store.transaction():
            record = self._store.outbox_entry(entry_id)
            if record is not None:
                self._written(record)
            self._store.outbox_remove(entry_id)

    def _written(self, record):
        client, payload = self._client, record["payload"]
        kind = payload.get("type")
        if kind in MESSAGE_TYPES:
            client.events.written(payload["mid"], client.user, payload.get("body"),
                                  record["room"], record["to"], record.get("members"),
                                  file=file_summary(payload["file"]) if kind == "file" else None)
        elif kind in CHANGES:
            client.events.received({"type": kind, "inner": payload, "from": client.user,
                                    "room": record["room"]})
        elif kind == RECEIPT:  # a device that cannot read one is told so (``healing``)
            self._store.add_receipt_envelopes([env["id"] for env in record["envelopes"] or ()],
                                              int(time.time() * 1000))
        if record["room"] is None and kind in MESSAGE_TYPES:
            now = int(time.time() * 1000)
            self._store.add_sent(payload["mid"], record["to"], sent_record(client, record),
                                 now, now - resend_window_ms(client.settings))

    # -- sending ------------------------------------------------------------------------

    async def submit(self, entry_id):
        """Send one entry now for a caller who waits for it; fire with what the send gives
        (devices reached, or a room message's id).  NotSent when the connection is not
        there (the entry stays); any other error removes the entry and is raised: the
        caller reports it, and a script retrying after that must not send twice."""
        self._live.add(entry_id)
        try:
            await self._lock.acquire()
            try:
                result = await self._deliver(entry_id, self._store.outbox_entry(entry_id))
            except (ConnectionClosed, NotSent) as e:
                raise NotSent(entry_id, str(e)) from None
            except BaseException:
                self._remove(entry_id)
                raise
            finally:
                self._lock.release()
        finally:
            self._live.discard(entry_id)
        self._accepted(entry_id)
        return result

    async def flush(self):
        """Send every pending entry, oldest first.  Stops at a lost connection or a
        "try later" refusal (the next connect goes on); an entry refused for good is kept,
        marked with the reason, for the user to see (``securechat outbox``)."""
        await self._lock.acquire()
        try:
            for entry_id, record in self._store.outbox_entries():
                if record["error"] is not None or entry_id in self._live:
                    continue
                if not await self._flush_one(entry_id, record):
                    return
        finally:
            self._lock.release()

    async def _flush_one(self, entry_id, record):
        try:
            await self._deliver(entry_id, record)
        except (ConnectionClosed, NotSent):
            return False
        except RemoteError as e:
            if e.code in TRANSIENT_REFUSALS:
                self.log.warn("the server refused a queued message for now ({code}); it stays "
                              "in the outbox", code=e.code)
                return False
            self._failed(entry_id, record, e.message)
        except Exception as e:  # refused for good here (a blocked key, an unknown user)
            self._failed(entry_id, record, str(e) or type(e).__name__)
        else:
            self._accepted(entry_id)
        return True

    def _failed(self, entry_id, record, reason):
        """Keep a message refused for good, with why (``securechat outbox`` shows it); a
        receipt, which nobody lists or retries, goes."""
        if record["payload"].get("type") == RECEIPT:
            self.log.info("a receipt could not be sent: {reason}", reason=reason)
            self._remove(entry_id)
            return
        self.log.warn("a queued message could not be sent: {reason}", reason=reason)
        with self._store.transaction():
            self._store.outbox_update(entry_id, {**record, "error": reason})

    async def _deliver(self, entry_id, record):
        client = self._client
        if client.state != "connected":
            raise NotSent(entry_id, client.state_detail or "not connected to the server")
        if record["envelopes"] is not None:
            try:
                return await self._transmit(record)
            except RemoteError as e:
                if e.code != "devices_mismatch":
                    raise
                client.forget_devices()  # the devices changed while it waited: encrypt again
        if record["room"] is None:
            return await client.sender.send([record["to"]], record["payload"], outbox_id=entry_id)
        return await client.rooms.send_queued(record["room"], record["payload"], entry_id)

    async def _transmit(self, record):
        """Send an entry's envelopes as they were encrypted (the same ids again)."""
        client, envelopes = self._client, record["envelopes"]
        try:
            if record["room"] is None:
                await client.request("send", envelopes=envelopes)
            else:
                await client.request("room.send", **envelopes[0])
        except RemoteError as e:
            if e.code != "duplicate_envelope":
                raise
            # The relay still holds an envelope with this id: the send whose answer the
            # dropped connection lost was accepted.
        return len(envelopes) if record["room"] is None else record["payload"]["mid"]
