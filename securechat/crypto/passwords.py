"""Everything derived from a user's password, each with its own salt.

The password itself never leaves the machine.  The server gets a *login
secret* derived with argon2id and salted with the relay's own stable id (as
the relay reports it) and the user name: the same password on two relays
gives unrelated secrets, and any spelling of one relay's address
(``localhost:6698``, ``127.0.0.1:6698``) the same one.  It crosses the wire
only to register, to log in a new device and to change it; a registered
device logs in by its device key.  The local key store is unlocked by a
different argon2id derivation with a random salt kept in the store.
Knowing one derived value tells nothing about the other.
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


def login_secret(password, relay_id, user):
    """32 bytes the relay checks (it stores only an argon2id hash of them), salted with the
    relay's stable id."""
    salt = _salt("securechat-login-v2", relay_id, user)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def address_salted_login_secret(password, server, user):
    """The login secret of accounts registered before relays had an id: salted with the
    server address as typed at registration.  Only to move such an account's secret to
    ``login_secret`` (the relay checks the old one before taking the new)."""
    salt = _salt("securechat-login-v1", server.lower(), user)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def room_password_secret(password, room):
    """What a room password becomes on the wire (the server hashes it again)."""
    salt = _salt("securechat-room-v1", room)
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, LOGIN_OPS, LOGIN_MEM)


def store_key(password, salt):
    """The key that unwraps the local key store's random master key."""
    return pwhash.argon2id.kdf(32, password.encode("utf-8"), salt, STORE_OPS, STORE_MEM)
