"""Limits on guessing that hold across nodes: failed logins, registrations, wrong room passwords.

What these limits count is kept in the store (``IStore.read_limits``,
``record_limits``; ``securechat.store.transactions.limits``), which is the
one thing every node shares: a guesser who spreads guesses over several
nodes meets the same count as on one.  Kept in the database rather than
shared through the nodes' hints because it must survive a node's restart
and a lost hint, and because the cost is small next to what it guards: a
check is one indexed read (the reads of logins arriving together share a
transaction), a failure one write, a success nothing (or one delete of a
pair's failures), and only failures are ever written.

What stays in this node's memory is what only this node can know yet
(``LocalCounts``): attempts it let through whose verdict is still pending (a
password proof being checked, a room password in the argon2 queue).  Each
counts as a failure from the moment it is let through, so that guesses sent
at once cannot all pass the check before the first verdict is written.  They
cannot be in the store without a write per attempt (not per failure), and
they are over within the check's time.  Per-connection request and message
rates stay in memory too (``securechat.server.ratelimit``): a connection lives
on one node.
"""

import json

from securechat.server.ratelimit import rate_limited

FAILURE_MEMORY_SECONDS = 24 * 3600
"""How long a run of failed logins of one (account, address) pair is remembered."""


class Window:
    """At most ``limit`` events (by weight) of a subject in the last ``seconds``: a sliding
    window whose events are ``limit_events`` rows of ``scope``."""

    def __init__(self, scope, limit, seconds):
        self.scope = scope
        self.limit = limit
        self.window_ms = int(seconds * 1000)

    def read(self, subject, now_ms):
        """What ``IStore.read_limits`` reads for ``subject``: its newest ``limit`` events in
        the window (each weighs at least 1, so no older one can matter)."""
        return (self.scope, subject, now_ms - self.window_ms, self.limit)

    def event(self, subject, weight=1):
        """What ``IStore.record_limits`` stores for one event of ``subject``."""
        return (self.scope, subject, weight, self.window_ms)

    def wait_ms(self, events, unseen, now_ms, weight=1):
        """How long until an event of ``weight`` fits beside ``events`` (read, newest first)
        and ``unseen`` (weight this node counts that the read could not show, as of now)."""
        held = weight
        for at, event_weight in [(now_ms, unseen)] + events:
            held += event_weight
            if held > self.limit:  # this event, and every older one, must leave first
                return at + self.window_ms - now_ms
        return 0


class Backoff:
    """``free`` failures of an (account, address) pair cost nothing; then each further one
    makes the pair wait 1, 2, 4 ... seconds (at most ``max_delay``) before its next try.
    A success forgets the pair; so does a day without failures."""

    def __init__(self, free, max_delay):
        self._free = free
        self._max_delay_ms = max_delay * 1000

    def wait_ms(self, row, unseen, now_ms):
        """The wait of a pair whose stored ``(failures, last_at)`` is ``row`` (or None) and
        of which this node counts ``unseen`` more failures (the last of them now)."""
        failures, last_at = row if row is not None else (0, None)
        if last_at is not None and last_at <= now_ms - FAILURE_MEMORY_SECONDS * 1000:
            failures = 0
        failures += unseen
        if failures < self._free:
            return 0
        if unseen:
            last_at = now_ms
        delay = min(self._max_delay_ms, 1000 * 2 ** min(failures - self._free, 32))
        return max(0, last_at + delay - now_ms)


class _Entry:
    __slots__ = ("pending", "readers", "recorded")

    def __init__(self):
        self.pending = self.readers = self.recorded = 0


class LocalCounts:
    """What this node knows of a subject that the store may not show yet.

    ``pending``: the weight of attempts let through here whose verdict is not
    written yet (each counts as a failure until it is known).  ``recorded``:
    failures written by this node while a read of the subject was under way,
    which that read may or may not have seen (counted, to be safe).  An entry
    lives only while an attempt or a read of its subject is under way, so the
    table holds no more entries than there are checks in progress.
    """

    def __init__(self):
        self._entries = {}

    def reading(self, keys):
        """A read of ``keys`` starts; the marks to give ``unseen`` when it ends."""
        marks = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.readers += 1
            marks.append(entry.recorded)
        return marks

    def unseen(self, keys, marks):
        """The read of ``keys`` ended: per key, the weight it may not have seen."""
        weights = []
        for key, mark in zip(keys, marks):
            entry = self._entries[key]
            entry.readers -= 1
            weights.append(entry.pending + entry.recorded - mark)
            self._drop_if_idle(key, entry)
        return weights

    def let_through(self, keys, weight):
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.pending += weight

    def settle(self, keys, pending, recorded):
        """An attempt's outcome is known: ``pending`` weight of it is no longer in flight,
        ``recorded`` weight of it is now in the store."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            entry.pending -= pending
            entry.recorded += recorded
            self._drop_if_idle(key, entry)

    def _drop_if_idle(self, key, entry):
        if entry.pending <= 0 and entry.readers <= 0:
            del self._entries[key]

    def __len__(self):
        return len(self._entries)


class Attempt:
    """One attempt a guard checked: its verdict goes to the store and to this node's counts.

    Exactly one of ``failed``, ``succeeded`` and ``abandoned`` ends it.
    """

    def __init__(self, store, local, keys, weight, pair, events, forget):
        self._store = store
        self._local = local
        self._keys = keys
        self._weight = weight  # pending here until the verdict (0: only checked)
        self._pair = pair
        self._events = events
        self._forget = forget

    async def failed(self):
        """A failure: counted in the store (the pair's back-off and every window).  If it
        cannot be written the store's error goes to the client, never a verdict that
        was not counted."""
        recorded = 0
        try:
            await self._store.record_limits(self._pair, self._events)
            recorded = 1
        finally:
            self._local.settle(self._keys, self._weight, recorded)

    async def succeeded(self):
        """Not a failure: nothing counted; a pair that had failures is forgiven."""
        self._local.settle(self._keys, self._weight, 0)
        if self._forget:
            await self._store.forget_failures(*self._pair)

    def abandoned(self):
        """No verdict (the store or the argon2 queue refused it): nothing counted."""
        self._local.settle(self._keys, self._weight, 0)


class _Guard:
    """Checks an attempt against a pair's back-off and some windows, as the store and this
    node know them."""

    def __init__(self, store):
        self._store = store
        self._local = LocalCounts()

    async def _check(self, pair, backoff, windows, let_through):
        """An ``Attempt``, or ``rate_limited`` (the first limit that holds, in the order of
        ``windows`` then the pair).  ``windows``: ``(Window, subject, message)``; ``pair``:
        ``(user, address)`` checked by ``backoff`` (with its message), or None.
        ``let_through``: count the attempt here as a failure until its verdict."""
        now_ms = self._store.now_ms()
        keys = [(window.scope, subject) for window, subject, _ in windows]
        if pair is not None:
            keys.append(("pair", json.dumps(pair)))
        marks = self._local.reading(keys)
        try:
            row, events = await self._store.read_limits(
                pair, [window.read(subject, now_ms) for window, subject, _ in windows])
        finally:
            unseen = self._local.unseen(keys, marks)
        for (window, _, message), found, extra in zip(windows, events, unseen):
            _refuse_if_waiting(message, window.wait_ms(found, extra, now_ms))
        if pair is not None:
            _refuse_if_waiting(backoff[1], backoff[0].wait_ms(row, unseen[-1], now_ms))
        weight = 1 if let_through else 0
        self._local.let_through(keys, weight)
        return Attempt(self._store, self._local, keys, weight, pair,
                       [window.event(subject) for window, subject, _ in windows],
                       forget=row is not None)

    def in_progress(self):
        """Subjects this node holds in memory now (none once no check is under way)."""
        return len(self._local)


def _refuse_if_waiting(message, wait_ms):
    if wait_ms > 0:
        raise rate_limited(message, wait_ms / 1000)


class LoginGuard(_Guard):
    """Login and registration limits that lock out a guesser, never an account's owner.

    Only failures count.  An account's failures are counted per (account,
    client address): after ``login_failures_per_account`` of them that pair
    waits longer and longer before each new try, so a guesser elsewhere
    cannot lock the owner out, and the owner's success resets the pair.
    Each address also has at most ``login_failures_per_address`` failed
    logins and registrations per ``login_window_seconds`` (password spraying
    across many accounts).  A refused attempt costs no argon2 work.  Every
    count is the store's, shared by every node (see the module's docstring).
    """

    def __init__(self, store, config):
        super().__init__(store)
        self._backoff = Backoff(config.login_failures_per_account,
                                config.login_delay_max_seconds)
        self._addresses = Window("address", config.login_failures_per_address,
                                 config.login_window_seconds)

    def _login(self, user, address, let_through):
        return self._check(
            (user, address), (self._backoff, f"too many failed logins for {user}"),
            [(self._addresses, address, _FROM_ADDRESS)], let_through)

    def attempt(self, user, address):
        """An ``Attempt`` counted as a failure of this pair and this address until its
        verdict (a proof of a secret a person holds: guesses sent at once must not all
        pass); ``rate_limited`` when the pair or the address must wait."""
        return self._login(user, address, True)

    def check(self, user, address):
        """An ``Attempt`` counted only if it ``failed``; ``rate_limited`` when the pair or
        the address must wait.

        For checks that end within the same few milliseconds (a device key's
        signature): nothing worth guessing passes meanwhile, so only a real failure
        is counted, and a storm of devices reconnecting from one address (a NAT) is
        never refused for the logins still in flight."""
        return self._login(user, address, False)

    async def registering(self, address):
        """Every registration counts against its address (each creates an account)."""
        attempt = await self._check(None, None, [(self._addresses, address, _FROM_ADDRESS)],
                                    True)
        await attempt.failed()


_FROM_ADDRESS = "too many failed attempts from your address"


class RoomPasswordGuard(_Guard):
    """Wrong room passwords lock out the guesser, never the room.

    At most ``room_password_failures_per_room`` per (room, user) in
    ``room_password_room_window_seconds`` and ``room_password_failures_per_user``
    per user (over all rooms) in ``room_password_user_window_seconds``; others
    with the right password join meanwhile.  As with logins, a guess counts as
    wrong from ``attempt`` until its verdict, and the counts are the store's.
    """

    def __init__(self, store, config):
        super().__init__(store)
        self._per_room = Window("room_password", config.room_password_failures_per_room,
                                config.room_password_room_window_seconds)
        self._per_user = Window("room_passwords", config.room_password_failures_per_user,
                                config.room_password_user_window_seconds)

    def attempt(self, room, user):
        """An ``Attempt`` counted as a wrong guess until its verdict; ``rate_limited`` when
        the user must wait."""
        return self._check(None, None, [
            (self._per_room, json.dumps([room, user]),
             f"too many wrong passwords for room {room!r}"),
            (self._per_user, user, "too many wrong room passwords")], True)
