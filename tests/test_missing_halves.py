"""The missing halves of issue 18, with real ``securechat`` processes against a relay on
127.0.0.1: a verification request reaches the other side (inbox, daemon subscribers) and
both sides time out naming the other; rooms admin; members' role and verified marks; the
password hint of ``join``; the own fingerprint with the relay stopped."""

import contextlib
import copy
import re
import secrets
import types

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from securechat.client import daemon_client
from securechat.client.contacts import Contacts
from securechat.client.methods import Verifications
from securechat.client.render import format_message
from securechat.client.settings import load as load_client_settings
from securechat.client.verification import PendingRequests
from securechat.config import ConfigError
from tests.processes import DaemonProcess, InteractiveCli, run_cli, write_client_config
from tests.support import cleanup, poll_until, poll_until_async
from tests.test_room_roles import staffed_room
from tests.two_devices import add_device

SHORT = 3
"""The ``verify_timeout`` (seconds) of a side whose wait a test lets run out."""


@pytest.fixture
def server(start_relay):
    return start_relay()


async def register(server, tmp_path, name, verify_timeout=None):
    """``name``'s client ini, registered (``verify_timeout``: its seconds)."""
    extra = [f"verify_timeout = {verify_timeout}"] if verify_timeout else []
    config = write_client_config(str(tmp_path / "clients"), name, server.port,
                                 ca_file=server.cert_path, extra_lines=extra)
    result = await run_cli(config, "register")
    assert result.code == 0, result
    return config


async def device_of(config):
    """The device id ``securechat login`` reports."""
    return re.search(r"\(device (\w+)\)", (await ok(config, "login")).out).group(1)


async def queued(server, user):
    devices = await server.service.store.get_devices(user)
    return sum([await server.service.store.queue_length(user, d["device"]) for d in devices])


async def asked(server, user):
    """Wait until the relay holds something for ``user`` (a verification request sent)."""
    await poll_until_async(lambda: queued(server, user), timeout=60)


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def verify_both(server, alice, bob):
    started = defer.ensureDeferred(run_cli(alice, "verify", "bob", stdin=b"y\n"))
    await asked(server, "bob")
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)


# -- verification requests and timeouts -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_verify_request_shows_in_the_others_inbox_json_and_their_verify_answers_it(
        server, tmp_path):
    """bob, not running verify, finds alice's request in `inbox --json` (type
    verify_request, once); the `verify alice` it suggests then completes alice's."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    alice_device = await device_of(alice)
    started = defer.ensureDeferred(run_cli(alice, "verify", "bob", stdin=b"y\n"))
    await asked(server, "bob")
    (request,) = (await ok(bob, "inbox", "--json")).json_lines()
    assert (request["type"], request["from"], request["from_device"], request["text"]) == (
        "verify_request", "alice", alice_device, None)
    assert (await ok(bob, "inbox", "--json")).json_lines() == []  # shown once
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)
    assert "bob is verified" in initiator.out and "alice is verified" in responder.out


@pytest_twisted.ensureDeferred
async def test_a_request_answered_on_one_device_no_longer_waits_on_the_other(server, tmp_path):
    """bob asks alice to verify; her first device answers (`verify bob`).  Her second
    device, which got the request too, drops it with the copy of that answer: its inbox
    offers no request that is already answered."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    alice2 = write_client_config(str(tmp_path / "second"), "alice", server.port,
                                 ca_file=server.cert_path)
    await add_device(alice, alice2, "correct horse battery staple")
    started = defer.ensureDeferred(run_cli(bob, "verify", "alice", stdin=b"y\n"))
    await asked(server, "alice")
    responder = await run_cli(alice, "verify", "bob", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)
    offered = [m for m in (await ok(alice2, "inbox", "--json")).json_lines()
               if m["type"] == "verify_request"]
    assert offered == []


@pytest_twisted.ensureDeferred
async def test_an_unanswered_verify_times_out_naming_the_other_and_calls_its_request_off(
        server, tmp_path):
    """alice's `verify bob` with nobody answering fails after verify_timeout with exit 7
    and "bob did not answer the verification request within 3 s"; bob's inbox then does
    not offer the request she gave up on."""
    alice = await register(server, tmp_path, "alice", verify_timeout=SHORT)
    bob = await register(server, tmp_path, "bob")
    initiator = await run_cli(alice, "verify", "bob", stdin=b"y\n")
    assert initiator.code == 7, initiator
    assert f"bob did not answer the verification request within {SHORT} s" in initiator.out
    assert (await ok(bob, "inbox", "--json")).json_lines() == []


@pytest_twisted.ensureDeferred
async def test_answering_a_request_whose_sender_is_gone_times_out_naming_them(
        server, tmp_path):
    """bob's plain `inbox` prints "alice asks to verify your keys: run 'securechat verify
    alice'"; alice's process is killed meanwhile, so bob's `verify alice` fails after his
    verify_timeout with exit 7 naming alice."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob", verify_timeout=SHORT)
    initiator = InteractiveCli(alice, "verify", "bob")
    await asked(server, "bob")
    initiator.transport.signalProcess("KILL")  # gone without calling its request off
    await initiator.finish()
    shown = await ok(bob, "inbox")
    assert "alice asks to verify your keys: run 'securechat verify alice'" in shown.out
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    assert responder.code == 7, responder
    assert f"alice did not answer the verification request within {SHORT} s" in responder.out


class MemoryKeyStore:
    """The part of the key store a verification touches (sealed values, contacts), in
    memory: for the unit test of two verifications whose requests cross."""

    def __init__(self):
        self._values, self._contacts = {}, {}

    @contextlib.contextmanager
    def transaction(self):
        yield

    def secret(self, key):
        return copy.deepcopy(self._values.get(key))

    def set_secret(self, key, value):
        self._values[key] = copy.deepcopy(value)

    def contact(self, user):
        return copy.deepcopy(self._contacts.get(user))

    def put_contact(self, user, record):
        self._contacts[user] = copy.deepcopy(record)


class Side:
    """One user's device for the crossing test: its verify messages are held on ``wire``
    until the test lets them through, as the relay and the receiver would deliver them."""

    def __init__(self, user, wire_, clock):
        self.user, self.device, self.reactor = user, user.upper() + "1", clock
        self.store = MemoryKeyStore()
        self.crypto = types.SimpleNamespace(identity_key=f"{user}-identity-key")
        self.contacts = Contacts(self.store, user, self.crypto.identity_key)
        self.verifications = Verifications(timeout=60)
        self._wire = wire_

    def meet(self, other):
        """What TOFU leaves after a first message: the other's identity key pinned."""
        self.store.put_contact(other.user, {"identity_key": other.crypto.identity_key,
                                            "verified": False, "pending": None})

    async def trusted_devices(self, user, sending):
        return {user.upper() + "1": {}}

    async def send_control(self, user, payload):
        inner = {**payload, "from": self.user, "from_dev": self.device, "to": user}
        self._wire.append((user, {"id": secrets.token_hex(8), "type": payload["type"],
                                  "from": self.user, "from_dev": self.device, "room": None,
                                  "sent_at": "2026-12-07T00:00:00.000Z", "inner": inner}))

    def receive(self, record):
        if record["type"] in ("verify.start", "verify.cancel"):
            PendingRequests(self.store).note(record)
        self.verifications.control(record)


@pytest_twisted.ensureDeferred
async def test_verifications_whose_requests_cross_complete_as_one_exchange():
    """alice and bob each send a request before either sees the other's: bob (whose name
    sorts later) answers alice's, both end verified, and no request is left waiting."""
    wire_, clock = [], task.Clock()
    sides = {user: Side(user, wire_, clock) for user in ("alice", "bob")}
    alice, bob = sides["alice"], sides["bob"]
    alice.meet(bob)
    bob.meet(alice)

    async def yes():
        return True

    runs = [defer.ensureDeferred(side.verifications.run(side, other.user, yes, lambda t: None))
            for side, other in ((alice, bob), (bob, alice))]
    assert [record["type"] for _, record in wire_] == ["verify.start", "verify.start"]
    for _ in range(100):  # each step delivers what was sent; 100 is far more than it takes
        if all(run.called for run in runs):
            break
        sent, wire_[:] = list(wire_), []
        for user, record in sent:
            sides[user].receive(record)
        await task.deferLater(reactor, 0, lambda: None)
    assert all(run.called for run in runs)
    await defer.gatherResults(runs)
    assert alice.contacts.is_verified("bob") and bob.contacts.is_verified("alice")
    assert PendingRequests(alice.store).unshown() == PendingRequests(bob.store).unshown() == []


@pytest_twisted.ensureDeferred
async def test_the_daemon_tells_its_subscribers_of_a_verification_request(server, tmp_path):
    """A subscriber of bob's daemon gets the notification "verify.request" {"user":
    "alice", "device": her device} when alice runs `verify bob`."""
    alice = await register(server, tmp_path, "alice", verify_timeout=SHORT)
    bob = await register(server, tmp_path, "bob")
    alice_device = await device_of(alice)
    daemon = DaemonProcess(bob, tmp_path / "clients" / "bob")
    notifications = []
    try:
        await daemon.ready()
        connection = await daemon_client.connect(
            reactor, str(tmp_path / "clients" / "bob"),
            lambda method, params: notifications.append((method, params)))
        await connection.call("subscribe")
        initiator = await run_cli(alice, "verify", "bob", stdin=b"y\n")
        assert initiator.code == 7  # bob's chat was told, bob did not answer
        await poll_until(lambda: any(m == "verify.request" for m, _ in notifications), 30)
        connection.transport.loseConnection()
    finally:
        await daemon.stop()
    (params,) = [p for m, p in notifications if m == "verify.request"]
    assert params == {"user": "alice", "device": alice_device}


def test_a_verification_request_reads_as_an_invitation_to_verify():
    """`inbox` shows a verify_request record as who asks and the command to answer with."""
    line = format_message({"type": "verify_request", "from": "alice", "from_device": "D",
                           "sent_at": "2026-12-07T00:00:00.000Z", "text": None})
    assert line == ("[2026-12-07T00:00:00.000Z] alice asks to verify your keys: "
                    "run 'securechat verify alice'")


def test_verify_timeout_outside_its_range_is_a_config_error(tmp_path):
    """verify_timeout = 0 (or more than 240) is refused naming the key and the range."""
    pin = ":".join(["AB"] * 32)  # a config file only: no relay to read a fingerprint from
    config = write_client_config(str(tmp_path), "alice", 6697, fingerprint=pin,
                                 extra_lines=["verify_timeout = 0"])
    with pytest.raises(ConfigError, match="verify_timeout.*1-240"):
        load_client_settings(config)
    config = write_client_config(str(tmp_path), "bob", 6697, fingerprint=pin,
                                 extra_lines=["verify_timeout = 9"])
    assert load_client_settings(config).verify_timeout == 9


# -- rooms admin, members' marks, join's hint ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_room_members_names_the_owner_and_the_admins(server):
    """The relay's `room.members` answers `roles`: the owner and each admin by name, and a
    demoted admin is gone from it."""
    alice, bob, carol, dave, erin = await staffed_room(server)
    answer = await dave.request("room.members", room="ops")
    assert answer["roles"] == {"alice": "owner", "bob": "admin", "carol": "admin"}
    await alice.request("room.admin", room="ops", user="bob", admin=False)
    assert (await dave.request("room.members", room="ops"))["roles"] == {
        "alice": "owner", "carol": "admin"}
    await cleanup(alice, bob, carol, dave, erin)


@pytest_twisted.ensureDeferred
async def test_rooms_admin_names_and_removes_admins_for_the_owner_only(server, tmp_path):
    """`rooms admin ops bob` by the owner makes bob an admin (who may then invite), `--remove`
    makes him a member again; bob cannot name admins, nor can a non-member be named."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await register(server, tmp_path, "carol")
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    named = await ok(alice, "rooms", "admin", "ops", "bob")
    assert named.out.strip() == "bob is now an admin of ops"
    assert (await ok(bob, "invite", "ops", "carol")).out.strip() == "carol is now in ops"
    refused = await run_cli(bob, "rooms", "admin", "ops", "carol")
    assert refused.code == 1 and "only the owner of room 'ops' names admins" in refused.err
    removed = await ok(alice, "rooms", "admin", "--remove", "ops", "bob")
    assert removed.out.strip() == "bob is now a plain member of ops"
    assert (await run_cli(bob, "kick", "ops", "carol")).code == 1  # no longer an admin
    await ok(alice, "kick", "ops", "carol")
    outsider = await run_cli(alice, "rooms", "admin", "ops", "carol")
    assert outsider.code == 6 and "carol is not a member of room 'ops'" in outsider.err


@pytest_twisted.ensureDeferred
async def test_members_marks_the_owner_admins_and_who_you_verified(server, tmp_path):
    """`members ops` prints each member as "bob (owner, verified): DEVICE", "carol (admin,
    unverified): ...", yourself as "(you)"; the daemon's result keeps `members` and adds
    `roles` and `verified`."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    carol = await register(server, tmp_path, "carol")
    await verify_both(server, alice, bob)
    await ok(bob, "rooms", "create", "ops")
    await ok(alice, "join", "ops")
    await ok(carol, "join", "ops")
    await ok(bob, "rooms", "admin", "ops", "carol")
    devices = {name: await device_of(config)
               for name, config in (("alice", alice), ("bob", bob), ("carol", carol))}
    lines = (await ok(alice, "members", "ops")).out.splitlines()
    assert lines == [f"alice (you): {devices['alice']}",
                     f"bob (owner, verified): {devices['bob']}",
                     f"carol (admin, unverified): {devices['carol']}"]


@pytest_twisted.ensureDeferred
async def test_joining_a_password_room_without_password_says_how_with_exit_3(server, tmp_path):
    """`join vault` of a password room without --password fails with exit 3 and "vault needs
    a password: securechat join vault --password"; with the password it joins."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    room_password = {"SECURECHAT_ROOM_PASSWORD": "a room secret"}
    await ok(alice, "rooms", "create", "vault", "--password", extra_env=room_password)
    refused = await run_cli(bob, "join", "vault")
    assert refused.code == 3, refused
    assert refused.err.strip() == ("securechat: vault needs a password: "
                                   "securechat join vault --password")
    wrong = await run_cli(bob, "join", "vault", "--password",
                          extra_env={"SECURECHAT_ROOM_PASSWORD": "not it"})
    assert wrong.code == 3 and "wrong password for room 'vault'" in wrong.err, wrong
    await ok(bob, "join", "vault", "--password", extra_env=room_password)


# -- fingerprints without the relay -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_own_fingerprint_and_a_known_contacts_work_with_the_relay_stopped(
        twistd_relay, tmp_path):
    """With the relay (twistd) stopped, `fingerprint` prints the fingerprint `register`
    printed and `fingerprint bob` (met before) his, both exit 0; `fingerprint carol` (never
    met) needs the relay: exit 4 saying so."""
    await twistd_relay.wait_listening()
    configs = {name: write_client_config(str(tmp_path / "clients"), name, twistd_relay.port)
               for name in ("alice", "bob", "carol")}
    registration = await ok(configs["alice"], "register")
    for name in ("bob", "carol"):
        await ok(configs[name], "register")
    own = registration.out.split("your fingerprint: ")[1].splitlines()[0]
    online = await ok(configs["alice"], "fingerprint", "bob")
    twistd_relay.stop()
    assert (await ok(configs["alice"], "fingerprint")).out.strip() == f"alice: {own}"
    assert (await ok(configs["alice"], "fingerprint", "bob")).out == online.out
    unknown = await run_cli(configs["alice"], "fingerprint", "carol")
    assert unknown.code == 4 and "carol's keys are not on this device yet" in unknown.err, unknown
