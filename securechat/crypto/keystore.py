"""The device's state at rest: one SQLite file, readable only by its owner, locked to one process.

Nothing secret is stored in the clear.  A random 32-byte master key is
wrapped with ``SecretBox`` under an argon2id key derived from the password (a new
password wraps the same master key again: ``rewrap``);
from the master key come the key vodozemac pickles the Account and sessions
with, and the key that seals everything else (identity key, message
history).  A conversation's rows carry a keyed hash of the peer's name
(``peer``), never the name: enough to find one conversation without
unsealing every message, nothing a reader of the file can turn back into
a name.  Each change that must not be half-done (a decrypt with the new
ratchet state, the plaintext and the seen id) is one SQLite transaction.

Two processes on one crypto store would fork the ratchets, so a lock file
keeps it to one process at a time.
"""

import contextlib
import fcntl
import json
import os
import sqlite3

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.secret
import nacl.utils

from securechat.crypto import passwords

STORE_FILE = "keystore.sqlite3"
LOCK_FILE = "keystore.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS olm_sessions (
    session_id TEXT PRIMARY KEY, peer_user TEXT NOT NULL, peer_device TEXT NOT NULL,
    peer_curve TEXT NOT NULL, pickle TEXT NOT NULL, last_used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS olm_sessions_peer ON olm_sessions (peer_curve, last_used);
CREATE TABLE IF NOT EXISTS seen (envelope_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    pos INTEGER PRIMARY KEY, envelope_id TEXT UNIQUE NOT NULL, sealed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (user TEXT PRIMARY KEY, sealed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS server_pins (server TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS group_sessions (
    name TEXT PRIMARY KEY, pickle TEXT NOT NULL, sealed_meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY, entry_id TEXT UNIQUE NOT NULL, sealed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sent (
    pos INTEGER PRIMARY KEY, message_id TEXT UNIQUE NOT NULL, peer TEXT NOT NULL,
    sealed TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sent_peer ON sent (peer, pos);
CREATE TABLE IF NOT EXISTS sent_envelopes (
    envelope_id TEXT PRIMARY KEY, message_id TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sent_envelopes_at ON sent_envelopes (at);
"""
FILE_TABLES = """
CREATE TABLE IF NOT EXISTS file_uploads (upload TEXT PRIMARY KEY, sealed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS received_files (
    pos INTEGER PRIMARY KEY, file_id TEXT UNIQUE NOT NULL, sealed TEXT NOT NULL);
"""
"""Schema 3, encrypted files: uploads not yet handed to the outbox, by a keyed hash of
what is sent where (an interrupted send of the same file resumes), and files received."""
SCHEMA += FILE_TABLES

EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS message_events (mid TEXT PRIMARY KEY, sealed TEXT NOT NULL);
"""
"""Version 4 (receipts, replies, reactions, edits, deletes): what happened to each message
since it was written, by its sealed ``mid`` (``securechat.client.events``)."""

SCHEMA_VERSION = 4
"""Meta ``schema_version`` (absent: 1, before versions were kept).  2: the ``sent`` table
(own 1:1 messages the relay accepted) and ``messages.peer`` (the conversation of a
received 1:1 message).  3: ``file_uploads`` and ``received_files`` (encrypted files).
4: ``message_events`` (``EVENTS_SCHEMA``)."""


def conversation_peer(record):
    """Whose 1:1 conversation a stored received message belongs to (None: a room's): its
    sender's, or for what another device of this account sent (``outgoing``), its ``to``."""
    if record.get("room") is None and record.get("type") in ("msg", "file"):
        return record.get("to") if record.get("outgoing") else record.get("from")
    return None


RECEIPT_ENVELOPE = ""
"""The ``sent_envelopes.message_id`` of an envelope that carried a receipt (no message id
of a sent message is empty)."""


class KeyStoreError(Exception):
    """A key store problem, phrased for the person at the keyboard."""


class WrongPassword(KeyStoreError):
    pass


class StoreLocked(KeyStoreError):
    pass


def _wrapping(master, password):
    """The meta rows that let ``password`` (alone) unwrap ``master``: a random salt and
    the master key sealed under the argon2id key of the password with that salt."""
    salt = nacl.utils.random(passwords.SALT_BYTES)
    wrapped = nacl.secret.SecretBox(passwords.store_key(password, salt)).encrypt(master)
    return {"kdf_salt": salt.hex(), "wrapped_master": wrapped.hex()}


def _subkey(master, purpose):
    return nacl.hash.blake2b(
        b"", key=master, person=purpose, digest_size=32, encoder=nacl.encoding.RawEncoder
    )


class KeyStore:
    def __init__(self, directory, db, lock_fd, master):
        self.directory = directory
        self._db = db
        self._lock_fd = lock_fd
        self._master = master  # kept to wrap it under a new password (rewrap)
        self.pickle_key = _subkey(master, b"sc-pickle")
        self._box = nacl.secret.SecretBox(_subkey(master, b"sc-seal"))
        self._peer_key = _subkey(master, b"sc-peer")
        self._migrate()

    # -- opening ------------------------------------------------------------

    @staticmethod
    def exists(directory):
        return os.path.exists(os.path.join(directory, STORE_FILE))

    @classmethod
    def create(cls, directory, password, meta):
        """Make a new store protected by ``password``; ``meta`` (dict of str) is kept in it."""
        if cls.exists(directory):
            raise KeyStoreError(f"a key store already exists in {directory}")
        db, lock_fd = cls._open_files(directory)
        master = nacl.utils.random(32)
        wrapping = _wrapping(master, password)
        with db:
            db.executescript(SCHEMA + EVENTS_SCHEMA)
            rows = {**wrapping, **meta}
            db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
        return cls(directory, db, lock_fd, master)

    @classmethod
    def open(cls, directory, password):
        """Unlock an existing store; WrongPassword when the password does not unwrap it."""
        if not cls.exists(directory):
            raise KeyStoreError(f"no key store in {directory}: run 'securechat register' first")
        db, lock_fd = cls._open_files(directory)
        db.executescript(SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        key = passwords.store_key(password, bytes.fromhex(meta["kdf_salt"]))
        try:
            master = nacl.secret.SecretBox(key).decrypt(bytes.fromhex(meta["wrapped_master"]))
        except nacl.exceptions.CryptoError:
            db.close()
            os.close(lock_fd)
            raise WrongPassword("wrong password for this device's key store") from None
        return cls(directory, db, lock_fd, master)

    def rewrap(self, password):
        """Lock the store with ``password`` from now on: the same master key wrapped
        under a key derived from it with a new salt.

        Nothing else changes (everything is sealed under keys derived from the master
        key), so no migration and no re-encryption: the two meta rows of the wrapping
        are replaced in one SQLite transaction (WAL, ``synchronous=FULL``).  A crash
        before its commit leaves the old pair, after it the new one: the store opens
        with the old password or with the new, never with neither."""
        wrapping = _wrapping(self._master, password)
        with self.transaction():
            for key, value in wrapping.items():
                self.set_meta(key, value)

    @staticmethod
    def _open_files(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        lock_fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreLocked(
                f"another securechat process is using {directory}; one process per device"
            ) from None
        path = os.path.join(directory, STORE_FILE)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db, lock_fd

    def _migrate(self):
        """Bring a store written by an older client up to ``SCHEMA_VERSION`` (a new one
        too: it starts at 1), each step one transaction; refuse one from a newer client."""
        version = int(self.meta("schema_version", "1"))
        if version > SCHEMA_VERSION:
            self.close()
            raise KeyStoreError(f"the key store in {self.directory} is of a newer securechat "
                                f"(schema {version}, this one knows {SCHEMA_VERSION}): "
                                "upgrade securechat")
        for target, step in ((2, self._add_message_peers), (3, self._add_file_tables),
                             (4, self._add_message_events)):
            if version < target:
                with self.transaction():
                    step()
                    self.set_meta("schema_version", str(target))

    def _add_message_peers(self):
        """Version 2: received 1:1 messages get their conversation's ``peer`` hash (the
        received messages are unsealed once for it)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(messages)")]
        if "peer" not in columns:
            self._db.execute("ALTER TABLE messages ADD COLUMN peer TEXT")
        for pos, sealed in self._db.execute("SELECT pos, sealed FROM messages").fetchall():
            peer = conversation_peer(self.unseal(sealed))
            if peer is not None:
                self._db.execute("UPDATE messages SET peer = ? WHERE pos = ?",
                                 (self._peer_tag(peer), pos))
        self._db.execute("CREATE INDEX IF NOT EXISTS messages_peer ON messages (peer, pos)")

    def _add_file_tables(self):
        """Version 3: the tables of encrypted files (only CREATE ... IF NOT EXISTS, so the
        step holds whatever other steps ran)."""
        for statement in FILE_TABLES.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _add_message_events(self):
        """Version 4: the table of what happened to each message (it starts empty)."""
        self._db.execute(EVENTS_SCHEMA)  # one statement: executescript would COMMIT first

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
            os.close(self._lock_fd)

    # -- transactions and sealing ---------------------------------------------

    @contextlib.contextmanager
    def transaction(self):
        """All writes inside commit together or not at all.

        One opened inside another is part of it (a savepoint: its failure
        undoes its own writes only), so a step that saves its own state (an
        encryption saving its ratchet) can join a larger change (the outbox
        entry holding what it encrypted) that commits as one.
        """
        if self._db.in_transaction:
            self._db.execute("SAVEPOINT nested")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO nested")
                self._db.execute("RELEASE nested")
                raise
            self._db.execute("RELEASE nested")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def seal(self, obj):
        return self._box.encrypt(json.dumps(obj).encode("utf-8")).hex()

    def unseal(self, text):
        return json.loads(self._box.decrypt(bytes.fromhex(text)))

    def _peer_tag(self, user):
        """The keyed hash a conversation with ``user`` is filed under."""
        return nacl.hash.blake2b(user.encode("utf-8"), key=self._peer_key, digest_size=16,
                                 encoder=nacl.encoding.HexEncoder).decode("ascii")

    # -- plain values -----------------------------------------------------------

    def meta(self, key, default=None):
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key, value):
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def secret(self, key):
        """A sealed value stored under ``key`` in meta (None when absent)."""
        sealed = self.meta("sealed:" + key)
        return None if sealed is None else self.unseal(sealed)

    def set_secret(self, key, value):
        self.set_meta("sealed:" + key, self.seal(value))

    # -- Olm sessions -------------------------------------------------------------

    def sessions_with(self, peer_curve):
        """Pickles of the sessions with one device, most recently used first."""
        return self._db.execute(
            "SELECT session_id, pickle FROM olm_sessions WHERE peer_curve = ? "
            "ORDER BY last_used DESC", (peer_curve,)
        ).fetchall()

    def put_session(self, session_id, peer_user, peer_device, peer_curve, pickle, used_at):
        self._db.execute(
            "INSERT OR REPLACE INTO olm_sessions VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, peer_user, peer_device, peer_curve, pickle, used_at),
        )

    def forget_sessions_beyond(self, peer_curve, keep):
        self._db.execute(
            "DELETE FROM olm_sessions WHERE peer_curve = ? AND session_id NOT IN ("
            "SELECT session_id FROM olm_sessions WHERE peer_curve = ? "
            "ORDER BY last_used DESC LIMIT ?)", (peer_curve, peer_curve, keep)
        )

    # -- group sessions (rooms) --------------------------------------------------

    def group_session(self, name):
        row = self._db.execute(
            "SELECT pickle, sealed_meta FROM group_sessions WHERE name = ?", (name,)
        ).fetchone()
        return (row[0], self.unseal(row[1])) if row else (None, None)

    def put_group_session(self, name, pickle, meta):
        self._db.execute(
            "INSERT OR REPLACE INTO group_sessions VALUES (?, ?, ?)", (name, pickle, self.seal(meta))
        )

    def drop_group_session(self, name):
        self._db.execute("DELETE FROM group_sessions WHERE name = ?", (name,))

    # -- received envelopes and history --------------------------------------------

    def seen(self, envelope_id):
        return self._db.execute(
            "SELECT 1 FROM seen WHERE envelope_id = ?", (envelope_id,)
        ).fetchone() is not None

    def mark_seen(self, envelope_id, at):
        self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (envelope_id, at))

    def add_message(self, envelope_id, record, pos=None):
        peer = conversation_peer(record)
        self._db.execute(
            "INSERT OR IGNORE INTO messages (pos, envelope_id, sealed, peer) VALUES (?, ?, ?, ?)",
            (pos, envelope_id, self.seal(record), None if peer is None else self._peer_tag(peer)),
        )

    def messages(self, after_pos=0):
        """(pos, record) of the stored history, oldest first."""
        return [
            (pos, self.unseal(sealed))
            for pos, sealed in self._db.execute(
                "SELECT pos, sealed FROM messages WHERE pos > ? ORDER BY pos", (after_pos,)
            )
        ]

    # -- 1:1 conversations: what was received and what this device sent -----------------

    def add_sent(self, message_id, peer, record, at, keep_from):
        """Keep an own 1:1 message to ``peer`` the relay accepted (once per message id), and
        find it by its envelope ids (``record["to_devices"]``) for a re-send; index rows
        written before ``keep_from`` (ms) are dropped: too old to be re-sent."""
        self._db.execute("INSERT OR IGNORE INTO sent (message_id, peer, sealed) VALUES (?, ?, ?)",
                         (message_id, self._peer_tag(peer), self.seal(record)))
        self._db.executemany("INSERT OR IGNORE INTO sent_envelopes VALUES (?, ?, ?)",
                             [(env_id, message_id, at) for env_id in record.get("to_devices", ())])
        self._db.execute("DELETE FROM sent_envelopes WHERE at < ?", (keep_from,))

    def sent_by_envelope(self, envelope_id):
        """``(record, at_ms)`` of the own 1:1 message an envelope id carried (None: unknown)."""
        row = self._db.execute(
            "SELECT sent.sealed, sent_envelopes.at FROM sent_envelopes JOIN sent "
            "USING (message_id) WHERE envelope_id = ?", (envelope_id,)).fetchone()
        return (self.unseal(row[0]), row[1]) if row else None

    def add_receipt_envelopes(self, envelope_ids, at):
        """Remember that these envelopes carried receipts (nothing to send again if their
        recipient device could not decrypt one: ``sent_a_receipt``)."""
        self._db.executemany("INSERT OR IGNORE INTO sent_envelopes VALUES (?, ?, ?)",
                             [(env_id, RECEIPT_ENVELOPE, at) for env_id in envelope_ids])

    def sent_a_receipt(self, envelope_id):
        return self._db.execute(
            "SELECT 1 FROM sent_envelopes WHERE envelope_id = ? AND message_id = ?",
            (envelope_id, RECEIPT_ENVELOPE)).fetchone() is not None

    def drop_failed(self, failed_id, sender, sender_device):
        """Remove the record of envelope ``failed_id`` when it could not be decrypted and
        came from ``sender``'s ``sender_device`` (which says there was nothing in it to show:
        a receipt); False when there is no such record."""
        row = self._db.execute("SELECT sealed FROM messages WHERE envelope_id = ?",
                               (failed_id,)).fetchone()
        failed = self.unseal(row[0]) if row else {}
        if not failed.get("error") or (failed.get("from"), failed.get("from_dev")) != (
                sender, sender_device):
            return False
        self._db.execute("DELETE FROM messages WHERE envelope_id = ?", (failed_id,))
        return True

    def update_sent(self, message_id, record):
        self._db.execute("UPDATE sent SET sealed = ? WHERE message_id = ?",
                         (self.seal(record), message_id))

    def forget_text(self, mid, envelope_id=None):
        """Remove what message ``mid`` said from the history (its author deleted it): the
        received record of ``envelope_id``, and an own sent one of that ``mid`` (a file
        message's file summary with it)."""
        rows = self._db.execute(
            "SELECT 'messages', envelope_id, sealed FROM messages WHERE envelope_id = ? "
            "UNION ALL SELECT 'sent', message_id, sealed FROM sent WHERE message_id = ?",
            (envelope_id, mid)).fetchall()
        for table, key, sealed in rows:
            record = {**self.unseal(sealed), "text": None}
            record.pop("file", None)
            column = "envelope_id" if table == "messages" else "message_id"
            self._db.execute(f"UPDATE {table} SET sealed = ? WHERE {column} = ?",
                             (self.seal(record), key))

    def replace_failed(self, failed_id, record):
        """Store ``record`` in place of the record of envelope ``failed_id`` when that one
        could not be decrypted and came from the same sender device (its readable copy:
        ``healing``); it goes after every stored message, so it is unread again.  False
        (nothing changed) when there is no such failed record."""
        row = self._db.execute("SELECT sealed FROM messages WHERE envelope_id = ?",
                               (failed_id,)).fetchone()
        failed = self.unseal(row[0]) if row else {}
        if not failed.get("error") or (failed.get("from"), failed.get("from_dev")) != (
                record["from"], record["from_dev"]):
            return False
        last = self._db.execute("SELECT MAX(pos) FROM messages").fetchone()[0]
        self._db.execute("DELETE FROM messages WHERE envelope_id = ?", (failed_id,))
        self.add_message(record["id"], record, pos=last + 1)
        return True

    def conversation(self, peer, last):
        """The newest ``last`` messages with ``peer``, both ways, oldest first: the stored
        records, each with ``outgoing`` (False: received from ``peer``; True: sent by this
        device, or received as sent by another device of this account).  Ordered by the
        time each was written (``sent_at``), which interleaves the two directions."""
        tag = self._peer_tag(peer)
        received = self._db.execute(
            "SELECT pos, sealed FROM messages WHERE peer = ? ORDER BY pos DESC LIMIT ?",
            (tag, last)).fetchall()
        sent = self._db.execute(
            "SELECT pos, sealed FROM sent WHERE peer = ? ORDER BY pos DESC LIMIT ?",
            (tag, last)).fetchall()
        records = [(self.unseal(sealed), True, pos) for pos, sealed in sent]
        for pos, sealed in received:
            record = self.unseal(sealed)
            records.append((record, bool(record.get("outgoing")), pos))
        records.sort(key=lambda item: (item[0]["sent_at"], item[1], item[2]))
        return [{**record, "outgoing": outgoing} for record, outgoing, _ in records[-last:]]

    # -- contacts (pinned identities) ----------------------------------------------

    def contact(self, user):
        row = self._db.execute("SELECT sealed FROM contacts WHERE user = ?", (user,)).fetchone()
        return self.unseal(row[0]) if row else None

    def put_contact(self, user, record):
        self._db.execute("INSERT OR REPLACE INTO contacts VALUES (?, ?)", (user, self.seal(record)))

    # -- server certificate pins -----------------------------------------------------

    def server_pin(self, server):
        row = self._db.execute(
            "SELECT fingerprint FROM server_pins WHERE server = ?", (server,)
        ).fetchone()
        return row[0] if row else None

    def pin_server(self, server, fingerprint):
        self._db.execute("INSERT OR REPLACE INTO server_pins VALUES (?, ?)", (server, fingerprint))

    # -- what happened to each message (receipts, reactions, edits, deletes) -------------

    def message_events(self, mid):
        """The sealed record of message ``mid`` (``securechat.client.events``), or None."""
        row = self._db.execute("SELECT sealed FROM message_events WHERE mid = ?",
                               (mid,)).fetchone()
        return self.unseal(row[0]) if row else None

    def put_message_events(self, mid, record):
        self._db.execute("INSERT OR REPLACE INTO message_events VALUES (?, ?)",
                         (mid, self.seal(record)))

    # -- the outbox: messages not yet accepted by the server ---------------------------

    def outbox_add(self, entry_id, record):
        self._db.execute("INSERT INTO outbox (entry_id, sealed) VALUES (?, ?)",
                         (entry_id, self.seal(record)))

    def outbox_update(self, entry_id, record):
        self._db.execute("UPDATE outbox SET sealed = ? WHERE entry_id = ?",
                         (self.seal(record), entry_id))

    def outbox_entry(self, entry_id):
        row = self._db.execute("SELECT sealed FROM outbox WHERE entry_id = ?",
                               (entry_id,)).fetchone()
        return self.unseal(row[0]) if row else None

    def outbox_entries(self):
        """``[(entry_id, record)]`` in the order they were queued."""
        return [(entry_id, self.unseal(sealed)) for entry_id, sealed in self._db.execute(
            "SELECT entry_id, sealed FROM outbox ORDER BY pos")]

    def outbox_remove(self, entry_id):
        self._db.execute("DELETE FROM outbox WHERE entry_id = ?", (entry_id,))

    # -- encrypted files: uploads in progress and files received -------------------------

    def upload_tag(self, what):
        """The keyed hash an upload is filed under (``what``: the file and its recipient)."""
        return self._peer_tag("upload\0" + what)

    def file_upload(self, tag):
        row = self._db.execute("SELECT sealed FROM file_uploads WHERE upload = ?",
                               (tag,)).fetchone()
        return self.unseal(row[0]) if row else None

    def put_file_upload(self, tag, record):
        self._db.execute("INSERT OR REPLACE INTO file_uploads VALUES (?, ?)",
                         (tag, self.seal(record)))

    def file_uploads(self):
        """``[(tag, record)]`` of every upload kept (``file_messages.prune_uploads`` bounds them)."""
        return [(tag, self.unseal(sealed)) for tag, sealed in self._db.execute(
            "SELECT upload, sealed FROM file_uploads")]

    def drop_file_upload(self, tag):
        self._db.execute("DELETE FROM file_uploads WHERE upload = ?", (tag,))

    def received_file(self, file_id):
        row = self._db.execute("SELECT sealed FROM received_files WHERE file_id = ?",
                               (file_id,)).fetchone()
        return self.unseal(row[0]) if row else None

    def put_received_file(self, file_id, record):
        self._db.execute(
            "INSERT INTO received_files (file_id, sealed) VALUES (?, ?) ON CONFLICT (file_id) "
            "DO UPDATE SET sealed = excluded.sealed", (file_id, self.seal(record)))

    def drop_received_file(self, file_id):
        self._db.execute("DELETE FROM received_files WHERE file_id = ?", (file_id,))

    def received_files(self):
        """Every file received, oldest first."""
        return [self.unseal(sealed) for (sealed,) in self._db.execute(
            "SELECT sealed FROM received_files ORDER BY pos")]
