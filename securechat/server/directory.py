"""Which devices each user has now, cached: every send needs it, and it rarely changes.

A device becomes current when it publishes its keys through this server,
which then forgets its cached answer.  (With several relay nodes on one
PostgreSQL database a node would also have to hear of other nodes' key
uploads; until cross-node routing exists, run one node per database.)
"""

MAX_CACHED_USERS = 100_000


class DeviceDirectory:
    def __init__(self, store):
        self._store = store
        self._cache = {}

    async def devices(self, user):
        """The sorted device ids of ``user`` (empty for a user with none, or no such user)."""
        cached = self._cache.get(user)
        if cached is None:
            cached = tuple(row["device"] for row in await self._store.get_devices(user))
            if len(self._cache) >= MAX_CACHED_USERS:
                self._cache.clear()
            self._cache[user] = cached
        return cached

    def changed(self, user):
        self._cache.pop(user, None)
