"""Whom we trust: identity keys pinned on first use, verified by SAS, changes shown loudly.

The server hands out keys, so the server could hand out its own.  Each
contact's Ed25519 identity key is pinned the first time we see it; the
device keys we encrypt to must be listed in a device list signed by that
identity key and self-signed by the device; any other device is left out, with a
warning.  A changed identity key blocks
sending until the user accepts it (``securechat trust USER``) or verifies
it again; a contact that was verified stays blocked until re-verified.
"""

import time

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from securechat import wire


class TrustError(Exception):
    """Keys we will not encrypt to; the message says what happened and what to do."""


class ContactKeyChanged(TrustError):
    def __init__(self, user, old, new, was_verified):
        advice = (f"verify again with 'securechat verify {user}'" if was_verified else
                  f"check with {user}, then 'securechat trust {user}' or 'securechat verify {user}'")
        super().__init__(
            f"!! {user}'s identity key changed (old {short(old)}, new {short(new)}). "
            f"Sending to {user} is blocked: {advice}."
        )
        self.user = user


def short(key_b64):
    raw = wire.b64decode(key_b64)
    return raw.hex()[:16]


def verify(public_key_b64, obj, signature_b64):
    try:
        VerifyKey(wire.b64decode(public_key_b64)).verify(
            wire.canonical_json(obj), wire.b64decode(signature_b64)
        )
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


class Contacts:
    def __init__(self, store, own_user, own_identity_key):
        self._store = store
        self._own_user = own_user
        self._own_identity = own_identity_key

    def record(self, user):
        return self._store.contact(user)

    def pin(self, user, identity_key, sending):
        """TOFU: pin on first sight; on a change remember it, and refuse when ``sending``."""
        if user == self._own_user:
            if identity_key != self._own_identity:
                raise TrustError(f"the server returned another identity key for you ({user})")
            return {"identity_key": identity_key, "verified": True}
        record = self._store.contact(user)
        if record is None:
            record = {"identity_key": identity_key, "verified": False, "pending": None,
                      "first_seen": int(time.time())}
            with self._store.transaction():
                self._store.put_contact(user, record)
            return record
        if identity_key == record["identity_key"]:
            return record
        if record.get("pending") != identity_key:
            record = {**record, "pending": identity_key}
            with self._store.transaction():
                self._store.put_contact(user, record)
        error = ContactKeyChanged(user, record["identity_key"], identity_key, record["verified"])
        if sending:
            raise error
        return {**record, "warning": str(error)}

    def trust(self, user):
        """Accept a changed identity key (unverified); returns the new key, or None when none pends."""
        record = self._store.contact(user)
        if record is None or not record.get("pending"):
            return None
        if record["verified"]:
            raise TrustError(f"{user} was verified, so a new key needs verifying too: "
                             f"run 'securechat verify {user}'")
        updated = {**record, "identity_key": record["pending"], "pending": None, "verified": False}
        with self._store.transaction():
            self._store.put_contact(user, updated)
        return updated["identity_key"]

    def mark_verified(self, user, identity_key):
        record = self._store.contact(user) or {"first_seen": int(time.time())}
        updated = {**record, "identity_key": identity_key, "pending": None, "verified": True}
        with self._store.transaction():
            self._store.put_contact(user, updated)

    def is_verified(self, user):
        return self.standing(user)["verified"]

    def standing(self, user):
        """``{"verified", "warning"}`` of ``user`` as pinned now: verified only while the
        verified key is unchanged; while a changed key waits, unverified with the warning."""
        record = self._store.contact(user)
        if record and record.get("pending"):
            changed = ContactKeyChanged(user, record["identity_key"], record["pending"],
                                        record["verified"])
            return {"verified": False, "warning": str(changed)}
        return {"verified": bool(record and record["verified"]), "warning": None}

    def devices(self, user, entry, sending):
        """The devices of ``user`` (a keys.query entry) we may talk to, and those we may
        not: ``({device: keys}, [warning, ...])``.

        Each trusted device is in the device list signed by the pinned identity key
        (its curve25519 and ed25519 keys: what else a list entry carries, such as
        ``added``, is not compared) and carries a valid self-signature.  Any other
        device is never encrypted to, and is said as a warning, not an error: the
        signed devices stay reachable.  A changed identity key raises when ``sending``.
        """
        record = self.pin(user, entry["identity_key"], sending)
        listing, signature = entry.get("device_list"), entry.get("device_list_signature")
        # On receipt after a key change (never when sending) the new key is checked,
        # and the caller shows the warning with the message.
        identity_key = record["pending"] if "warning" in record else record["identity_key"]
        listed = {}
        if listing and listing.get("user") == user and verify(identity_key, listing,
                                                              signature or ""):
            listed = listing["devices"]
        trusted, warnings = {}, []
        for device, signed in entry["devices"].items():
            keys = signed["device_keys"]
            in_list = listed.get(device) or {}
            ok = (
                keys.get("user") == user and keys.get("device") == device
                and (in_list.get("curve25519"), in_list.get("ed25519")) == (
                    keys["curve25519"], keys["ed25519"])
                and verify(keys["ed25519"], keys, signed["signature"])
            )
            if ok:
                trusted[device] = keys
            else:
                warnings.append(unsigned_warning(user, device))
        return trusted, warnings


def unsigned_warning(user, device):
    return (f"{user}'s device {device} is not signed by {user}'s identity key: "
            "nothing is encrypted to it")
