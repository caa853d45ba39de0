"""Everything derived from a user's password, each with its own salt.

The password itself never leaves the machine.  The server gets a *login
secret* derived with argon2id and salted with the server's name and the
user name (so the same password on two servers gives unrelated secrets);
the local key store is unlocked by a different argon2id derivation with a
random salt kept in the store.  Knowing one derived value tells nothing
about the other.
"""

import hashlib

from nacl import pwhash

LOGIN_OPS = pwhash.argon2id.OPSLIMIT_INTERACTIVE
LOGIN_MEM = pwhash.argon2id.MEMLIMIT_INTERACTIVE
STORE_OPS = pwhash.argon2id.OPSLIMIT_MODERATE
STORE_MEM = pwhash.argon2id.MEMLIMIT_MODERATE
SALT_BYTES = pwhash.argon2id.SALTBYTES


def _salt(*parts):
    text = "|".join(parts).encode("utf-8")
    return hashlib.sha256(text).digest()[:SALT_BYTES]


def login_secret(password, server, user):
    """32 bytes the server checks at login (it stores only an argon2id hash of them)."""
    salt = _salt("securechat-login-v1", server.lower(), user)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def room_password_secret(password, room):
    """What a room password becomes on the wire (the server hashes it again)."""
    salt = _salt("securechat-room-v1", room)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def store_key(password, salt):
    """The key that unwraps the local key store's random master key."""
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, STORE_OPS, STORE_MEM)
