"""Cached views of state every message needs and that rarely changes: devices, rooms.

A device becomes current when its account's signed device list takes it in
(or, for an account that has published no list yet, when it publishes its
keys), and stops being current when a list leaves it out; each goes through
this server, which then forgets its cached answer.  Room membership changes go through
``RoomDirectory`` itself.  With several relay nodes on one PostgreSQL
database, a node hears of the changes another node made through the node bus
(``securechat.server.nodebus``), which calls ``changed`` and ``forget_here``
here, and forgets everything after its listener reconnects (hints sent
meanwhile are lost).
"""

from securechat.server.nodebus import LoneNode

MAX_CACHED = 100_000


class DeviceDirectory:
    """The current devices of each user (those of its latest signed device list), read from
    the store once and then served from memory.  Pending devices (keys, but in no list)
    are not among them: nobody encrypts to them, sends need not cover them.

    Only existing accounts are remembered (an unknown name may be
    registered a moment later), so ``cached`` answering None means "ask
    ``devices``", never "no such user".
    """

    def __init__(self, store):
        self._store = store
        self._cache = {}
        self._changes = 0  # changes seen: a read that saw one go by is not kept

    def cached(self, user):
        """The sorted device ids of ``user`` if already known, else None (no store access)."""
        return self._cache.get(user)

    async def devices(self, user):
        """The sorted device ids of ``user``; None when there is no such account."""
        cached = self._cache.get(user)
        if cached is None:
            changes = self._changes
            cached = tuple(row["device"] for row in await self._store.get_devices(user)
                           if row["listed"])
            if not cached and await self._store.get_account(user) is None:
                return None
            if changes == self._changes:  # else it may predate the change (a removal)
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[user] = cached
        return cached

    def changed(self, user):
        self._changes += 1
        self._cache.pop(user, None)

    def forget_all(self):
        self._changes += 1
        self._cache.clear()


class RoomDirectory:
    """Rooms and their members, cached: every room message needs them; joins are rare.

    Every change goes through ``add_member``/``remove_member``/``ban_member``/
    ``set_invite_only`` here, so the cache never serves a stale room; the other nodes
    are told (``bus.rooms_changed``) before the change's answer.
    """

    def __init__(self, store, bus=None):
        self._store = store
        self._bus = bus if bus is not None else LoneNode()
        self._rooms = {}
        self._members = {}
        self._changes = 0  # changes done: a read that saw one go by is not kept

    async def room(self, room):
        """The room's record, or None (unknown rooms are not cached: they may be created)."""
        info = self._rooms.get(room)
        if info is None:
            changes = self._changes
            info = await self._store.get_room(room)
            if info is not None and changes == self._changes:
                self._remember(self._rooms, room, info)
        return info

    async def members(self, room):
        members = self._members.get(room)
        if members is None:
            changes = self._changes
            members = tuple(await self._store.room_members(room))
            if changes == self._changes:  # else it may predate the change (a kicked member)
                self._remember(self._members, room, members)
        return members

    def add_member(self, room, user):
        return self._changing(self._members, room, self._store.add_member(room, user))

    def remove_member(self, room, user):
        return self._changing(self._members, room, self._store.remove_member(room, user))

    def ban_member(self, room, user, by):
        return self._changing(self._members, room, self._store.ban_member(room, user, by))

    def set_invite_only(self, room, invite_only):
        return self._changing(self._rooms, room, self._store.set_invite_only(room, invite_only))

    def forget(self, rooms):
        """Forget all that is cached of ``rooms`` here and on the other nodes (a Deferred):
        they were changed in the store by a transaction of another kind (an account's
        deletion)."""
        self.forget_here(rooms)
        return self._bus.rooms_changed(rooms)

    def forget_here(self, rooms):
        """Forget all that is cached of ``rooms`` (another node changed them)."""
        self._changes += 1
        for room in rooms:
            self._rooms.pop(room, None)
            self._members.pop(room, None)

    def forget_all(self):
        self._changes += 1
        self._rooms.clear()
        self._members.clear()

    async def _changing(self, cache, room, change):
        """The outcome of a ``change`` (a Deferred) to what ``cache`` holds of ``room``,
        which is forgotten whatever it is (a failure may come after the commit)."""
        try:
            return await change
        finally:
            self._changes += 1
            cache.pop(room, None)
            await self._bus.rooms_changed([room])

    @staticmethod
    def _remember(cache, key, value):
        if len(cache) >= MAX_CACHED:
            cache.clear()
        cache[key] = value
