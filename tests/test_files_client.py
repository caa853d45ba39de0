"""The client's side of files without a relay: the secretstream chunks and what they detect,
received names made safe, the file message's checks, the progress bar, the key store step."""

import io
import os
import types

import pytest
from twisted.internet import task

from securechat.client.file_messages import (
    MAX_UPLOADS_KEPT, UPLOAD_KEEP_DAYS, file_message, prune_uploads, safe_file_name)
from securechat.client.files import FileTransfers
from securechat.client.progress import ProgressBar
from securechat.client.session import Client
from securechat.crypto import keystore
from securechat.crypto.device import DecryptError, DeviceCrypto
from securechat.crypto.filecrypt import (
    CHUNK_CIPHER, FileDecryptError, Hashes, cipher_size, decrypt_file, encrypt_chunks, new_key)
from securechat.wire import FILE_CHUNK_PLAIN, b64encode

FILE_ID = "f" * 22


def encrypted(data, key, header, file_id=FILE_ID):
    """The ciphertext of ``data`` as one byte string, and its Hashes."""
    hashes = Hashes()
    chunks = [c for _, c in encrypt_chunks(io.BytesIO(data), len(data), key, header, file_id,
                                           hashes)]
    return b"".join(chunks), hashes


def decrypted(cipher, key, header, file_id=FILE_ID):
    out = io.BytesIO()
    digest = decrypt_file(io.BytesIO(cipher), out, key, header, file_id)
    return out.getvalue(), digest


@pytest.mark.parametrize("size", [0, 1, FILE_CHUNK_PLAIN, 3 * FILE_CHUNK_PLAIN + 5])
def test_a_file_round_trips_and_its_size_and_hashes_are_predicted(size):
    """Any size (empty, one byte, one whole chunk, several and a bit) decrypts to itself;
    the ciphertext has cipher_size bytes; the plaintext hash is what decryption reports;
    encrypting again with the saved key and header gives the same bytes (how an upload
    resumes)."""
    data = os.urandom(size)
    key, header = new_key()
    cipher, hashes = encrypted(data, key, header)
    assert len(cipher) == cipher_size(size)
    assert decrypted(cipher, key, header) == (data, hashes.plain)
    again, again_hashes = encrypted(data, key, header)
    assert again == cipher and again_hashes.chunks == hashes.chunks


@pytest.mark.parametrize("change, words", [
    (lambda c: c[:CHUNK_CIPHER] + bytes([c[CHUNK_CIPHER] ^ 1]) + c[CHUNK_CIPHER + 1:],
     "chunk 1 does not decrypt"),
    (lambda c: c[:CHUNK_CIPHER], "cut short"),
    (lambda c: c + b"more", "data follows"),
    (lambda c: c[CHUNK_CIPHER:2 * CHUNK_CIPHER] + c[:CHUNK_CIPHER] + c[2 * CHUNK_CIPHER:],
     "chunk 0 does not decrypt"),
])
def test_a_changed_cut_extended_or_reordered_file_is_refused(change, words):
    """A flipped bit, a missing last chunk, bytes after the FINAL chunk and two chunks
    swapped each fail decryption with a message saying which."""
    key, header = new_key()
    cipher, _ = encrypted(os.urandom(2 * FILE_CHUNK_PLAIN), key, header)
    with pytest.raises(FileDecryptError, match=words):
        decrypted(change(cipher), key, header)


def test_the_relays_chunk_overhead_is_secretstreams():
    """The relay's idea of a chunk's overhead (wire, which cannot import the crypto) is
    secretstream's ABYTES."""
    import nacl.bindings
    from securechat import wire
    assert wire.FILE_CHUNK_OVERHEAD == nacl.bindings.crypto_secretstream_xchacha20poly1305_ABYTES


def test_a_chunk_of_another_file_does_not_decrypt():
    """The file's relay id is each chunk's associated data: the same stream served as
    another file id fails."""
    key, header = new_key()
    cipher, _ = encrypted(b"payload", key, header)
    with pytest.raises(FileDecryptError):
        decrypted(cipher, key, header, file_id="g" * 22)


@pytest.mark.parametrize("name, safe", [
    ("report.pdf", "report.pdf"), ("../../etc/passwd", "passwd"), ("/etc/shadow", "shadow"),
    ("..\\..\\boot.ini", "boot.ini"), (".bashrc", "bashrc"), ("..", "ID"), ("", "ID"),
    ("a\x1b[31mb\nc", "a_[31mb_c"), ("x" * 300, "x" * 255),
])
def test_a_received_name_becomes_a_plain_file_name(name, safe):
    """Only the last path component stays (either slash), control characters become _, no
    leading dot, at most 255 characters; nothing left: the fallback."""
    assert safe_file_name(name, "ID") == safe


def test_the_target_in_a_directory_never_leaves_it_nor_replaces_a_file(tmp_path):
    """Without --out a received '../x' lands in the chosen directory as 'x', and a second
    file of that name as 'x (1)'."""
    (tmp_path / "notes.txt").write_text("mine")
    target = FileTransfers._target({"name": "../notes.txt", "id": "I" * 22}, None,
                                   str(tmp_path))
    assert target == str(tmp_path / "notes (1).txt")


def described(**changes):
    file = {"id": "a" * 22, "name": "n.txt", "size": 5, "key": b64encode(b"k" * 32),
            "header": b64encode(b"h" * 24), "hash": "0" * 64, "sha256": "1" * 64, **changes}
    return {"type": "file", "file": file}


def test_a_file_message_is_checked_before_it_is_kept():
    """A well-formed file message gives its summary (id, name, size) and descriptor; a
    short key, a bad id, a negative size or no 'file' is refused as undecryptable."""
    summary, descriptor = file_message(described())
    assert summary == {"id": "a" * 22, "name": "n.txt", "size": 5}
    assert descriptor["key"] == b64encode(b"k" * 32)
    for bad in (described(key=b64encode(b"k" * 31)), described(id="../x"),
                described(size=-1), described(size=True), {"type": "file"}):
        with pytest.raises(DecryptError):
            file_message(bad)


class Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_the_progress_bar_draws_on_a_terminal_only_with_rate_and_eta():
    """On a terminal: percent, MiB done, the rate of this run and the time left, then a
    newline at the end; elsewhere nothing at all."""
    now = [0.0]
    terminal = Terminal(True)
    bar = ProgressBar(terminal, clock=lambda: now[0])
    bar(0, 20 * 2**20)
    now[0] = 2.0
    bar(10 * 2**20, 20 * 2**20)
    bar(None, 20 * 2**20)
    last = terminal.getvalue().split("\r")[-1]
    assert "50%" in last and "10.0/20.0 MiB" in last and "5.0 MiB/s" in last
    assert "ETA 0:00:02" in last and last.endswith("\n")
    piped = Terminal(False)
    bar = ProgressBar(piped)
    bar(0, 10)
    bar(None, 10)
    assert piped.getvalue() == ""


def test_a_version_2_key_store_gains_the_file_tables(tmp_path):
    """A key store of schema 2 (before files) opens at the current schema with its file
    tables, and keeps an upload and a received file."""
    store = keystore.KeyStore.create(str(tmp_path), "pw", {"user": "alice"})
    with store.transaction():
        store._db.execute("DROP TABLE file_uploads")
        store._db.execute("DROP TABLE received_files")
        store.set_meta("schema_version", "2")
    store.close()
    store = keystore.KeyStore.open(str(tmp_path), "pw")
    try:
        assert store.meta("schema_version") == str(keystore.SCHEMA_VERSION)
        with store.transaction():
            store.put_file_upload("t", {"file_id": "x"})
            store.put_received_file("x" * 22, {"id": "x" * 22})
        assert store.file_upload("t") == {"file_id": "x"}
        assert store.received_files() == [{"id": "x" * 22}]
    finally:
        store.close()


def test_abandoned_upload_records_are_dropped_after_a_week_and_bounded(tmp_path):
    """The resume records of uploads begun over UPLOAD_KEEP_DAYS ago go, one without a time
    (an older client's) is given now and kept, and past MAX_UPLOADS_KEPT only the newest
    stay; pruning runs when the session opens the key store."""
    store = keystore.KeyStore.create(str(tmp_path), "pw", {"user": "alice"})
    DeviceCrypto.create(store)
    now = 1_800_000_000_000
    week = UPLOAD_KEEP_DAYS * 24 * 3600 * 1000
    try:
        with store.transaction():
            store.put_file_upload("old", {"file_id": "o", "begun": now - week - 1})
            store.put_file_upload("recent", {"file_id": "r", "begun": now - week + 1})
            store.put_file_upload("untimed", {"file_id": "u"})
            prune_uploads(store, now)
        assert sorted(tag for tag, _ in store.file_uploads()) == ["recent", "untimed"]
        assert store.file_upload("untimed")["begun"] == now
        with store.transaction():
            for n in range(MAX_UPLOADS_KEPT + 5):
                store.put_file_upload(f"n{n}", {"file_id": "n", "begun": now + n})
            prune_uploads(store, now)
        kept = {tag for tag, _ in store.file_uploads()}
        assert kept == {f"n{n}" for n in range(5, MAX_UPLOADS_KEPT + 5)}
        with store.transaction():
            store.put_file_upload("stale", {"file_id": "s", "begun": 0})
    finally:
        store.close()
    client = Client(task.Clock(), types.SimpleNamespace(data_dir=str(tmp_path),
                                                        username="alice"), "pw")
    client.unlock()
    try:
        assert client.store.file_upload("stale") is None
    finally:
        client.close()
