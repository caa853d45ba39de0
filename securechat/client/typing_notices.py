"""Typing notices: "alice is typing…", encrypted, ephemeral, never stored.

A notice is an Olm message to each device of the conversation (a 1:1 peer's, or every
member's in a room) with which this device already has a session: a notice never claims a
one-time key, and one that would start a session is not read (``may_start=False``), so
an ephemeral message can never use up what the stored ones need.  The relay pushes
it to the devices connected now and drops the rest (op ``typing``; docs/protocol.rst).

Each notice advances its Olm chain like a message: a dropped one is a gap the receiver's
ratchet skips, as it skips any message lost in transit.  Decrypting one saves the
ratchet state (in a key store transaction) and stores nothing else: no seen id, no
history, no acknowledgement, no receipt.

``[client] send_typing = no`` sends none (theirs are still shown).
"""

import time

from twisted.logger import Logger

from securechat import wire
from securechat.client.messaging import padded
from securechat.crypto.device import DecryptError

TYPING = "typing"
STATES = ("start", "stop")
SHOWN_FOR = 6
"""Seconds "is typing…" stays without a new notice (the chat sends one every
``chat.TYPING_EVERY`` seconds while its person types)."""


class TypingNotices:
    log = Logger()

    def __init__(self, client):
        self._client = client
        self.listeners = []
        """Callables told ``(user, room, state)`` of each notice read (room None: 1:1)."""

    # -- sending -------------------------------------------------------------------------

    async def send(self, state, user=None, room=None):
        """Tell ``user`` (or the members of ``room``) this person started or stopped
        typing; nothing when ``send_typing`` is off or no device can take it."""
        client = self._client
        if not client.settings.send_typing or state not in STATES:
            return 0
        if room is not None:
            members = (await client.request("room.members", room=room))["members"]
            users = sorted(u for u in members if u != client.user)
        else:
            users = [user] if user != client.user else []
        targets = []
        for name in users:
            devices = await client.trusted_devices(name, sending=True)
            targets.extend((name, device, keys) for device, keys in sorted(devices.items())
                           if client.crypto.has_session(keys["curve25519"]))
        targets = targets[:wire.MAX_TYPING_DEVICES]
        if not targets:
            return 0
        envelopes = []
        with client.store.transaction():
            for name, device, keys in targets:
                inner = {"type": TYPING, "state": state, "room": room,
                         "ts": int(time.time() * 1000), "from": client.user,
                         "from_dev": client.device, "from_ed25519": client.crypto.ed25519,
                         "to": name, "to_dev": device, "to_ed25519": keys["ed25519"]}
                sid, otype, ct = client.crypto.encrypt(name, device, keys["curve25519"],
                                                       padded(inner))
                envelopes.append({"to": name, "to_dev": device, "kind": "olm", "sid": sid,
                                  "otype": otype, "ct": ct})
        await client.request("typing", envelopes=envelopes)
        return len(envelopes)

    # -- receiving -----------------------------------------------------------------------

    def received(self, frame):
        """A pushed ``typing`` event: decrypt it (in the receiver's order, unless a backlog
        waits: then it is dropped) and tell the listeners; anything wrong with it is
        dropped, said at debug level only (a notice is worth nothing once late, and a
        stranger must not fill the log)."""
        d = self._client.receiver.run_in_order(lambda: self._read(frame.get("envelope")))
        if d is not None:  # None: dropped behind a backlog
            d.addErrback(lambda f: self.log.debug("dropped a typing notice: {error}",
                                                  error=f.getErrorMessage()))
        return d

    async def _read(self, env):
        client = self._client
        if not isinstance(env, dict) or env.get("kind") != "olm":
            raise DecryptError("not an Olm typing notice")
        sender = await client.sender_keys(env.get("from"), env.get("from_dev"))
        if sender is None:
            raise DecryptError("from a device that is not trusted")
        with client.store.transaction():
            plaintext = client.crypto.decrypt(env["from"], env["from_dev"], sender["curve25519"],
                                              env["sid"], env["otype"], env["ct"],
                                              may_start=False)
            inner = client.receiver.check_inner(env, plaintext, sender)
        if inner.get("type") != TYPING or inner.get("state") not in STATES:
            raise DecryptError("not a typing notice")
        room = inner.get("room")
        if room is not None and not (isinstance(room, str) and wire.ROOM_RE.fullmatch(room)):
            raise DecryptError("a typing notice naming no room")
        for listener in self.listeners:
            listener(env["from"], room, inner["state"])

