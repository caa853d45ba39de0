"""Sessions that heal: what could not be decrypted is asked for again, and answered.

A device whose key store went back in time (a backup restored, a crash before
the store was written) holds older Olm and Megolm state than its peers:
their next messages fail to decrypt.  Instead of leaving an error until the
person happens to reply:

* 1:1: the receiver starts a fresh Olm session with the sender's device at
  once (a claimed one-time key) and sends it, on that session, a
  ``retry.request`` naming the envelope id.  The sender finds the message in
  its key store (``sent``, indexed by envelope id), checks that the asking
  device was that envelope's recipient, and sends the message again on the
  newest session with that device (the fresh one), marked ``resent``.  The
  receiver shows it marked re-sent and drops the error record it replaces.
  Only messages accepted within ``[client] resend_days`` are sent again.
* Rooms: the receiver keeps the room envelope (sealed, ``PENDING_ROOM_MESSAGES``
  at most) and asks the sender's device with a ``room_key.request`` naming the
  room and session id.  The sender gives the key again (``room_key`` with
  ``exported``) only when the session is its current one for the room, the
  device was given it (and from which index: it gets no more than before),
  and the device is still a member.  When a room key arrives, the kept
  envelopes of that room are decrypted again from the local store (not
  re-fetched from the relay: its history may be gone or off) and the readable
  record replaces the error.

Both requests and answers travel as ordinary Olm messages: the relay sees
envelopes as always.  Each side is rate-limited (``RequestLimiter``): one
request per (device, envelope or session) and ``PER_MINUTE`` a minute per
device, asked or answered, so two broken peers cannot keep each other busy.
An answer goes only to a device the record names, encrypted to that device's
keys as pinned (``contacts``: a changed identity key is never used silently).
"""

import collections
import datetime
import time

from twisted.logger import Logger

from securechat.client.messaging import new_id
from securechat.client.outbox import resend_window_ms
from securechat.client.protocol import RemoteError

PER_MINUTE = 5
"""Requests asked of, or answered for, one peer device in a minute (each way)."""
FRESH_SESSION_INTERVAL = 60
"""Seconds after a fresh Olm session with a device before another one is started: the
requests of one burst of failures all ride the first."""
TRACKED = 1024
"""(device, item) pairs and devices each limiter remembers (the oldest are forgotten)."""
PENDING_ROOM_MESSAGES = 64
"""Undecryptable room envelopes kept for a key that may come (the newest)."""
PENDING_KEY = "pending_room_messages"


def first_written(sent):
    """When (ms) a sent message was first written: a re-sent one keeps its time, so it
    takes its place in the conversation (its record keeps the time as ISO text)."""
    when = datetime.datetime.fromisoformat(sent["sent_at"].replace("Z", "+00:00"))
    return int(when.timestamp() * 1000)


class RequestLimiter:
    """At most one request per (peer device, item) and ``per_minute`` per peer device.

    Memory is bounded: ``tracked`` pairs and ``tracked`` devices (least recently used
    forgotten first; a forgotten pair may be asked once more, a minute later at best).
    ``clock`` gives seconds (the reactor's, or a ``task.Clock`` in tests).
    """

    def __init__(self, clock, per_minute=PER_MINUTE, tracked=TRACKED):
        self._clock = clock
        self._per_minute = per_minute
        self._tracked = tracked
        self._items = collections.OrderedDict()
        self._recent = collections.OrderedDict()  # peer -> deque of times (seconds)

    def allow(self, peer, item):
        """True (and counted) when a request for ``item`` to or from ``peer`` may go."""
        if (peer, item) in self._items:
            return False
        now = self._clock()
        times = self._recent.pop(peer, None) or collections.deque(maxlen=self._per_minute)
        while times and times[0] <= now - 60:
            times.popleft()
        self._recent[peer] = times
        self._trim(self._recent)
        if len(times) >= self._per_minute:
            return False
        times.append(now)
        self._items[(peer, item)] = None
        self._trim(self._items)
        return True

    def _trim(self, table):
        while len(table) > self._tracked:
            table.popitem(last=False)


class Healer:
    log = Logger()

    def __init__(self, client, clock):
        self._client = client
        self._clock = clock
        self._asking = RequestLimiter(clock)
        self._answering = RequestLimiter(clock)
        self._fresh_at = collections.OrderedDict()  # peer device -> when a session was started

    # -- 1:1: the side that could not decrypt --------------------------------------------

    async def ask_again(self, env):
        """An Olm envelope from another user failed: ask its sender's device to send it again,
        on a fresh session (one per device and ``FRESH_SESSION_INTERVAL``)."""
        peer = (env["from"], env["from_dev"])
        if env["from"] == self._client.user or not self._asking.allow(peer, env["id"]):
            return
        now = self._clock()
        fresh = now - self._fresh_at.get(peer, -FRESH_SESSION_INTERVAL) >= FRESH_SESSION_INTERVAL
        if fresh:
            self._fresh_at.pop(peer, None)
            self._fresh_at[peer] = now
            while len(self._fresh_at) > TRACKED:
                self._fresh_at.popitem(last=False)
        await self._tell(peer, {"type": "retry.request", "envelope": env["id"]},
                         fresh={peer} if fresh else ())

    # -- 1:1: the side that sent ----------------------------------------------------------

    async def resend(self, record):
        """A ``retry.request`` arrived: send the named message again to the asking device if
        it was that envelope's recipient, within ``resend_days``, once per (device,
        envelope)."""
        client = self._client
        peer = (record["from"], record["from_dev"])
        envelope_id = (record.get("inner") or {}).get("envelope")
        if not isinstance(envelope_id, str) or not self._answering.allow(peer, envelope_id):
            return
        found = client.store.sent_by_envelope(envelope_id)
        if found is None and client.store.sent_a_receipt(envelope_id):
            await self._tell(peer, {"type": "retry.none", "envelope": envelope_id})
            return
        if found is None:
            self.log.info("{peer} asked again for an envelope this device did not send or no "
                          "longer keeps", peer=peer)
            return
        sent, at = found
        if sent.get("type", "msg") != "msg":  # a file: its key is not kept to send again
            self.log.info("{peer} asked again for a file message: not sent again (send the "
                          "file again)", peer=peer)
            return
        if list(peer) != sent.get("to_devices", {}).get(envelope_id):
            self.log.warn("{peer} asked for a message sent to another device: refused",
                          peer=peer)
            return
        if at < time.time() * 1000 - resend_window_ms(client.settings):
            self.log.info("{peer} asked for a message older than resend_days: refused",
                          peer=peer)
            return
        resent_to = sent.get("resent_to", [])
        if envelope_id in resent_to:
            return
        if not await self._tell(peer, {"type": "msg", "mid": sent["mid"],
                                       "ts": first_written(sent), "body": sent["text"],
                                       "resent": True, "resent_of": envelope_id}):
            return
        with client.store.transaction():
            client.store.update_sent(sent["mid"], {**sent, "resent_to": resent_to + [envelope_id]})

    # -- rooms ----------------------------------------------------------------------------

    async def ask_room_key(self, env):
        """A room envelope failed: keep it, and ask its sender's device for the session key."""
        if env["from"] == self._client.user and env["from_dev"] == self._client.device:
            return
        self._keep_pending(env)
        peer = (env["from"], env["from_dev"])
        if self._asking.allow(peer, (env["room"], env["sid"])):
            await self._tell(peer, {"type": "room_key.request", "room": env["room"],
                                    "session_id": env["sid"]})

    async def reshare_room_key(self, record):
        """A ``room_key.request`` arrived: give the key again to a device that had it and is
        still a member of the room (``RoomCrypto.reshare_key``)."""
        client = self._client
        peer = (record["from"], record["from_dev"])
        inner = record.get("inner") or {}
        room, session_id = inner.get("room"), inner.get("session_id")
        if not (isinstance(room, str) and isinstance(session_id, str)
                and self._answering.allow(peer, (room, session_id))):
            return
        try:
            members = (await client.request("room.members", room=room))["members"]
        except RemoteError as e:
            self.log.info("not giving a room key again: {error}", error=e)
            return
        if peer[1] not in members.get(peer[0], ()):
            self.log.warn("{peer} asked for a key of {room} it is not a member device of",
                          peer=peer, room=room)
            return
        key = client.rooms.reshare_key(room, session_id, *peer)
        if key is None:
            self.log.info("{peer} asked for a room key this device cannot give again", peer=peer)
            return
        await self._tell(peer, {"type": "room_key", "room": room, "session_key": key,
                                "exported": True})

    def _keep_pending(self, env):
        store = self._client.store
        with store.transaction():
            pending = [e for e in store.secret(PENDING_KEY) or [] if e["id"] != env["id"]]
            store.set_secret(PENDING_KEY, (pending + [env])[-PENDING_ROOM_MESSAGES:])

    async def retry_pending(self, room):
        """A key of ``room`` arrived: decrypt again the kept envelopes of that room; those
        that open are stored in place of their error records and no longer kept; fire with
        their records."""
        store = self._client.store
        opened, records = set(), []
        for env in store.secret(PENDING_KEY) or []:
            if env["room"] != room:
                continue
            record = await self._client.rooms.open_room_message(env, replaces=env["id"])
            if record is None or not record["error"]:
                opened.add(env["id"])
                records.extend([record] if record else [])
        if opened:
            with store.transaction():
                store.set_secret(PENDING_KEY, [e for e in store.secret(PENDING_KEY) or []
                                               if e["id"] not in opened])
        return records

    # -- sending ----------------------------------------------------------------------------

    async def _tell(self, peer, payload, fresh=()):
        """An encrypted control (or re-sent message) to one device of a peer; a failure is
        logged (the person is told nothing: the error record already says it failed);
        True when it went."""
        try:
            devices = await self._client.sender.send(
                [peer[0]], {"mid": new_id(), "room": None, "ts": int(time.time() * 1000),
                            **payload}, fresh=fresh, only={peer})
        except Exception as e:  # noqa: BLE001 (best effort: whatever failed, the record stays)
            self.log.info("could not send {type} to {peer}: {error}", type=payload["type"],
                          peer=peer, error=e)
            return False
        return devices > 0  # 0: not a device of theirs this client trusts
