"""Room moderation and the directory: kicks ban until lifted, roles rank owner > admin >
member, and no request lists users or devices its sender did not name (or share a room
with).  Real relays on 127.0.0.1 over TLS, the SQLite store; one check with the real CLI."""

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import wire
from securechat.server import rooms as rooms_module
from securechat.server.directory import RoomDirectory
from tests.support import cleanup, expect_error, new_envelope_id, poll_until
from tests.test_relay_tls import registered
from tests.test_rooms_e2e import People
from tests.processes import run_cli

ROOM_MESSAGE = {"kind": "megolm", "sid": "bWVnb2xt", "ct": wire.b64encode(b"opaque")}


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[broadcast]\nadmins = root\n")


async def members(device, room="ops"):
    return sorted((await device.request("room.members", room=room))["members"])


def membership_events(device):
    """The (user, action) of each membership notice ``device`` received."""
    return [(e["envelope"]["event"]["user"], e["envelope"]["event"]["action"])
            for e in device.envelopes() if e["envelope"]["kind"] == "membership"]


async def staffed_room(server):
    """ops: alice owns it, bob and carol are admins, dave and erin members."""
    people = await registered(server, "alice", "bob", "carol", "dave", "erin")
    alice, bob, carol, dave, erin = people
    await alice.request("room.create", room="ops")
    for person in (bob, carol, dave, erin):
        await person.request("room.join", room="ops")
    for admin in ("bob", "carol"):
        await alice.request("room.admin", room="ops", user=admin, admin=True)
    return people


@pytest_twisted.ensureDeferred
async def test_a_kicked_user_cannot_rejoin_an_open_room_until_unbanned(server):
    """A kick bans: the kicked user's join (and an invite of it) is refused with `banned`
    and it gets no room message until an admin lifts the ban; then it joins again."""
    alice, bob = await registered(server, "alice", "bob")
    await alice.request("room.create", room="ops")
    await bob.request("room.join", room="ops")
    assert (await alice.request("room.kick", room="ops", user="bob"))["banned"] == "bob"
    refused = await expect_error("banned", bob.request("room.join", room="ops"))
    assert "banned from room 'ops'" in refused.message and "alice" in refused.message
    await expect_error("banned", alice.request("room.invite", room="ops", user="bob"))
    assert await members(alice) == ["alice"]
    sent = await alice.request("room.send", room="ops", id=new_envelope_id(), **ROOM_MESSAGE)
    assert sent["recipients"] == 0
    await expect_error("not_member", bob.request("room.history", room="ops"))

    assert await alice.request("room.unban", room="ops", user="bob") == {
        "room": "ops", "user": "bob", "banned": False}
    await expect_error("not_banned", alice.request("room.unban", room="ops", user="bob"))
    await bob.request("room.join", room="ops")
    assert await members(alice) == ["alice", "bob"]
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_banned_user_cannot_test_the_room_password(server):
    """A banned user's join is refused as `banned` whether its password is right or wrong,
    so a ban is no oracle for guessing the password."""
    alice, bob = await registered(server, "alice", "bob")
    password = wire.b64encode(b"correct horse 16")
    await alice.request("room.create", room="vault", password=password)
    await bob.request("room.join", room="vault", password=password)
    await alice.request("room.kick", room="vault", user="bob")
    await expect_error("banned", bob.request("room.join", room="vault", password=password))
    await expect_error("banned", bob.request(
        "room.join", room="vault", password=wire.b64encode(b"wrong horse 1234")))
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_an_admin_kicks_members_only_and_nobody_kicks_the_owner(server):
    """An admin cannot kick another admin or the owner (`forbidden`, nobody removed); it
    can kick a member; the owner can kick an admin."""
    alice, bob, carol, dave, erin = await staffed_room(server)
    refused = await expect_error("forbidden", bob.request("room.kick", room="ops", user="carol"))
    assert "only the owner" in refused.message
    refused = await expect_error("forbidden", bob.request("room.kick", room="ops", user="alice"))
    assert "owner of room 'ops' cannot be removed" in refused.message
    await expect_error("forbidden", dave.request("room.kick", room="ops", user="erin"))
    assert await members(alice) == ["alice", "bob", "carol", "dave", "erin"]
    await bob.request("room.kick", room="ops", user="dave")
    await alice.request("room.kick", room="ops", user="carol")
    await expect_error("forbidden", alice.request("room.kick", room="ops", user="alice"))
    assert await members(alice) == ["alice", "bob", "erin"]
    await cleanup(alice, bob, carol, dave, erin)


@pytest_twisted.ensureDeferred
async def test_leaving_just_before_a_kick_does_not_escape_the_ban(server):
    """A user who left (or never joined) is banned by a kick all the same: the answer says
    nobody was removed, its join is refused with `banned`, and the members are not told
    of a change that did not happen; an unknown name is `unknown_user`."""
    alice, bob, carol, dave = await registered(server, "alice", "bob", "carol", "dave")
    await alice.request("room.create", room="ops")
    await bob.request("room.join", room="ops")
    await carol.request("room.join", room="ops")
    await bob.request("room.leave", room="ops")
    assert await alice.request("room.kick", room="ops", user="bob") == {
        "room": "ops", "members": ["alice", "carol"], "banned": "bob", "removed": False}
    await expect_error("banned", bob.request("room.join", room="ops"))
    ban = await server.service.store.room_ban("ops", "bob")
    assert (ban["role"], ban["by"]) == ("member", "alice")
    await dave.request("room.join", room="ops")  # queued after any notice of the kick
    await poll_until(lambda: ("dave", "joined") in membership_events(carol))
    assert [event for event in membership_events(carol) if event[1] == "kicked"] == []
    refused = await expect_error("unknown_user", alice.request(
        "room.kick", room="ops", user="nobody"))
    assert "nobody" in refused.message
    assert await server.service.store.room_ban("ops", "nobody") is None
    await cleanup(alice, bob, carol, dave)


@pytest_twisted.ensureDeferred
async def test_a_kick_of_a_non_member_keeps_the_role_order(server):
    """For a non-member the rank is the one it had: the owner who left cannot be banned,
    a former admin (as its ban records) is banned again only by the owner, and a user
    never in the room ranks as a member, whom an admin may ban."""
    alice, bob, carol, dave, erin = await staffed_room(server)
    frank, = await registered(server, "frank")
    await alice.request("room.kick", room="ops", user="carol")
    refused = await expect_error("forbidden", bob.request("room.kick", room="ops", user="carol"))
    assert "only the owner" in refused.message
    assert (await server.service.store.room_ban("ops", "carol"))["role"] == "admin"
    assert (await bob.request("room.kick", room="ops", user="frank"))["removed"] is False
    await expect_error("banned", frank.request("room.join", room="ops"))
    await alice.request("room.leave", room="ops")
    refused = await expect_error("forbidden", bob.request("room.kick", room="ops", user="alice"))
    assert "owner of room 'ops' cannot be removed" in refused.message
    assert await server.service.store.room_ban("ops", "alice") is None
    await cleanup(alice, bob, carol, dave, erin, frank)


@pytest_twisted.ensureDeferred
async def test_the_owner_and_admins_list_the_bans_a_page_at_a_time(server, monkeypatch):
    """`room.bans` lists each ban (user, former role, who placed it, when) in name order,
    pages with `after` and `more`; members and non-members are `forbidden`."""
    monkeypatch.setattr(rooms_module, "BANS_PAGE", 2)
    alice, bob, carol, dave, erin = await staffed_room(server)
    frank, = await registered(server, "frank")
    await alice.request("room.kick", room="ops", user="carol")
    await bob.request("room.kick", room="ops", user="erin")
    await bob.request("room.kick", room="ops", user="frank")
    first = await bob.request("room.bans", room="ops")
    assert [(b["user"], b["role"], b["by"]) for b in first["bans"]] == [
        ("carol", "admin", "alice"), ("erin", "member", "bob")] and first["more"] is True
    rest = await alice.request("room.bans", room="ops", after="erin")
    assert [b["user"] for b in rest["bans"]] == ["frank"] and rest["more"] is False
    assert all(isinstance(b["created"], int) for b in first["bans"] + rest["bans"])
    await expect_error("forbidden", dave.request("room.bans", room="ops"))
    await expect_error("forbidden", frank.request("room.bans", room="ops"))
    await cleanup(alice, bob, carol, dave, erin, frank)


@pytest_twisted.ensureDeferred
async def test_unbans_follow_the_same_order(server):
    """An admin lifts an admin's ban of a member; the owner's bans and a former admin's ban
    only the owner lifts; a member lifts none."""
    alice, bob, carol, dave, erin = await staffed_room(server)
    await bob.request("room.kick", room="ops", user="dave")
    await alice.request("room.kick", room="ops", user="erin")
    await alice.request("room.kick", room="ops", user="carol")
    await expect_error("banned", dave.request("room.join", room="ops"))
    await expect_error("forbidden", bob.request("room.unban", room="ops", user="erin"))
    await expect_error("forbidden", bob.request("room.unban", room="ops", user="carol"))
    await bob.request("room.unban", room="ops", user="dave")
    await dave.request("room.join", room="ops")
    await expect_error("forbidden", dave.request("room.unban", room="ops", user="erin"))
    for user in ("erin", "carol"):
        await alice.request("room.unban", room="ops", user=user)
    await carol.request("room.join", room="ops")
    assert await server.service.store.member_role("ops", "carol") == "member"  # came back as one
    await cleanup(alice, bob, carol, dave, erin)


@pytest_twisted.ensureDeferred
async def test_only_the_owner_names_admins_and_keeps_its_role(server):
    """An admin cannot name or demote admins; the owner cannot demote itself."""
    alice, bob, carol, dave, erin = await staffed_room(server)
    await expect_error("forbidden", bob.request("room.admin", room="ops", user="dave", admin=True))
    await expect_error("forbidden", bob.request("room.admin", room="ops", user="carol",
                                                admin=False))
    await expect_error("forbidden", alice.request("room.admin", room="ops", user="alice",
                                                  admin=False))
    assert await server.service.store.member_role("ops", "alice") == "owner"
    assert await server.service.store.member_role("ops", "carol") == "admin"
    await cleanup(alice, bob, carol, dave, erin)


@pytest_twisted.ensureDeferred
async def test_an_invite_only_room_admits_invited_users_only(server):
    """Once its owner (nobody else) makes a room invite-only, a join is refused with
    `invite_only` (the password unchecked) and only an invitation adds a member; opened
    again, anyone joins."""
    alice, bob, carol, dave, erin = await staffed_room(server)
    await alice.request("room.create", room="vault", password=wire.b64encode(b"p" * 16))
    await expect_error("not_member", alice.request("room.admin", room="vault", user="bob",
                                                    admin=True))
    await expect_error("forbidden", bob.request("room.mode", room="ops", invite_only=True))
    await erin.request("room.join", room="vault", password=wire.b64encode(b"p" * 16))
    assert await alice.request("room.mode", room="vault", invite_only=True) == {
        "room": "vault", "invite_only": True}
    refused = await expect_error("invite_only", carol.request(
        "room.join", room="vault", password=wire.b64encode(b"p" * 16)))
    assert "invite-only" in refused.message
    await expect_error("invite_only", carol.request(
        "room.join", room="vault", password=wire.b64encode(b"wrong guess 1234")))
    await alice.request("room.invite", room="vault", user="carol")
    await carol.request("room.join", room="vault", password=wire.b64encode(b"p" * 16))
    await alice.request("room.mode", room="vault", invite_only=False)
    await dave.request("room.join", room="vault", password=wire.b64encode(b"p" * 16))
    assert await members(alice, "vault") == ["alice", "carol", "dave", "erin"]
    await cleanup(alice, bob, carol, dave, erin)


@pytest_twisted.ensureDeferred
async def test_the_everyone_room_is_listed_to_the_servers_admins_only(server):
    """`room.members` of `everyone` is `forbidden` to a user not in [broadcast] admins, and
    lists every user and device to one who is."""
    root, alice, bob = await registered(server, "root", "alice", "bob")
    refused = await expect_error("forbidden", alice.request("room.members", room="everyone"))
    assert "admins only" in refused.message
    listed = await root.request("room.members", room="everyone")
    assert listed["members"] == {"alice": ["DEV1"], "bob": ["DEV1"], "root": ["DEV1"]}
    await cleanup(root, alice, bob)


@pytest_twisted.ensureDeferred
async def test_with_senders_anyone_every_user_is_given_the_everyone_room(open_broadcast):
    """With [broadcast] senders = anyone the operator opens the directory: a user who is no
    admin gets `room.members` of `everyone` (every user and device), which it needs to
    encrypt the broadcast it may send."""
    server = open_broadcast
    alice, bob = await registered(server, "alice", "bob")
    listed = await alice.request("room.members", room="everyone")
    assert listed["members"] == {"alice": ["DEV1"], "bob": ["DEV1"]}
    await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_keys_are_answered_only_for_named_users(server):
    """`keys.query` with no users lists nobody, with one user only that user; `keys.claim`
    with no devices claims nothing; no name pattern stands for other users."""
    alice, bob, carol = await registered(server, "alice", "bob", "carol")
    assert await bob.request("keys.query", users=[]) == {"users": {}}
    answer = await bob.request("keys.query", users=["carol", "carol"])
    assert list(answer["users"]) == ["carol"] and list(answer["users"]["carol"]["devices"]) == [
        "DEV1"]
    assert await bob.request("keys.claim", devices={}) == {"keys": {}}
    for pattern in ("*", "%", "", "ALICE"):
        await expect_error("bad_field", bob.request("keys.query", users=[pattern]))
    await expect_error("unknown_user", bob.request("keys.query", users=["al"]))
    await cleanup(alice, bob, carol)


class _PausedStore:
    """The two calls RoomDirectory makes here, answered when the test says (to order a
    member-list read around a kick the way concurrent requests can)."""

    def __init__(self):
        self.reads = []
        self.bans = []

    def room_members(self, room):
        self.reads.append(defer.Deferred())
        return self.reads[-1]

    def ban_member(self, room, user, by):
        self.bans.append(defer.Deferred())
        return self.bans[-1]


@pytest_twisted.ensureDeferred
async def test_a_member_list_read_during_a_kick_is_not_cached():
    """A member list read before a kick commits and answered after it is not kept, so the
    kicked user does not stay in the cached list (and keep receiving the room's messages)."""
    store = _PausedStore()
    rooms = RoomDirectory(store)
    read = defer.ensureDeferred(rooms.members("ops"))
    ban = defer.ensureDeferred(rooms.ban_member("ops", "bob", "alice"))
    store.bans[0].callback(["alice", "bob"])
    store.reads[0].callback(["alice", "bob"])  # read before the kick, answered after it
    assert await read == ("alice", "bob") and await ban == ["alice", "bob"]
    fresh = defer.ensureDeferred(rooms.members("ops"))
    assert len(store.reads) == 2, "the stale list was served from the cache"
    store.reads[1].callback(["alice"])
    assert await fresh == ("alice",)


@pytest_twisted.ensureDeferred
async def test_the_cli_unbans_a_kicked_user_and_closes_a_room(server, tmp_path):
    """With the real `securechat`: a kicked user's `join` exits 1 saying it is banned;
    `securechat unban ROOM USER` lets it join again; after `securechat rooms mode ROOM
    invite-only` another user's join exits 1 saying so."""
    people = People(server, tmp_path)
    await people.register("alice", "bob", "carol")
    await people.ok("alice", "rooms", "create", "ops")
    await people.ok("bob", "join", "ops")
    kicked = await people.ok("alice", "kick", "ops", "bob")
    assert "banned" in kicked.out and "unban ops bob" in kicked.out
    refused = await run_cli(people.configs["bob"], "join", "ops")
    assert refused.code == 1 and "banned from room 'ops'" in refused.err, refused
    assert "lifted the ban" in (await people.ok("alice", "unban", "ops", "bob")).out
    await people.ok("bob", "join", "ops")
    assert await server.service.store.room_members("ops") == ["alice", "bob"]
    assert "ops is invite-only" in (
        await people.ok("alice", "rooms", "mode", "ops", "invite-only")).out
    refused = await run_cli(people.configs["carol"], "join", "ops")
    assert refused.code == 1 and "room 'ops' is invite-only" in refused.err, refused


@pytest_twisted.ensureDeferred
async def test_the_cli_bans_a_user_who_left_and_lists_the_bans(server, tmp_path):
    """With the real `securechat`: `rooms bans ROOM` says when nobody is banned; `kick` of
    a user who already left says it was not in the room and is banned now; `rooms bans`
    then names the user, who banned it and its former role; a member's `rooms bans`
    exits 1."""
    people = People(server, tmp_path)
    await people.register("alice", "bob")
    await people.ok("alice", "rooms", "create", "ops")
    assert (await people.ok("alice", "rooms", "bans", "ops")).out.strip() == (
        "nobody is banned from ops")
    await people.ok("bob", "join", "ops")
    await people.ok("bob", "leave", "ops")
    kicked = await people.ok("alice", "kick", "ops", "bob")
    assert "bob is not in ops and is now banned" in kicked.out, kicked
    listed = (await people.ok("alice", "rooms", "bans", "ops")).out.strip()
    assert listed.startswith("bob: banned by alice at ") and listed.endswith(
        "(a former member)"), listed
    refused = await run_cli(people.configs["bob"], "rooms", "bans", "ops")
    assert refused.code == 1 and "only the owner and admins" in refused.err, refused
