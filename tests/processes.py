"""Real ``twistd -n securechat`` processes for end-to-end tests.

The processes run from a scratch directory, so they use the installed
package and its installed twistd plugin, exactly as an operator would.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import reactor, task

BIN_DIR = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name):
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        raise AssertionError(f"{name} is not installed next to {sys.executable}")
    return path


class ServerProcess:
    """One twistd process; ``start`` waits (with a deadline) until it listens."""

    def __init__(self, workdir, config_path):
        self.workdir = str(workdir)
        self.config_path = str(config_path)
        self.log_path = os.path.join(self.workdir, "twistd.log")
        self.process = None

    def start(self):
        self._log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.process = subprocess.Popen(
            [executable("twistd"), "-n", "--pidfile=", "--logfile", self.log_path,
             "securechat", "--config", self.config_path],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def log_text(self):
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def new_log_text(self):
        return self.log_text()[self._log_offset:]

    async def wait_listening(self, timeout=30):
        deadline = time.monotonic() + timeout
        while "securechat relay listening on" not in self.new_log_text():
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"twistd did not start within {timeout} s:\n{self.log_text()}")
            await task.deferLater(reactor, 0.05, lambda: None)

    def fingerprint(self):
        match = re.findall(r"fingerprint: ([0-9A-F:]{95})", self.log_text())
        return match[-1] if match else None

    def kill(self):
        """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
