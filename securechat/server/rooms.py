"""Rooms: membership (create, join with an optional password, leave, invite, kick and ban,
admins), multicast of one ciphertext to every member device, ciphertext history, and the
``everyone`` room that broadcasts go to.

Roles rank owner > admin > member: the owner and admins moderate (invite,
kick, unban), and each acts only on those ranked below it -- an admin on
members, the owner on admins and members, nobody on the owner.  The owner
alone names admins and makes a room invite-only (joins refused: only
invitations add members).

The server knows who is in a room (it must, to fan envelopes out) but not
what is said there.  Members learn of joins and leaves through membership
events the server queues for every member device, like any envelope, so an
offline member sees them on login (and its client rotates its Megolm session
before it next speaks).
"""

import json
import secrets

from securechat import wire
from securechat.server.accounts import no_such_user
from securechat.server.auth import ROOM_WORK
from securechat.server.directory import RoomDirectory
from securechat.store import errors as store_errors
from securechat.timestamps import DAY_MS
from securechat.wire import BROADCAST_ROOM, ProtocolError

HISTORY_PAGE = 100
BANS_PAGE = 500
HISTORY_PAGE_BYTES = 1024 * 1024
"""The envelopes of one history page stop at this many bytes (a page holds at least one),
so one answer always fits in a connection's output budget; clients page on with
``before``."""
RANK = {"member": 0, "admin": 1, "owner": 2}


def membership_body(event_id, room, user, action, by, now_ms):
    """A server-authored envelope telling members who joined or left (not encrypted: the
    server knows it anyway)."""
    return json.dumps({
        "v": 1, "id": event_id, "from": None, "from_dev": None, "to": None, "to_dev": None,
        "room": room, "kind": "membership", "sid": None, "otype": None, "ct": None,
        "event": {"user": user, "action": action, "by": by}, "ts": now_ms,
    }, separators=(",", ":"))


class Rooms:
    def __init__(self, config, store, directory, relay, hasher, password_guard):
        self._config = config
        self._store = store
        self._directory = directory
        self._rooms = RoomDirectory(store, relay.bus)
        self._relay = relay
        self._hasher = hasher
        self._password_guard = password_guard  # guards.RoomPasswordGuard

    # -- membership ---------------------------------------------------------------

    async def create(self, user, room, password):
        if room == BROADCAST_ROOM:
            raise ProtocolError("room_exists", f"{room!r} is the room of every user")
        password_hash = None
        if password is not None:
            password_hash = await self._hasher.hash(wire.b64decode(password), ROOM_WORK, user)
        try:
            await self._store.create_room(room, user, password_hash)
        except store_errors.RoomExists:
            raise ProtocolError("room_exists", f"room {room!r} already exists")
        return {"room": room, "members": [user]}

    async def join(self, user, room, password):
        info = await self._existing(room)
        await self._check_admission(info, user)
        if info["password_hash"] is not None:
            if password is None:
                raise ProtocolError("wrong_password", f"room {room!r} needs a password")
            attempt = await self._password_guard.attempt(room, user)
            try:
                right = await self._hasher.verify(info["password_hash"],
                                                  wire.b64decode(password), ROOM_WORK, user)
            except Exception:
                attempt.abandoned()
                raise
            if not right:
                await attempt.failed()
                raise ProtocolError("wrong_password", f"wrong password for room {room!r}")
            await attempt.succeeded()
        members = await self._admit(room, user, f"you are banned from room {room!r}")
        if members:
            await self._announce(room, user, "joined", user, members)
        return {"room": room, "members": list(await self._rooms.members(room))}

    async def leave(self, user, room):
        await self._existing(room)
        members = await self._rooms.remove_member(room, user)
        if members is None:
            raise ProtocolError("not_member", f"you are not a member of room {room!r}")
        await self._announce(room, user, "left", user, members)
        return {"room": room}

    @property
    def directory(self):
        """The cached rooms and members (the node bus forgets what another node changed)."""
        return self._rooms

    async def left_for_good(self, user, rooms):
        """``user``'s account was deleted, which took it out of ``rooms`` (and passed on or
        dropped those it owned): forget what was cached of them and tell the members left
        that it left."""
        await self._rooms.forget(rooms)
        for room in rooms:
            members = await self._rooms.members(room)
            if members:
                await self._announce(room, user, "left", user, members)

    async def invite(self, user, room, invitee):
        """An admin adds a user directly (no password needed: the admin vouches).  A banned
        user is refused: lifting a ban is its own op (``unban``), never a side effect."""
        await self._require_admin(user, room)
        if await self._store.get_account(invitee) is None:
            raise await no_such_user(self._store, invitee)
        members = await self._admit(room, invitee, f"{invitee} is banned from room {room!r}; "
                                                   "lift the ban first (room.unban)")
        if members:
            await self._announce(room, invitee, "invited", user, members)
        return {"room": room, "members": list(await self._rooms.members(room))}

    async def kick(self, user, room, member):
        """Remove a member and ban it until the owner or an admin lifts the ban: in an open
        room a kick the kicked could undo by joining again would remove nobody.  A user
        who is not (or no longer) a member is banned all the same, so leaving just before
        a kick does not escape it; only a removal is announced (``removed`` says which)."""
        actor = await self._require_admin(user, room)
        role = await self._role_to_ban(room, member)
        if role == "owner":
            raise ProtocolError("forbidden", f"the owner of room {room!r} cannot be removed")
        if RANK[role] >= RANK[actor]:
            raise ProtocolError("forbidden", f"only the owner of room {room!r} removes its admins")
        members = await self._rooms.ban_member(room, member, user)
        removed = member in members
        if removed:
            await self._announce(room, member, "kicked", user, members)
        return {"room": room, "members": [m for m in members if m != member],
                "banned": member, "removed": removed}

    async def bans(self, user, room, after):
        """The room's bans, a page at a time, for its owner and admins (who cannot lift a
        ban they cannot see)."""
        await self._require_admin(user, room)
        page = await self._store.room_bans(room, after, BANS_PAGE + 1)
        return {"room": room, "bans": page[:BANS_PAGE], "more": len(page) > BANS_PAGE}

    async def unban(self, user, room, banned):
        """Lift a ban.  An admin lifts the bans of former members that an admin placed;
        the owner's bans, and those of former admins, only the owner lifts."""
        actor = await self._require_admin(user, room)
        ban = await self._store.room_ban(room, banned)
        if ban is None:
            raise ProtocolError("not_banned", f"{banned} is not banned from room {room!r}")
        owner = (await self._existing(room))["owner"]
        if actor != "owner" and (ban["role"] != "member" or ban["by"] == owner):
            raise ProtocolError(
                "forbidden", f"only the owner of room {room!r} lifts this ban (placed by "
                             f"{ban['by']} on a former {ban['role']})")
        await self._store.unban_member(room, banned)
        return {"room": room, "user": banned, "banned": False}

    async def set_invite_only(self, user, room, invite_only):
        await self._require_owner(user, room, "sets whether it is invite-only")
        await self._rooms.set_invite_only(room, invite_only)
        return {"room": room, "invite_only": invite_only}

    async def set_admin(self, user, room, member, admin):
        await self._require_owner(user, room, "names admins")
        role = await self._store.member_role(room, member)
        if role is None:
            raise ProtocolError("not_member", f"{member} is not a member of room {room!r}")
        if role == "owner":
            raise ProtocolError("forbidden", f"the owner of room {room!r} keeps that role")
        await self._store.set_member_role(room, member, "admin" if admin else "member")
        return {"room": room, "user": member, "role": "admin" if admin else "member"}

    async def members(self, user, room):
        """Each member's devices, and who of them owns the room or is an admin: members
        of a room see each other; the ``everyone`` room's members are every user and
        device (and it has no roles), listed to those who may broadcast (a client needs
        them to encrypt a broadcast): the server's admins, or every user when the
        operator chose ``[broadcast] senders = anyone``."""
        if room == BROADCAST_ROOM and not self._may_broadcast(user):
            raise ProtocolError(
                "forbidden", f"the members of {room!r} (every user and device) are listed to "
                             "the server's admins only ([broadcast] admins), unless "
                             "[broadcast] senders = anyone")
        members = await self._members_seen_by(user, room)
        result = {}
        for member in members:
            result[member] = list(await self._directory.devices(member) or ())
        roles = {} if room == BROADCAST_ROOM else await self._store.room_roles(room)
        return {"room": room, "members": result, "roles": roles}

    async def list(self, user):
        return {"rooms": await self._store.rooms_of(user)}

    # -- messages ---------------------------------------------------------------------

    async def send(self, user, device, fields):
        """Fan one ciphertext out to every member device but the sender's, and keep it in history."""
        room = fields["room"]
        if room == BROADCAST_ROOM:
            if not self._may_broadcast(user):
                raise ProtocolError("forbidden", "only the server's admins may broadcast here")
            every_device = set(await self._store.all_devices())
            return await self._relay.send_to_room(
                user, device, fields, room, None, len(every_device - {(user, device)}))
        members = await self._members_seen_by(user, room)
        devices = await self._device_count(members)  # the sender's devices are cached now
        devices -= device in (self._directory.cached(user) or ())
        return await self._relay.send_to_room(user, device, fields, room, members, devices)

    async def history(self, user, room, before, limit):
        await self._members_seen_by(user, room)
        entries = await self._store.room_history(room, before, limit or HISTORY_PAGE,
                                                 HISTORY_PAGE_BYTES)
        return {"room": room, "messages": [
            {"pos": e["pos"], "envelope": json.loads(e["body"])} for e in entries]}

    async def prune(self):
        """Drop history past ``[rooms] history_days`` (by the store's clock, the one that
        stamped it) and ``history_max_messages``; how many entries went."""
        return await self._store.prune_history(
            self._store.now_ms() - self._config.history_days * DAY_MS,
            self._config.history_max_messages)

    # -- helpers ------------------------------------------------------------------------

    async def _announce(self, room, user, action, by, members):
        """Queue the notice of a membership change for the devices of ``members``: the room
        as the change left it (a join) or found it (a leave), as its own transaction saw
        it, so concurrent changes each reach exactly the members of their moment."""
        recipients = await self._member_devices(set(members) | {user})
        if recipients:
            event_id = "m" + secrets.token_hex(16)
            body = membership_body(event_id, room, user, action, by, self._store.now_ms())
            await self._relay.deliver_server_envelope(event_id, body, recipients)

    def _may_broadcast(self, user):
        return self._config.senders == "anyone" or user in self._config.admins

    async def _device_count(self, members):
        """How many devices ``members`` have; from memory once each member's devices are
        cached (this runs for every room message)."""
        count = 0
        for member in members:
            devices = self._directory.cached(member)
            if devices is None:
                devices = await self._directory.devices(member) or ()
            count += len(devices)
        return count

    async def _member_devices(self, members):
        devices = []
        for member in sorted(members):
            devices.extend((member, device)
                           for device in await self._directory.devices(member) or ())
        return devices

    async def _require_admin(self, user, room):
        """The role of ``user``, who must be the room's owner or one of its admins."""
        await self._existing(room)
        role = await self._store.member_role(room, user)
        if role not in ("owner", "admin"):
            raise ProtocolError("forbidden", f"only the owner and admins of {room!r} may do that")
        return role

    async def _require_owner(self, user, room, doing):
        await self._existing(room)
        if await self._store.member_role(room, user) != "owner":
            raise ProtocolError("forbidden", f"only the owner of room {room!r} {doing}")

    async def _role_to_ban(self, room, user):
        """The rank a kick of ``user`` must outrank: its role as a member; for a non-member
        the one it had (the room's owner, or the role its existing ban records), else that
        of a member.  ``unknown_user`` for no such account."""
        role = await self._store.member_role(room, user)
        if role is not None:
            return role
        if user == (await self._existing(room))["owner"]:
            return "owner"
        ban = await self._store.room_ban(room, user)
        if ban is not None:
            return ban["role"]
        if await self._store.get_account(user) is None:
            raise await no_such_user(self._store, user)
        return "member"

    async def _check_admission(self, info, user):
        """Refuse a banned user, and a non-member of an invite-only room, before the
        password is checked: neither may use joins to test guesses of it."""
        room = info["room"]
        ban = await self._store.room_ban(room, user)
        if ban is not None:
            raise ProtocolError("banned", f"you are banned from room {room!r} (by {ban['by']}); "
                                          "its owner or an admin can lift the ban")
        if info["invite_only"] and user not in await self._rooms.members(room):
            raise ProtocolError("invite_only", f"room {room!r} is invite-only: ask its owner or "
                                               "an admin to invite you")

    async def _admit(self, room, user, banned_message):
        """Add a member (the members right after, to tell of it) unless already one (None);
        ``banned`` if banned meanwhile (the store checks under the room's lock: a join
        racing a kick cannot outlast it)."""
        try:
            return await self._rooms.add_member(room, user)
        except store_errors.Banned:
            raise ProtocolError("banned", banned_message) from None

    async def _existing(self, room):
        if room == BROADCAST_ROOM:
            raise ProtocolError("forbidden", f"every user is always in {room!r}")
        info = await self._rooms.room(room)
        if info is None:
            raise ProtocolError("unknown_room", f"no room named {room!r}")
        return info

    async def _members_seen_by(self, user, room):
        if room == BROADCAST_ROOM:
            return sorted({member for member, _ in await self._store.all_devices()})
        await self._existing(room)
        members = await self._rooms.members(room)
        if user not in members:
            raise ProtocolError("not_member", f"you are not a member of room {room!r}")
        return members
