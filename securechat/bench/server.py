"""The relay under test: a ``twistd -n securechat`` process the tool starts (or one it attaches to),
and its CPU time and memory read from /proc."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor, task

START_TIMEOUT = 60


class ProcSampler:
    """CPU seconds (user + system) and resident memory of one process, from /proc."""

    def __init__(self, pid):
        self.pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


class ManagedServer:
    """A relay started for one benchmark run, in a scratch directory, removed afterwards."""

    def __init__(self, database=None, port=0, extra_config=""):
        self.workdir = tempfile.mkdtemp(prefix="securechat-bench-")
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.cert_path = os.path.join(self.workdir, "data", "tls", "server-cert.pem")
        self.log_path = os.path.join(self.workdir, "twistd.log")
        lines = ["[server]", "interface = 127.0.0.1", f"port = {self.port}",
                 f"data_dir = {os.path.join(self.workdir, 'data')}",
                 "[limits]", "requests_per_second = 1000000", "request_burst = 1000000",
                 "login_attempts_per_address = 1000000", "argon2_concurrency = 2"]
        if database:
            lines += ["[store]", f"database = {database}"]
        self.config_path = os.path.join(self.workdir, "bench.ini")
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n" + extra_config)
        self.process = None
        self.sampler = None

    async def start(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile", self.log_path, "securechat",
             "--config", self.config_path], cwd=self.workdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while "securechat relay listening on" not in self._log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not start:\n{self._log()}")
            await task.deferLater(reactor, 0.05, lambda: None)
        self.sampler = ProcSampler(self.process.pid)
        return self

    def _log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


class AttachedServer:
    """A relay somebody else runs; CPU and memory are sampled when its pid is given."""

    def __init__(self, host, port, ca_file, pid=None):
        self.host, self.port, self.cert_path = host, port, ca_file
        self.sampler = ProcSampler(pid) if pid else None

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
