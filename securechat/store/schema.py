"""The database schema, written once for SQLite and PostgreSQL, and its version.

Changelog:
  1 — accounts, devices, keys, envelope queue, rooms with roles and ciphertext history.
  2 — envelope ids are unique per recipient device (and per room's history) instead of
      in a table of every id ever sent: that table grew without bound, kept who sent
      each envelope forever, and its random-key inserts were half the cost of a send.
  3 — a room message's body is stored once, in the room's history (with its digest),
      and its queue rows point at it (room, pos) instead of holding a copy each: a
      message to a room of 50 devices wrote 51 copies, a broadcast one per device.
  4 — a room message is no longer queued per device at all: each device following a
      room keeps its position in the room's history (room_cursors), moved by its acks,
      so a message costs one row whatever the room's size.  Queue rows and history
      entries are numbered by one sequence shared by all devices (seq_counter), so a
      device still gets its envelopes and its rooms' in the order they were stored.
  5 — room history indexed by (room, seq): a device back from a long absence reads its
      rooms' backlog page by page from where the last page ended, instead of from its
      position each time (which made the pages of a long backlog cost its square).
  6 — room bans: a kicked user stays out of the room (its join refused) until the
      room's owner or an admin lifts the ban; without them a kick from an open room
      was undone by joining again.  And invite-only rooms, which nobody joins uninvited.
  7 — the relay's own stable id (relay_identity, one row, made by the first start that
      finds none): clients salt the password-derived login secret with it instead of the
      address they typed, and devices sign it into their logins.  Every node sharing the
      database reports the same id.
  8 — password keys: an account holds the Ed25519 public key its password derives
      (password_key) and the relay checks signatures, no argon2 hash of a login
      secret that crossed the wire.  Accounts from before keep their hash
      (secret_hash, now nullable) until their device's next login moves them; an
      account holds exactly one of the two.
  9 — deleted accounts: the name and when its account was deleted (deleted_accounts),
      kept until the name is registered again, so that a name contacts still trust is
      not taken over before the relay's quarantine ends, and lookups of it can answer
      "deleted" instead of "no such user".
  10 — device names and last-seen times: a name the account's user chose (``devices
      rename``; empty until then, and a client shows the device's id) and when the
      device last logged in (NULL before its first login after this version).
  11 — the signed device list decides which devices are current: a device is ``listed``
      once a list its account published holds it (or at once, for an account that has
      published none yet: the moment between registering and the first list); a device
      with keys in no list is pending (being linked) and follows no room.  Every device
      with keys before this version is listed (each was current then).  A device removed
      from the list goes for good: (user, device, removed_at) in removed_devices, so its
      id is refused at login and upload ever after.
  12 — recovery keys: an account's public recovery key and its identity key's seed
      sealed by the recovery key (recovery_keys, at most one row an account); a device
      that proves the recovery key logs in where every device of the account is lost.
  13 — disabled accounts: the relay's operator may disable an account (securechat-admin
      users disable); its logins are refused until it is enabled again.
  14 — invites: the SHA-256 of each registration invite the operator made, with the uses
      it has left and when it expires (never the token itself).
  15 — no change: a number set aside for several relay nodes, which needed no table
      (their hints travel by NOTIFY).
  16 — limits on guessing kept in the database, so they hold across nodes: failed logins
      per (account, address) with their back-off (login_failures), and the events of the
      sliding windows (limit_events: failed logins and registrations per address, wrong
      room passwords), each with when it leaves its window, and the token buckets of key
      claims (limit_buckets: per claimer, per device giving out one-time keys).  Tables
      of their own: no other migration touches them, whatever their order.
  17 — encrypted files: each upload (files: its owner, the size it declared, what is
      stored so far, the hash of its chunks once finished, when it expires), its
      ciphertext chunks (file_chunks, in order, each with its SHA-256) and the devices
      still to download it (file_recipients).  Tables of their own: no other migration
      touches them, whatever their order.
"""

from securechat.wire import BROADCAST_ROOM

SCHEMA_VERSION = 17

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
    4: [
        "ALTER TABLE room_history ADD COLUMN seq BIGINT",  # NULL for entries older than v4
        "ALTER TABLE room_history ADD COLUMN sender TEXT",
        "ALTER TABLE room_history ADD COLUMN sender_device TEXT",
        # The next history position each member device has not acknowledged; until_pos
        # ends it at the last message sent while its user was a member.
        """CREATE TABLE room_cursors (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            room TEXT NOT NULL,
            next_pos BIGINT NOT NULL,
            until_pos BIGINT,
            PRIMARY KEY (user_id, device_id, room))""",
        "CREATE INDEX room_cursors_by_room ON room_cursors (room, next_pos)",
        "CREATE TABLE seq_counter (last_seq BIGINT NOT NULL)",
        "INSERT INTO seq_counter (last_seq) SELECT COALESCE(max(seq), 0) FROM queue",
        """CREATE TABLE queue_v4 (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            envelope_id TEXT NOT NULL,
            body TEXT NOT NULL,
            digest TEXT NOT NULL,
            created BIGINT NOT NULL,
            PRIMARY KEY (user_id, device_id, seq))""",
        # Queue rows that pointed at a history entry get their own copy back.
        "INSERT INTO queue_v4 (user_id, device_id, seq, envelope_id, body, digest, created) "
        "SELECT q.user_id, q.device_id, q.seq, q.envelope_id, COALESCE(q.body, h.body), "
        "COALESCE(q.digest, h.digest), q.created "
        "FROM queue q LEFT JOIN room_history h ON h.room = q.room AND h.pos = q.pos",
        "DROP TABLE queue",
        "ALTER TABLE queue_v4 RENAME TO queue",
        "CREATE UNIQUE INDEX queue_envelope ON queue (user_id, device_id, envelope_id)",
        "ALTER TABLE devices DROP COLUMN next_seq",
        # Every device with keys follows its user's rooms and the broadcast room from now on.
        "INSERT INTO room_cursors (user_id, device_id, room, next_pos) "
        "SELECT d.user_id, d.device_id, r.room, COALESCE(c.next_pos, 0) + 1 "
        "FROM devices d JOIN (SELECT user_id, room FROM room_members UNION "
        f"SELECT user_id, '{BROADCAST_ROOM}' FROM accounts) r ON r.user_id = d.user_id "
        "LEFT JOIN room_counters c ON c.room = r.room WHERE d.device_keys IS NOT NULL",
    ],
    5: [
        "CREATE INDEX room_history_seq ON room_history (room, seq)",
    ],
    6: [
        # role: what the banned user was in the room (an admin lifts only a member's ban);
        # banned_by: who removed them (an admin cannot lift the owner's ban).
        """CREATE TABLE room_bans (
            room TEXT NOT NULL,
            user_id TEXT NOT NULL,
            role TEXT NOT NULL,
            banned_by TEXT NOT NULL,
            created BIGINT NOT NULL,
            PRIMARY KEY (room, user_id))""",
        "ALTER TABLE rooms ADD COLUMN invite_only BOOLEAN NOT NULL DEFAULT FALSE",
    ],
    7: [
        # At most one row (only = 1); its id is chosen by the store's first start after this.
        """CREATE TABLE relay_identity (
            only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
            relay_id TEXT NOT NULL)""",
    ],
    8: [
        # Rebuilt, as SQLite cannot drop a NOT NULL: every existing account keeps its hash.
        """CREATE TABLE accounts_v8 (
            user_id TEXT PRIMARY KEY,
            password_key TEXT,
            secret_hash TEXT,
            identity_key TEXT NOT NULL,
            created BIGINT NOT NULL,
            CHECK ((password_key IS NULL) <> (secret_hash IS NULL)))""",
        "INSERT INTO accounts_v8 (user_id, secret_hash, identity_key, created) "
        "SELECT user_id, secret_hash, identity_key, created FROM accounts",
        "DROP TABLE accounts",
        "ALTER TABLE accounts_v8 RENAME TO accounts",
    ],
    9: [
        """CREATE TABLE deleted_accounts (
            user_id TEXT PRIMARY KEY,
            deleted_at BIGINT NOT NULL)""",
    ],
    10: [
        "ALTER TABLE devices ADD COLUMN name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE devices ADD COLUMN last_seen BIGINT",
    ],
    11: [
        "ALTER TABLE devices ADD COLUMN listed BOOLEAN NOT NULL DEFAULT FALSE",
        "UPDATE devices SET listed = TRUE WHERE device_keys IS NOT NULL",
        """CREATE TABLE removed_devices (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            removed_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, device_id))""",
    ],
    12: [
        # A table of its own: no other migration touches it, whatever their order.
        """CREATE TABLE recovery_keys (
            user_id TEXT PRIMARY KEY,
            recovery_key TEXT NOT NULL,
            backup TEXT NOT NULL,
            created BIGINT NOT NULL)""",
    ],
    13: [
        "ALTER TABLE accounts ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE",
    ],
    14: [
        """CREATE TABLE invites (
            token_hash TEXT PRIMARY KEY,
            uses_left INTEGER NOT NULL,
            expires_at BIGINT,
            created BIGINT NOT NULL)""",
    ],
    15: [],  # nothing: see the changelog
    16: [
        """CREATE TABLE login_failures (
            user_id TEXT NOT NULL,
            address TEXT NOT NULL,
            failures INTEGER NOT NULL,
            last_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, address))""",
        "CREATE INDEX login_failures_age ON login_failures (last_at)",
        """CREATE TABLE limit_events (
            scope TEXT NOT NULL,
            subject TEXT NOT NULL,
            at BIGINT NOT NULL,
            weight INTEGER NOT NULL,
            expires_at BIGINT NOT NULL)""",
        "CREATE INDEX limit_events_window ON limit_events (scope, subject, at)",
        "CREATE INDEX limit_events_expiry ON limit_events (expires_at)",
        """CREATE TABLE limit_buckets (
            scope TEXT NOT NULL,
            subject TEXT NOT NULL,
            tokens DOUBLE PRECISION NOT NULL,
            stamp BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (scope, subject))""",
        "CREATE INDEX limit_buckets_expiry ON limit_buckets (expires_at)",
    ],
    17: [
        # size: the ciphertext size declared at file.begin (what the quota counts);
        # stored/chunks: how much of it arrived; ct_hash and finished: set by file.finish.
        """CREATE TABLE files (
            file_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            owner_device TEXT NOT NULL,
            size BIGINT NOT NULL,
            stored BIGINT NOT NULL DEFAULT 0,
            chunks BIGINT NOT NULL DEFAULT 0,
            ct_hash TEXT,
            finished BIGINT,
            created BIGINT NOT NULL,
            expires BIGINT NOT NULL)""",
        "CREATE INDEX files_by_owner ON files (owner)",
        "CREATE INDEX files_expiry ON files (expires)",
        """CREATE TABLE file_chunks (
            file_id TEXT NOT NULL,
            idx BIGINT NOT NULL,
            data BYTEA NOT NULL,
            digest TEXT NOT NULL,
            PRIMARY KEY (file_id, idx))""",
        """CREATE TABLE file_recipients (
            file_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            PRIMARY KEY (file_id, user_id, device_id))""",
    ],
}
"""The statements that take a database from the version before to the key's version."""
