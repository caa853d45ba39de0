"""A real HAProxy in TCP mode (TLS passed through) in front of two real relay nodes on one
PostgreSQL, configured as docs/operations.rst ("Several nodes") shows: clients verify
the relay's own certificate through it, land on both nodes, and when a node is killed
the balancer sends new clients to the other.

HAProxy must be installed (``.ci/run`` installs it): without it this test fails
saying so, it never skips."""

import shutil
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.processes import RelayEndpoint, ServerProcess, free_port, relay_fingerprint
from tests.support import ScriptedDevice, cleanup, write_config
from tests.test_operator_http import get, samples

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


@pytest.fixture
def balancer(tmp_path, nodes):
    """HAProxy on a free port of 127.0.0.1 in front of ``nodes``; its port."""
    binary = haproxy_binary()
    port = free_port()
    servers = "\n".join(f"    server node{i} 127.0.0.1:{node.port} port {node.http_port}"
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
