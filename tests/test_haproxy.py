"""A real HAProxy in TCP mode (TLS passed through) in front of two real relay nodes on one
PostgreSQL, configured as docs/operations.rst ("Several nodes") shows: clients verify
the relay's own certificate through it, land on both nodes, and when a node is killed
the balancer sends new clients to the other.  With ``send-proxy-v2`` and ``[server]
proxy_protocol = yes`` the relay (one process, or workers sharing its socket) sees
each client's own address, not the balancer's.

HAProxy must be installed (``.ci/run`` installs it): without it this test fails
saying so, it never skips."""

import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.processes import RelayEndpoint, ServerProcess, free_port, relay_fingerprint
from tests.support import ScriptedDevice, cleanup, poll_until_async, write_config
from tests.test_login_limits_e2e import connect_from, wrong_logins
from tests.test_operator_http import get, samples
from tests.test_workers import WORKERS, free_ports_in_a_row, logins_ok

LOGINS_MAX = 20
"""Logins tried, at most, before both nodes must have taken one."""
AFTER_THE_KILL = 4
START_TIMEOUT = 30

HAPROXY_CONFIG = """\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 24h
    timeout check 2s
    option clitcpka
    option srvtcpka

frontend securechat
    bind 127.0.0.1:{port}
    default_backend relays

backend relays
    balance roundrobin
    option redispatch
    retries 3
    option httpchk
    http-check send meth GET uri /ready
    http-check expect status 200
    default-server check inter 500ms fall 1 rise 1
{servers}
"""


def haproxy_binary():
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("haproxy is not installed: install it (apt-get install haproxy) to run "
                    "this test; CI's .ci/run installs it")
    return found


class Node:
    """One relay node: a ``twistd securechat`` process with its own data directory and
    ports, on the shared database."""

    def __init__(self, workdir, database, tls=""):
        workdir.mkdir()
        self.data_dir, self.port, self.http_port = workdir / "data", free_port(), free_port()
        self.process = ServerProcess(workdir, write_config(
            str(self.data_dir), port=self.port, database=database,
            extra=f"[http]\nport = {self.http_port}\n{tls}"))
        self.process.start()

    async def logins(self):
        text = (await get(self.http_port, "/metrics"))[1]
        return samples(text).get(("securechat_logins_total", (("outcome", "ok"),)), 0)


@pytest.fixture
def nodes(tmp_path, fresh_postgres_dsn):
    """Two nodes on one database; the second serves the first one's certificate (what an
    operator deploys to every host), so one fingerprint verifies both."""
    first = Node(tmp_path / "node1", fresh_postgres_dsn)
    started = []
    try:
        pytest_twisted.blockon(defer.ensureDeferred(first.process.wait_listening()))
        started.append(first)
        tls = first.data_dir / "tls"
        second = Node(tmp_path / "node2", fresh_postgres_dsn,
                      tls=f"[tls]\ncertificate = {tls / 'server-cert.pem'}\n"
                          f"private_key = {tls / 'server-key.pem'}\n")
        started.append(second)
        pytest_twisted.blockon(defer.ensureDeferred(second.process.wait_listening()))
        yield started
    finally:
        for node in started:
            node.process.stop()


def run_haproxy(tmp_path, nodes, server_options=""):
    """HAProxy on a free port of 127.0.0.1 in front of ``nodes`` (each ``server`` line
    with ``server_options``); yields its port."""
    binary = haproxy_binary()
    port = free_port()
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{node.port} {server_options} port {node.http_port}"
        for i, node in enumerate(nodes, 1))
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        _wait_accepting(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def balancer(tmp_path, nodes):
    """HAProxy in front of ``nodes``; its port."""
    yield from run_haproxy(tmp_path, nodes)


def _wait_accepting(port, process):
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"haproxy ended: {process.stdout.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not listen on {port}") from None
            time.sleep(0.05)


async def log_in(endpoint, name):
    device = ScriptedDevice(name)
    await device.register(endpoint)
    await device.login(endpoint, upload_keys=False)
    return device


@pytest_twisted.ensureDeferred
async def test_clients_through_haproxy_verify_the_relay_and_land_on_both_nodes(
        nodes, balancer):
    """Through HAProxy (TCP mode) a client sees the relay's own certificate (TLS passes
    through), logins land on both nodes, and once a node is killed (-9) every new client
    is logged in by the other."""
    fingerprints = {relay_fingerprint(port) for port in [balancer] + [n.port for n in nodes]}
    assert len(fingerprints) == 1, fingerprints
    endpoint = RelayEndpoint(balancer, nodes[0].data_dir)
    devices = []
    for i in range(LOGINS_MAX):
        devices.append(await log_in(endpoint, f"spread{i}"))
        if all([await node.logins() for node in nodes]):
            break
    counts = [await node.logins() for node in nodes]
    assert all(counts), counts
    survivor, victim = nodes
    victim.process.kill()  # its connections drop; new ones are retried on the survivor
    before = await survivor.logins()
    for i in range(AFTER_THE_KILL):
        devices.append(await log_in(endpoint, f"after{i}"))
    assert await survivor.logins() == before + AFTER_THE_KILL
    await cleanup(*devices)


GUESSER, OWNER = "127.0.0.2", "127.0.0.3"
"""Client source addresses: all of 127/8 is loopback, and HAProxy reaches the relay from
127.0.0.1, so only the PROXY header can tell the relay about these two."""
FAILURES_PER_ADDRESS = 4


class ProxiedRelay:
    """One relay with ``[server] proxy_protocol = yes`` and four failed logins or
    registrations per address and minute: on SQLite, or with ``workers`` processes on
    ``database`` (worker i answers the operator on ``http_port`` + i)."""

    def __init__(self, workdir, database=None, workers=1):
        workdir.mkdir()
        self.data_dir, self.port = workdir / "data", free_port()
        self.http_port = free_ports_in_a_row(workers)
        config = write_config(
            str(self.data_dir), port=self.port, database=database,
            extra=f"[http]\nport = {self.http_port}\n"
                  f"[limits]\nlogin_failures_per_address = {FAILURES_PER_ADDRESS}\n")
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text.replace("[server]\n", f"[server]\nproxy_protocol = yes\n"
                                                f"workers = {workers}\n", 1))
        self.process = ServerProcess(workdir, config)
        self.cert_path = os.path.join(str(self.data_dir), "tls", "server-cert.pem")

    def start(self):
        self.process.start()
        pytest_twisted.blockon(defer.ensureDeferred(self.process.wait_listening()))

    def audit(self):
        """Every audit record, of every worker's file."""
        records = []
        for path in self.data_dir.glob("audit*.jsonl"):
            with open(path) as f:
                records += [json.loads(line) for line in f]
        return records

    async def handshake_failures(self):
        text = (await get(self.http_port, "/metrics"))[1]
        return samples(text).get(("securechat_tls_handshake_failures_total", ()), 0)


@pytest.fixture
def proxied(tmp_path):
    relay = ProxiedRelay(tmp_path / "relay")
    try:
        relay.start()
        yield relay
    finally:
        relay.process.stop()


@pytest.fixture
def proxied_balancer(tmp_path, proxied):
    """HAProxy with ``send-proxy-v2`` in front of ``proxied``; what ScriptedDevice and
    ``connect_from`` need to reach the relay through it (its port, the relay's CA)."""
    for port in run_haproxy(tmp_path, [proxied], "send-proxy-v2"):
        yield RelayEndpoint(port, proxied.data_dir)


@pytest_twisted.ensureDeferred
async def test_through_haproxy_with_send_proxy_v2_limits_and_audit_see_each_clients_address(
        proxied, proxied_balancer):
    """Behind HAProxy (send-proxy-v2, proxy_protocol = yes) wrong passwords from 127.0.0.2
    are rate limited and audited as 127.0.0.2, while alice on 127.0.0.3, through the same
    balancer, still logs in."""
    alice = ScriptedDevice("alice", "A1")
    alice.protocol = await connect_from(OWNER, proxied_balancer)
    await alice.register(proxied_balancer)
    await alice.close()
    guesses = await wrong_logins(proxied_balancer, GUESSER, "alice", FAILURES_PER_ADDRESS + 1)
    assert [code for code, _ in guesses] == (
        ["auth_failed"] * FAILURES_PER_ADDRESS + ["rate_limited"]), guesses
    owner = alice.again()
    owner.protocol = await connect_from(OWNER, proxied_balancer)
    assert (await owner.password_login())["user"] == "alice"
    await owner.close()
    records = proxied.audit()
    assert {r["address"] for r in records if r["event"] == "registered"} == {OWNER}
    assert {r["address"] for r in records if r["event"] == "login_failed"} == {GUESSER}
    assert "Traceback" not in proxied.process.log_text()


@pytest_twisted.ensureDeferred
async def test_with_proxy_protocol_a_direct_connection_without_the_header_is_closed(
        proxied, proxied_balancer):
    """With proxy_protocol = yes, a client reaching the relay directly (no PROXY header)
    is closed before any TLS, counted as a failed handshake and logged; the relay stays
    up and serves clients through the balancer."""
    before = await proxied.handshake_failures()
    with pytest.raises((ssl.SSLError, OSError)):
        relay_fingerprint(proxied.port)

    async def counted():
        return await proxied.handshake_failures() == before + 1
    await poll_until_async(counted)
    device = ScriptedDevice("carol", "C1")
    device.protocol = await connect_from(OWNER, proxied_balancer)
    await device.register(proxied_balancer)
    assert (await device.password_login())["user"] == "carol"
    await device.close()
    log = proxied.process.log_text()
    assert "sent no valid PROXY protocol header in time" in log and "Traceback" not in log


@pytest.fixture
def proxied_workers(tmp_path, fresh_postgres_dsn):
    """A relay of two workers on PostgreSQL, with proxy_protocol = yes, behind HAProxy
    (send-proxy-v2): the relay and the balancer's endpoint."""
    relay = ProxiedRelay(tmp_path / "relay", fresh_postgres_dsn, WORKERS)
    try:
        relay.start()
        for port in run_haproxy(tmp_path, [relay], "send-proxy-v2"):
            yield relay, RelayEndpoint(port, relay.data_dir)
    finally:
        relay.process.stop()


@pytest_twisted.ensureDeferred
async def test_workers_behind_haproxy_read_the_proxy_header_on_the_socket_they_share(
        proxied_workers):
    """With workers = 2 (each adopting the supervisor's socket) and proxy_protocol = yes,
    clients from 127.0.0.10, .11 ... through HAProxy (send-proxy-v2) log in on both
    workers, and the workers audit each one's registration with its own address."""
    relay, balancer = proxied_workers
    devices, sources = [], {}
    for i in range(LOGINS_MAX):
        device = ScriptedDevice(f"worker{i}")
        devices.append(device)
        sources[device.user] = f"127.0.0.{10 + i}"
        device.protocol = await connect_from(sources[device.user], balancer)
        await device.register(balancer)
        await device.password_login()
        counts = [await logins_ok(relay.http_port + w) for w in range(WORKERS)]
        if all(counts):
            break
    assert all(counts), counts
    await cleanup(*devices)
    registered = {r["user"]: r["address"] for r in relay.audit() if r["event"] == "registered"}
    assert registered == sources
