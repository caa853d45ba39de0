"""Everything derived from a user's password, each with its own salt.

The password itself never leaves the machine, and nothing derived from it
that would work again does either.  The client derives with argon2id an
Ed25519 *password key*, salted with the relay's own stable id (as the relay
reports it) and the user name: the same password on two relays gives
unrelated keys, and any spelling of one relay's address (``localhost:6698``,
``127.0.0.1:6698``) the same one.  The relay knows only its public half
(given at registration); a password proof is a signature of a challenge
bound to the TLS session, worthless on any other connection, so an
interceptor learns nothing it could replay on the real relay.  A registered
device logs in by its device key.  The local key store is unlocked by a
different argon2id derivation with a random salt kept in the store.
Knowing one derived value tells nothing about the other.

The *legacy login secret* is what accounts registered before password keys
sent to the relay; it is derived only to move such an account to a password
key, once.
"""

import hashlib

from nacl import pwhash
from nacl.signing import SigningKey

LOGIN_OPS = pwhash.argon2id.OPSLIMIT_INTERACTIVE
LOGIN_MEM = pwhash.argon2id.MEMLIMIT_INTERACTIVE
STORE_OPS = pwhash.argon2id.OPSLIMIT_MODERATE
STORE_MEM = pwhash.argon2id.MEMLIMIT_MODERATE
SALT_BYTES = pwhash.argon2id.SALTBYTES


def _salt(*parts):
    text = "|".join(parts).encode("utf-8")
    return hashlib.sha256(text).digest()[:SALT_BYTES]


def password_key(password, relay_id, user):
    """The account's Ed25519 password key (a ``nacl.signing.SigningKey``); the relay stores
    its public half and checks the password proofs it signs."""
    salt = _salt("securechat-password-key-v1", relay_id, user)
    return SigningKey(pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS,
                                          LOGIN_MEM))


def address_salted_login_secret(password, server, user):
    """The login secret of accounts registered before relays had an id: salted with the
    server address as typed at registration.  Only to move such an account to a password
    key (the relay checks it against its hash before taking the key)."""
    salt = _salt("securechat-login-v1", server.lower(), user)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def room_password_secret(password, room):
    """What a room password becomes on the wire (the server hashes it again)."""
    salt = _salt("securechat-room-v1", room)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def store_key(password, salt):
    """The key that unwraps the local key store's random master key."""
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, STORE_OPS, STORE_MEM)
