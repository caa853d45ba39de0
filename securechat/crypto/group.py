"""Room encryption with Megolm (vodozemac GroupSession / InboundGroupSession).

Each sending device keeps one outbound session per room and shares its key
(at the current index, so nobody reads what came before) over Olm with
every member device.  The session is replaced when the room's set of member
devices changes (someone who left must not read what follows), after 100
messages and after 7 days.  Megolm itself does not detect replays, so every
decrypted ``(session, index)`` is remembered with the envelope id and a
hash of the ciphertext: the same triple again is a duplicate, the same
index with anything else is an attack (or a sender that lost its state).
"""

import hashlib
import time

import vodozemac

from securechat.crypto.device import DecryptError

ROTATE_AFTER_MESSAGES = 100
ROTATE_AFTER_SECONDS = 7 * 24 * 3600


def _outbound_name(room):
    return f"out:{room}"


def _inbound_name(room, sender_curve, session_id):
    return f"in:{room}:{sender_curve}:{session_id}"


class RoomCrypto:
    def __init__(self, store):
        self._store = store

    # -- sending ------------------------------------------------------------------

    def outbound(self, room, member_devices, now=None):
        """The session to send with: ``(session, meta, rotated)``; a new one when due.

        ``member_devices`` is the set of ``(user, device)`` that must be able
        to read the next message.
        """
        now = now or time.time()
        pickle, meta = self._store.group_session(_outbound_name(room))
        members = sorted([list(m) for m in member_devices])
        if pickle is not None:
            due = (
                meta["members"] != members
                or meta["count"] >= ROTATE_AFTER_MESSAGES
                or now - meta["created"] >= ROTATE_AFTER_SECONDS
            )
            if not due:
                session = vodozemac.GroupSession.from_pickle(pickle, self._store.pickle_key)
                return session, meta, False
        session = vodozemac.GroupSession()
        meta = {"created": now, "count": 0, "members": members, "shared_with": []}
        return session, meta, True

    def key_for_sharing(self, session):
        """The session key at the current index (a new member cannot read earlier messages)."""
        return session.session_key.to_base64()

    def encrypt(self, room, session, meta, plaintext, shared_with):
        """Encrypt one room message; the advanced session is saved before the result is used.

        The meta notes the index each device first got the key at (``shared_at``): a
        device that asks for it again is given it from there, never earlier
        (``reshare_key``).
        """
        shared_at = dict(meta.get("shared_at", {}))
        for user, device in shared_with:
            shared_at.setdefault(f"{user}/{device}", session.message_index)
        message = session.encrypt(plaintext)
        meta = {**meta, "count": meta["count"] + 1, "shared_with": sorted(shared_with),
                "shared_at": shared_at, "session_id": session.session_id}
        with self._store.transaction():
            self._store.put_group_session(
                _outbound_name(room), session.pickle(self._store.pickle_key), meta)
        return session.session_id, message.to_base64()

    def forget_outbound(self, room):
        with self._store.transaction():
            self._store.drop_group_session(_outbound_name(room))

    def reshare_key(self, room, session_id, user, device, own_curve):
        """The key of this device's current session of ``room`` for a member device that
        was given it and lost it, exported at the index it was first given (so it reads
        no earlier message than before); None when the session is not the current one or
        that device never had it."""
        _, meta = self._store.group_session(_outbound_name(room))
        if meta is None or meta.get("session_id") != session_id:
            return None
        index = meta.get("shared_at", {}).get(f"{user}/{device}")
        own, _ = self._store.group_session(_inbound_name(room, own_curve, session_id))
        if index is None or own is None:
            return None
        session = vodozemac.InboundGroupSession.from_pickle(own, self._store.pickle_key)
        return session.export_at(index).to_base64()

    # -- receiving -----------------------------------------------------------------

    def add_inbound(self, room, sender, sender_device, sender_curve, session_key,
                    exported=False):
        """Store a room key received over Olm (call inside the Olm message's transaction);
        ``exported``: a key given again (``reshare_key``), in the exported form."""
        try:
            if exported:
                session = vodozemac.InboundGroupSession.import_session(
                    vodozemac.ExportedSessionKey(session_key))
            else:
                session = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
        except (vodozemac.SessionKeyDecodeException, ValueError) as e:
            raise DecryptError(f"the room key is malformed: {e}") from None
        name = _inbound_name(room, sender_curve, session.session_id)
        existing, _ = self._store.group_session(name)
        if existing is not None:
            old = vodozemac.InboundGroupSession.from_pickle(existing, self._store.pickle_key)
            if old.first_known_index <= session.first_known_index:
                return session.session_id
        self._store.put_group_session(
            name, session.pickle(self._store.pickle_key),
            {"room": room, "sender": sender, "sender_device": sender_device, "seen": {}})
        return session.session_id

    def decrypt(self, room, sender, sender_device, sender_curve, session_id, envelope_id, ct,
                for_history=False):
        """Decrypt a room message (inside a transaction); DecryptError explains a failure.

        Returns the plaintext, or None for a duplicate of a message already
        read.  ``for_history`` re-reads old messages without recording them.
        """
        name = _inbound_name(room, sender_curve, session_id)
        pickle, meta = self._store.group_session(name)
        if pickle is None:
            raise DecryptError("not decryptable on this device (no key for it: sent before you "
                               "joined, or the key has not arrived)")
        if (meta["sender"], meta["sender_device"]) != (sender, sender_device):
            raise DecryptError("the room session belongs to another sender (forged)")
        session = vodozemac.InboundGroupSession.from_pickle(pickle, self._store.pickle_key)
        try:
            message = vodozemac.MegolmMessage.from_base64(ct)
        except (vodozemac.DecodeException, ValueError):
            raise DecryptError("the room message is not a well-formed Megolm message") from None
        index = str(message.message_index())
        digest = hashlib.sha256(ct.encode("ascii")).hexdigest()
        known = meta["seen"].get(index)
        if known is not None and known != [envelope_id, digest]:
            raise DecryptError("a second, different message with an index already used "
                               "(replayed or forged)")
        if known is not None and not for_history:
            return None
        if int(index) < session.first_known_index:
            raise DecryptError("not decryptable on this device (sent before you received the key)")
        try:
            decrypted = session.decrypt(message)
        except vodozemac.MegolmDecryptionException:
            raise DecryptError("the room message fails its authentication (tampered)") from None
        if not for_history:
            meta["seen"][index] = [envelope_id, digest]
            self._store.put_group_session(name, session.pickle(self._store.pickle_key), meta)
        return decrypted.plaintext
