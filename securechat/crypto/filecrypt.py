"""File encryption: libsodium's secretstream (XChaCha20-Poly1305) in chunks, as E2EE.md 7.6 says.

A file gets a fresh 32-byte key and a 24-byte stream header; every
``wire.FILE_CHUNK_PLAIN`` bytes of plaintext become one chunk of 17 bytes more,
authenticated with the file's relay id as associated data, the last one
tagged FINAL.  A reader therefore notices a chunk changed, dropped,
reordered, moved from another file, or a stream cut short (no FINAL) or
extended (data after FINAL).

Resuming an upload needs the stream's state at the chunk the relay stopped
at.  The state after ``init_pull(header, key)`` is the state ``init_push``
left, and pushing is deterministic, so ``encrypt_chunks`` simply encrypts the
file again from the start with the saved key and header and the caller
skips what the relay holds: no stream state is ever written to disk, and a
file changed meanwhile shows as a chunk hash the relay refuses at the finish.

``chunks_hash`` is what the relay checks a finished upload against and the
recipient checks its download against: SHA-256 over the SHA-256 of each
ciphertext chunk (the relay keeps one digest per chunk, never the whole
file in memory).
"""

import hashlib

import nacl.bindings as sodium
import nacl.exceptions

from securechat.wire import FILE_CHUNK_MAX, FILE_CHUNK_PLAIN
from securechat.wire import file_chunks as chunk_count
from securechat.wire import file_cipher_size as cipher_size  # noqa: F401 (for the callers)

CHUNK_CIPHER = FILE_CHUNK_MAX
"""Ciphertext bytes of every chunk but the last (``FILE_CHUNK_OVERHEAD`` is secretstream's
ABYTES: tests/test_files_client.py checks the two agree)."""
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL


class FileDecryptError(Exception):
    """A download that is not the file that was sent (changed, cut short, extended)."""


def new_key():
    """A fresh file key and its stream header: ``(key, header)``, bytes."""
    key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(
        sodium.crypto_secretstream_xchacha20poly1305_state(), key)
    return key, header


def _stream(key, header):
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


class Hashes:
    """What a pass over a file computes: its plaintext's SHA-256 and the chunk hash."""

    def __init__(self):
        self._plain = hashlib.sha256()
        self._chunks = hashlib.sha256()

    def add(self, plain, cipher):
        if plain is not None:
            self._plain.update(plain)
        self._chunks.update(hashlib.sha256(cipher).digest())

    @property
    def plain(self):
        return self._plain.hexdigest()

    @property
    def chunks(self):
        return self._chunks.hexdigest()


def encrypt_chunks(source, size, key, header, file_id, hashes):
    """Yield ``(index, ciphertext)`` of every chunk of ``source`` (a binary file of ``size``
    bytes), updating ``hashes``; the stream is the one ``new_key`` began (see above)."""
    state = _stream(key, header)
    ad = file_id.encode("ascii")
    count = chunk_count(size)
    for index in range(count):
        plain = source.read(FILE_CHUNK_PLAIN)
        last = index == count - 1
        if len(plain) != (size - index * FILE_CHUNK_PLAIN if last else FILE_CHUNK_PLAIN):
            raise OSError("the file changed while it was being sent")
        cipher = sodium.crypto_secretstream_xchacha20poly1305_push(
            state, plain, ad, TAG_FINAL if last else 0)
        hashes.add(plain, cipher)
        yield index, cipher


def decrypt_file(source, target, key, header, file_id):
    """Decrypt the ciphertext in ``source`` (a binary file) into ``target``; the plaintext's
    SHA-256.  FileDecryptError when a chunk does not authenticate, the stream ends
    before its FINAL chunk, or anything follows it."""
    state = _stream(key, header)
    ad = file_id.encode("ascii")
    plain_hash = hashlib.sha256()
    index = 0
    while True:
        cipher = source.read(CHUNK_CIPHER)
        if not cipher:
            raise FileDecryptError("the file is cut short: its last chunk is missing")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, cipher, ad)
        except nacl.exceptions.RuntimeError:
            raise FileDecryptError(f"chunk {index} does not decrypt: the file was changed "
                                   "on its way") from None
        target.write(plain)
        plain_hash.update(plain)
        if tag == TAG_FINAL:
            if source.read(1):
                raise FileDecryptError("data follows the file's last chunk")
            return plain_hash.hexdigest()
        index += 1
