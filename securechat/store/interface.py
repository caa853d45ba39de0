"""The one storage interface the server talks to.

Two backends implement it (``sqlite`` through twisted.enterprise.adbapi and
``postgres`` through txpostgres); nothing outside ``securechat.store`` knows
which one runs.  Every method returns a Deferred.  Values are plain Python:
``str`` for text, ``int`` for counters and timestamps (milliseconds since the
epoch), ``dict``/``list`` for results.  The server never hands the store a
plaintext: envelope bodies are opaque JSON text produced by the relay.
"""

from zope.interface import Interface


class IStore(Interface):
    """Durable state of one securechat server (or of a cluster sharing PostgreSQL)."""

    def start():
        """Open connections and create or migrate the schema.  Fires with None."""

    def stop():
        """Close every connection.  Fires with None."""

    def now_ms():
        """The time (ms since the epoch) the store stamps what it writes with, from the
        clock it was made with: whatever else stamps or prunes by time reads it here,
        so one clock (a test's, if it likes) drives them all.  Not a Deferred."""

    # -- accounts ---------------------------------------------------------

    def create_account(user, password_key, identity_key, quarantine_ms=0, invite_hash=None):
        """Create an account.

        ``password_key`` is the Ed25519 public key derived from the password
        and ``identity_key`` the user's Ed25519 identity key (both base64).
        Errbacks with ``UserExists`` when the name is taken, and with
        ``NameQuarantined`` when an account of that name was deleted less than
        ``quarantine_ms`` ago (decided in the same transaction).  With ``invite_hash``
        that invite gives one of its uses in the same transaction, or the registration
        errbacks with ``InvalidInvite`` (unknown, used up or expired).
        """

    def delete_account(user):
        """Delete the account and, in the same transaction, its devices, their keys, its
        queued envelopes, its room cursors, memberships and bans; a room it owned passes
        to its longest-standing admin, else member, or is dropped with its history when
        nobody else is in it.  The name and the time are kept (``deleted_at``) until the
        name is registered again.  Fires with ``{"devices", "rooms", "heirs", "deleted_at"}``
        (its device ids, the rooms it was in, ``{room: new owner}``, when), or None for
        no such account."""

    def deleted_at(user):
        """Fire with when the account named ``user`` was deleted (ms), or None (never
        deleted, or its name registered again since)."""

    def count_accounts():
        """Fire with the number of accounts."""

    def ping():
        """Fire with True once the database answered a trivial query (the relay's
        readiness); fail as any read fails when it cannot."""

    def last_seq():
        """Fire with the last seq any write committed has taken (0 when none has): every
        envelope numbered up to it is committed (a relay node catching up on hints it
        missed reads from there)."""

    def announce_writes(node):
        """From now on, have each write group's commit tell the other relay nodes what it
        stored, as ``node`` (a NOTIFY of ``securechat.store.hints``; PostgreSQL only,
        called by ``securechat.server.nodebus``)."""

    def queued_total():
        """Fire with the number of envelopes in every device's 1:1 queue."""

    def sweep_removed_devices(since_ms):
        """Delete the rows left for devices removed since ``since_ms`` by sends that raced
        their removal (see ``txn_sweep_removed_devices``); fire with how many went."""

    def remove_device(user, device):
        """Fire with True once ``user``'s ``device`` is removed for good, as a list leaving
        it out would (its keys, queue and cursors gone, ``removed_devices`` noting it);
        False when the account has no such device (the admin API)."""

    def users_page(after, limit):
        """Fire with up to ``limit`` accounts named after ``after`` (the admin API): dicts
        of ``user``, ``created``, ``devices``, ``last_seen`` and ``queued``."""

    def user_detail(user):
        """Fire with ``{"user", "created", "devices": [...], "rooms": {room: role}}`` or
        None (the admin API; never a key)."""

    def rooms_page(after, limit):
        """Fire with up to ``limit`` rooms named after ``after``: ``room``, ``owner``,
        ``created``, ``members``, ``history``, ``invite_only``, ``password``."""

    def room_detail(room):
        """Fire with a ``rooms_page`` entry plus ``members`` ({user: role}) and
        ``history_bytes``, or None."""

    def stats():
        """Fire with the relay's totals: ``accounts``, ``devices``, ``rooms``, ``queued``,
        ``room_messages``."""

    def set_disabled(user, disabled):
        """Fire with True once ``user``'s account is disabled (``disabled``) or enabled
        again; False when there is no such account."""

    def disabled_users():
        """Fire with the names of the disabled accounts."""

    def create_invite(token_hash, uses, expires_at):
        """Keep a registration invite: the SHA-256 (hex) of its token, how many
        registrations it allows, when it expires (ms) or None."""

    def list_invites():
        """Fire with the invites that have uses left: ``token_hash``, ``uses_left``,
        ``expires_at``, ``created``."""

    def revoke_invite(hash_prefix):
        """Fire with how many invites whose hash starts with ``hash_prefix`` were removed."""

    def observe_writes(observe):
        """Call ``observe(commit_seconds, waited_seconds)`` after each group commit of
        envelopes and acks (see ``GroupCommit.observe``); not a Deferred."""

    def observe_acks(observe):
        """Call ``observe((unicast, room, broadcast))`` with what each ``ack`` removed, of
        each kind, once it committed (the operator's metrics); not a Deferred."""

    def get_account(user):
        """Fire with ``{"user", "password_key", "secret_hash", "identity_key", "created"}``
        or None.  Exactly one of ``password_key`` and ``secret_hash`` is set: the hash
        (the argon2id string of a legacy login secret) only in an account registered
        before password keys and not moved yet."""

    def move_to_password_key(user, secret_hash, password_key):
        """Give an account whose legacy hash is still ``secret_hash`` the password key
        ``password_key`` in its place.  Fires with True, or False when the account holds
        no such hash (moved meanwhile, or no such account)."""

    def replace_password_key(user, old_key, new_key):
        """Replace the account's password key ``old_key`` by ``new_key`` (a password
        change).  Fires with True, or False when the account's key is not ``old_key``
        (changed meanwhile, or no such account)."""

    def set_recovery(user, recovery_key, backup):
        """Make ``recovery_key`` (the base64 public recovery key) and ``backup`` (the
        base64 identity seed it seals) the account's recovery, in place of any earlier
        one.  Fires with True, or False when there is no such account."""

    def get_recovery(user):
        """Fire with the account's ``{"recovery_key", "backup", "created"}``, or None (no
        recovery key set, or no such account)."""

    def reset_password_key(user, recovery_key, password_key):
        """Make ``password_key`` the account's password key whatever it held before (a
        recovery: the old password may be forgotten), provided ``recovery_key`` is still
        the account's recovery key.  Fires with True, or False (replaced meanwhile, or no
        such account)."""

    def relay_id():
        """Fire with this relay's stable id (text): chosen at random by the first call on
        a database and the same ever after, for every node sharing the database."""

    # -- devices and their keys ------------------------------------------

    def set_device_keys(user, device, device_keys, signature, max_devices=None):
        """Record a device's identity keys (JSON text) and their self-signature.

        Creating the device row when needed.  A device's keys never change:
        the same keys again are accepted, other keys errback with
        ``KeyConflict``.  Fires with True when the device is current (its
        account has published no device list yet: it starts following the
        user's rooms), False when it is pending (in no list).  A removed
        device's id errbacks with ``DeviceRemoved``; a new device of an
        account that already has more than ``max_devices`` devices with keys
        (listed and pending) with ``TooManyDevices``.
        """

    def removed_at(user, device):
        """Fire with when ``device`` was removed from ``user``'s account (ms), or None."""

    def get_devices(user):
        """Fire with the devices of ``user`` that published keys.

        A list of ``{"device", "device_keys", "signature", "listed", "created"}``
        ordered by device id; ``listed`` ones are current (in the signed device
        list, or the account has published none), the others pending.
        """

    def list_devices(user):
        """Fires with ``user``'s devices with published keys, oldest first: dicts of
        ``device``, ``name`` ('' until renamed), ``created`` and ``last_seen`` (ms since
        the epoch: when the device's last verified connection ended, see ``mark_seen``;
        None for a device not disconnected since schema version 10)."""

    def mark_seen(user, device):
        """Fires once ``device``'s last-seen time is now: called when a logged-in
        connection of it ends (never per message, never before a login is verified)."""

    def rename_device(user, device, name):
        """Fires with True once ``user``'s ``device`` is named ``name``; False if ``user``
        has no such device (another account's device is never renamed)."""

    def get_device_keys(user, device):
        """Fire with the device's published identity keys (the JSON text given to
        ``set_device_keys``), or None when the device has published none."""

    def login_counts(user, device):
        """Fire with ``key_counts`` and ``"queued"`` (``queue_length``) read in one
        transaction: what a device is told when it logs in (one store round trip per login,
        which counts when thousands of devices log in at once after a restart)."""

    def device_login(user, device):
        """Fire with what a device-key login needs: ``{"device_keys", "counts",
        "pending_since"}`` (``get_device_keys``, ``login_counts`` as of that read, and
        when the device was created if it is pending, else None), ``{"removed_at"}``
        for a removed device, or None when the device has published no keys.  Logins
        arriving together share one transaction: a relay restart brings thousands at
        once, and a round trip to the store each would be most of what the relay spends
        on them."""

    def all_devices():
        """Fire with every current (listed) device as a list of ``(user, device)``."""

    def set_device_list(user, version, device_list, signature, listed, link_window_ms):
        """Store the user's signed device list (JSON text) holding the devices ``listed``
        (ids), and make it the account's truth in the same transaction.

        ``version`` must be greater than the stored one, else errback with
        ``StaleVersion``; every listed device must have keys, else
        ``UnknownDevice``.  Pending devices it lists become current (and follow
        the user's rooms); listed devices it leaves out are removed with their
        keys, one-time keys, queue and room cursors, and recorded as removed
        for ever; pending devices it leaves out that are older than
        ``link_window_ms`` are dropped the same way (not recorded).  Fires with
        ``{"added", "removed", "dropped"}``: sorted device ids.
        """

    def get_device_list(user):
        """Fire with ``{"version", "device_list", "signature"}`` or None."""

    def add_one_time_keys(user, device, keys):
        """Append one-time keys in the given order.

        ``keys`` is a list of ``(kid, key, signature)``.  Uploading a kid
        again with the same key and signature is a no-op; a kid that is
        known with another key, or that was already handed out, errbacks
        with ``KeyConflict`` and nothing of this call is stored.  Fires with
        the number of unclaimed one-time keys of the device.
        """

    def set_fallback_key(user, device, kid, key, signature):
        """Replace the device's fallback key; it is unused afterwards."""

    def claim_keys(pairs, fallback_only=frozenset()):
        """Claim one key for each ``(user, device)`` in ``pairs``.

        One-time keys are handed out in upload order and exactly once, even
        under concurrent claims from several connections or server nodes
        (a handed-out kid is remembered and never re-issued).  When a device
        has none left, or is in ``fallback_only`` (it gave out its share of
        one-time keys for now), its fallback key is returned and marked used.  Fires
        with ``{(user, device): {"kid", "key", "signature", "fallback"}}``;
        a device with neither is absent from the result.
        """

    def key_counts(user, device):
        """Fire with ``{"otk_count": int, "fallback_used": bool, "has_fallback": bool}``."""

    # -- envelopes --------------------------------------------------------

    def enqueue(envelopes):
        """Durably store envelopes for their recipient devices, atomically.

        ``envelopes`` is a list of dicts ``{"id", "sender", "sender_device",
        "recipients": [(user, device), ...], "body"}`` where ``body`` is the
        envelope's JSON text (opaque to the store).  An optional ``"history"``
        names a room: the envelope is then kept once, in that room's history,
        and every device following the room (its members' devices with keys,
        every device for the broadcast room) but the sender's reads it from
        there; ``recipients`` are then only whom the caller pushes it to.
        All of them are committed in one transaction (fsynced) before the
        Deferred fires, or none is.  Each envelope gets the next number of
        one sequence shared by all devices (``seq``: increasing, never
        reused).  An ``id`` still queued for one of its recipient devices
        (or kept in the history of its room), or given twice, errbacks with
        ``DuplicateEnvelope(id)`` and nothing is stored; an id every
        recipient has acknowledged may be stored again.  Fires with the
        envelopes' places, in input order: ``(seq, pos)``, where ``pos`` is a
        room message's position in its room's history (None for the others).
        """

    def fetch_queue(user, device, after_seq, limit):
        """Fire with up to ``limit`` envelopes a device has not acknowledged, seq > ``after_seq``.

        Its queue and the entries of its rooms it has yet to receive, ordered
        by seq, as a list of ``{"seq", "id", "body", "intact", "room", "pos"}``;
        ``intact`` is False when the stored digest no longer matches the body
        (corruption at rest); ``room`` and ``pos`` place a room entry in its
        room's history (None for a queued envelope).  Reads from the start
        (``after_seq`` 0: the first read of a device that just logged in) share
        transactions when several arrive together, as logins do after a restart.
        """

    def queue_length(user, device):
        """Fire with the number of envelopes waiting for a device (its rooms' included)."""

    def ack(user, device, ids, positions=None):
        """Acknowledge envelopes the device has received.

        A queued envelope is removed for that device only; a room entry moves
        the device's position in that room past it, and so past the earlier
        entries too (devices acknowledge in the order they receive).  ``ids``
        are looked up in the device's queue and rooms; ``positions``
        (``{room: [pos, ...]}``) names room entries by their place instead,
        which spares looking each one up: only places ``fetch_queue`` or
        ``enqueue`` gave (the relay passes those it pushed; a client never
        names a place).  Fires with the number of envelopes that were still
        pending.  Unknown ids and places already passed are ignored (an ack
        can arrive twice).
        """

    # -- rooms ------------------------------------------------------------

    def create_room(room, owner, password_hash):
        """Create a room owned (and joined, with role "owner") by ``owner``.

        ``password_hash`` is an argon2id string or None.  Errbacks with
        ``RoomExists`` when the name is taken.
        """

    def get_room(room):
        """Fire with ``{"room", "owner", "password_hash", "created", "invite_only"}`` or None."""

    def set_invite_only(room, invite_only):
        """Make the room invite-only (True) or open (False); fires with False for no room."""

    def add_member(room, user):
        """Add ``user`` to the room; fires with the sorted member names right after (the
        members to tell of the join), or None if already a member.  Membership changes
        of one room take turns, each seeing those before it.

        Errbacks with ``Banned`` while the user is banned from the room.
        """

    def member_role(room, user):
        """Fire with "owner", "admin" or "member", or None for a non-member."""

    def set_member_role(room, user, role):
        """Set a member's role ("admin" or "member"); fires with False for a non-member."""

    def remove_member(room, user):
        """Remove ``user`` from the room; fires with the sorted member names right before
        (``user`` among them), or None if not a member."""

    def ban_member(room, user, by):
        """Remove ``user`` from the room and ban it (``by`` names who did), atomically with
        ``add_member``: a concurrent join lands before the removal or is refused.  A
        non-member is banned too (recorded as a former "member"); an existing ban is
        kept as it was.  Fires with the sorted member names right before (``user`` among
        them if it was a member: the members to tell of it)."""

    def room_ban(room, user):
        """Fire with the user's ban from the room, ``{"role", "by", "created"}``, or None."""

    def room_bans(room, after, limit):
        """Fire with up to ``limit`` bans of the room whose user names sort after ``after``
        (None: from the first), in name order, as ``{"user", "role", "by", "created"}``."""

    def unban_member(room, user):
        """Lift the user's ban from the room; fires with True if there was one."""

    def room_members(room):
        """Fire with the sorted list of member user names."""

    def room_roles(room):
        """Fire with ``{user: role}`` of the room's owner and admins (every other member
        is a "member")."""

    def rooms_of(user):
        """Fire with the sorted list of room names ``user`` belongs to."""

    def room_history(room, before_pos, limit, max_bytes=None):
        """Fire with up to ``limit`` history entries of ``room`` before ``before_pos`` (None: newest).

        Newest last, as a list of ``{"pos", "id", "body", "created"}``.  With
        ``max_bytes``, the newest entries whose bodies fit in it together (always
        at least one when there is one).
        """

    def prune_history(older_than, keep_per_room):
        """Drop history entries created before ``older_than`` (ms), and beyond the newest
        ``keep_per_room`` of each room; fires with the number removed."""

    # -- encrypted files (``transactions.files``); refusals are ``errors.FileRefused`` --

    def begin_file(file_id, user, device, size, quota, max_uploads, keep_ms):
        """Start ``user``/``device``'s upload ``file_id`` of ``size`` bytes of ciphertext,
        kept ``keep_ms`` unless finished; ``quota_exceeded`` past ``quota`` bytes of the
        account's files, ``too_many_uploads`` past ``max_uploads`` unfinished ones."""

    def put_chunk(file_id, user, index, data, digest):
        """Store chunk ``index`` (bytes, its hex SHA-256 ``digest``) of the owner's
        unfinished upload; fire with the chunks stored.  ``chunk_out_of_order`` unless it
        is the next one (or one stored with this digest), ``file_too_large`` past the
        declared size, ``file_complete``, ``unknown_file``."""

    def finish_file(file_id, user, size, ct_hash, users, room, keep_ms):
        """Finish the owner's upload when its size and chunk hash match (``size_mismatch``,
        ``hash_mismatch``), for the current devices of ``users`` (and the owner) or of
        ``room``'s members; it is then kept ``keep_ms`` at most.  Fire with ``{"file_id",
        "size", "chunks"}``."""

    def file_info(file_id, user, device):
        """Fire with ``{"file_id", "size", "stored", "chunks", "complete", "hash"}`` of a
        file its owner or a recipient device asks about (``unknown_file`` otherwise)."""

    def get_chunk(file_id, user, device, index):
        """Fire with ``(bytes, last)`` of chunk ``index`` of a finished file
        (``file_incomplete`` before, ``no_such_chunk`` past its end)."""

    def file_done(file_id, user, device):
        """A recipient device fetched the file: it leaves the recipients, and the file is
        deleted when it was the last; fire with True then."""

    def expire_files():
        """Delete files past their expiry; fire with how many went."""

    # -- limits shared by every node (failed logins, room passwords, key claims) --

    def read_limits(pair, windows):
        """Fire with what a limit check needs, read in one indexed statement (the reads of
        checks arriving together share a transaction): ``(pair_row, events)``.
        ``pair_row`` is ``(failures, last_at)`` of the ``(user, address)`` ``pair`` (None
        when it has no failures, or ``pair`` is None); ``events`` holds, for each window
        ``(scope, subject, since_ms, rows)``, its newest events after ``since_ms`` (at most
        ``rows``) as ``[(at, weight), ...]``, newest first."""

    def take_tokens(first, rest):
        """Take ``cost`` tokens from the bucket ``first``, ``(scope, subject, cost, per_ms,
        burst)``, then one from each bucket of ``rest``, ``(scope, subjects, per_ms,
        burst)``, that has one: one transaction, the tokens counted in the database itself
        (nodes taking at once never both take the last one).  A bucket saves ``per_ms``
        tokens a millisecond, at most ``burst``, and starts full.  Fires with ``(wait_ms,
        taken)``: 0 and the set of ``rest``'s subjects taken from, or the ms until
        ``first`` has its cost (then nothing is taken)."""

    def record_limits(pair, events):
        """Count one failure of the ``(user, address)`` ``pair`` (None: none; its count and
        last time are raised in the database, so nodes counting at once all count) and
        store ``events``, ``(scope, subject, weight, window_ms)`` each, stamped now and
        kept ``window_ms``; one transaction.  Fires with None."""

    def forget_failures(user, address):
        """Delete the failures of the ``(user, address)`` pair (it logged in).  Fires with
        None."""

    def prune_limits(pair_memory_ms):
        """Delete pairs whose last failure is ``pair_memory_ms`` old, events past their
        window and buckets full again; beyond a fixed number of rows a table, those to be
        forgotten soonest go first (the tables stay bounded).  Fires with the number of
        rows deleted."""
