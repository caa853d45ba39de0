"""The database schema, written once for SQLite and PostgreSQL, and its version.

Changelog:
  1 — accounts, devices, keys, envelope queue, rooms with roles and ciphertext history.
  2 — envelope ids are unique per recipient device (and per room's history) instead of
      in a table of every id ever sent: that table grew without bound, kept who sent
      each envelope forever, and its random-key inserts were half the cost of a send.
  3 — a room message's body is stored once, in the room's history (with its digest),
      and its queue rows point at it (room, pos) instead of holding a copy each: a
      message to a room of 50 devices wrote 51 copies, a broadcast one per device.
"""

SCHEMA_VERSION = 3

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"

STATEMENTS = [  # version 1; MIGRATIONS take it to SCHEMA_VERSION
    """CREATE TABLE accounts (
        user_id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        identity_key TEXT NOT NULL,
        created BIGINT NOT NULL)""",
    """CREATE TABLE devices (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        device_keys TEXT,
        signature TEXT,
        next_seq BIGINT NOT NULL DEFAULT 0,
        next_otk BIGINT NOT NULL DEFAULT 0,
        created BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id))""",
    """CREATE TABLE device_lists (
        user_id TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        device_list TEXT NOT NULL,
        signature TEXT NOT NULL)""",
    """CREATE TABLE one_time_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        kid TEXT NOT NULL,
        pos BIGINT NOT NULL,
        key TEXT NOT NULL,
        signature TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id, kid))""",
    "CREATE INDEX one_time_keys_order ON one_time_keys (user_id, device_id, pos)",
    """CREATE TABLE claimed_kids (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        kid TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id, kid))""",
    """CREATE TABLE fallback_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        kid TEXT NOT NULL,
        key TEXT NOT NULL,
        signature TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, device_id))""",
    """CREATE TABLE envelope_ids (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        created BIGINT NOT NULL)""",
    """CREATE TABLE queue (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        envelope_id TEXT NOT NULL,
        body TEXT NOT NULL,
        digest TEXT NOT NULL,
        created BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, seq))""",
    "CREATE INDEX queue_by_id ON queue (user_id, device_id, envelope_id)",
    """CREATE TABLE rooms (
        room TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        password_hash TEXT,
        created BIGINT NOT NULL)""",
    """CREATE TABLE room_members (
        room TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'member',
        joined BIGINT NOT NULL,
        PRIMARY KEY (room, user_id))""",
    "CREATE INDEX room_members_by_user ON room_members (user_id)",
    """CREATE TABLE room_history (
        room TEXT NOT NULL,
        pos BIGINT NOT NULL,
        envelope_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created BIGINT NOT NULL,
        PRIMARY KEY (room, pos))""",
    "CREATE INDEX room_history_age ON room_history (created)",
    """CREATE TABLE room_counters (
        room TEXT PRIMARY KEY,
        next_pos BIGINT NOT NULL)""",
]

MIGRATIONS = {
    2: [
        "DROP TABLE envelope_ids",
        "DROP INDEX queue_by_id",
        "CREATE UNIQUE INDEX queue_envelope ON queue (user_id, device_id, envelope_id)",
        "CREATE UNIQUE INDEX room_history_envelope ON room_history (room, envelope_id)",
    ],
    3: [
        "ALTER TABLE room_history ADD COLUMN digest TEXT",  # NULL for entries older than v3
        """CREATE TABLE queue_v3 (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            envelope_id TEXT NOT NULL,
            body TEXT,
            digest TEXT,
            room TEXT,
            pos BIGINT,
            created BIGINT NOT NULL,
            PRIMARY KEY (user_id, device_id, seq),
            CHECK ((body IS NOT NULL AND digest IS NOT NULL AND room IS NULL AND pos IS NULL)
                   OR (body IS NULL AND digest IS NULL AND room IS NOT NULL
                       AND pos IS NOT NULL)))""",
        "INSERT INTO queue_v3 (user_id, device_id, seq, envelope_id, body, digest, created) "
        "SELECT user_id, device_id, seq, envelope_id, body, digest, created FROM queue",
        "DROP TABLE queue",
        "ALTER TABLE queue_v3 RENAME TO queue",
        "CREATE UNIQUE INDEX queue_envelope ON queue (user_id, device_id, envelope_id)",
        "CREATE INDEX queue_shared_body ON queue (room, pos) WHERE room IS NOT NULL",
    ],
}
"""The statements that take a database from the version before to the key's version."""
