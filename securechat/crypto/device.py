"""One device's identity and its Olm (1:1 double ratchet) sessions, on vodozemac.

Every change of ratchet or account state is written to the key store in
the caller's transaction before the result is used: a message is sent only
after the session that encrypted it is saved (a stale sender state would
re-use a message key), and a decrypted message is acknowledged only after
the session that decrypted it is saved together with the plaintext.
"""

import time

import vodozemac
from nacl.signing import SigningKey

from securechat import wire

MAX_SESSIONS_PER_DEVICE = 5


class DecryptError(Exception):
    """An envelope that cannot be decrypted; ``reason`` says why in plain words."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def b64(vodozemac_b64):
    """vodozemac's unpadded base64 in the padded form the wire uses."""
    return wire.pad_b64(vodozemac_b64)


def unpadded(text):
    return text.rstrip("=")


class DeviceCrypto:
    def __init__(self, store, account, identity):
        self._store = store
        self._account = account
        self._identity = identity

    @classmethod
    def create(cls, store, identity_seed=None):
        """A new device's keys; its account's identity key from ``identity_seed`` (bytes: a
        device of an existing account, recovered) or new (a new account)."""
        identity = SigningKey(identity_seed) if identity_seed else SigningKey.generate()
        crypto = cls(store, vodozemac.Account(), identity)
        with store.transaction():
            store.set_secret("identity_seed", bytes(crypto._identity).hex())
            crypto._save_account()
        return crypto

    @classmethod
    def load(cls, store):
        account = vodozemac.Account.from_pickle(store.meta("account"), store.pickle_key)
        identity = SigningKey(bytes.fromhex(store.secret("identity_seed")))
        return cls(store, account, identity)

    def _save_account(self):
        self._store.set_meta("account", self._account.pickle(self._store.pickle_key))

    # -- identity -------------------------------------------------------------

    @property
    def curve25519(self):
        return b64(self._account.curve25519_key.to_base64())

    @property
    def ed25519(self):
        return b64(self._account.ed25519_key.to_base64())

    @property
    def identity_key(self):
        """The user's Ed25519 identity key (signs device lists; what contacts pin)."""
        return wire.b64encode(bytes(self._identity.verify_key))

    def adopt_identity(self, seed_hex):
        """Hold the account identity key ``seed_hex`` (handed over by a device of the
        account when this one is linked) in place of the one this device made."""
        identity = SigningKey(bytes.fromhex(seed_hex))
        with self._store.transaction():
            self._store.set_secret("identity_seed", bytes(identity).hex())
        self._identity = identity

    @property
    def identity_seed(self):
        """The account identity key's 32-byte seed: handed (as hex) to a device being
        linked, sealed by the recovery key for the relay to keep (a device that holds it
        signs the account's device list)."""
        return bytes(self._identity)

    def sign_as_device(self, obj):
        return b64(self._account.sign(wire.canonical_json(obj)).to_base64())

    def sign_as_user(self, obj):
        return wire.b64encode(self._identity.sign(wire.canonical_json(obj)).signature)

    def device_keys(self, user, device):
        return {"user": user, "device": device, "curve25519": self.curve25519,
                "ed25519": self.ed25519}

    def one_time_keys(self, user, device, count):
        """Generate ``count`` signed one-time keys to publish (saved before they are shown)."""
        with self._store.transaction():
            self._account.generate_one_time_keys(count)
            self._save_account()
        return self._signed(user, device, self._account.one_time_keys, False)

    def fallback_key(self, user, device):
        with self._store.transaction():
            self._account.generate_fallback_key()
            self._save_account()
        return self._signed(user, device, self._account.fallback_key, True)

    def unpublished_keys(self, user, device):
        """Keys generated but not yet acknowledged by the server (re-sent after a lost answer)."""
        return (self._signed(user, device, self._account.one_time_keys, False),
                self._signed(user, device, self._account.fallback_key, True))

    def _signed(self, user, device, keys, fallback):
        result = {}
        for kid, key in keys.items():
            key_b64 = b64(key.to_base64())
            payload = {"user": user, "device": device, "kid": kid, "key": key_b64,
                       "fallback": fallback}
            result[kid] = {"key": key_b64, "signature": self.sign_as_device(payload)}
        return result

    def mark_published(self):
        with self._store.transaction():
            self._account.mark_keys_as_published()
            self._save_account()

    # -- Olm --------------------------------------------------------------------

    def has_session(self, peer_curve):
        return bool(self._store.sessions_with(peer_curve))

    def encrypt(self, peer_user, peer_device, peer_curve, plaintext, one_time_key=None):
        """Encrypt for one device; fire ``(session_id, otype, ct_b64)``; the session is saved first.

        Without a session with that device, ``one_time_key`` (a claimed,
        signature-checked key) starts one.
        """
        rows = self._store.sessions_with(peer_curve)
        if rows and one_time_key is None:
            session = vodozemac.Session.from_pickle(rows[0][1], self._store.pickle_key)
        elif one_time_key is not None:
            session = self._account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_base64(unpadded(peer_curve)),
                vodozemac.Curve25519PublicKey.from_base64(unpadded(one_time_key)),
            )
        else:
            raise ValueError("no Olm session with this device and no one-time key to start one")
        message = session.encrypt(plaintext)
        otype, raw = message.to_parts()
        with self._store.transaction():
            self._save_session(session, peer_user, peer_device, peer_curve)
        return session.session_id, otype, wire.b64encode(raw)

    def decrypt(self, peer_user, peer_device, peer_curve, session_id, otype, ct_b64,
                may_start=True):
        """Decrypt one Olm message; call inside a key store transaction (state is saved in it).
        ``may_start=False``: a message that would start a new session is refused (an
        ephemeral notice must not use up a one-time key)."""
        try:
            raw = wire.b64decode(ct_b64)
            message = vodozemac.AnyOlmMessage.from_parts(otype, raw)
        except (ValueError, vodozemac.DecodeException):
            raise DecryptError("the message is not a well-formed Olm message") from None
        rows = self._store.sessions_with(peer_curve)
        ordered = sorted(rows, key=lambda row: row[0] != session_id)
        prekey = message.to_pre_key() if otype == 0 else None
        for _, pickle in ordered:
            session = vodozemac.Session.from_pickle(pickle, self._store.pickle_key)
            if prekey is not None and not session.session_matches(prekey):
                continue
            try:
                plaintext = session.decrypt(message)
            except vodozemac.OlmDecryptionException:
                continue
            self._save_session(session, peer_user, peer_device, peer_curve)
            return plaintext
        if prekey is None or not may_start:
            raise DecryptError(
                "no session with this device can decrypt it (tampered, replayed or out of sync)"
            )
        try:
            session, plaintext = self._account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(unpadded(peer_curve)), prekey
            )
        except (vodozemac.SessionCreationException, vodozemac.OlmDecryptionException):
            raise DecryptError(
                "it starts a session with a key this device does not have (tampered or replayed)"
            ) from None
        self._save_account()
        self._save_session(session, peer_user, peer_device, peer_curve)
        return plaintext

    def _save_session(self, session, peer_user, peer_device, peer_curve):
        self._store.put_session(session.session_id, peer_user, peer_device, peer_curve,
                                session.pickle(self._store.pickle_key), time.time_ns())
        self._store.forget_sessions_beyond(peer_curve, MAX_SESSIONS_PER_DEVICE)
