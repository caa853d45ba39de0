"""Room messaging on the client: one Megolm ciphertext per message, keys shared over Olm.

Before each message the sender asks the server who is in the room and which
devices each member has (those of the member's signed device list), checks
every member device against the pinned identities, and lets
``RoomCrypto.outbound`` decide whether the Megolm session must be replaced
(the member devices changed, 100 messages, 7 days).  Devices that have not
received the current session key get it as an Olm-encrypted ``room_key``
message first; then the one ciphertext goes to ``room.send`` and the server
fans it out.  A received room message is opened by ``inbound.open_envelope``,
as a 1:1 message is: one trust decision for both.
"""

import json
import time

from securechat import wire
from securechat.client.contacts import unsigned_warning
from securechat.client.event_types import CHANGES
from securechat.client.inbound import open_envelope
from securechat.client.messaging import new_id, padded
from securechat.crypto.device import DecryptError
from securechat.crypto.group import RoomCrypto
from securechat.crypto.passwords import room_password_secret
from securechat.client.deferreds import returns_deferred

ROOM_TYPES = ("file", *CHANGES)
"""Sealed types a room message keeps besides ``msg`` (anything else is shown as one)."""


MODERATION = {
    "invite": ("room.invite", "{user} is now in {room}"),
    "kick": ("room.kick", "{user} was removed from {room} and is banned from it until its "
                          "owner or an admin lifts the ban (unban {room} {user})"),
    "ban": ("room.kick", "{user} is not in {room} and is now banned from it until its owner "
                         "or an admin lifts the ban (unban {room} {user})"),
    "unban": ("room.unban", "lifted the ban of {user} from {room}: {user} may join again"),
}
"""What the owner and admins do to a member: the op, and the line that says it is done
(``ban``: what a kick of a user who is not a member did)."""

ROOM_MODES = {
    "open": (False, "{room} is open: anyone may join (with its password, if it has one)"),
    "invite-only": (True, "{room} is invite-only: only the owner's and admins' invitations "
                          "add members"),
}
"""A room's modes by name: ``room.mode``'s ``invite_only``, and the line that says it."""


class RoomClient:
    def __init__(self, client):
        self._client = client
        self.left_out = {}
        """room -> the warnings of member devices the last message there was not
        encrypted to (not signed by their account key)."""

    @property
    def _crypto(self):
        return RoomCrypto(self._client.store)

    # -- membership -------------------------------------------------------------

    @returns_deferred
    async def create(self, room, password=None):
        return await self._client.request("room.create", room=room,
                                          password=self._password(room, password))

    @returns_deferred
    async def join(self, room, password=None):
        return await self._client.request("room.join", room=room,
                                          password=self._password(room, password))

    @returns_deferred
    async def leave(self, room):
        result = await self._client.request("room.leave", room=room)
        self.forget_outbound(room)
        return result

    @returns_deferred
    async def moderate(self, action, room, user):
        """Invite, kick (which bans) or unban ``user``; fire with the line saying it is done."""
        op, done = MODERATION[action]
        result = await self._client.request(op, room=room, user=user)
        if result.get("removed") is False:
            done = MODERATION["ban"][1]
        return done.format(room=room, user=user)

    @returns_deferred
    async def bans(self, room):
        """Every ban of a room (for its owner and admins), read a page at a time."""
        bans, after = [], None
        while True:
            page = await self._client.request("room.bans", room=room, after=after)
            bans.extend(page["bans"])
            if not page["more"] or not page["bans"]:
                return bans
            after = page["bans"][-1]["user"]

    @returns_deferred
    async def set_mode(self, room, mode):
        """Make a room this user owns open or invite-only (a name of ``ROOM_MODES``)."""
        invite_only, done = ROOM_MODES[mode]
        await self._client.request("room.mode", room=room, invite_only=invite_only)
        return done.format(room=room)

    def forget_outbound(self, room):
        self._crypto.forget_outbound(room)

    def accept_key(self, inner, sender, sender_device, sender_curve):
        """A room key arrived over Olm (called inside that message's transaction)."""
        room = inner.get("room")
        if not isinstance(room, str) or not isinstance(inner.get("session_key"), str):
            raise DecryptError("a malformed room key")
        self._crypto.add_inbound(room, sender, sender_device, sender_curve, inner["session_key"],
                                 exported=inner.get("exported") is True)

    def reshare_key(self, room, session_id, user, device):
        """This device's room key for a member device that lost it (``healing``), or None."""
        return self._crypto.reshare_key(room, session_id, user, device,
                                        self._client.crypto.curve25519)

    def _password(self, room, password):
        if password is None:
            return None
        return wire.b64encode(room_password_secret(password, room))

    # -- sending ------------------------------------------------------------------

    @returns_deferred
    async def say(self, room, text, reply_to=None):
        """Keep the message in the outbox, then send it; fire with the message id
        (``session.Queued`` when there is no connection to take it now)."""
        payload = {"type": "msg", "body": text}
        if reply_to is not None:
            payload["reply_to"] = reply_to
        return await self.send_event(room, payload)

    @returns_deferred
    async def send_event(self, room, payload):
        """Send ``payload`` (a message, or a change of one: ``events``) to ``room`` through
        the outbox; fire with its message id."""
        client = self._client
        mid = new_id()
        inner = {**payload, "mid": mid, "room": room, "from": client.user,
                 "from_dev": client.device, "ts": int(time.time() * 1000)}
        await client.deliver(client.outbox.add(inner, room=room))
        return mid

    async def send_queued(self, room, inner, entry_id):
        """Encrypt once, share the key where needed, send; fire with the message id.

        The ciphertext is written to the outbox entry ``entry_id`` with the
        advanced Megolm session, so a resend after a lost answer sends the
        same envelope id.
        """
        client = self._client
        members = (await client.request("room.members", room=room))["members"]
        devices, self.left_out[room] = {}, []
        for user, current in members.items():
            devices.update({(user, device): keys for device, keys in
                            (await self._member_devices(room, user, current)).items()})
        devices.pop((client.user, client.device), None)
        crypto = self._crypto
        session, meta, rotated = crypto.outbound(room, set(devices))
        key = crypto.key_for_sharing(session)
        if rotated:
            # Keep the key for ourselves too, so this device can read its own messages
            # in the room's history.
            with client.store.transaction():
                crypto.add_inbound(room, client.user, client.device, client.crypto.curve25519, key)
        shared = {tuple(d) for d in meta["shared_with"]}
        unserved = sorted({user for user, device in devices if (user, device) not in shared})
        if unserved:
            await client.sender.send(unserved, {
                "type": "room_key", "mid": new_id(), "room": room,
                "ts": int(time.time() * 1000), "session_key": key})
        with client.store.transaction():
            session_id, ct = crypto.encrypt(room, session, meta, padded(inner),
                                            [list(d) for d in devices])
            envelope = {"room": room, "id": new_id(), "kind": "megolm", "sid": session_id,
                        "ct": wire.pad_b64(ct)}
            client.outbox.encrypted(entry_id, [envelope], members=sorted(
                user for user in members if user != client.user))
        await client.request("room.send", **envelope)
        return inner["mid"]

    async def _member_devices(self, room, user, current):
        """The checked keys of ``current``, the devices the relay lists for member ``user``:
        exactly those, so a device removed from its account drops out of the room's
        device set (and the session rotates) even while the keys.query answer kept for
        this connection still holds it.  An answer that differs from ``current`` is asked
        again once (a device was added or removed since).  A device not signed by the
        member's account key is left out, said in ``left_out``."""
        client = self._client
        trusted = await client.trusted_devices(user, sending=True)
        if set(trusted) != set(current):
            client.forget_devices(user)
            trusted = await client.trusted_devices(user, sending=True)
        self.left_out[room].extend(unsigned_warning(user, device)
                                   for device in sorted(set(current) - set(trusted)))
        return {device: trusted[device] for device in current if device in trusted}

    # -- reading history ------------------------------------------------------------

    @returns_deferred
    async def history(self, room, limit=100):
        """The room's newest ``limit`` stored messages, decrypted where this device has the keys.

        The relay cuts a page of large messages short (at about 1 MiB), so this
        pages back with ``before`` until it has ``limit`` or the history ends.
        """
        client = self._client
        entries, before = [], {}
        while len(entries) < limit:
            page = await client.request("room.history", room=room,
                                        limit=min(limit - len(entries), wire.HISTORY_PAGE_MAX),
                                        **before)
            if not page["messages"]:
                break
            entries[:0] = page["messages"]
            before = {"before": page["messages"][0]["pos"]}
        records = []
        for entry in entries:
            env = entry["envelope"]
            if env["kind"] == "membership":
                continue
            records.append(await self.open_room_message(env, for_history=True))
        return records

    @returns_deferred
    async def open_room_message(self, env, for_history=False, replaces=None):
        """Decrypt one Megolm envelope into a message record (or one with an ``error``);
        ``replaces``: the envelope id of an error record this one takes the place of."""
        def unseal(sender):
            plaintext = self._crypto.decrypt(
                env["room"], env["from"], env["from_dev"], sender["curve25519"], env["sid"],
                env["id"], env["ct"], for_history=for_history)
            if plaintext is None:
                return None
            # A room carries chat messages, files and changes of messages only: whatever
            # else its sealed type says (a room key, a verification step), it is shown as
            # a message.
            inner = check_room_inner(env, plaintext)
            return {**inner, "type": inner.get("type") if inner.get("type") in ROOM_TYPES
                    else "msg"}

        return await open_envelope(self._client, env, unseal, keep=not for_history,
                                   replaces=replaces)


def check_room_inner(env, plaintext):
    """The sealed header must name the room and sender the envelope claims."""
    try:
        inner = json.loads(plaintext)
    except ValueError:
        raise DecryptError("the decrypted content is not a securechat message") from None
    for key in ("room", "from", "from_dev"):
        if inner.get(key) != env.get(key):
            raise DecryptError(f"the sealed header's '{key}' does not match the envelope (forged)")
    return inner
