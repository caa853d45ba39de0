"""What relay nodes sharing one PostgreSQL database tell each other, and what they do with it.

Nodes share the database and nothing else; the store stays the truth, and a
hint (``securechat.store.hints``) only tells another node where to read it
again.  Delivery hints ride in the write group's own transaction (the store
sends them); the others (a device list, a room, an account changed; a device
logged in) are sent here, after their change committed.  Every node LISTENs
on a txpostgres connection of its own, which reconnects
(``DeadConnectionDetector``); after every (re)connect every connected
device's cursor reads the store again and every cache is forgotten, since
what was sent meanwhile is lost: a missed hint delays a push, never loses it.

With SQLite there is one node, whose ``LoneNode`` bus tells nobody anything.
"""

import hashlib
import secrets

from twisted.internet import defer, task
from twisted.logger import Logger

from securechat.server.waiters import Waiters
from securechat.store import hints
from securechat.store.errors import StoreUnavailable

HEARTBEAT_SECONDS = 5.0
"""How often the listening connection is checked (a query: a dead connection only shows when
something is sent on it), and a gap in the numbers heard is looked at (see ``Heard``)."""

KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}
"""TCP keepalives of the listening connection (libpq's parameters): a database host that
vanished without closing it is noticed within about 25 s even while no query runs."""

MAX_AHEAD = 10_000
"""Ranges of numbers heard past a gap that ``Heard`` keeps (bounded; past it, it starts over)."""

CLAIM_SECONDS = 5.0
"""How long a login waits for the node that has the device's older connection to let it go
(``NodeBus.claim``) before its pushes start anyway: that node is gone or hung (one whose
process died lets go at once: PostgreSQL ends its session, and its locks with it)."""

CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX = 0.005, 0.1
"""How soon a waiting claim asks again at first, and at most (doubling in between)."""


def new_node_id():
    """A node's id: random per process start (it names the node in its hints and its log)."""
    return secrets.token_hex(6)


class Heard:
    """The numbers (``seq``) up to which this node has heard of every committed write group.

    Every write group on every node takes its numbers under one row lock held
    until it commits, so the groups commit in the order of their numbers, and
    each is announced (its own node sees its commit, the others get its hint).
    A group of this node may then have its envelopes pushed from memory only if
    every number before it was heard of: else another node's earlier envelope
    for the same device could still be on its way, and a cursor that pushed the
    later one would never read it.  Such a group's recipients read the store
    instead (which holds everything committed before it), correct and slower.
    """

    def __init__(self):
        self.last = None  # None: not known yet (or started over): nothing is pushed from memory
        self._ahead = {}  # first -> last of groups heard of past a gap
        self._last_at_check = None

    def own(self, first, last):
        """This node committed the group numbered ``first`` to ``last``: whether its
        envelopes may go out from memory (every number before it was heard of)."""
        in_order = self.last is not None and first == self.last + 1
        self.heard(first, last)
        return in_order

    def heard(self, first, last):
        """The group numbered ``first`` to ``last`` committed (and its recipients here read);
        kept for the next ``reset`` while there is no mark."""
        if self.last is None or first > self.last + 1:
            if len(self._ahead) >= MAX_AHEAD:
                self.forget()  # a hint was lost: start over (``stuck``)
                return
            self._ahead[first] = last
            return
        self.last = max(self.last, last)
        self._close_gaps()

    def forget(self):
        """Start over: nothing goes out from memory until the next ``reset``."""
        self.last = None
        self._ahead.clear()

    def reset(self, last):
        """Every group up to ``last`` is committed, and every cursor here reads the store
        again (a (re)connect of the listener): heard."""
        self.last = last if self.last is None else max(self.last, last)
        for first in [first for first in self._ahead if first <= self.last + 1]:
            self.last = max(self.last, self._ahead.pop(first))
        self._close_gaps()

    def stuck(self):
        """Whether a gap stayed open since the last call (a hint lost on a connection that
        has not noticed yet), or there is no mark: time to read everything again."""
        stuck = self.last is None or (bool(self._ahead) and self.last == self._last_at_check)
        self._last_at_check = self.last
        return stuck

    def _close_gaps(self):
        ahead = self._ahead
        while self.last + 1 in ahead:
            self.last = max(self.last, ahead.pop(self.last + 1))


def device_lock(user, device):
    """The PostgreSQL advisory lock (a signed 64-bit key) a node holds while ``user``'s
    ``device`` is connected to it (a hash: a collision only makes a login wait)."""
    digest = hashlib.blake2b(f"{user}\0{device}".encode("utf-8"), digest_size=8,
                             person=b"securechat-dev").digest()
    return int.from_bytes(digest, "big", signed=True)


class LoneNode:
    """The bus of the one node of a database (SQLite): nobody to tell, nothing to hear."""

    def __init__(self, node=None):
        self.node = node or new_node_id()

    def start(self, factory):
        return defer.succeed(None)

    def claim(self, user, device):
        """A Deferred firing once this node may push to ``user``'s ``device``: at once here,
        since no other node could have it."""
        return defer.succeed(None)

    def release(self, user, device):
        """``user``'s ``device`` has no connection on this node any more."""

    def stop(self):
        return defer.succeed(None)

    def devices_changed(self, user, changes):
        return defer.succeed(None)

    def rooms_changed(self, rooms):
        return defer.succeed(None)

    def user_changed(self, user, event):
        return defer.succeed(None)

    def logged_in(self, user, device):
        return defer.succeed(None)

    def typing(self, sender, sender_device, envelopes):
        pass


class NodeBus(LoneNode):
    """One node's hints to the others and its listener for theirs (PostgreSQL)."""

    log = Logger()

    def __init__(self, store, reactor, node=None):
        super().__init__(node)
        self._store = store
        self._reactor = reactor
        self._factory = None
        self._connection = None
        self._heartbeat = None
        self._own = hints.encode({"n": self.node})[:-1]  # how this node's hints begin
        self._own_login = self._own + ',"k":"login","u":'
        self._unechoed = {}  # (user, device) -> logins here whose hint has not come back
        self._held = set()  # (user, device) whose advisory lock this node holds
        self._claims = {}  # (user, device) -> _Claim waiting for another node to let go
        self._lock_queue = []  # (lock, Deferred) for the next query of _ask_for_locks
        self._locking = False
        self.heard = Heard()

    async def start(self, factory):
        """Listen for the other nodes' hints for ``factory``'s parts, and announce this node's
        write groups; fails if the database cannot be reached now."""
        self._factory = factory
        factory.relay.heard = self.heard
        self._store.announce_writes(self.node)
        connection = self._store.listener(self._reactor)
        connection.addNotifyObserver(self._received)
        connection.detector.addRecoveryHandler(self._on_reconnect)
        await connection.connect(self._store.dsn, **KEEPALIVE)
        self._connection = connection
        await self._listen()
        self._heartbeat = task.LoopingCall(self._check)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(HEARTBEAT_SECONDS, now=False)

    def stop(self):
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.detector.removeRecoveryHandler(self._on_reconnect)
            connection.close()
        return defer.succeed(None)

    # -- one device, one live connection ------------------------------------

    def claim(self, user, device):
        """A Deferred firing once this node may push to ``user``'s ``device``, which just
        logged in here: once it holds the device's advisory lock (``device_lock``), on its
        listening connection.  The node that had the device's older connection lets go of
        the lock only after that connection's cursor closed (``release``, on the ``login``
        hint), so an envelope never goes out on two connections of one device at once.
        Fires at once when nobody else had it, and after ``CLAIM_SECONDS`` at most."""
        key = (user, device)
        if key in self._held:  # its older connection was on this node, which keeps the lock
            return defer.succeed(None)
        claim = self._claims.get(key)
        if claim is None:
            claim = self._claims[key] = _Claim()
            defer.ensureDeferred(self._take(key, claim))
        claim.wanted = True
        return claim.waiting.wait()

    async def _take(self, key, claim):
        lock = device_lock(*key)
        deadline = self._reactor.seconds() + CLAIM_SECONDS
        delay = CLAIM_RETRY_FIRST
        try:
            while claim.wanted:
                try:
                    taken = await self._try_lock(lock)
                except Exception:  # the database cannot be asked now: again until the deadline
                    taken = False
                if taken:
                    if claim.wanted:
                        self._held.add(key)
                        return
                    await self._unlock(lock)  # released meanwhile: let go (unless re-wanted)
                    continue
                if self._reactor.seconds() >= deadline:
                    self.log.warn(
                        "Relay node {node}: {user}/{device} stayed connected to another node "
                        "for {seconds} s after logging in here (that node is hung or cut "
                        "off); served here all the same", node=self.node, user=key[0],
                        device=key[1], seconds=CLAIM_SECONDS)
                    return
                await task.deferLater(self._reactor, delay, lambda: None)
                delay = min(delay * 2, CLAIM_RETRY_MAX)
        finally:
            if self._claims.get(key) is claim:
                del self._claims[key]
            claim.waiting.fire()

    def _try_lock(self, lock):
        """A Deferred: whether the lock was free (or already this node's), now taken; fails
        when the database cannot be asked.  The locks asked for while a query runs go
        together in the next one (a reconnect storm's thousands of logins ask in a few
        queries, not one each)."""
        d = defer.Deferred()
        self._lock_queue.append((lock, d))
        if not self._locking:
            defer.ensureDeferred(self._ask_for_locks())
        return d

    async def _ask_for_locks(self):
        self._locking = True
        try:
            while self._lock_queue:
                batch, self._lock_queue = self._lock_queue, []
                try:
                    rows = await self._listening_connection().runQuery(
                        "SELECT pg_try_advisory_lock(lock) FROM unnest(%s::bigint[]) "
                        "WITH ORDINALITY AS asked(lock, n) ORDER BY n",
                        ([lock for lock, _ in batch],))
                except Exception as e:
                    for _, d in batch:
                        d.errback(e)
                else:
                    for (_, d), (taken,) in zip(batch, rows):
                        d.callback(bool(taken))
        finally:
            self._locking = False

    def _listening_connection(self):
        connection = self._connection
        if connection is None or connection.detector.connectionIsDead:
            raise StoreUnavailable("the listening connection is down")
        return connection

    def _unlock(self, lock):
        connection = self._connection
        if connection is None or connection.detector.connectionIsDead:
            return defer.succeed(None)  # the lock went with the connection
        d = connection.runOperation("SELECT pg_advisory_unlock(%s)", (lock,))
        return d.addErrback(lambda failure: None)  # likewise: the session ended

    def release(self, user, device):
        """``user``'s ``device`` has no connection here any more (its cursor is closed): let
        go of its lock, for the node it logged in to next."""
        key = (user, device)
        claim = self._claims.get(key)
        if claim is not None:
            claim.wanted = False
        if key in self._held:
            self._held.discard(key)
            self._unlock(device_lock(user, device))

    async def _reclaim(self):
        """After the listening connection came back its locks are gone: take them again for
        the devices connected here.  One another node took meanwhile (the device logged in
        there) has its connection here ended, as a ``login`` hint would."""
        self._held.clear()
        relay = self._factory.relay
        # A device whose claim is under way gets its lock from that claim: asked here too,
        # it would be ended for the lock its older connection still holds, or take the
        # lock twice over (one release would not let it go).
        devices = [key for key in relay.online_devices() if key not in self._claims]
        taken = await defer.gatherResults(
            [self._try_lock(device_lock(user, device)) for user, device in devices],
            consumeErrors=True)
        for (user, device), mine in zip(devices, taken):
            if mine:
                self._held.add((user, device))
            else:
                relay.logged_in_elsewhere(user, device)

    # -- telling ----------------------------------------------------------

    def devices_changed(self, user, changes):
        """``user``'s device list changed (the store's ``changes``: added, removed, dropped)."""
        return self._publish({"k": "devices", "u": user, "c": {
            key: list(changes.get(key, ())) for key in ("added", "removed", "dropped")}})

    def rooms_changed(self, rooms):
        """Membership, bans or invite-only of ``rooms`` changed (what ``RoomDirectory``
        caches; roles and bans are read from the store each time)."""
        return self._publish({"k": "room", "r": list(rooms)})

    def user_changed(self, user, event):
        """``user``'s account was ``disabled``, ``enabled`` or ``deleted``."""
        return self._publish({"k": "user", "u": user, "e": event})

    def logged_in(self, user, device):
        """``user``'s ``device`` logged in here: a connection of it elsewhere ends.

        Until this hint comes back on the channel, another node's ``login`` hint for the
        device is older than this login (NOTIFYs arrive in commit order, the same on
        every node) and must not end it: a device that moves B -> A faster than A hears
        B's hint keeps its new connection (``_on_login``)."""
        key = (user, device)
        self._unechoed[key] = self._unechoed.get(key, 0) + 1
        d = self._store.announce(hints.encode({"n": self.node, "k": "login", "u": user,
                                               "d": device}))
        d.addErrback(self._not_echoed, key)
        d.addErrback(self._not_told, "login")
        return d

    def _not_echoed(self, failure, key):
        """A login hint that was not sent will not come back: stop waiting for it."""
        self._echoed(key)
        return failure

    def _echoed(self, key):
        left = self._unechoed.get(key, 0) - 1
        if left > 0:
            self._unechoed[key] = left
        else:
            self._unechoed.pop(key, None)

    def typing(self, sender, sender_device, envelopes):
        """Typing notices for devices not connected here: the node they are connected to
        pushes them (none stores them).  Best effort, like the notices themselves: a hint
        that cannot be sent is dropped without a word."""
        for text in hints.typing(self.node, sender, sender_device, envelopes):
            self._store.announce(text).addErrback(lambda failure: None)

    def _publish(self, hint):
        d = self._store.announce(hints.encode({"n": self.node, **hint}))
        d.addErrback(self._not_told, hint["k"])
        return d

    def _not_told(self, failure, kind):
        """A hint that cannot be sent (the database is down) is logged, not raised: its change
        is committed, and the other nodes forget their caches when they reconnect."""
        self.log.warn("Could not tell the other relay nodes of a change ({kind}): {error}",
                      kind=kind, error=failure.getErrorMessage())

    # -- hearing ----------------------------------------------------------

    async def _listen(self):
        await self._connection.runOperation(f"LISTEN {hints.CHANNEL}")
        self.log.info("Relay node {node} listens for the other nodes' hints", node=self.node)
        await self._catch_up()

    def _on_reconnect(self):
        return defer.ensureDeferred(self._reconnected())

    async def _reconnected(self):
        """The listener is back after the database or the network dropped it.  If catching
        up fails (the store's own connections are not back yet), the heartbeat tries again."""
        self.log.info("Relay node {node}: the listening connection is back; every connected "
                      "device reads its queue again", node=self.node)
        self.heard.forget()
        self._unechoed.clear()  # what was sent meanwhile will not come back
        try:
            await self._listen()
        except Exception as e:
            self.log.warn("Relay node {node} could not catch up yet ({error}); it tries again "
                          "in {seconds} s", node=self.node, error=e, seconds=HEARTBEAT_SECONDS)

    async def _catch_up(self):
        """Hints may have been missed: forget every cache, mark every group committed so
        far as heard, and have every cursor here read the store."""
        factory = self._factory
        self._forget_caches()
        disabled = await self._store.disabled_users()
        last = await self._store.last_seq()
        factory.disabled.clear()
        factory.disabled.update(disabled)
        for user in disabled:
            factory.relay.end_all_sessions_of(user)
        await self._reclaim()
        self.heard.reset(last)
        factory.relay.read_everything()

    def _forget_caches(self):
        self._factory.devices.forget_all()
        self._factory.rooms.directory.forget_all()

    def _check(self):
        """Keep the listener honest (a query shows a dead connection) and catch up when a
        gap in the numbers heard stays open."""
        connection = self._connection
        if connection is None or connection.detector.connectionIsDead:
            return None
        d = connection.runOperation("SELECT 1")
        if self.heard.stuck():
            d.addCallback(lambda _: defer.ensureDeferred(self._catch_up()))
        d.addErrback(self._check_failed)
        return d

    def _check_failed(self, failure):
        self.log.warn("Relay node {node}: checking the listening connection failed: {error}",
                      node=self.node, error=failure.getErrorMessage())

    def _received(self, notify):
        """A hint from the channel (txpostgres hands them over one at a time, in order,
        waiting for a Deferred this returns)."""
        if notify.channel != hints.CHANNEL:
            return None
        if notify.payload.startswith(self._own):  # this node's own hints come back to it too
            if notify.payload.startswith(self._own_login):
                hint = hints.parse(notify.payload)
                self._echoed((hint["u"], hint["d"]))
            return None
        try:
            hint = hints.parse(notify.payload)
            if hint["n"] == self.node:
                return None
            done = getattr(self, "_on_" + hint["k"])(hint)
        except (ValueError, KeyError, TypeError) as e:
            self.log.warn("Relay node {node} ignored a malformed hint: {error}",
                          node=self.node, error=e)
            return None
        if done is not None:
            done.addErrback(self._failed, hint["k"])
        return done

    def _failed(self, failure, kind):
        self.log.failure("Relay node {node} could not act on a hint ({kind})", failure,
                         node=self.node, kind=kind)

    def _on_q(self, hint):
        devices = [(user, device, seq) for user, device, seq in hint["d"]]
        rooms = [(room, seq) for room, seq in hint["r"]]
        if not rooms:
            self._factory.relay.committed_elsewhere(devices, {}, hint["b"])
            self.heard.heard(*hint["t"])
            return None
        return defer.ensureDeferred(self._deliver_to_rooms(hint, devices, rooms))

    async def _deliver_to_rooms(self, hint, devices, rooms):
        relay, members = self._factory.relay, {}
        directory = self._factory.rooms.directory
        try:
            for room, seq in rooms:
                for member in await directory.members(room):
                    members[member] = max(seq, members.get(member, 0))
        except StoreUnavailable:  # who is in the room is unknown: everybody here reads
            relay.read_everything()
        else:
            relay.committed_elsewhere(devices, members, hint["b"])
        self.heard.heard(*hint["t"])

    def _on_all(self, hint):
        """A hint too long to send: read everything again (and forget every cache)."""
        self._forget_caches()
        self._factory.relay.read_everything()
        if "t" in hint:
            self.heard.heard(*hint["t"])

    def _on_devices(self, hint):
        user, changes = hint["u"], hint["c"]
        self._factory.devices.changed(user)
        self._factory.relay.devices_changed(user, changes)

    def _on_room(self, hint):
        self._factory.rooms.directory.forget_here(hint["r"])

    def _on_user(self, hint):
        user, event = hint["u"], hint["e"]
        factory = self._factory
        if event == "disabled":
            factory.disabled.add(user)
            factory.relay.end_all_sessions_of(user)
        elif event == "enabled":
            factory.disabled.discard(user)
        elif event == "deleted":
            factory.disabled.discard(user)
            factory.devices.changed(user)
            factory.relay.end_sessions_of(user, factory.relay.devices_here(user))
        else:
            raise ValueError(f"unknown account event {event!r}")

    def _on_typing(self, hint):
        self._factory.relay.push_typing_here(hint["f"], hint["fd"], hint["e"])

    def _on_login(self, hint):
        if (hint["u"], hint["d"]) not in self._unechoed:  # else it predates the login here
            self._factory.relay.logged_in_elsewhere(hint["u"], hint["d"])


class _Claim:
    """A claim of a device's lock in progress (``NodeBus.claim``): who waits for it, and
    whether the device is still connected here (``wanted``)."""

    def __init__(self):
        self.wanted = True
        self.waiting = Waiters()
