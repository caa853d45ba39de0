"""Rooms: create, join (optionally with a password), leave, list, and multicast to members.

The server knows who is in a room (it must, to fan envelopes out) but not
what is said there: a room message is one Megolm ciphertext that the relay
stores once per member device.
"""

from securechat import wire
from securechat.store import errors as store_errors
from securechat.wire import ProtocolError


class Rooms:
    def __init__(self, store, relay, hasher):
        self._store = store
        self._relay = relay
        self._hasher = hasher

    async def create(self, user, room, password):
        password_hash = None
        if password is not None:
            password_hash = await self._hasher.hash(wire.b64decode(password))
        try:
            await self._store.create_room(room, user, password_hash)
        except store_errors.RoomExists:
            raise ProtocolError("room_exists", f"room {room!r} already exists")
        return {"room": room, "members": [user]}

    async def join(self, user, room, password):
        info = await self._existing(room)
        if info["password_hash"] is not None:
            if password is None:
                raise ProtocolError("wrong_password", f"room {room!r} needs a password")
            if not await self._hasher.verify(info["password_hash"], wire.b64decode(password)):
                raise ProtocolError("wrong_password", f"wrong password for room {room!r}")
        added = await self._store.add_member(room, user)
        return {"room": room, "joined": added, "members": await self._store.room_members(room)}

    async def leave(self, user, room):
        await self._existing(room)
        if not await self._store.remove_member(room, user):
            raise ProtocolError("not_member", f"you are not a member of room {room!r}")
        return {"room": room}

    async def members(self, user, room):
        members = await self._members_seen_by(user, room)
        result = {}
        for member in members:
            result[member] = [row["device"] for row in await self._store.get_devices(member)]
        return {"room": room, "members": result}

    async def list(self, user):
        return {"rooms": await self._store.rooms_of(user)}

    async def send(self, user, device, fields):
        """Fan one ciphertext out to every member device but the sender's."""
        room = fields["room"]
        members = await self._members_seen_by(user, room)
        recipients = []
        for member in members:
            recipients.extend((member, row["device"]) for row in await self._store.get_devices(member))
        return await self._relay.send_to_devices(user, device, fields, recipients, room)

    async def _existing(self, room):
        info = await self._store.get_room(room)
        if info is None:
            raise ProtocolError("unknown_room", f"no room named {room!r}")
        return info

    async def _members_seen_by(self, user, room):
        await self._existing(room)
        members = await self._store.room_members(room)
        if user not in members:
            raise ProtocolError("not_member", f"you are not a member of room {room!r}")
        return members
