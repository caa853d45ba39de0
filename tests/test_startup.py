"""Real ``twistd securechat`` processes that start, fail to start and stop: a failure is one
line naming its cause and a non-zero status (daemon mode too), no part of a database
password reaches the log, and SIGTERM stops the relay cleanly, losing nothing."""

import os
import signal
import socket
import ssl
import urllib.parse
import uuid

import psycopg2
import pytest
import pytest_twisted
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactor

import securechat
from securechat.client.protocol import ConnectionClosed, RemoteError
from securechat.server.service import UnderTwistd
from securechat.server.startup import StartReport
from tests.pgserver import _autocommit
from tests.processes import RelayEndpoint, ServerProcess, free_port, run_twistd
from tests.support import ScriptedDevice, poll_until, unicast, write_config

FAILED = "securechat relay failed to start: "
STOP_DEADLINE = 30


def _start_in_foreground(cwd, config, *twistd_options):
    return run_twistd(cwd, "-n", "--pidfile=", "--logfile", "twistd.log", *twistd_options,
                      "securechat", "--config", str(config))


def _listening_socket():
    """A socket listening on a free port of 127.0.0.1 (the port a relay will find taken)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_port_in_use_fails_with_one_line_and_status_1(tmp_path):
    """A relay whose port is taken exits 1 printing one line that names address and cause."""
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        config = write_config(str(tmp_path / "data"), port=port)
        out = _start_in_foreground(tmp_path, config)
    assert out.returncode == 1
    line = f"{FAILED}cannot listen on 127.0.0.1:{port}: address already in use"
    assert (out.stdout, out.stderr) == ("", line + "\n")
    assert line in (tmp_path / "twistd.log").read_text()


def test_an_unusable_data_dir_fails_with_one_line_and_status_1(tmp_path):
    """A data dir the relay's user cannot enter stops the start with one line naming it
    (as root: the relay runs as nobody, to whom the test's directory is closed)."""
    data = tmp_path / "data"
    config = write_config(str(data), port=free_port())
    options = ()
    if os.getuid() == 0:
        options = ("--uid", "65534", "--gid", "65534")  # nobody: cannot enter tmp_path
    else:
        data.chmod(0)
    try:
        out = _start_in_foreground(tmp_path, config, *options)
    finally:
        data.chmod(0o700)
    assert out.returncode == 1
    assert out.stderr == f"{FAILED}cannot use the data directory {data}: permission denied\n"


def test_an_unresolvable_database_host_fails_with_one_line_and_status_1(tmp_path):
    """A PostgreSQL host that does not resolve stops the start (it used to leave the process
    alive, listening on nothing) with one line naming the database and the cause."""
    url = "postgresql://securechat@relay-db.invalid/securechat"
    config = write_config(str(tmp_path / "data"), port=free_port(), database=url)
    out = _start_in_foreground(tmp_path, config)
    assert out.returncode == 1
    assert out.stderr.startswith(f"{FAILED}cannot open the database {url}: ")
    assert "relay-db.invalid" in out.stderr.split(url)[1]
    assert out.stderr.count("\n") == 1


def test_a_bad_config_value_is_one_line_without_the_usage_text(tmp_path):
    """A wrong value ends twistd with status 1 and one line naming file, section and key,
    without twistd's usage text before it."""
    path = tmp_path / "bad.ini"
    path.write_text("[server]\nport = seventy\n")
    out = run_twistd(tmp_path, "-n", "--pidfile=", "securechat", "--config", str(path))
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(
        f"securechat relay: bad configuration: {path}: [server] port = 'seventy': ")
    assert out.stderr.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_daemon_mode_returns_0_only_once_the_relay_listens(tmp_path):
    """`twistd securechat` (daemon mode) returns 0 once the daemon listens, not before:
    the log says so as the command returns, and a TLS client gets in at once."""
    port = free_port()
    config = write_config(str(tmp_path / "data"), port=port)
    pidfile = tmp_path / "twistd.pid"
    out = run_twistd(tmp_path, f"--pidfile={pidfile}", "--logfile", "twistd.log",
                     "securechat", "--config", config)
    pid = int(pidfile.read_text())
    try:
        assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
        assert f"securechat relay listening on 127.0.0.1:{port}" in (
            tmp_path / "twistd.log").read_text()
        context = ssl.create_default_context(cafile=str(tmp_path / "data/tls/server-cert.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b'{"op":"ping","rid":1}\n')
                assert tls.recv(4096).startswith(b'{"rid":1,"result":{"pong":true,"relay":')
    finally:
        os.kill(pid, signal.SIGTERM)
        await poll_until(lambda: not _alive(pid), timeout=STOP_DEADLINE)


@pytest_twisted.ensureDeferred
async def test_daemon_mode_failure_exits_1_naming_the_cause(tmp_path):
    """A daemon that cannot listen makes `twistd securechat` exit 1 with the cause on its
    terminal (it used to print nothing and return 0), and leaves no process behind."""
    pidfile = tmp_path / "twistd.pid"
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        config = write_config(str(tmp_path / "data"), port=port)
        out = run_twistd(tmp_path, f"--pidfile={pidfile}", "--logfile", "twistd.log",
                         "securechat", "--config", config)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in out.stderr
    assert f"{FAILED}cannot listen on 127.0.0.1:{port}" in (tmp_path / "twistd.log").read_text()
    # The daemon removes its pid file as it exits.
    await poll_until(lambda: not pidfile.exists(), timeout=STOP_DEADLINE)


def test_a_daemon_stopped_before_it_listens_tells_its_waiting_parent():
    """The relay takes twistd's status pipe at start (so twistd cannot say "started" early),
    and a stop before it listens (SIGTERM) writes the failure the waiting parent reads:
    without it the parent, which keeps the pipe open itself, would wait for ever."""
    read_end, write_end = os.pipe()
    twistd_options = {"statusPipe": write_end}
    never_starts = service.Service()
    never_starts.started = defer.Deferred()
    root = UnderTwistd(never_starts, StartReport(MemoryReactor(), twistd_options))
    root.startService()
    assert twistd_options["statusPipe"] is None
    root.stopService()
    assert os.read(read_end, 100) == b"1 stopped before it listened"
    os.close(read_end)


PASSWORD_PIECES = ("alphaPW", "bravoPW", "charliePW", "deltaPW")
PASSWORD = "alphaPW@bravoPW/charliePW:deltaPW"


@pytest.fixture
def role_with_a_hard_password(postgres_dsn, fresh_postgres_dsn):
    """A PostgreSQL role whose password holds '@', '/' and ':', owning a fresh database;
    the percent-encoded URL that logs in as it."""
    role = f"sc_role_{uuid.uuid4().hex[:8]}"
    _autocommit(postgres_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    database = urllib.parse.urlsplit(fresh_postgres_dsn).path.lstrip("/")
    _autocommit(postgres_dsn, f'ALTER DATABASE "{database}" OWNER TO {role}')
    server = urllib.parse.urlsplit(fresh_postgres_dsn)
    encoded = urllib.parse.quote(PASSWORD, safe="")
    yield server._replace(netloc=f"{role}:{encoded}@{server.hostname}:{server.port}").geturl()
    _autocommit(fresh_postgres_dsn, f"REASSIGN OWNED BY {role} TO CURRENT_USER")
    _autocommit(postgres_dsn, f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest_twisted.ensureDeferred
async def test_no_part_of_a_database_password_reaches_the_log(tmp_path, role_with_a_hard_password):
    """A password holding '@', '/' and ':' appears nowhere, whole or in part, in the log or
    on the terminal: not when the relay runs, not when its database cannot be reached, not
    when the URL is written unencoded."""
    url = role_with_a_hard_password
    psycopg2.connect(url).close()  # the role really logs in with this URL
    proc = ServerProcess(tmp_path / "ok", write_config(str(tmp_path / "ok" / "data"),
                                                       port=free_port(), database=url))
    proc.start()
    try:
        await proc.wait_listening()
    finally:
        proc.stop()
    shown = [proc.log_text()]
    split = urllib.parse.urlsplit(url)
    unreachable = split._replace(netloc=f"{split.username}:{split.password}@127.0.0.1:"
                                        f"{free_port()}").geturl()
    unencoded = url.replace(split.password, PASSWORD)
    for name, database in (("down", unreachable), ("unencoded", unencoded)):
        config = write_config(str(tmp_path / name / "data"), port=free_port(),
                              database=database)
        out = _start_in_foreground(tmp_path / name, config)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        log = tmp_path / name / "twistd.log"
        shown += [out.stdout, out.stderr, log.read_text() if log.exists() else ""]
    assert "***" in shown[0] and f"{FAILED}cannot open the database" in shown[2]
    for text in shown:
        for piece in PASSWORD_PIECES:
            assert piece not in text


def test_a_spawned_relay_runs_this_source_tree(tmp_path):
    """The twistd a test starts imports the same securechat as the test itself, even when
    the venv holds a non-editable copy (tests/conftest.py sets PYTHONPATH)."""
    config = write_config(str(tmp_path / "data"), port=free_port())
    with open(config, "a") as f:
        f.write("[tls]\ncertificate = missing.pem\nprivate_key = missing.pem\n")
    _start_in_foreground(tmp_path, config)  # logs where its code is, then fails at once
    package = os.path.dirname(securechat.__file__)
    assert f"securechat relay starting (its code: {package})" in (
        tmp_path / "twistd.log").read_text()


async def alice_and_offline_bob(endpoint):
    """alice and bob registered with keys; alice connected, bob gone (his keys kept)."""
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for device in (alice, bob):
        await device.register(endpoint)
        await device.login(endpoint)
    await bob.close()
    return alice, bob


@pytest_twisted.ensureDeferred
async def test_sigterm_stops_cleanly_and_loses_nothing(tmp_path):
    """SIGTERM with clients connected and messages queued: the relay stops within the
    deadline as twistd does (status: ended by SIGTERM, no traceback), logs that it stopped,
    and after a restart every accepted envelope is delivered, once."""
    port = free_port()
    config = write_config(str(tmp_path / "data"), port=port)
    proc = ServerProcess(tmp_path, config)
    proc.start()
    try:
        await proc.wait_listening()
        endpoint = RelayEndpoint(port, tmp_path / "data")
        alice, bob = await alice_and_offline_bob(endpoint)
        envelopes = [unicast("bob", "DEV1", b"queued %d" % i) for i in range(30)]
        for envelope in envelopes:
            assert (await alice.request("send", envelopes=[envelope]))["accepted"]
        watcher = ScriptedDevice("watcher")  # a second open connection at the SIGTERM
        await watcher.register(endpoint)
        await watcher.login(endpoint)
        proc.process.send_signal(signal.SIGTERM)
        await alice.protocol.closed_d
        await watcher.protocol.closed_d
        await poll_until(lambda: proc.process.poll() is not None, timeout=STOP_DEADLINE)
        assert proc.process.returncode == -signal.SIGTERM
        log = proc.new_log_text()
        assert "securechat relay stopped" in log
        assert "Traceback" not in log and "Unhandled" not in log
        proc.start()
        await proc.wait_listening()
        bob = bob.again()
        assert (await bob.login(endpoint, upload_keys=False))["queued"] == len(envelopes)
        await poll_until(lambda: len(bob.envelopes()) == len(envelopes))
        assert [e["envelope"]["id"] for e in bob.envelopes()] == [e["id"] for e in envelopes]
        await bob.close()
    finally:
        proc.stop()


def test_a_test_relay_process_never_takes_the_default_port(tmp_path):
    """The tests' relay processes refuse the default ports (the README's relay may hold
    6697 and 9797 while the suite runs): no options, or a config that leaves the TLS
    port at 6697 or the operator port at 9797."""
    with pytest.raises(AssertionError, match="picked free"):
        ServerProcess(tmp_path, None)
    config = tmp_path / "default-port.ini"
    config.write_text(f"[server]\ndata_dir = {tmp_path / 'data'}\n")
    with pytest.raises(AssertionError, match="picked free"):
        ServerProcess(tmp_path, config)
    config.write_text(f"[server]\ndata_dir = {tmp_path / 'data'}\nport = 7001\n")
    with pytest.raises(AssertionError, match="picked free"):  # the operator port's default
        ServerProcess(tmp_path, config)


@pytest_twisted.ensureDeferred
async def test_a_relay_run_as_root_says_so_in_its_log(tmp_path):
    """Started by root, the relay warns in its log and names the docs' section on running
    as its own user; started by anyone else, it does not."""
    proc = ServerProcess(tmp_path, write_config(str(tmp_path / "data"), port=free_port()))
    proc.start()
    try:
        await proc.wait_listening()
        warned = "The relay runs as root" in proc.log_text()
        assert warned == (os.geteuid() == 0)
        if warned:
            assert "'Running as its own user'" in proc.log_text()
    finally:
        proc.stop()


@pytest_twisted.ensureDeferred
async def test_sigterm_answers_what_is_in_flight_and_tells_the_clients(tmp_path):
    """SIGTERM while a client has 200 sends on the wire: every send the relay read gets
    its answer before the connection closes (the rest, never read, fail as unanswered and
    were not stored), the client gets the ``shutdown`` event and a clean close, the relay
    ends well within the harness's deadline, and after a restart exactly the envelopes
    answered "accepted" arrive: none committed without its answer."""
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(str(tmp_path / "data"), port=port))
    proc.start()
    try:
        await proc.wait_listening()
        endpoint = RelayEndpoint(port, tmp_path / "data")
        alice, bob = await alice_and_offline_bob(endpoint)
        envelopes = [unicast("bob", "DEV1", b"in flight %d" % i) for i in range(200)]
        sends = [defer.ensureDeferred(_outcome(alice.request("send", envelopes=[envelope])))
                 for envelope in envelopes]
        answered = []
        for d in sends:
            d.addCallback(lambda outcome: answered.append(outcome) or outcome)
        await poll_until(lambda: len(answered) >= 10)  # SIGTERM in the middle of them
        proc.process.send_signal(signal.SIGTERM)
        outcomes = await defer.gatherResults(sends)
        await alice.protocol.closed_d
        assert [e for e in alice.events if e.get("event") == "shutdown"], alice.events
        assert isinstance(alice.protocol.lost_reason, error.ConnectionDone)  # not aborted
        accepted = [env["id"] for env, outcome in zip(envelopes, outcomes) if outcome == "ok"]
        assert accepted, outcomes
        assert set(outcomes) <= {"ok", "unanswered"}, set(outcomes)
        await poll_until(lambda: proc.process.poll() is not None, timeout=STOP_DEADLINE)
        log = proc.new_log_text()
        assert "Traceback" not in log and "Unhandled" not in log and "aborted" not in log
        proc.start()
        await proc.wait_listening()
        bob = bob.again()
        await bob.login(endpoint, upload_keys=False)
        await poll_until(lambda: len(bob.envelopes()) >= len(accepted))
        assert [e["envelope"]["id"] for e in bob.envelopes()] == accepted
        await bob.close()
    finally:
        proc.stop()


async def _outcome(request):
    """"ok" for a request answered with a result, the error code for one answered with an
    error, "unanswered" for one whose connection closed first."""
    try:
        await request
        return "ok"
    except RemoteError as e:
        return e.code
    except ConnectionClosed:
        return "unanswered"
