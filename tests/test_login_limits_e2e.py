"""Issue 16, point 4 (and 11's per-address limit): login limits as a user meets them, with
real ``twistd -n securechat`` and ``securechat`` processes.  Only failures count, an
account is limited per (account, address), and a refusal has its own exit code."""

import os
import urllib.parse

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor

from securechat.client.protocol import ClientProtocol, RemoteError
from securechat.client.tls import ca_file_options
from securechat.server.tls import SELF_SIGNED_CERT
from tests.processes import ServerProcess, free_port, run_cli, write_client_config
from tests.support import ScriptedDevice, write_config

ATTACKER_ADDRESS = "127.0.0.2"  # all of 127/8 is loopback; the relay listens on 127.0.0.1


def start_relay_process(tmp_path, extra=""):
    port = free_port()
    data = str(tmp_path / "data")
    proc = ServerProcess(tmp_path, write_config(data, port=port, extra=extra))
    proc.start()
    proc.port = port
    proc.cert_path = os.path.join(data, SELF_SIGNED_CERT)
    return proc


@pytest.fixture
def relay(tmp_path):
    proc = start_relay_process(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def strict_relay(tmp_path):
    """Four failed logins or registrations per address and minute."""
    proc = start_relay_process(tmp_path, "[limits]\nlogin_failures_per_address = 4\n")
    yield proc
    proc.stop()


async def connect_from(source, proc):
    """A raw protocol connection to the relay from the local address ``source``."""
    endpoint = endpoints.wrapClientTLS(
        ca_file_options("localhost", proc.cert_path),
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", proc.port, timeout=10,
                                     bindAddress=(source, 0)))
    return await endpoints.connectProtocol(endpoint, ClientProtocol())


async def wrong_logins(proc, source, user, count):
    """``count`` password logins from ``source``, each on its own connection (one challenge
    each) with a random password key; the error codes, in order."""
    codes = []
    for _ in range(count):
        protocol = await connect_from(source, proc)
        guess = ScriptedDevice(user, "GUESS")
        guess.protocol = protocol
        try:
            await guess.password_login()
        except RemoteError as e:
            codes.append((e.code, e.details.get("retry_after")))
        protocol.transport.loseConnection()
    return codes


async def ok(config, *args):
    result = await run_cli(config, *args)
    assert result.code == 0, result
    return result


@pytest_twisted.ensureDeferred
async def test_eleven_cli_commands_in_a_minute_all_succeed(relay, tmp_path):
    """Successful logins never count: eleven CLI commands in a row all exit 0."""
    await relay.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", relay.port)
    await ok(alice, "register")
    for _ in range(11):
        result = await ok(alice, "login")
        assert "logged in as alice" in result.out


@pytest_twisted.ensureDeferred
async def test_wrong_logins_from_another_address_do_not_lock_out_the_owner(relay, tmp_path):
    """Twelve wrong logins for alice from 127.0.0.2 make that address wait (growing delays),
    while alice's own CLI on 127.0.0.1 logs in at once."""
    await relay.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", relay.port)
    await ok(alice, "register")
    codes = await wrong_logins(relay, ATTACKER_ADDRESS, "alice", 12)
    assert [code for code, _ in codes[:5]] == ["auth_failed"] * 5
    assert codes[-1][0] == "rate_limited" and codes[-1][1] >= 1
    result = await ok(alice, "login")
    assert "logged in as alice" in result.out


@pytest_twisted.ensureDeferred
async def test_failed_logins_from_one_address_make_the_cli_exit_8_not_other_addresses(
        strict_relay, tmp_path):
    """Past the per-address limit of failures, a CLI on that address exits 8 with the wait
    (not 3, a wrong password), and a device on another address registers and logs in."""
    await strict_relay.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", strict_relay.port)
    await ok(alice, "register")  # a registration counts against its address: 1 of 4
    guesses = await wrong_logins(strict_relay, "127.0.0.1", "nobody", 3)
    assert [code for code, _ in guesses] == ["auth_failed"] * 3
    refused = await run_cli(alice, "login")
    assert refused.code == 8, refused
    assert "rate limited" in refused.err and "try again in" in refused.err
    elsewhere = ScriptedDevice("bob", "B1")
    elsewhere.protocol = await connect_from(ATTACKER_ADDRESS, strict_relay)
    await elsewhere.register(strict_relay)
    assert (await elsewhere.password_login())["user"] == "bob"
    await elsewhere.close()


def set_connections_allowed(server_dsn, dsn, allowed):
    """Open or close ``dsn``'s database to new connections, dropping its current ones
    (what a database that is down looks like to the relay)."""
    name = urllib.parse.urlsplit(dsn).path.lstrip("/")
    connection = psycopg2.connect(server_dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s", (name,))
    connection.close()


@pytest_twisted.ensureDeferred
async def test_the_cli_exits_9_while_the_servers_database_is_down(
        tmp_path, postgres_dsn, fresh_postgres_dsn):
    """A relay whose PostgreSQL refuses connections answers unavailable: the CLI exits 9
    saying so (not 3, a wrong password), and works again once the database is back."""
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(str(tmp_path / "data"), port=port,
                                                database=fresh_postgres_dsn))
    proc.start()
    try:
        await proc.wait_listening()
        alice = write_client_config(str(tmp_path / "clients"), "alice", port)
        await ok(alice, "register")
        set_connections_allowed(postgres_dsn, fresh_postgres_dsn, False)
        try:
            down = await run_cli(alice, "login")
        finally:
            set_connections_allowed(postgres_dsn, fresh_postgres_dsn, True)
        assert down.code == 9, down
        assert "the server is unavailable (its database)" in down.err
        for _ in range(20):  # bounded: the relay reconnects within 10 s
            back = await run_cli(alice, "login")
            if back.code == 0:
                break
            assert back.code == 9, back
        assert back.code == 0, back
    finally:
        proc.stop()
