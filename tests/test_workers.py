"""``[server] workers``: a real ``twistd securechat`` supervising worker processes on a real
PostgreSQL.  The workers share one TLS port and each takes logins on it; a worker killed
is restarted while the port keeps accepting; SIGTERM (or the supervisor's death) ends
them all, none left behind; SQLite refuses several workers, naming the option."""

import os
import signal
import socket

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import config as config_module
from securechat.bench.procfs import children
from securechat.server.supervisor import BACKOFF_FIRST, BACKOFF_MAX, STABLE_SECONDS, Backoff
from securechat.server.worker import worker_config
from tests.processes import RelayEndpoint, ServerProcess, free_port, relay_fingerprint
from tests.test_admin_api import admin_json
from tests.support import ScriptedDevice, cleanup, poll_until, poll_until_async, write_config
from tests.test_operator_http import get, samples
from tests.test_startup import FAILED, STOP_DEADLINE, _alive, _start_in_foreground

WORKERS = 2
LOGINS_MAX = 40
"""Logins tried, at most, before both workers must have taken one (the kernel gives each
connection to the worker that accepts first: the two share them, in no fixed order)."""


def free_ports_in_a_row(count):
    """The first of ``count`` consecutive ports of 127.0.0.1 that are free now."""
    for _ in range(100):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no {count} free ports in a row")


def _alive_pids(pids):
    return [pid for pid in pids if _alive(pid) and not _zombie(pid)]


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture
def supervised(tmp_path, fresh_postgres_dsn):
    """A twistd relay with ``[server] workers = 2`` on PostgreSQL, listening; ``.port``,
    ``.http_port`` (worker i answers on it + i) and ``.endpoint``."""
    data_dir, port, http_port = tmp_path / "relay", free_port(), free_ports_in_a_row(WORKERS)
    config = write_config(str(data_dir), port=port, database=fresh_postgres_dsn,
                          extra=f"[http]\nport = {http_port}\n"
                          # every registration counts against one address, now on both
                          # workers together (the limits are in the database)
                          "[limits]\nlogin_failures_per_address = 1000\n")
    set_workers(config, WORKERS)
    proc = ServerProcess(tmp_path, config)
    proc.port, proc.http_port = port, http_port
    proc.endpoint = RelayEndpoint(port, data_dir)
    proc.start()
    pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
    yield proc
    proc.stop()


def set_workers(config_path, text):
    """Add ``workers = text`` to the [server] section of a config made by write_config."""
    with open(config_path) as f:
        body = f.read().replace("[server]\n", f"[server]\nworkers = {text}\n", 1)
    with open(config_path, "w") as f:
        f.write(body)


def worker_pids(proc):
    """The supervisor's living children: its workers."""
    return sorted(_alive_pids(children(proc.process.pid)))


async def logins_ok(http_port):
    text = (await get(http_port, "/metrics"))[1]
    return samples(text).get(("securechat_logins_total", (("outcome", "ok"),)), 0)


async def log_in_until_both_workers_took_one(proc, prefix):
    """Register and log in fresh accounts one after another until each worker's /metrics
    counts a login (at most LOGINS_MAX); the devices, still connected."""
    devices = []
    for i in range(LOGINS_MAX):
        device = ScriptedDevice(f"{prefix}{i}")
        devices.append(device)
        await device.register(proc.endpoint)
        await device.login(proc.endpoint, upload_keys=False)
        counts = [await logins_ok(proc.http_port + index) for index in range(WORKERS)]
        if all(counts):
            return devices
    raise AssertionError(f"after {LOGINS_MAX} logins the workers counted {counts}")


@pytest_twisted.ensureDeferred
async def test_two_workers_both_take_logins_on_the_one_port(supervised):
    """workers = 2 runs two worker processes under the twistd process; logins on the one
    TLS port land on both (each worker's own /metrics, on [http] port + i, counts some),
    and each answers /ready."""
    pids = worker_pids(supervised)
    assert len(pids) == WORKERS, pids
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"securechat.server.worker" in f.read()
    for index in range(WORKERS):
        assert await get(supervised.http_port + index, "/ready") == (200, "ready\n")
    devices = await log_in_until_both_workers_took_one(supervised, "spread")
    await cleanup(*devices)
    log = supervised.new_log_text()
    assert f"in {WORKERS} worker processes" in log
    for index in range(WORKERS):
        assert f"securechat relay worker {index} listening on" in log


@pytest_twisted.ensureDeferred
async def test_a_worker_killed_is_restarted_and_the_port_keeps_accepting(supervised):
    """kill -9 of a worker: the supervisor logs it and starts a new one in its place (its
    operator port answers again), and logins on the port go on working meanwhile."""
    before = worker_pids(supervised)
    victim = before[-1]
    os.kill(victim, signal.SIGKILL)
    survivor = ScriptedDevice("survivor")  # taken by the other worker while one is down
    await survivor.register(supervised.endpoint)
    await survivor.login(supervised.endpoint, upload_keys=False)
    await poll_until(lambda: "restarted (pid" in supervised.new_log_text(), timeout=60)
    after = worker_pids(supervised)
    assert len(after) == WORKERS and victim not in after, (before, after)
    log = supervised.new_log_text()
    assert f"(pid {victim}) ended (killed by signal 9): restarting it in" in log

    async def all_ready():
        answers = [await get(supervised.http_port + i, "/ready") for i in range(WORKERS)]
        return all(status == 200 for status, _ in answers)
    await poll_until_async(all_ready, timeout=30)
    devices = await log_in_until_both_workers_took_one(supervised, "after")
    await cleanup(survivor, *devices)


@pytest_twisted.ensureDeferred
async def test_sighup_to_the_supervisor_reloads_every_workers_certificate(supervised):
    """SIGHUP to the twistd process reaches every worker: each reloads its certificate
    (and logs it), and the port still serves the same one."""
    fingerprint = relay_fingerprint(supervised.port)
    supervised.process.send_signal(signal.SIGHUP)

    def reloaded(index):
        return any(line.startswith(f"worker{index} ") and "TLS certificate reloaded" in line
                   for line in _systems(supervised.new_log_text()))
    await poll_until(lambda: all(reloaded(i) for i in range(WORKERS)), timeout=30)
    assert relay_fingerprint(supervised.port) == fingerprint


@pytest_twisted.ensureDeferred
async def test_admin_tls_reload_reaches_every_worker(supervised):
    """securechat-admin tls reload, which worker 0's operator port takes: it answers the
    fingerprint, and every worker reloads its certificate (through the supervisor's
    SIGHUP), not worker 0 alone."""
    def reloaded(index):
        return any(line.startswith(f"worker{index} ") and "TLS certificate reloaded" in line
                   for line in _systems(supervised.new_log_text()))
    assert not any(reloaded(i) for i in range(WORKERS))
    done = admin_json(supervised.config_path, "tls", "reload")
    assert done["fingerprint"] == relay_fingerprint(supervised.port)
    await poll_until(lambda: all(reloaded(i) for i in range(WORKERS)), timeout=30)


def _systems(log):
    """Each log line from its ``[system]`` on (the worker's number first, if a worker's)."""
    return [line.split(" [", 1)[1] for line in log.splitlines() if " [" in line]


@pytest_twisted.ensureDeferred
async def test_sigterm_to_the_supervisor_stops_every_worker_within_the_bound(supervised):
    """SIGTERM to the twistd process: each worker stops gracefully (its client gets the
    shutdown notice), the supervisor exits as twistd does on SIGTERM within the deadline,
    and no worker is left running."""
    pids = worker_pids(supervised)
    watcher = ScriptedDevice("watcher")
    await watcher.register(supervised.endpoint)
    await watcher.login(supervised.endpoint, upload_keys=False)
    supervised.process.send_signal(signal.SIGTERM)
    await watcher.protocol.closed_d
    assert [e for e in watcher.events if e.get("event") == "shutdown"], watcher.events
    await poll_until(lambda: supervised.process.poll() is not None, timeout=STOP_DEADLINE)
    assert supervised.process.returncode == -signal.SIGTERM
    assert _alive_pids(pids) == []
    log = supervised.new_log_text()
    assert "securechat relay stopped: its 2 worker processes have ended" in log
    for index in range(WORKERS):
        assert f"securechat relay worker {index} stopped" in log
    assert "Traceback" not in log and "Unhandled" not in log and "killed" not in log


@pytest_twisted.ensureDeferred
async def test_workers_stop_when_their_supervisor_is_killed(supervised):
    """kill -9 of the twistd process itself: its workers see it gone and stop (none is
    left serving without a supervisor)."""
    pids = worker_pids(supervised)
    supervised.kill()
    await poll_until(lambda: not _alive_pids(pids), timeout=STOP_DEADLINE)


def test_several_workers_on_sqlite_are_refused_naming_the_option(tmp_path):
    """workers = 2 with the SQLite store: twistd exits 1 with one line naming [server]
    workers and why (one writer), and starts nothing."""
    config = write_config(str(tmp_path / "data"), port=free_port())
    set_workers(config, 2)
    out = _start_in_foreground(tmp_path, config)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1, out.stderr
    assert "[server] workers = 2: the SQLite store has one writer" in out.stderr
    assert "PostgreSQL" in out.stderr
    assert FAILED not in out.stderr  # refused at the configuration, before any start


def test_auto_workers_on_sqlite_are_refused_as_written(tmp_path, monkeypatch):
    """workers = auto on a machine of several cores, with SQLite: the error says auto and
    the count it came to, not a number the operator never wrote."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    path = write_config(str(tmp_path), port=7000)
    set_workers(path, "auto")
    with pytest.raises(config_module.ConfigError,
                       match=r"\[server\] workers = auto \(4 cores\): the SQLite store"):
        config_module.load(path)


@pytest.mark.parametrize("text, expected", [
    ("1", 1), ("3", 3), ("auto", os.cpu_count()), ("0", None), ("many", None)])
def test_workers_is_a_count_or_auto(tmp_path, text, expected):
    """[server] workers takes a count from 1 or auto (the cores); anything else is named."""
    path = write_config(str(tmp_path), port=7000, database="postgresql://u@db/x")
    set_workers(path, text)
    if expected is None:
        with pytest.raises(config_module.ConfigError, match=r"\[server\] workers = .*or auto"):
            config_module.load(path)
    else:
        assert config_module.load(path).workers == expected


def test_a_worker_has_its_own_operator_port_and_audit_log(tmp_path):
    """Worker i answers the operator on [http] port + i (0 stays 0: any free port) and
    writes an audit log of its own beside the configured one."""
    config = config_module.load(write_config(str(tmp_path), port=7000,
                                             extra="[http]\nport = 9000\n"))
    second = worker_config(config, 1)
    assert second.http_port == 9001
    assert second.audit_file == os.path.join(str(tmp_path), "audit.worker1.jsonl")
    anywhere = config_module.load(write_config(str(tmp_path), port=7000))
    assert worker_config(anywhere, 1).http_port == 0


def test_the_restart_back_off_doubles_to_its_cap_and_resets_after_a_stable_run():
    """A worker that keeps ending waits 1, 2, 4 ... s up to the cap before its restart;
    one that ran STABLE_SECONDS first is restarted after the first delay again."""
    backoff = Backoff()
    delays = [backoff.delay(lived_seconds=0.5) for _ in range(8)]
    assert delays[:3] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST]
    assert delays[-1] == BACKOFF_MAX and delays == sorted(delays)
    assert backoff.delay(lived_seconds=STABLE_SECONDS) == BACKOFF_FIRST
