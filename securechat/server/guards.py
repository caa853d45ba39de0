"""Limits that hold across nodes: failed logins, registrations, wrong room passwords, key claims.

What these limits count is kept in the store (``IStore.read_limits``,
``record_limits``, ``take_tokens``; ``securechat.store.transactions.limits``),
the one thing every node shares: a guesser who spreads guesses over several
nodes meets the same count as on one, and so does a claimer of one-time keys
whose devices are connected to several nodes.  Kept in the database rather
than passed in the nodes' hints, because a count must survive a node's
restart and a hint may be lost; and the cost is small next to what it
guards: a check is one indexed read (the reads of logins arriving together
share a transaction), a failure one write, a success no write (one delete
when the pair had failures).  Of logins, only failures are ever written.

What stays in this node's memory is what only this node can know yet
(``LocalCounts``): attempts it let through whose verdict is still pending (a
password proof being checked, a room password in the argon2 queue).  Each
counts as a failure from the moment it is let through, so that guesses sent
at once to this node cannot all pass before the first verdict is written.
Other nodes see it once its failure is written: putting it in the store
would cost a write per attempt, not per failure.  So guesses sent at the
very same moment to N nodes can pass up to N times a limit once; each is
then counted, and the waits after them grow with all of them.
Per-connection request rates stay in memory too
(``securechat.server.ratelimit``): a connection lives on one node.
"""

import json

from twisted.internet import defer

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
    __slots__ = ("pending", "readers", "writers", "waiters")

    def __init__(self):
        self.pending = self.readers = self.writers = 0
        self.waiters = []

    def idle(self):
        return not (self.pending or self.readers or self.writers or self.waiters)


class LocalCounts:
    """What this node knows of a subject (a pair, an address ...) that the store may not show.

    ``pending``: the weight of attempts let through here whose verdict is not
    written yet; each counts as a failure until it is known.  So that a read
    counts each of this node's failures exactly once, in the store or as
    pending, a read of a subject never overlaps this node's write of it: a
    failure's write waits for the reads under way (its attempt still pending
    for them), and reads wait for the writes under way or waiting (then they
    see the row).  Reads share; so do writes.  An entry lives only while an
    attempt, a read or a write of its subject is under way, so the table
    holds no more entries than there are checks in progress.
    """

    def __init__(self):
        self._entries = {}

    async def read(self, keys, read):
        """``await read()`` once no write of ``keys`` is under way or waiting; its result,
        and per key the weight pending here that it could not see."""
        await self._wait(keys, lambda entry: entry.writers == 0)
        for entry in self._get(keys):
            entry.readers += 1
        try:
            result = await read()
        finally:
            entries = self._get(keys)
            for entry in entries:
                entry.readers -= 1
            pending = [entry.pending for entry in entries]
            self._changed(keys)
        return result, pending

    def let_through(self, keys, weight):
        """Count ``weight`` as pending for ``keys`` until ``settle`` or ``write``."""
        for entry in self._get(keys):
            entry.pending += weight
        self._changed(keys)

    def settle(self, keys, weight):
        """An attempt ended without a failure: its ``weight`` is no longer pending."""
        for entry in self._get(keys):
            entry.pending -= weight
        self._changed(keys)

    async def write(self, keys, weight, write):
        """``await write()`` (an attempt's failure going to the store) once no read of
        ``keys`` is under way; then its ``weight`` is no longer pending."""
        for entry in self._get(keys):
            entry.writers += 1
        try:
            await self._wait(keys, lambda entry: entry.readers == 0)
            await write()
        finally:
            for entry in self._get(keys):
                entry.writers -= 1
                entry.pending -= weight
            self._changed(keys)

    def _get(self, keys):
        entries = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entries.append(entry)
        return entries

    async def _wait(self, keys, ready):
        while not all(ready(entry) for entry in self._get(keys)):
            woken = defer.Deferred()
            for entry in self._get(keys):
                entry.waiters.append(woken)
            await woken
            for entry in self._get(keys):
                if woken in entry.waiters:
                    entry.waiters.remove(woken)
            self._changed(keys, wake=False)

    def _changed(self, keys, wake=True):
        """Wake whoever waits on ``keys`` (they look again) and forget idle entries."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if wake:
                waiters, entry.waiters = entry.waiters, []
                for woken in waiters:
                    if not woken.called:
                        woken.callback(None)
            if self._entries.get(key) is entry and entry.idle():
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
        await self._local.write(self._keys, self._weight, lambda: self._store.record_limits(
            self._pair, self._events))

    async def succeeded(self):
        """Not a failure: nothing counted; a pair that had failures is forgiven."""
        self._local.settle(self._keys, self._weight)
        if self._forget:
            await self._store.forget_failures(*self._pair)

    def abandoned(self):
        """No verdict (the store or the argon2 queue refused it): nothing counted."""
        self._local.settle(self._keys, self._weight)


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
        (row, events), unseen = await self._local.read(keys, lambda: self._store.read_limits(
            pair, [window.read(subject, now_ms) for window, subject, _ in windows]))
        for (window, _, message), found, extra in zip(windows, events, unseen):
            _refuse_if_waiting(message, window.wait_ms(found, extra, now_ms))
        if pair is not None:
            _refuse_if_waiting(backoff[1], backoff[0].wait_ms(row, unseen[-1], now_ms))
        weight = 1 if let_through else 0
        self._local.let_through(keys, weight)
        return Attempt(self._store, self._local, keys, weight, pair,
                       [window.event(subject) for window, subject, _ in windows],
                       forget=row is not None)


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


class KeyClaimLimits:
    """Nobody drains a device's one-time keys.

    A claimer may claim ``key_claims_per_minute`` keys a minute
    (``rate_limited`` past that).  A device gives out at most
    ``one_time_keys_per_device_per_minute`` one-time keys a minute; past
    that claimers get its fallback key, so sessions can still start (Olm
    accepts a fallback key) while the one-time keys last until its owner
    tops them up.  Both are per user or device, not per connection, so
    their token buckets are in the store, taken from in the database itself
    (``IStore.take_tokens``): exact across nodes, with nothing in flight to
    count here; a claim costs one transaction (claims start sessions, they
    are not per message).
    """

    def __init__(self, store, config):
        self._store = store
        self._per_claimer = config.key_claims_per_minute
        self._per_device = config.one_time_keys_per_device_per_minute

    def check_size(self, count):
        """Refuse at once a claim of more keys than a minute allows anyone."""
        if count > self._per_claimer:
            raise rate_limited(
                f"a minute allows claiming at most {self._per_claimer} keys", 60)

    async def admit(self, claimer, pairs):
        """Take a claim of ``pairs`` ``(user, device)`` (no more than ``check_size``
        allows) from ``claimer``'s allowance, or raise ``rate_limited``; fires with the
        pairs that may give out no one-time key now (they give their fallback key)."""
        devices = {json.dumps(pair): pair for pair in pairs}
        wait_ms, given = await self._store.take_tokens(
            ("key_claims", claimer, len(pairs), self._per_claimer / 60_000, self._per_claimer),
            ("one_time_keys", list(devices), self._per_device / 60_000, self._per_device))
        _refuse_if_waiting("too many key claims", wait_ms)
        return {pair for subject, pair in devices.items() if subject not in given}
