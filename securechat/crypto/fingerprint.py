"""Fingerprints people can compare out of band.

- ``key_fingerprint``: one identity key as 8 groups of 4 hex digits (what
  ``securechat fingerprint`` prints for your own device).
- ``safety_number``: Signal's construction over both users' identity keys:
  for each side, 5200 iterations of SHA-512 over (version, key, user id),
  the first 30 bytes as six 5-digit groups; the two halves sorted, so both
  people see the same 60 digits.
"""

import hashlib

from securechat import wire

ITERATIONS = 5200
VERSION = b"\x00\x00"


def key_fingerprint(identity_key_b64):
    digest = hashlib.sha256(wire.b64decode(identity_key_b64)).hexdigest()[:32].upper()
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def _half(identity_key_b64, user):
    key = wire.b64decode(identity_key_b64)
    digest = VERSION + key + user.encode("utf-8")
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    groups = []
    for i in range(0, 30, 5):
        groups.append(f"{int.from_bytes(digest[i:i + 5], 'big') % 100000:05d}")
    return " ".join(groups)


def safety_number(user_a, key_a, user_b, key_b):
    halves = sorted([_half(key_a, user_a), _half(key_b, user_b)])
    return " ".join(halves)
