"""securechat-bench keeps working: every workload in a tiny configuration, on both stores.

No timing is asserted (figures belong in docs/benchmarks.rst); only that each
workload runs, reports its figures and loses nothing.
"""

import json
import os
import pathlib
import secrets
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import task, threads

from securechat import wire

from securechat.bench.database import POSTGRES_COMMANDS, local_postmaster
from securechat.bench.disk import FsyncProbe
from securechat.bench.peers import GroupedLatencies
from securechat.bench.procfs import ProcessTreeSampler, command_name, parent
from securechat.bench.workloads import fixed_rate, half_cross_node, in_turn, same_node
from tests.processes import executable
from tests.support import poll_until

TINY = {
    "w1": ["--pairs", "2", "--inflight", "5", "--warmup", "0.2", "--duration", "0.5"],
    "w2": ["--pairs", "2", "--rate", "20", "--warmup", "0.2", "--duration", "0.5"],
    "w3": ["--members", "3", "--rate", "20", "--warmup", "0.2", "--duration", "0.5"],
    "w4": ["--connections", "5", "--idle", "0"],
    "w5": ["--envelopes", "50", "--inflight", "5"],
    # Enough logins for a window of about half a second, as the others' (TICK_SLACK).
    "w6": ["--connections", "300", "--concurrency", "50"],
    "w7": ["--clients", "2", "--size", "1"],
}
TMPFS = "/dev/shm"
TICK_SLACK = 0.05
"""Two clock ticks of CPU time in the shortest windows above (0.5 s), as a share."""
TWO_TICKS_SECONDS = 0.02
"""/proc counts CPU time in 10 ms ticks, so a thread's and its process's times may differ
by two ticks whatever the window: as a share, that is more than TICK_SLACK in a window
shorter than 0.4 s (w5 drains its 50 envelopes in about 0.1 s)."""
BACKEND_WORK_SECONDS = 0.05
"""Far less than summing four million numbers costs a PostgreSQL backend (about 0.3 s)."""
EXPECTED = {
    "w1": ("delivered_per_s", "p99_ms", "server_cpu_us_per_message", "client_cpu_us_per_message",
           "disk_fsync_p99_ms"),
    "w2": ("p50_ms", "p99_ms", "max_ms", "disk_fsync_p50_ms"),
    "w3": ("at_20_deliveries_per_s", "at_20_p99_ms", "at_20_server_cpu_us_per_delivery",
           "at_20_disk_fsync_max_ms"),
    "w4": ("held", "server_kib_per_connection", "open_s"),
    "w5": ("login_to_last_ack_s", "acknowledged", "disk_fsync_p99_ms"),
    "w6": ("all_logged_in_s", "logins_per_s", "login_p99_ms", "server_rss_after_kib",
           "server_cpu_us_per_login"),
    "w7": ("upload_mib_s", "download_mib_s", "concurrent_up_mib_s", "concurrent_down_mib_s",
           "server_rss_before_kib", "server_rss_peak_kib"),
}
NOTHING_LOST = {
    "w1": {"lost": 0},
    "w2": {"lost": 0},
    "w3": {"lost": 0},
    "w4": {"held": 5},
    "w5": {"acknowledged": 50, "drained": True},
    "w6": {"logged_in": 300, "failed": 0},
    "w7": {"clients": 2, "corrupted": 0},
}
"""What each workload reports when nothing was lost: fields it really reports (a missing
one fails the test, as a loss does)."""


def test_help_lists_the_workloads():
    """`securechat-bench --help` describes the tool and its workloads."""
    out = subprocess.run([executable("securechat-bench"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "w5 offline drain" in out.stdout


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize("workload", sorted(TINY))
def test_workload_runs_and_loses_nothing(workload, store, request):
    """Each workload runs in seconds against a relay it starts, and reports its figures."""
    args = [executable("securechat-bench"), workload, *TINY[workload]]
    if store == "postgres":
        args += ["--database", request.getfixturevalue("fresh_postgres_dsn")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["workload"] == workload
    assert report["store"] == ("postgresql" if store == "postgres" else "sqlite")
    for key in EXPECTED[workload]:
        assert report[key] is not None, key
    assert {key: report.get(key) for key in NOTHING_LOST[workload]} == NOTHING_LOST[workload]
    if "lost" in NOTHING_LOST[workload]:
        assert report["accepted"] > 0  # something was sent, so "lost" could have been > 0
    for key in (key for key in report if key.endswith("server_cpu_share")):
        # One thread of the relay: at most a core, and at most the whole relay's share
        # (give or take a clock tick: /proc rounds a thread's and a process's times apart).
        reactor_share = report[key.replace("server_cpu", "server_reactor_cpu")]
        slack = max(TICK_SLACK, TWO_TICKS_SECONDS / report.get("login_to_last_ack_s", 1.0))
        assert 0 <= reactor_share <= min(1.0, report[key]) + slack, key
        # The PostgreSQL server's own CPU beside the relay's (the tests' server is local).
        database_share = report.get(key.replace("server_cpu", "database_cpu"))
        assert (database_share is not None) == (store == "postgres"), key


@pytest_twisted.ensureDeferred
async def test_the_database_servers_cpu_counts_its_backends_living_and_ended(
        fresh_postgres_dsn):
    """A local PostgreSQL server is found from a connection, and its CPU time counts what a
    backend spends, while it runs and after it has ended."""
    postmaster = local_postmaster(fresh_postgres_dsn)
    assert postmaster is not None and command_name(postmaster) in POSTGRES_COMMANDS
    sampler = ProcessTreeSampler(postmaster)
    before = sampler.cpu_seconds()
    connection = psycopg2.connect(fresh_postgres_dsn)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
        cursor.execute("SELECT sum(i) FROM generate_series(1, 4000000) AS i")  # CPU, in it
        during = sampler.cpu_seconds()
    connection.close()
    await poll_until(lambda: parent(backend) != postmaster)  # ended, and waited for
    after = sampler.cpu_seconds()
    assert during - before >= BACKEND_WORK_SECONDS
    assert after >= during - 0.02  # its time stays counted (in the postmaster's children's)


def test_a_fixed_rate_catches_up_on_ticks_the_reactor_missed():
    """When the reactor runs late the generator still offers the rate asked for: the late
    tick sends one message per interval that elapsed (a plain LoopingCall sends one)."""
    clock = task.Clock()
    sent = []
    loop = fixed_rate(lambda: sent.append("m"))
    loop.clock = clock
    loop.start(0.001, now=False)
    clock.advance(0.001)
    assert len(sent) == 1
    clock.advance(0.004)  # a busy turn: four intervals at once
    assert len(sent) == 5
    loop.stop()


def test_senders_in_turn_keep_their_spread_when_the_reactor_runs_late():
    """W2's pairs share one timer: each sends at its own place in the period, and a late
    reactor delays the turns it missed without moving the ones after (separate timers
    started late stay in lockstep)."""
    clock = task.Clock()
    sent = []
    loop = in_turn(lambda name: sent.append((name, round(clock.seconds(), 3))),
                   [("a",), ("b",), ("c",)])
    loop.clock = clock
    loop.start(0.01, now=True)  # three senders at 1/0.03 messages a second each
    clock.advance(0.01)
    clock.advance(0.01)
    assert sent == [("a", 0.0), ("b", 0.01), ("c", 0.02)]
    clock.advance(0.035)  # a busy turn: three places missed and half of the next
    assert sent[3:] == [("a", 0.055), ("b", 0.055), ("c", 0.055)]
    clock.advance(0.005)  # the next place comes on time, in its turn
    assert sent[6:] == [("a", 0.06)]
    loop.stop()


@pytest.fixture(params=["disk", "tmpfs"])
def sync_dir(request, tmp_path):
    """A directory on the tests' disk, or on a tmpfs (where a sync costs nothing)."""
    if request.param == "disk":
        return tmp_path
    if not os.path.isdir(TMPFS):
        pytest.skip(f"no {TMPFS} on this machine")
    directory = tempfile.mkdtemp(dir=TMPFS)
    request.addfinalizer(lambda: os.rmdir(directory))
    return pathlib.Path(directory)


@pytest_twisted.ensureDeferred
async def test_the_fsync_probe_times_syncs_and_leaves_nothing_behind(sync_dir):
    """The probe takes its first sample as it starts and stops only once a sync under way
    has ended, so even the shortest window has a figure, on a disk and on a tmpfs (where
    it rounds to 0); its scratch file is removed."""
    probe = FsyncProbe(str(sync_dir))
    probe.start()
    figures = await probe.stop()
    assert figures["disk_fsync_p50_ms"] is not None
    assert 0 <= figures["disk_fsync_p50_ms"] <= figures["disk_fsync_p99_ms"]
    assert figures["disk_fsync_p99_ms"] <= figures["disk_fsync_max_ms"]
    assert list(sync_dir.iterdir()) == []


def test_the_reconnect_storm_refuses_an_attached_relay(tmp_path):
    """W6 writes accounts into the relay's store and restarts it: with --attach it says so
    and exits instead of logging in to a relay whose store it cannot seed."""
    out = subprocess.run([executable("securechat-bench"), "w6", "--attach", "127.0.0.1:1",
                          "--ca-file", str(tmp_path / "none.pem")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "w6" in out.stderr and "cannot --attach" in out.stderr


@pytest.mark.parametrize("workload", ["w1", "w3"])
def test_nodes_spread_the_clients_over_relay_processes_on_one_database(
        workload, fresh_postgres_dsn):
    """--nodes 2 starts two relay processes on one PostgreSQL database and spreads the
    clients over them: each node delivers its share (w1: pairs on one node each; w3: a
    room per node), and nothing is lost."""
    out = subprocess.run([executable("securechat-bench"), workload, *TINY[workload],
                          "--nodes", "2", "--database", fresh_postgres_dsn],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["nodes"] == 2
    assert len(report["delivered_per_node"]) == 2 and all(report["delivered_per_node"])
    assert report["accepted"] > 0 and report["lost"] == 0


def test_w2_on_two_nodes_puts_every_other_receiver_on_the_other_node():
    """W2's placement on several nodes: every node has as many senders and receivers,
    and every other pair's receiver sits on another node than its sender (on one node,
    every pair on it); W1's pairs each sit on one node, the nodes in turn."""
    two, one = SimpleNamespace(nodes=["a", "b"]), SimpleNamespace(nodes=["a"])
    assert [half_cross_node(two)(i) for i in range(4)] == [
        ("a", "a"), ("a", "b"), ("b", "b"), ("b", "a")]
    assert {half_cross_node(one)(i) for i in range(4)} == {("a", "a")}
    assert [same_node(two)(i) for i in range(3)] == [("a", "a"), ("b", "b"), ("a", "a")]


def test_w2_latencies_come_apart_by_group_and_only_when_grouped():
    """Same-node and cross-node latencies are summed up apart (and together); envelopes
    sent in no group (one node) add no group figures."""
    latencies = GroupedLatencies()
    latencies.measuring = True
    for envelope_id, group in (("a", "same_node"), ("b", "cross_node"), ("c", None)):
        latencies.sent(envelope_id, group)
        latencies.arrived(envelope_id)
    figures = latencies.summary()
    assert {key for key in figures if key.endswith("p99_ms")} == {
        "p99_ms", "same_node_p99_ms", "cross_node_p99_ms"}
    assert len(latencies.samples) == 3


@pytest.mark.parametrize("args, message", [
    (["w1", "--nodes", "2"], "--nodes needs --database postgresql://"),
    (["w4", "--nodes", "2", "--database", "postgresql://u@127.0.0.1:1/x"],
     "--nodes applies to w1, w2, w3, not w4"),
    (["w1", "--nodes", "2", "--attach", "127.0.0.1:1", "--ca-file", "x.pem"],
     "cannot --attach")])
def test_nodes_without_a_shared_database_are_refused_naming_why(args, message):
    """--nodes 2 needs a PostgreSQL database the nodes share, relays the tool starts, and
    a workload that spreads its clients: otherwise it exits naming the problem."""
    out = subprocess.run([executable("securechat-bench"), *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_a_fsync_directory_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "missing"
    out = subprocess.run([executable("securechat-bench"), "w2", "--fsync-dir", str(missing)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"--fsync-dir '{missing}' is not a directory" in out.stderr


def _storm_devices(relay, hostname):
    """One unknown device of W6's lean load generator logging in to ``relay``: its results."""
    job = {"host": "127.0.0.1", "port": relay.port, "ca_file": relay.cert_path,
           "hostname": hostname, "concurrency": 1,
           "devices": [["nobody", "BENCH", wire.b64encode(secrets.token_bytes(32))]]}
    out = subprocess.run([sys.executable, "-m", "securechat.bench.storm_devices"],
                         input=json.dumps(job) + "\ngo\n", capture_output=True, text=True,
                         timeout=60)
    ready, results = out.stdout.splitlines()
    return json.loads(results)


@pytest.fixture
def relay(start_relay):
    return start_relay()


@pytest_twisted.ensureDeferred
async def test_the_storm_devices_verify_the_relay_certificate_and_name(relay):
    """W6's devices do real, verified TLS: expecting another host name fails the handshake;
    the right name gets through TLS to a signed login, which the relay refuses for a
    device it does not know."""
    wrong = await threads.deferToThread(_storm_devices, relay, "elsewhere.example")
    right = await threads.deferToThread(_storm_devices, relay, "localhost")
    assert wrong["logged_in"] == 0 and "certificate verify failed" in wrong["failures"][0]
    assert right["logged_in"] == 0 and right["failures"][0].startswith(
        "RuntimeError: auth_failed")
