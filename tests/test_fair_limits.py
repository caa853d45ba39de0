"""Issue 16, points 2 and 5: argon2id work queued fairly, room password guessing limited,
one-time keys that cannot be drained, and a client told to top its keys up."""

import secrets
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from securechat import wire
from securechat.client.protocol import RemoteError
from securechat.client.session import Client
from securechat.client.settings import ClientSettings
from securechat.server.auth import LOGIN_WORK, ROOM_WORK
from securechat.server.fairqueue import FairQueue, QueueFull
from tests.support import ScriptedDevice, cleanup, expect_error, poll_until, poll_until_async
from tests.support import start_server


@pytest.fixture
def relay_with(tmp_path):
    """``await relay_with(limits)``: an in-process relay with these ``[limits]`` lines."""
    started = []

    async def start(limits):
        running = await start_server(tmp_path / "srv", extra="[limits]\n" + limits)
        started.append(running)
        return running

    yield start
    for running in started:
        pytest_twisted.blockon(running.stop())


class ControlledExecutor:
    """Starts nothing by itself: the test finishes jobs one by one and sees what starts."""

    def __init__(self):
        self.started = []  # (label, Deferred) in start order

    def __call__(self, label):
        d = defer.Deferred()
        self.started.append((label, d))
        return d

    def finish_oldest_running(self):
        for label, d in self.started:
            if not d.called:
                d.callback(label)
                return label
        raise AssertionError("nothing is running")


def test_a_login_starts_next_after_one_user_queued_hundreds_of_room_jobs():
    """300 queued joins of one user: another user's login is the very next job to start,
    and a third user's join comes before the flooder's second turn (round robin)."""
    run = ControlledExecutor()
    queue = FairQueue(concurrency=2, per_principal=1000, classes=2, run=run)
    for i in range(300):
        queue.submit(ROOM_WORK, "mallory", f"mallory-{i}")
    queue.submit(ROOM_WORK, "bob", "bob-join")
    login = queue.submit(LOGIN_WORK, "10.0.0.7", "alice-login")
    assert [label for label, _ in run.started] == ["mallory-0", "mallory-1"]
    run.finish_oldest_running()
    assert run.started[-1][0] == "alice-login"
    run.finish_oldest_running()
    assert run.started[-1][0] == "mallory-2"
    run.finish_oldest_running()
    assert run.started[-1][0] == "bob-join"
    run.finish_oldest_running()
    assert login.called and login.result == "alice-login"
    assert queue.waiting(ROOM_WORK) == 300 - 4


def test_a_principal_past_its_waiting_bound_is_refused_at_once():
    """Jobs past a principal's bound fail at once with QueueFull; other principals queue."""
    run = ControlledExecutor()
    queue = FairQueue(concurrency=1, per_principal=3, classes=2, run=run)
    refusals = []
    for i in range(10):
        queue.submit(ROOM_WORK, "mallory", i).addErrback(
            lambda f: refusals.append(f.check(QueueFull)))
    assert refusals == [QueueFull] * 6  # one runs, three wait, the rest are refused
    assert not queue.submit(ROOM_WORK, "bob", "b").called
    assert queue.waiting() == 4


def password():
    return wire.b64encode(secrets.token_bytes(32))


@pytest_twisted.ensureDeferred
async def test_a_login_waits_about_one_hash_while_another_user_floods_wrong_room_passwords(
        relay_with):
    """With one argon2 slot and 80 wrong-password joins queued by mallory, alice's login is
    answered within a few hash times (measured here), not after the flood."""
    server = await relay_with("argon2_concurrency = 1\n"
                               "argon2_waiting_per_client = 1000\n"
                               "room_password_failures_per_room = 1000\n"
                               "room_password_failures_per_user = 1000\n")
    hasher = server.service.factory.hasher
    mallory, alice = ScriptedDevice("mallory"), ScriptedDevice("alice")
    for device in (mallory, alice):
        await device.register(server)
    await mallory.login(server, upload_keys=False)
    await mallory.request("room.create", room="vault", password=password())
    hash_seconds = 0
    for _ in range(3):
        started = time.monotonic()
        await hasher.hash(b"x" * 32, LOGIN_WORK, "measure")
        hash_seconds = max(hash_seconds, time.monotonic() - started)

    wrong = password()
    joins = [mallory.request("room.join", room="vault", password=wrong) for _ in range(80)]
    for d in joins:
        d.addErrback(lambda f: f.trap(RemoteError) and f.value.code)
    await poll_until(lambda: hasher.queue.waiting(ROOM_WORK) >= 60)
    await alice.connect(server)
    started = time.monotonic()
    await alice.password_login()
    login_seconds = time.monotonic() - started
    still_waiting = hasher.queue.waiting(ROOM_WORK)

    assert still_waiting >= 40, "the flood was over before the login: nothing was shown"
    assert login_seconds < 8 * hash_seconds, (login_seconds, hash_seconds)
    assert set(await defer.gatherResults(joins)) == {"wrong_password"}
    await cleanup(mallory, alice)


@pytest_twisted.ensureDeferred
async def test_password_checks_past_a_users_waiting_bound_are_refused_at_once(relay_with):
    """With two checks allowed to wait, ten pipelined joins give rate_limited at once for
    those past the bound, wrong_password for the rest."""
    server = await relay_with("argon2_concurrency = 1\nargon2_waiting_per_client = 2\n")
    mallory = ScriptedDevice("mallory")
    await mallory.register(server)
    await mallory.login(server, upload_keys=False)
    await mallory.request("room.create", room="vault", password=password())
    joins = [mallory.request("room.join", room="vault", password=password()) for _ in range(10)]
    codes = []
    for d in joins:
        codes.append(await expect_code_of(d))
    assert {"rate_limited", "wrong_password"} == set(codes)
    assert codes.count("wrong_password") <= 4, codes
    await cleanup(mallory)


async def expect_code_of(d):
    try:
        await d
    except RemoteError as e:
        return e.code
    raise AssertionError("the request succeeded")


@pytest_twisted.ensureDeferred
async def test_a_room_password_guesser_is_locked_out_not_the_room(relay_with):
    """After the per-room and per-user limits of wrong passwords the guesser gets
    rate_limited (even with the right password), while bob joins with it."""
    server = await relay_with("room_password_failures_per_room = 3\n"
                               "room_password_failures_per_user = 5\n")
    owner, mallory, bob = ScriptedDevice("owner"), ScriptedDevice("mallory"), ScriptedDevice("bob")
    for device in (owner, mallory, bob):
        await device.register(server)
        await device.login(server, upload_keys=False)
    ops, dev = password(), password()
    await owner.request("room.create", room="ops", password=ops)
    await owner.request("room.create", room="dev", password=dev)
    for _ in range(3):
        await expect_error("wrong_password", mallory.request("room.join", room="ops",
                                                            password=password()))
    locked = await expect_error("rate_limited", mallory.request("room.join", room="ops",
                                                               password=ops))
    assert 890 <= locked.details["retry_after"] <= 900 and "'ops'" in locked.message
    joined = await bob.request("room.join", room="ops", password=ops)
    assert sorted(joined["members"]) == ["bob", "owner"]
    for _ in range(2):
        await expect_error("wrong_password", mallory.request("room.join", room="dev",
                                                            password=password()))
    locked = await expect_error("rate_limited", mallory.request("room.join", room="dev",
                                                               password=password()))
    assert 3590 <= locked.details["retry_after"] <= 3600
    assert "mallory" not in (await owner.request("room.members", room="ops"))["members"]
    await cleanup(owner, mallory, bob)


@pytest_twisted.ensureDeferred
async def test_guesses_sent_at_once_pass_no_more_than_the_limits(relay_with):
    """Twelve wrong logins on twelve connections at once, and twelve pipelined wrong room
    passwords: only as many are checked as the limits allow, the rest are rate_limited
    (an attempt counts from the moment it is let through, not once its hash is done)."""
    server = await relay_with("login_failures_per_account = 5\n"
                               "room_password_failures_per_room = 3\n")
    alice, mallory = ScriptedDevice("alice"), ScriptedDevice("mallory")
    for device in (alice, mallory):
        await device.register(server)
    await alice.close()
    guessers = [ScriptedDevice("alice", device=f"G{n}") for n in range(12)]
    for guesser in guessers:
        await guesser.connect(server)
    codes = await defer.gatherResults([defer.ensureDeferred(expect_code_of(
        defer.ensureDeferred(guesser.password_login()))) for guesser in guessers])
    assert sorted(codes) == ["auth_failed"] * 5 + ["rate_limited"] * 7
    owner = ScriptedDevice("owner")
    await owner.register(server)
    await owner.login(server, upload_keys=False)
    await owner.request("room.create", room="ops", password=password())
    await mallory.login(server, upload_keys=False)
    codes = await defer.gatherResults([defer.ensureDeferred(expect_code_of(mallory.request(
        "room.join", room="ops", password=password()))) for _ in range(12)])
    assert sorted(codes) == ["rate_limited"] * 9 + ["wrong_password"] * 3
    await cleanup(owner, mallory, *guessers)


@pytest_twisted.ensureDeferred
async def test_key_claims_are_limited_per_claimer_and_per_device(relay_with):
    """A device gives out 4 one-time keys a minute, then its fallback key (to anyone);
    a claimer past 12 claims a minute gets rate_limited with the seconds to wait."""
    server = await relay_with("key_claims_per_minute = 12\n"
                               "one_time_keys_per_device_per_minute = 4\n")
    alice, carol, bob = ScriptedDevice("alice"), ScriptedDevice("carol"), ScriptedDevice("bob")
    for device in (alice, carol):
        await device.register(server)
        await device.login(server, upload_keys=False)
    await bob.register(server)
    await bob.login(server, otks=20)

    async def claim(claimer):
        return (await claimer.request("keys.claim", devices={"bob": ["DEV1"]}))["keys"]["bob"]["DEV1"]

    first = [await claim(alice) for _ in range(5)]
    assert [(k["kid"], k["fallback"]) for k in first] == [
        ("k0000", False), ("k0001", False), ("k0002", False), ("k0003", False), ("fb1", True)]
    assert (await claim(carol))["fallback"] is True
    assert (await bob.request("keys.count"))["otk_count"] == 16
    for _ in range(7):
        await claim(alice)
    refused = await expect_error("rate_limited", alice.request("keys.claim",
                                                             devices={"bob": ["DEV1"]}))
    assert 1 <= refused.details["retry_after"] <= 5
    await cleanup(alice, carol, bob)


@pytest_twisted.ensureDeferred
async def test_the_client_tops_up_its_one_time_keys_when_told_they_run_low(relay_with, tmp_path):
    """Claims that leave bob's device under [limits] one_time_keys_low push it keys.low,
    and bob's running client uploads new one-time keys until it has its 50 again."""
    server = await relay_with("one_time_keys_low = 45\n")
    settings = ClientSettings(host="127.0.0.1", port=server.port, username="bob",
                              data_dir=str(tmp_path / "bob"), ca_file=server.cert_path,
                              server_fingerprint=None, source="test")
    bob = Client(reactor, settings, "correct horse battery staple")
    await bob.register()
    alice = ScriptedDevice("alice")
    await alice.register(server)
    await alice.login(server, upload_keys=False)
    store = server.service.store
    assert (await store.key_counts("bob", bob.device))["otk_count"] == 50
    for _ in range(6):
        await alice.request("keys.claim", devices={"bob": [bob.device]})

    async def full_again():
        return (await store.key_counts("bob", bob.device))["otk_count"] == 50

    await poll_until_async(full_again)
    await bob.disconnect()
    await cleanup(alice)
