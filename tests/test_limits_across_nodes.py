"""Issue 21: limits on guessing hold across nodes.  Two real ``twistd -n securechat`` relays on
different ports share one real PostgreSQL database; a guesser who spreads guesses over both
is refused after the same number as one who stays on one node.  And on PostgreSQL, where a
node's reads and writes run on several connections at once, guesses sent at once to one
node pass no more than the limit."""

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import wire
from securechat.client.protocol import RemoteError
from tests.processes import RelayEndpoint, ServerProcess, free_port
from tests.support import ScriptedDevice, start_server, write_config
from tests.test_fair_limits import expect_code_of
from tests.test_login_limits_e2e import ATTACKER_ADDRESS, connect_from

FREE_FAILURES = 5
"""[limits] login_failures_per_account and room_password_failures_per_room, by default."""


@pytest.fixture
def two_nodes(tmp_path, fresh_postgres_dsn):
    """Two relay processes (default limits) on one PostgreSQL database, both listening."""
    nodes = []
    for name in ("node-a", "node-b"):
        port = free_port()
        workdir = tmp_path / name
        proc = ServerProcess(workdir, write_config(str(workdir / "data"), port=port,
                                                   database=fresh_postgres_dsn))
        proc.endpoint = RelayEndpoint(port, workdir / "data")
        proc.start()
        nodes.append(proc)
    try:
        for proc in nodes:
            pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
        yield nodes
    finally:
        for proc in nodes:
            proc.stop()


async def wrong_logins(user, sequence):
    """A wrong password login of ``user`` from the attacker's address on each node of
    ``sequence`` in turn; the error codes, in order.  Each connection is opened and given
    its challenge beforehand, so the guesses follow each other within milliseconds (well
    inside the first back-off's second)."""
    ready = []
    for node in sequence:
        guess = ScriptedDevice(user, "GUESS")
        guess.protocol = await connect_from(ATTACKER_ADDRESS, node.endpoint)
        ready.append((guess, await guess.request("login.challenge")))
    codes = []
    for guess, challenge in ready:
        try:
            await guess.request("login", **guess.password_login_frame(challenge))
            codes.append("logged_in")
        except RemoteError as e:
            codes.append(e.code)
        await guess.close()
    return codes


async def registered(user, node):
    device = ScriptedDevice(user, "D1")
    await device.register(node.endpoint)
    await device.login(node.endpoint)  # publishes its keys: it logs in by them from now on
    await device.close()
    return device


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_spread_over_two_nodes_are_refused_as_on_one(two_nodes):
    """Wrong password logins of alice alternating between the two nodes: the first five
    get auth_failed and the sixth rate_limited, exactly as six on one node do (each node
    counting alone would have let all six through)."""
    node_a, node_b = two_nodes
    await registered("alice", node_a)
    await registered("bob", node_a)
    one_node = await wrong_logins("bob", [node_a] * (FREE_FAILURES + 1))
    spread = await wrong_logins("alice", [node_a, node_b] * ((FREE_FAILURES + 1) // 2))
    expected = ["auth_failed"] * FREE_FAILURES + ["rate_limited"]
    assert one_node == expected
    assert spread == expected


async def join_with(device, node, room, password):
    """A new connection of ``device`` to ``node``: log in by its key and try to join
    ``room`` with ``password``; "joined" or the error code."""
    twin = device.again()
    await twin.connect(node.endpoint)
    await twin.login(node.endpoint, upload_keys=False)
    try:
        await twin.request("room.join", room=room, password=password)
        return "joined"
    except RemoteError as e:
        return e.code
    finally:
        await twin.close()


@pytest_twisted.ensureDeferred
async def test_room_password_guesses_spread_over_two_nodes_are_refused_as_on_one(two_nodes):
    """Mallory guessing a room's password from connections alternating between the nodes
    gets wrong_password five times, then rate_limited, as on one node; alice, with the
    right password, still joins meanwhile."""
    node_a, node_b = two_nodes
    owner = await registered("olive", node_a)
    mallory = await registered("mallory", node_b)
    alice = await registered("alice", node_b)
    secret = wire.b64encode(b"the real one, 16+ bytes")
    for room in ("ops", "lab"):
        creator = owner.again()
        await creator.connect(node_a.endpoint)
        await creator.login(node_a.endpoint, upload_keys=False)
        await creator.request("room.create", room=room, password=secret)
        await creator.close()
    guesses = [wire.b64encode(f"a wrong guess, {n:4d}".encode()) for n in range(FREE_FAILURES + 1)]
    one_node = [await join_with(mallory, node_a, "lab", guess) for guess in guesses]
    spread = [await join_with(mallory, node, "ops", guess)
              for node, guess in zip([node_a, node_b] * len(guesses), guesses)]
    expected = ["wrong_password"] * FREE_FAILURES + ["rate_limited"]
    assert one_node == expected
    assert spread == expected
    assert await join_with(alice, node_a, "ops", secret) == "joined"


@pytest_twisted.ensureDeferred
async def test_guesses_sent_at_once_to_a_node_on_postgresql_pass_no_more_than_the_limit(
        tmp_path, fresh_postgres_dsn):
    """Twelve wrong logins of one account on twelve connections at once, three times over
    (fresh accounts): each time exactly five are checked and seven rate_limited, though
    the node reads and writes its limits on several database connections at once."""
    server = await start_server(tmp_path / "relay", database=fresh_postgres_dsn)
    try:
        for round_ in range(3):
            guessers = [ScriptedDevice(f"user{round_}", device=f"G{n}") for n in range(12)]
            for guesser in guessers:
                await guesser.connect(server)
            codes = await defer.gatherResults([defer.ensureDeferred(expect_code_of(
                defer.ensureDeferred(guesser.password_login()))) for guesser in guessers])
            assert sorted(codes) == ["auth_failed"] * FREE_FAILURES + ["rate_limited"] * 7
            for guesser in guessers:
                await guesser.close()
    finally:
        await server.stop()
