"""The relay under test: a ``twistd -n securechat`` process the tool starts (or one it attaches to),
and the samplers of its CPU time and memory (and its PostgreSQL server's, when local)."""

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor, task, threads

from securechat import config as config_module
from securechat.bench.database import local_postmaster
from securechat.bench.procfs import ProcessesSampler, ProcessTreeSampler, ProcSampler

START_TIMEOUT = 60


class RelayProcess:
    """One ``twistd -n securechat`` process, run from ``workdir`` (so the installed plugin is used).

    Shared by the benchmark tool and the end-to-end tests.
    """

    def __init__(self, workdir, config_path=None):
        self.workdir = str(workdir)
        self.config_path = None if config_path is None else str(config_path)
        self.log_path = os.path.join(self.workdir, "twistd.log")
        self.process = None
        self._log_offset = 0

    def start(self):
        self._log_offset = len(self.log_text())
        options = [] if self.config_path is None else ["--config", self.config_path]
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile", self.log_path, "securechat", *options],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def new_log_text(self):
        """What this start of the process logged (a restart appends to the same file)."""
        return self.log_text()[self._log_offset:]

    async def wait_listening(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while "securechat relay listening on" not in self.new_log_text():
            if self.process.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.process.returncode}:\n"
                                   f"{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"twistd did not start within {timeout} s:\n{self.log_text()}")
            await task.deferLater(reactor, 0.05, lambda: None)

    def fingerprint(self):
        found = re.findall(r"fingerprint: ([0-9A-F:]{95})", self.log_text())
        return found[-1] if found else None

    def kill(self):
        """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self):
        """SIGTERM, and wait for the relay to end: it must within its own shutdown bound
        (10 s, docs/operations.rst); one still running after 30 s is killed and said so
        (a hang is a bug to see, not something to wait out quietly)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError("the relay did not stop within 30 s of SIGTERM: killed")


class Node:
    """Where a client reaches one relay process: its address and the CA file to verify it."""

    def __init__(self, host, port, cert_path):
        self.host, self.port, self.cert_path = host, port, cert_path


class ManagedServer:
    """A relay started for one benchmark run, in a scratch directory, removed afterwards;
    with ``nodes`` > 1, that many relay processes on one PostgreSQL database (``nodes``:
    each its own port, all serving the first one's certificate, so one CA file verifies
    every node)."""

    def __init__(self, database=None, disk_dir=None, nodes=1):
        self.workdir = tempfile.mkdtemp(prefix="securechat-bench-")
        self.host = "127.0.0.1"
        self.database = database
        self.relays, self.nodes = [], []
        for index in range(nodes):
            workdir = self.workdir if index == 0 else os.path.join(self.workdir, f"node{index}")
            os.makedirs(workdir, exist_ok=True)
            port = _free_port()
            self.relays.append(RelayProcess(workdir, self._write_config(workdir, port)))
            self.nodes.append(Node(self.host, port, self._certificate()))
        self.relay = self.relays[0]
        self.port, self.cert_path = self.nodes[0].port, self.nodes[0].cert_path
        self.sampler = self.database_sampler = None
        self.disk_dir = disk_dir or self.workdir  # where SQLite commits (the fsync probe)

    def _certificate(self):
        return os.path.join(self.workdir, "data", "tls", "server-cert.pem")

    def _write_config(self, workdir, port):
        lines = ["[server]", "interface = 127.0.0.1", f"port = {port}",
                 f"data_dir = {os.path.join(workdir, 'data')}",
                 "[limits]", "requests_per_second = 1000000", "request_burst = 1000000",
                 "login_failures_per_address = 1000000", "argon2_concurrency = 2",
                 "argon2_waiting_per_client = 1000000", "unauthenticated_per_address = 1000000",
                 "[http]", "port = 0"]
        if self.database:
            lines += ["[store]", f"database = {self.database}"]
        if workdir != self.workdir:  # a further node: the first one's certificate
            key = os.path.join(self.workdir, "data", "tls", "server-key.pem")
            lines += ["[tls]", f"certificate = {self._certificate()}", f"private_key = {key}"]
        config_path = os.path.join(workdir, "bench.ini")
        with open(config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return config_path

    async def start(self):
        await self._start_relays()
        if self.database:
            postmaster = await threads.deferToThread(local_postmaster, self.database)
            if postmaster is not None:
                self.database_sampler = ProcessTreeSampler(postmaster)
        return self

    async def _start_relays(self):
        """The first node first: it makes the certificate the others serve."""
        self.relay.start()
        await self.relay.wait_listening()
        for relay in self.relays[1:]:
            relay.start()
        for relay in self.relays[1:]:
            await relay.wait_listening()
        samplers = [ProcSampler(relay.process.pid) for relay in self.relays]
        self.sampler = samplers[0] if len(samplers) == 1 else ProcessesSampler(samplers)

    async def restart(self):
        """Stop the relays (SIGTERM) and start new processes on the same store and ports."""
        for relay in self.relays:
            relay.stop()
        await self._start_relays()

    def store_config(self):
        """The relay's configuration (its store's location), to write to its store directly."""
        return config_module.load(self.relay.config_path)

    def stop(self):
        for relay in self.relays:
            relay.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class AttachedServer:
    """A relay somebody else runs; CPU and memory are sampled when its pid is given, the
    disk's sync latency when a directory on its disk is."""

    def __init__(self, host, port, ca_file, pid=None, disk_dir=None):
        self.host, self.port, self.cert_path = host, port, ca_file
        self.nodes = [Node(host, port, ca_file)]
        self.sampler = ProcSampler(pid) if pid else None
        self.database_sampler = None  # the tool does not know an attached relay's database
        self.disk_dir = disk_dir

    async def start(self):
        return self

    def stop(self):
        pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_prefix():
    """User names of one run never collide with an earlier run's on a reused database."""
    return "b" + secrets.token_hex(3)
