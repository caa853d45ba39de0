"""IStore for both databases: every method runs one transaction of ``transactions``.

A backend (``sqlite.SqliteStore``, ``postgres.PostgresStore``) only opens
and closes its connections and says how to run a transaction body
(``_run``); what each method does is written once, in the aggregate's
module of ``securechat.store.transactions``.
"""

import functools
import secrets
import time

from twisted.internet import defer, reactor
from zope.interface import implementer

from securechat.store.errors import StoreUnavailable
from securechat.store.interface import IStore
from securechat.store.transactions import (
    account_deletion, accounts, admin, devices, files, health, history, limits, migrate,
    queue_reads, queue_writes, recovery, rooms)


RELAY_ID_BYTES = 16
"""Random bytes of the relay's id (22 characters of URL-safe base64)."""

ACK_GATHER_SECONDS = 0.01
"""How long an ack may wait for company: nothing waits on it but the client's ack answer,
so it rides along with the next envelopes' commit, or commits with other acks after this."""


class GroupCommit:
    """Calls that arrive while a group is committing share the next transaction.

    Under load a commit (and its fsync) then serves many callers at once;
    with one caller at a time it adds no delay, except for items submitted
    with ``gather`` (acks): those wait that long for an urgent item to
    share a commit with.  ``group_body(txn, items)`` returns one outcome per
    item: a result, or the StoreError of that caller alone.

    One caller's item never fails the others: when a group's transaction
    fails as a whole for a reason that is not the database's state
    (StoreUnavailable: down, or its disk full, fails every item alike), its
    items are committed again one per transaction, so only an item that
    fails alone fails.
    """

    def __init__(self, run, group_body, clock=reactor):
        self._run = run
        self._group_body = group_body
        self._clock = clock
        self.observe = None
        """Called ``(commit_seconds, waited_seconds)`` after each group: how long its
        transaction took, and how long its oldest item waited from ``submit`` to the end
        of it (the operator's metrics; once per group, never per item)."""
        self._oldest_at = None  # perf_counter() of the oldest item waiting
        self._waiting = []
        self._alone = []  # (item, Deferred) of a failed group, to commit one at a time
        self._busy = False
        self._timer = None

    def run_as(self, group_body):
        """Commit the groups from now on with ``group_body`` (the same items and outcomes)."""
        self._group_body = group_body

    def submit(self, item, gather=0.0):
        d = defer.Deferred()
        if not self._waiting:
            self._oldest_at = time.perf_counter()
        self._waiting.append((item, d))
        if self._busy:
            return d
        if not gather:
            self._commit()
        elif self._timer is None:
            self._timer = self._clock.callLater(gather, self._commit)
        return d

    def _commit(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        oldest_at = started = time.perf_counter()
        if self._alone:
            batch = [self._alone.pop(0)]
        else:
            batch, self._waiting = self._waiting, []
            oldest_at = self._oldest_at
        self._busy = True
        done = self._run(self._group_body, [item for item, _ in batch])
        if self.observe is not None:
            done.addBoth(self._observed, started, oldest_at)
        done.addCallbacks(self._answer, self._failed, callbackArgs=(batch,),
                          errbackArgs=(batch,))
        done.addBoth(self._next)

    def _observed(self, outcome, started, oldest_at):
        now = time.perf_counter()
        self.observe(now - started, now - oldest_at)
        return outcome

    @staticmethod
    def _answer(outcomes, batch):
        for (_, d), outcome in zip(batch, outcomes):
            if isinstance(outcome, Exception):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def _failed(self, failure, batch):
        if len(batch) > 1 and not failure.check(StoreUnavailable):
            self._alone.extend(batch)
            return
        for _, d in batch:
            d.errback(failure)

    def _next(self, _):
        self._busy = False
        if self._alone or self._waiting:
            self._commit()


@implementer(IStore)
class SqlStore:
    def __init__(self, clock=None):
        """``clock`` (IReactorTime): what stamps are read from, the reactor unless a test
        drives time (timers, like the acks' gathering, always run on the reactor)."""
        self._clock = clock if clock is not None else reactor
        self._pool = None
        # Envelopes and acks share transactions: one fsync serves both.
        self._writes = GroupCommit(self._run, queue_writes.txn_write_group)
        # Device-key logins arriving together (a storm after a restart) share a read, and
        # so do the first reads of their queues that follow.
        self._logins = GroupCommit(self._run, devices.txn_device_login_group)
        self._first_reads = GroupCommit(self._run, queue_reads.txn_fetch_queue_group)
        # ... and so do the login limits' reads of those logins.
        self._limit_reads = GroupCommit(self._run, limits.txn_read_limits_group)
        # File chunks arriving together (one upload's several in flight, or several
        # uploads) share a commit and its fsync, in the order they came.
        self._chunk_writes = GroupCommit(self._run, files.txn_put_chunk_group)
        self._observe_acks = None

    def _open(self):
        """Open the connections; a Deferred."""
        raise NotImplementedError

    def _close(self):
        """Close the connection pool (again is harmless); a Deferred."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        return defer.succeed(None)

    def _run(self, body, *args):
        """Run ``body(txn, *args)`` as one transaction, its ``txn.now_ms`` read from
        ``now_ms()`` as it is submitted; a Deferred of its result."""
        raise NotImplementedError

    def _read(self, body, *args):
        """Run ``body(txn, *args)``, a read of one statement, whose result needs no
        transaction around it; a Deferred of its result.  A store may spare it the
        transaction's own work (PostgreSQL: the COMMIT's round trip); by default it is
        one like any other."""
        return self._run(body, *args)

    def now_ms(self):
        return int(self._clock.seconds() * 1000)

    def start(self):
        return defer.ensureDeferred(self._start())

    async def _start(self):
        await self._open()
        try:
            await self._run(migrate.txn_migrate)
        except Exception:
            await self._close()
            raise

    def stop(self):
        return self._close()

    def create_account(self, user, password_key, identity_key, quarantine_ms=0,
                       invite_hash=None):
        return self._run(accounts.txn_create_account, user, password_key, identity_key,
                         quarantine_ms, invite_hash)

    def delete_account(self, user):
        return self._run(account_deletion.txn_delete_account, user)

    def deleted_at(self, user):
        return self._run(accounts.txn_deleted_at, user)

    def get_account(self, user):
        return self._run(accounts.txn_get_account, user)

    def move_to_password_key(self, user, secret_hash, password_key):
        return self._run(accounts.txn_move_to_password_key, user, secret_hash, password_key)

    def replace_password_key(self, user, old_key, new_key):
        return self._run(accounts.txn_replace_password_key, user, old_key, new_key)

    def set_recovery(self, user, recovery_key, backup):
        return self._run(recovery.txn_set_recovery, user, recovery_key, backup)

    def get_recovery(self, user):
        return self._run(recovery.txn_get_recovery, user)

    def reset_password_key(self, user, recovery_key, password_key):
        return self._run(recovery.txn_reset_password_key, user, recovery_key, password_key)

    def relay_id(self):
        return self._run(accounts.txn_relay_id, secrets.token_urlsafe(RELAY_ID_BYTES))

    def count_accounts(self):
        return self._run(accounts.txn_count_accounts)

    def set_device_keys(self, user, device, device_keys, signature, max_devices=None):
        return self._run(devices.txn_set_device_keys, user, device, device_keys, signature,
                         max_devices)

    def remove_device(self, user, device):
        return self._run(devices.txn_remove_device, user, device)

    def sweep_removed_devices(self, since_ms):
        return self._run(devices.txn_sweep_removed_devices, since_ms)

    def removed_at(self, user, device):
        return self._run(devices.txn_removed_at, user, device)

    def ping(self):
        return self._run(health.txn_ping)

    def announce_writes(self, node):
        """Have every write group's commit announce what it stored, as ``node``
        (``queue_writes.txn_write_group_announced``)."""
        self._writes.run_as(functools.partial(queue_writes.txn_write_group_announced, node))

    def last_seq(self):
        return self._run(queue_reads.txn_last_seq)

    def queued_total(self):
        return self._run(health.txn_queued_total)

    def observe_writes(self, observe):
        self._writes.observe = observe

    def observe_acks(self, observe):
        self._observe_acks = observe

    def users_page(self, after, limit):
        return self._run(admin.txn_users_page, after, limit)

    def user_detail(self, user):
        return self._run(admin.txn_user_detail, user)

    def rooms_page(self, after, limit):
        return self._run(admin.txn_rooms_page, after, limit)

    def room_detail(self, room):
        return self._run(admin.txn_room_detail, room)

    def stats(self):
        return self._run(admin.txn_stats)

    def set_disabled(self, user, disabled):
        return self._run(admin.txn_set_disabled, user, disabled)

    def disabled_users(self):
        return self._run(admin.txn_disabled_users)

    def create_invite(self, token_hash, uses, expires_at):
        return self._run(admin.txn_create_invite, token_hash, uses, expires_at)

    def list_invites(self):
        return self._run(admin.txn_list_invites)

    def revoke_invite(self, hash_prefix):
        return self._run(admin.txn_revoke_invite, hash_prefix)

    def get_devices(self, user):
        return self._run(devices.txn_get_devices, user)

    def list_devices(self, user):
        return self._run(devices.txn_list_devices, user)

    def rename_device(self, user, device, name):
        return self._run(devices.txn_rename_device, user, device, name)

    def mark_seen(self, user, device):
        return self._run(devices.txn_mark_seen, user, device)

    def get_device_keys(self, user, device):
        return self._run(devices.txn_get_device_keys, user, device)

    def login_counts(self, user, device):
        return self._run(devices.txn_login_counts, user, device)

    def device_login(self, user, device):
        return self._logins.submit((user, device))

    def all_devices(self):
        return self._run(devices.txn_all_devices)

    def set_device_list(self, user, version, device_list, signature, listed, link_window_ms):
        return self._run(devices.txn_set_device_list, user, version, device_list, signature,
                         listed, link_window_ms)

    def get_device_list(self, user):
        return self._run(devices.txn_get_device_list, user)

    def add_one_time_keys(self, user, device, keys):
        return self._run(devices.txn_add_one_time_keys, user, device, keys)

    def set_fallback_key(self, user, device, kid, key, signature):
        return self._run(devices.txn_set_fallback_key, user, device, kid, key, signature)

    def claim_keys(self, pairs, fallback_only=frozenset()):
        return self._run(devices.txn_claim_keys, pairs, fallback_only)

    def key_counts(self, user, device):
        return self._run(devices.txn_key_counts, user, device)

    def enqueue(self, envelopes):
        return self._writes.submit(("enqueue", envelopes))

    def fetch_queue(self, user, device, after_seq, limit):
        if after_seq == 0:  # a device's first read since it logged in
            return self._first_reads.submit((user, device, after_seq, limit))
        return self._read(queue_reads.txn_fetch_queue, user, device, after_seq, limit)

    def queue_length(self, user, device):
        return self._run(queue_reads.txn_queue_length, user, device)

    def ack(self, user, device, ids, positions=None):
        d = self._writes.submit(("ack", (user, device, ids, positions)),
                                gather=ACK_GATHER_SECONDS)
        return d.addCallback(self._acked)

    def _acked(self, counts):
        """An ack's ``(unicast, room, broadcast)`` counts, told to the observer; its sum
        is the answer."""
        if self._observe_acks is not None:
            self._observe_acks(counts)
        return sum(counts)

    def create_room(self, room, owner, password_hash):
        return self._run(rooms.txn_create_room, room, owner, password_hash)

    def get_room(self, room):
        return self._run(rooms.txn_get_room, room)

    def set_invite_only(self, room, invite_only):
        return self._run(rooms.txn_set_invite_only, room, invite_only)

    def add_member(self, room, user):
        return self._run(rooms.txn_add_member, room, user)

    def member_role(self, room, user):
        return self._run(rooms.txn_member_role, room, user)

    def set_member_role(self, room, user, role):
        return self._run(rooms.txn_set_member_role, room, user, role)

    def remove_member(self, room, user):
        return self._run(rooms.txn_remove_member, room, user)

    def ban_member(self, room, user, by):
        return self._run(rooms.txn_ban_member, room, user, by)

    def room_ban(self, room, user):
        return self._run(rooms.txn_room_ban, room, user)

    def room_bans(self, room, after, limit):
        return self._run(rooms.txn_room_bans, room, after, limit)

    def unban_member(self, room, user):
        return self._run(rooms.txn_unban_member, room, user)

    def room_members(self, room):
        return self._run(rooms.txn_room_members, room)

    def room_roles(self, room):
        return self._run(rooms.txn_room_roles, room)

    def rooms_of(self, user):
        return self._run(rooms.txn_rooms_of, user)

    def room_history(self, room, before_pos, limit, max_bytes=None):
        return self._run(history.txn_room_history, room, before_pos, limit, max_bytes)

    def prune_history(self, older_than, keep_per_room):
        return self._run(history.txn_prune_history, older_than, keep_per_room)

    def begin_file(self, file_id, user, device, size, quota, max_uploads, keep_ms):
        return self._run(files.txn_begin_file, file_id, user, device, size, quota,
                         max_uploads, keep_ms)

    def put_chunk(self, file_id, user, index, data, digest):
        return self._chunk_writes.submit((file_id, user, index, data, digest))

    def finish_file(self, file_id, user, size, ct_hash, users, room, keep_ms):
        return self._run(files.txn_finish_file, file_id, user, size, ct_hash, users, room,
                         keep_ms)

    def file_info(self, file_id, user, device):
        return self._run(files.txn_file_info, file_id, user, device)

    def get_chunk(self, file_id, user, device, index):
        return self._run(files.txn_get_chunk, file_id, user, device, index)

    def file_done(self, file_id, user, device):
        return self._run(files.txn_file_done, file_id, user, device)

    def expire_files(self):
        return self._run(files.txn_expire_files)

    def read_limits(self, pair, windows):
        return self._limit_reads.submit((pair, windows))

    def take_tokens(self, first, rest):
        return self._run(limits.txn_take_tokens, first, rest)

    def record_limits(self, pair, events):
        return self._run(limits.txn_record_limits, pair, events)

    def forget_failures(self, user, address):
        return self._run(limits.txn_forget_failures, user, address)

    def prune_limits(self, pair_memory_ms):
        return self._run(limits.txn_prune_limits, pair_memory_ms)
