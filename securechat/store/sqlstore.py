"""IStore implemented once, in SQL that SQLite and PostgreSQL both accept.

Each operation is an ``async def`` transaction body that awaits
``txn.execute(sql, args)`` (rows as a list of tuples).  An *engine* runs
the body in one database transaction: the PostgreSQL engine awaits real
asynchronous queries, the SQLite engine runs it in a thread where every
``execute`` has already finished, so the same code serves both and nothing
outside this package knows which database is behind it.
"""

import hashlib
import time

from zope.interface import implementer

from securechat.store.errors import (
    DuplicateEnvelope, KeyConflict, RoomExists, StaleVersion, StoreError, UserExists)
from securechat.store.interface import IStore
from securechat.store.schema import SCHEMA_VERSION, STATEMENTS, VERSION_TABLE


def now_ms():
    return int(time.time() * 1000)


def digest(body):
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


async def _migrate(txn):
    await txn.execute(VERSION_TABLE)
    rows = await txn.execute("SELECT version FROM schema_version")
    version = rows[0][0] if rows else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this securechat "
            f"understands ({SCHEMA_VERSION}); upgrade securechat"
        )
    if version == 0:
        for statement in STATEMENTS:
            await txn.execute(statement)
        await txn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


@implementer(IStore)
class SqlStore:
    def __init__(self, engine):
        self._engine = engine

    def _run(self, body, *args):
        return self._engine.run(body, *args)

    async def start(self):
        await self._engine.start()
        await self._run(_migrate)

    def stop(self):
        return self._engine.stop()

    # -- accounts -------------------------------------------------------------

    def create_account(self, user, secret_hash, identity_key):
        async def body(txn):
            if await txn.execute("SELECT 1 FROM accounts WHERE user_id = ?", (user,)):
                raise UserExists(user)
            await txn.execute(
                "INSERT INTO accounts (user_id, secret_hash, identity_key, created) "
                "VALUES (?, ?, ?, ?)", (user, secret_hash, identity_key, now_ms()))

        return self._run(body)

    def get_account(self, user):
        async def body(txn):
            rows = await txn.execute(
                "SELECT user_id, secret_hash, identity_key, created FROM accounts "
                "WHERE user_id = ?", (user,))
            if not rows:
                return None
            return dict(zip(("user", "secret_hash", "identity_key", "created"), rows[0]))

        return self._run(body)

    def count_accounts(self):
        async def body(txn):
            return (await txn.execute("SELECT count(*) FROM accounts"))[0][0]

        return self._run(body)

    # -- devices ------------------------------------------------------------------

    def set_device_keys(self, user, device, device_keys, signature):
        async def body(txn):
            rows = await txn.execute(
                "SELECT device_keys FROM devices WHERE user_id = ? AND device_id = ?",
                (user, device))
            if rows and rows[0][0] is not None:
                if rows[0][0] != device_keys:
                    raise KeyConflict(f"device {device} already has other keys")
                return
            if rows:
                await txn.execute(
                    "UPDATE devices SET device_keys = ?, signature = ? "
                    "WHERE user_id = ? AND device_id = ?", (device_keys, signature, user, device))
            else:
                await txn.execute(
                    "INSERT INTO devices (user_id, device_id, device_keys, signature, created) "
                    "VALUES (?, ?, ?, ?, ?)", (user, device, device_keys, signature, now_ms()))

        return self._run(body)

    def get_devices(self, user):
        async def body(txn):
            rows = await txn.execute(
                "SELECT device_id, device_keys, signature FROM devices WHERE user_id = ? "
                "AND device_keys IS NOT NULL ORDER BY device_id", (user,))
            return [dict(zip(("device", "device_keys", "signature"), row)) for row in rows]

        return self._run(body)

    def all_devices(self):
        async def body(txn):
            rows = await txn.execute(
                "SELECT user_id, device_id FROM devices WHERE device_keys IS NOT NULL "
                "ORDER BY user_id, device_id")
            return [tuple(row) for row in rows]

        return self._run(body)

    def set_device_list(self, user, version, device_list, signature):
        async def body(txn):
            rows = await txn.execute("SELECT version FROM device_lists WHERE user_id = ?", (user,))
            if rows and rows[0][0] >= version:
                raise StaleVersion(f"version {version} is not above {rows[0][0]}")
            if rows:
                await txn.execute(
                    "UPDATE device_lists SET version = ?, device_list = ?, signature = ? "
                    "WHERE user_id = ?", (version, device_list, signature, user))
            else:
                await txn.execute(
                    "INSERT INTO device_lists (user_id, version, device_list, signature) "
                    "VALUES (?, ?, ?, ?)", (user, version, device_list, signature))

        return self._run(body)

    def get_device_list(self, user):
        async def body(txn):
            rows = await txn.execute(
                "SELECT version, device_list, signature FROM device_lists WHERE user_id = ?",
                (user,))
            return dict(zip(("version", "device_list", "signature"), rows[0])) if rows else None

        return self._run(body)

    # -- one-time and fallback keys -----------------------------------------------

    def add_one_time_keys(self, user, device, keys):
        async def body(txn):
            fresh = []
            for kid, key, signature in keys:
                if await txn.execute(
                        "SELECT 1 FROM claimed_kids WHERE user_id = ? AND device_id = ? AND kid = ?",
                        (user, device, kid)):
                    raise KeyConflict(f"one-time key {kid} was already handed out")
                rows = await txn.execute(
                    "SELECT key, signature FROM one_time_keys "
                    "WHERE user_id = ? AND device_id = ? AND kid = ?", (user, device, kid))
                if rows:
                    if tuple(rows[0]) != (key, signature):
                        raise KeyConflict(f"one-time key {kid} is already published with another key")
                    continue
                fresh.append((kid, key, signature))
            if fresh:
                rows = await txn.execute(
                    "UPDATE devices SET next_otk = next_otk + ? WHERE user_id = ? AND device_id = ? "
                    "RETURNING next_otk", (len(fresh), user, device))
                if not rows:
                    raise KeyConflict(f"device {device} has no published identity keys")
                first = rows[0][0] - len(fresh) + 1
                for pos, (kid, key, signature) in enumerate(fresh, first):
                    await txn.execute(
                        "INSERT INTO one_time_keys (user_id, device_id, kid, pos, key, signature) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (user, device, kid, pos, key, signature))
            return await _otk_count(txn, user, device)

        return self._run(body)

    def set_fallback_key(self, user, device, kid, key, signature):
        async def body(txn):
            await txn.execute(
                "DELETE FROM fallback_keys WHERE user_id = ? AND device_id = ?", (user, device))
            await txn.execute(
                "INSERT INTO fallback_keys (user_id, device_id, kid, key, signature, used) "
                "VALUES (?, ?, ?, ?, ?, 0)", (user, device, kid, key, signature))

        return self._run(body)

    def claim_keys(self, pairs):
        async def body(txn):
            claimed = {}
            for user, device in pairs:
                key = await _claim_one_time_key(txn, user, device)
                if key is None:
                    key = await _use_fallback_key(txn, user, device)
                if key is not None:
                    claimed[(user, device)] = key
            return claimed

        return self._run(body)

    def key_counts(self, user, device):
        async def body(txn):
            rows = await txn.execute(
                "SELECT used FROM fallback_keys WHERE user_id = ? AND device_id = ?",
                (user, device))
            return {"otk_count": await _otk_count(txn, user, device),
                    "fallback_used": bool(rows and rows[0][0]), "has_fallback": bool(rows)}

        return self._run(body)

    # -- envelopes ------------------------------------------------------------------

    def enqueue(self, envelopes):
        async def body(txn):
            created = now_ms()
            for envelope in envelopes:
                if await txn.execute("SELECT 1 FROM envelope_ids WHERE id = ?", (envelope["id"],)):
                    raise DuplicateEnvelope(envelope["id"])
            placed = []
            for envelope in envelopes:
                await txn.execute(
                    "INSERT INTO envelope_ids (id, sender, sender_device, created) "
                    "VALUES (?, ?, ?, ?)",
                    (envelope["id"], envelope["sender"], envelope["sender_device"], created))
                body_digest = digest(envelope["body"])
                seqs = []
                for user, device in envelope["recipients"]:
                    rows = await txn.execute(
                        "UPDATE devices SET next_seq = next_seq + 1 "
                        "WHERE user_id = ? AND device_id = ? RETURNING next_seq", (user, device))
                    if not rows:
                        raise StoreError(f"no device {user}/{device}")
                    seq = rows[0][0]
                    await txn.execute(
                        "INSERT INTO queue (user_id, device_id, seq, envelope_id, body, digest, "
                        "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (user, device, seq, envelope["id"], envelope["body"], body_digest, created))
                    seqs.append((user, device, seq))
                if envelope.get("history"):
                    await _append_history(txn, envelope["history"], envelope["id"],
                                          envelope["body"], created)
                placed.append(seqs)
            return placed

        return self._run(body)

    def fetch_queue(self, user, device, after_seq, limit):
        async def body(txn):
            rows = await txn.execute(
                "SELECT seq, envelope_id, body, digest FROM queue "
                "WHERE user_id = ? AND device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (user, device, after_seq, limit))
            return [{"seq": seq, "id": envelope_id, "body": text, "intact": digest(text) == stored}
                    for seq, envelope_id, text, stored in rows]

        return self._run(body)

    def queue_length(self, user, device):
        async def body(txn):
            return (await txn.execute(
                "SELECT count(*) FROM queue WHERE user_id = ? AND device_id = ?",
                (user, device)))[0][0]

        return self._run(body)

    def ack(self, user, device, ids):
        async def body(txn):
            removed = 0
            for envelope_id in ids:
                rows = await txn.execute(
                    "DELETE FROM queue WHERE user_id = ? AND device_id = ? AND envelope_id = ? "
                    "RETURNING seq", (user, device, envelope_id))
                removed += len(rows)
            return removed

        return self._run(body)

    # -- rooms ------------------------------------------------------------------------

    def create_room(self, room, owner, password_hash):
        async def body(txn):
            if await txn.execute("SELECT 1 FROM rooms WHERE room = ?", (room,)):
                raise RoomExists(room)
            created = now_ms()
            await txn.execute(
                "INSERT INTO rooms (room, owner, password_hash, created) VALUES (?, ?, ?, ?)",
                (room, owner, password_hash, created))
            await txn.execute(
                "INSERT INTO room_members (room, user_id, role, joined) VALUES (?, ?, 'owner', ?)",
                (room, owner, created))

        return self._run(body)

    def get_room(self, room):
        async def body(txn):
            rows = await txn.execute(
                "SELECT room, owner, password_hash, created FROM rooms WHERE room = ?", (room,))
            return dict(zip(("room", "owner", "password_hash", "created"), rows[0])) if rows else None

        return self._run(body)

    def add_member(self, room, user):
        async def body(txn):
            if await txn.execute(
                    "SELECT 1 FROM room_members WHERE room = ? AND user_id = ?", (room, user)):
                return False
            await txn.execute(
                "INSERT INTO room_members (room, user_id, joined) VALUES (?, ?, ?)",
                (room, user, now_ms()))
            return True

        return self._run(body)

    def member_role(self, room, user):
        async def body(txn):
            rows = await txn.execute(
                "SELECT role FROM room_members WHERE room = ? AND user_id = ?", (room, user))
            return rows[0][0] if rows else None

        return self._run(body)

    def set_member_role(self, room, user, role):
        async def body(txn):
            rows = await txn.execute(
                "UPDATE room_members SET role = ? WHERE room = ? AND user_id = ? RETURNING role",
                (role, room, user))
            return bool(rows)

        return self._run(body)

    def room_history(self, room, before_pos, limit):
        async def body(txn):
            rows = await txn.execute(
                "SELECT pos, envelope_id, body, created FROM room_history WHERE room = ? "
                "AND pos < ? ORDER BY pos DESC LIMIT ?",
                (room, before_pos if before_pos is not None else 2**62, limit))
            return [dict(zip(("pos", "id", "body", "created"), row)) for row in reversed(rows)]

        return self._run(body)

    def prune_history(self, older_than, keep_per_room):
        async def body(txn):
            rows = await txn.execute(
                "DELETE FROM room_history WHERE created < ? RETURNING pos", (older_than,))
            removed = len(rows)
            for (room, newest) in await txn.execute("SELECT room, next_pos FROM room_counters"):
                rows = await txn.execute(
                    "DELETE FROM room_history WHERE room = ? AND pos <= ? RETURNING pos",
                    (room, newest - keep_per_room))
                removed += len(rows)
            return removed

        return self._run(body)

    def remove_member(self, room, user):
        async def body(txn):
            rows = await txn.execute(
                "DELETE FROM room_members WHERE room = ? AND user_id = ? RETURNING user_id",
                (room, user))
            return bool(rows)

        return self._run(body)

    def room_members(self, room):
        async def body(txn):
            rows = await txn.execute(
                "SELECT user_id FROM room_members WHERE room = ? ORDER BY user_id", (room,))
            return [row[0] for row in rows]

        return self._run(body)

    def rooms_of(self, user):
        async def body(txn):
            rows = await txn.execute(
                "SELECT room FROM room_members WHERE user_id = ? ORDER BY room", (user,))
            return [row[0] for row in rows]

        return self._run(body)


async def _append_history(txn, room, envelope_id, body, created):
    rows = await txn.execute(
        "UPDATE room_counters SET next_pos = next_pos + 1 WHERE room = ? RETURNING next_pos",
        (room,))
    if not rows:
        await txn.execute("INSERT INTO room_counters (room, next_pos) VALUES (?, 1)", (room,))
        rows = [(1,)]
    await txn.execute(
        "INSERT INTO room_history (room, pos, envelope_id, body, created) VALUES (?, ?, ?, ?, ?)",
        (room, rows[0][0], envelope_id, body, created))


async def _otk_count(txn, user, device):
    return (await txn.execute(
        "SELECT count(*) FROM one_time_keys WHERE user_id = ? AND device_id = ?",
        (user, device)))[0][0]


async def _claim_one_time_key(txn, user, device):
    """Take the oldest one-time key, exactly once.

    Two PostgreSQL transactions may pick the same oldest key; the one that
    deletes it second deletes nothing (the row is gone when its lock is
    granted) and simply tries the next oldest.
    """
    while True:
        rows = await txn.execute(
            "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ? AND pos = ("
            "SELECT min(pos) FROM one_time_keys WHERE user_id = ? AND device_id = ?) "
            "RETURNING kid, key, signature", (user, device, user, device))
        if rows:
            kid, key, signature = rows[0]
            await txn.execute(
                "INSERT INTO claimed_kids (user_id, device_id, kid) VALUES (?, ?, ?)",
                (user, device, kid))
            return {"kid": kid, "key": key, "signature": signature, "fallback": False}
        if not await _otk_count(txn, user, device):
            return None


async def _use_fallback_key(txn, user, device):
    rows = await txn.execute(
        "UPDATE fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? "
        "RETURNING kid, key, signature", (user, device))
    if not rows:
        return None
    kid, key, signature = rows[0]
    return {"kid": kid, "key": key, "signature": signature, "fallback": True}
