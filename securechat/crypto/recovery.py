"""The recovery key: 32 random bytes a person writes down, and the two keys derived from it.

It is shown once, as 14 groups of 4 Crockford base32 characters: the 32
bytes and a 3-byte checksum (BLAKE2b of the bytes), 280 bits in all.  The
checksum catches a mistyped character before anything is sent (a wrong key
costs a login attempt against the relay's limits; a typo should not), and
reading accepts what Crockford allows a person to write: any case, ``O`` for
``0``, ``I`` and ``L`` for ``1``, spaces and hyphens anywhere.

From the 32 bytes, keyed BLAKE2b with a personalisation per purpose derives
(one composition of PyNaCl's primitives, nothing more):

- the recovery *signing key* (Ed25519): the relay holds its public half and
  checks the proofs it signs (a login of a new device, a new password);
- the *backup key* (SecretBox): it seals the account identity key's seed,
  which the relay keeps for the account and hands to a recovery login only.

Knowing the public recovery key or the sealed backup tells nothing of the
other key, nor of the 32 bytes.
"""

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.secret
import nacl.utils
from nacl.signing import SigningKey

KEY_BYTES = 32
CHECKSUM_BYTES = 3
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base32: no I, L, O (read as 1, 1, 0) and no U."""
GROUP = 4
CHARACTERS = (KEY_BYTES + CHECKSUM_BYTES) * 8 // 5
"""56 characters: 14 groups of 4."""
_READ_AS = {**{c: i for i, c in enumerate(ALPHABET)}, "O": 0, "I": 1, "L": 1}
_IGNORED = " -\t"


class RecoveryKeyTypo(ValueError):
    """A recovery key as typed that cannot be one: the message names what is wrong."""


def _checksum(raw):
    return nacl.hash.blake2b(raw, digest_size=CHECKSUM_BYTES, person=b"sc-recovery-chk",
                             encoder=nacl.encoding.RawEncoder)


def _subkey(raw, purpose):
    return nacl.hash.blake2b(b"", key=raw, person=purpose, digest_size=32,
                             encoder=nacl.encoding.RawEncoder)


class RecoveryKey:
    """One recovery key: ``text`` to show, ``signing_key`` and ``backup_box`` to use."""

    def __init__(self, raw):
        if len(raw) != KEY_BYTES:
            raise ValueError(f"a recovery key is {KEY_BYTES} bytes")
        self._raw = raw
        self.signing_key = SigningKey(_subkey(raw, b"sc-recovery-sign"))
        self.backup_box = nacl.secret.SecretBox(_subkey(raw, b"sc-recovery-back"))

    @classmethod
    def generate(cls):
        return cls(nacl.utils.random(KEY_BYTES))

    @classmethod
    def parse(cls, text):
        """The key ``text`` spells; RecoveryKeyTypo naming the problem when it spells none
        (a character outside the alphabet, a wrong length, a checksum that does not
        match: a mistyped character)."""
        digits = []
        for position, char in enumerate(text.strip(), 1):
            if char in _IGNORED:
                continue
            value = _READ_AS.get(char.upper())
            if value is None:
                raise RecoveryKeyTypo(
                    f"the recovery key has {char!r} (character {position} as typed), which "
                    "no recovery key holds (they use 0-9 and A-Z without U)")
            digits.append(value)
        if len(digits) != CHARACTERS:
            raise RecoveryKeyTypo(
                f"the recovery key has {len(digits)} characters instead of {CHARACTERS} "
                f"({CHARACTERS // GROUP} groups of {GROUP}): some are missing or extra")
        data = _number(digits).to_bytes(KEY_BYTES + CHECKSUM_BYTES, "big")
        raw, checksum = data[:KEY_BYTES], data[KEY_BYTES:]
        if _checksum(raw) != checksum:
            raise RecoveryKeyTypo(
                "the recovery key does not match its checksum: a character is mistyped"
                + _suspect_group(digits))
        return cls(raw)

    @property
    def text(self):
        """The key as a person writes it down: 14 groups of 4, separated by spaces."""
        number = int.from_bytes(self._raw + _checksum(self._raw), "big")
        chars = []
        for _ in range(CHARACTERS):
            number, value = divmod(number, 32)
            chars.append(ALPHABET[value])
        chars.reverse()
        return " ".join("".join(chars[i:i + GROUP]) for i in range(0, CHARACTERS, GROUP))

    @property
    def public_key(self):
        """The public half of the recovery signing key (bytes), which the relay keeps."""
        return bytes(self.signing_key.verify_key)

    def sign(self, message):
        """The recovery signing key's signature of ``message`` (bytes)."""
        return self.signing_key.sign(message).signature

    def seal(self, identity_seed):
        """The account identity key's seed (bytes), sealed for the relay to keep."""
        return bytes(self.backup_box.encrypt(identity_seed))

    def open(self, backup):
        """The identity seed sealed in ``backup``; ValueError when this key did not seal it."""
        try:
            return self.backup_box.decrypt(backup)
        except nacl.exceptions.CryptoError:
            raise ValueError("the backup does not open with this recovery key") from None


def _number(digits):
    """The number base-32 ``digits`` spell, most significant first."""
    number = 0
    for value in digits:
        number = number * 32 + value
    return number


def _suspect_group(digits):
    """`` (check group N)`` when changing one character of exactly one group makes the
    checksum match, else nothing: the likely place of a single typo."""
    number = _number(digits)
    groups = set()
    for index, original in enumerate(digits):
        weight = 32 ** (CHARACTERS - 1 - index)
        for value in range(32):
            if value != original:
                data = (number + (value - original) * weight).to_bytes(
                    KEY_BYTES + CHECKSUM_BYTES, "big")
                if _checksum(data[:KEY_BYTES]) == data[KEY_BYTES:]:
                    groups.add(index // GROUP + 1)
    return f" (check group {groups.pop()})" if len(groups) == 1 else ""
