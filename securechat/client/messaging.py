"""Sending and receiving Olm-encrypted messages, with the ordering that keeps ratchets safe.

Sending: look up and check the recipient's devices, start sessions from
claimed one-time keys where needed, encrypt once per device (each session
saved before anything leaves), send, retry once if the device set changed.

Receiving, one envelope at a time in ``seq`` order: skip ids already seen
(ack again), decrypt, check the inner header against the envelope, then
save the new ratchet state, the plaintext and the seen id in ONE
transaction, and only then acknowledge (in batches, ``acks.AckBatcher``).
``inbound.open_envelope`` does the middle part for 1:1 and room messages
alike, and decides there how far the sender is trusted.  A
crash anywhere leaves either the old state (the envelope is redelivered and
decrypts again) or the new state with the id seen (the redelivery is skipped).
"""

import json
import time

from twisted.internet import defer
from twisted.logger import Logger

from securechat import wire
from securechat.client.acks import AckBatcher
from securechat.client.contacts import TrustError, verify
from securechat.client.event_types import CHANGES, RECEIPT
from securechat.client.inbound import iso, open_envelope
from securechat.client.protocol import RemoteError
from securechat.crypto.device import DecryptError

PAD_BUCKET = 256

BACKLOG_FOR_EPHEMERAL = 32
"""Envelopes waiting to be processed past which a typing notice is dropped unread."""

SHOWN_TYPES = ("msg", "file", "membership", *CHANGES)
"""What a person sees of what arrives (``inbox``, the chat): the rest is control."""


def new_id():
    return wire.pasteable_token(16)


def padded(inner):
    """Inner JSON padded to a multiple of 256 bytes (hides the exact length of short messages)."""
    data = wire.canonical_json({**inner, "pad": ""})
    return wire.canonical_json({**inner, "pad": " " * (-len(data) % PAD_BUCKET)})


_MEMBERSHIP = {"joined": "{user} joined {room}", "left": "{user} left {room}",
               "invited": "{user} was invited to {room}", "kicked": "{user} was kicked from {room}"}
"""How a room's membership notice reads (``by`` the one who did it is added when it was
someone else); an action a newer relay announces reads as ``user action room``."""


class Sender:
    def __init__(self, client):
        self._client = client

    async def send(self, users, payload, fresh=(), retry=True, outbox_id=None, only=None):
        """Encrypt ``payload`` (a dict) for every device of ``users`` and our other devices.

        Devices in ``fresh`` (``(user, device)`` pairs) get a new session even
        if one exists: that is how a wedged session is replaced.  Fires with
        the number of devices it went to: 0 for a note to ourselves when this
        is our only device (then nothing is sent: the relay refuses a send
        for nobody).  A message of the outbox (``outbox_id``) keeps its
        envelopes there, written with the ratchet states that made them.  ``only`` (a set
        of ``(user, device)``) limits it to those devices (an answer meant for one device).
        """
        targets = await self._targets(users)
        if only is not None:
            targets = [t for t in targets if (t[0], t[1]) in only]
        try:
            return await self._send_to(targets, payload, fresh, outbox_id)
        except RemoteError as e:
            if e.code == "devices_mismatch" and retry:
                self._client.forget_devices()
                return await self.send(users, payload, fresh, retry=False, outbox_id=outbox_id,
                                       only=only)
            raise

    async def send_to_own_device(self, device, keys, payload):
        """Encrypt ``payload`` for one device of this account whose ``keys`` the caller
        checked (a device being linked, in no list yet: the relay takes a send that goes
        to the own account only without the coverage rule)."""
        return await self._send_to([(self._client.user, device, keys)], payload)

    async def _send_to(self, targets, payload, fresh=(), outbox_id=None):
        """Encrypt for each ``(user, device, keys)`` of ``targets`` and send; fire with the
        number of devices (0: nothing sent)."""
        client = self._client
        if not targets:
            return 0
        sessions = await self._start_sessions(
            [t for t in targets
             if (t[0], t[1]) in fresh or not client.crypto.has_session(t[2]["curve25519"])])
        envelopes = []
        with client.store.transaction():
            for user, device, keys in targets:
                inner = {**payload, "from": client.user, "from_dev": client.device,
                         "from_ed25519": client.crypto.ed25519, "to": user, "to_dev": device,
                         "to_ed25519": keys["ed25519"]}
                sid, otype, ct = client.crypto.encrypt(user, device, keys["curve25519"],
                                                       padded(inner), sessions.get((user, device)))
                envelopes.append({"id": new_id(), "to": user, "to_dev": device, "kind": "olm",
                                  "sid": sid, "otype": otype, "ct": ct})
            if outbox_id is not None:
                client.outbox.encrypted(outbox_id, envelopes)
        await client.request("send", envelopes=envelopes)
        return len(envelopes)

    async def _targets(self, users):
        client = self._client
        targets = []
        for user in sorted(set(users) | {client.user}):
            devices = await client.trusted_devices(user, sending=True)
            if not devices and user != client.user:
                left_out = "".join(f"; {w}" for w in client.unsigned_warnings([user]))
                raise TrustError(f"{user} has no device to send to yet{left_out}")
            targets.extend((user, device, keys) for device, keys in sorted(devices.items())
                           if (user, device) != (client.user, client.device))
        return targets

    async def _start_sessions(self, targets):
        """Claim one signed one-time key per device without a session."""
        if not targets:
            return {}
        wanted = {}
        for user, device, _ in targets:
            wanted.setdefault(user, []).append(device)
        claimed = (await self._client.request("keys.claim", devices=wanted))["keys"]
        keys = {}
        for user, device, device_keys in targets:
            key = claimed.get(user, {}).get(device)
            if key is None:
                raise TrustError(f"{user}'s device {device} has no one-time key left; try later")
            signed = {"user": user, "device": device, "kid": key["kid"], "key": key["key"],
                      "fallback": key["fallback"]}
            if not verify(device_keys["ed25519"], signed, key["signature"]):
                raise TrustError(f"the one-time key of {user}'s device {device} is not signed by it")
            keys[(user, device)] = key["key"]
        return keys


class Receiver:
    """Processes pushed envelopes strictly one after another."""

    log = Logger()

    def __init__(self, client, on_message, on_control):
        self._client = client
        self._on_message = on_message
        self._on_control = on_control
        self._lock = defer.DeferredLock()
        self.acks = AckBatcher(client.request)
        self.processed = 0
        self._held_rooms = set()

    def idle(self):
        """Nothing is being processed, waiting to be, or waiting for its acknowledgement."""
        return not self._lock.locked and not self._lock.waiting and self.acks.settled()

    def run_in_order(self, work):
        """Run ``work()`` (a coroutine function) after what is being processed: a pushed
        typing notice decrypts in the order its Olm session was used.  None (not run)
        when ``BACKLOG_FOR_EPHEMERAL`` items wait already: a notice that late is
        worthless, and notices must not pile up behind a long backlog."""
        if len(self._lock.waiting) >= BACKLOG_FOR_EPHEMERAL:
            return None
        return self._lock.run(lambda: defer.ensureDeferred(work()))

    def envelope_event(self, frame):
        d = self._lock.run(lambda: defer.ensureDeferred(self._process(frame)))
        d.addErrback(lambda f: self.log.failure("could not process an envelope", f))
        return d

    async def _process(self, frame):
        store = self._client.store
        env = frame["envelope"]
        room = env.get("room") if env["kind"] == "megolm" else None
        try:
            if not store.seen(env["id"]):
                record = await self._open_any(env)
                if record is None or record.get("refused") or await self._heal(record):
                    pass  # (refused: a change someone may not make, said in the log)
                elif record.get("type") in SHOWN_TYPES:
                    self._shown(record)
                elif record.get("type") != RECEIPT:
                    self._on_control(record)
        except Exception:
            # The relay takes a room message's ack as covering the room's earlier
            # ones, so after one could not be stored nothing more of that room is
            # acknowledged: the relay delivers again from it next time.
            if room is not None:
                self._held_rooms.add(room)
            raise
        else:
            if room not in self._held_rooms:
                self.acks.add(env["id"])
        finally:
            self.processed += 1

    async def _open_any(self, env):
        if env["kind"] == "megolm":
            record = await self._client.rooms.open_room_message(env)
            if record is not None and record["error"]:
                await self._client.healer.ask_room_key(env)
            return record
        if env["kind"] == "membership":
            return self._membership(env)
        return await self._open(env)

    async def _heal(self, record):
        """Answer a request of ``healing`` (a message or a room key asked for again), or
        decrypt the kept room messages a room key opens; True when ``record`` was one."""
        if record["error"] or record["room"] is not None:  # a room's own message
            return False
        healer = self._client.healer
        if record["type"] == "retry.request":
            await healer.resend(record)
        elif record["type"] == "room_key.request":
            await healer.reshare_room_key(record)
        elif record["type"] == "retry.none":  # it was a receipt: no message is missing
            envelope_id = record["inner"].get("envelope")
            if isinstance(envelope_id, str):
                with self._client.store.transaction():
                    self._client.store.drop_failed(envelope_id, record["from"],
                                                   record["from_dev"])
        elif record["type"] == "room_key":
            for opened in await healer.retry_pending(record["inner"]["room"]):
                self._shown(opened)
            return False
        else:
            return False
        return True

    def _shown(self, record):
        """A record the person will see was stored: tell the caller, and owe its sender
        the ``delivered`` receipt (``events.Events.owe`` picks what gets one)."""
        self._client.events.owe("delivered", [record])
        self._on_message(record)

    def _membership(self, env):
        """A server notice that someone joined or left a room (the server knows that anyway)."""
        event = env.get("event") or {}
        action, user, by = event.get("action"), event.get("user"), event.get("by")
        text = _MEMBERSHIP.get(action, "{user} {action} {room}").format(
            user=user, action=action, room=env["room"]) + (
            f" by {by}" if by and by != user else "")
        record = {"id": env["id"], "type": "membership", "from": None, "from_dev": None,
                  "room": env["room"], "text": text, "sent_at": iso(env["ts"]),
                  "received_at": iso(env["ts"]), "verified": False, "warning": None,
                  "error": None, "event": event}
        with self._client.store.transaction():
            self._client.store.mark_seen(env["id"], int(time.time() * 1000))
            self._client.store.add_message(env["id"], record)
        if user != self._client.user:
            # Whoever left must not read what follows: the next message re-keys anyway
            # (the member devices differ), dropping the session now makes it certain.
            self._client.rooms.forget_outbound(env["room"])
        return record

    async def _open(self, env):
        """Decrypt and store one Olm envelope; a failure is stored as a readable reason."""
        client = self._client

        def unseal(sender):
            if env["kind"] != "olm":
                raise DecryptError(f"{env['kind']} messages are not supported by this client")
            plaintext = client.crypto.decrypt(env["from"], env["from_dev"], sender["curve25519"],
                                              env["sid"], env["otype"], env["ct"])
            inner = self.check_inner(env, plaintext, sender)
            if sender.get("linking") and not str(inner.get("type", "")).startswith("link."):
                raise DecryptError(f"{env['from_dev']} is a device being linked: only its "
                                   "link messages are read")
            if inner.get("type") == "room_key":
                client.rooms.accept_key(inner, env["from"], env["from_dev"], sender["curve25519"])
            return inner

        record = await open_envelope(client, env, unseal)
        if record["error"] and env["kind"] == "olm":
            await client.healer.ask_again(env)
        return record

    def check_inner(self, env, plaintext, sender):
        """The inner header must repeat who sent it to whom (no forwarding, no key swap)."""
        client = self._client
        try:
            inner = json.loads(plaintext)
        except ValueError:
            raise DecryptError("the decrypted content is not a securechat message") from None
        expected = {"from": env["from"], "from_dev": env["from_dev"],
                    "from_ed25519": sender["ed25519"], "to": client.user,
                    "to_dev": client.device, "to_ed25519": client.crypto.ed25519}
        for key, value in expected.items():
            if inner.get(key) != value:
                raise DecryptError(
                    f"the sealed header's '{key}' does not match the envelope (forwarded or forged)"
                )
        return inner
