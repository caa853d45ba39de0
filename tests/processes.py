"""Real ``twistd -n securechat`` processes for end-to-end tests.

The processes run the installed entry points from a scratch directory, as an
operator would, with this checkout's code (tests/conftest.py puts it first on
their PYTHONPATH).
"""

import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time

from twisted.internet import reactor, task

from securechat import config as config_module
from securechat.bench.server import RelayProcess

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


class ServerProcess(RelayProcess):
    """A relay process of a test: on ports the test picked free, never the default ones,
    where the README's relay may be running (the two must not collide): its TLS port, and
    its operator HTTP port when that is enabled."""

    def __init__(self, workdir, config_path):
        defaults = config_module.load(None)
        loaded = None if config_path is None else config_module.load(str(config_path))
        if (loaded is None or loaded.port == defaults.port
                or (loaded.http_enabled and loaded.http_port == defaults.http_port)):
            raise AssertionError(f"{config_path}: a test relay must listen on ports it "
                                 "picked free (tests.processes.free_port)")
        super().__init__(workdir, config_path)


class RelayEndpoint:
    """What ScriptedDevice needs to reach a relay process: its port and the CA file (the
    certificate it generated in ``data_dir``) to verify it with."""

    def __init__(self, port, data_dir):
        self.port = port
        self.cert_path = os.path.join(str(data_dir), "tls", "server-cert.pem")


def run_twistd(cwd, *args, timeout=60):
    """Run ``twistd ARGS`` to its end (a start that fails, daemon mode's parent); the result."""
    return subprocess.run([executable("twistd"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def relay_fingerprint(port):
    """The SHA-256 fingerprint of the certificate the relay on 127.0.0.1:``port`` presents,
    read over a real TLS handshake (as a person reads it from ``securechat init``)."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=30)
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def write_client_config(directory, user, port, fingerprint=None, ca_file=None, data_dir=None,
                        extra_lines=()):
    """A client ini for ``user`` whose device data lives under ``directory``/``user`` (or
    ``data_dir``).  Without a ``ca_file`` it pins ``fingerprint``, by default the one the
    relay on ``port`` presents (the client never pins silently): that relay must be a
    process listening already (an in-process one cannot answer while this blocks)."""
    os.makedirs(directory, exist_ok=True)
    if not fingerprint and not ca_file:
        fingerprint = relay_fingerprint(port)
    lines = ["[client]", f"server = 127.0.0.1:{port}", f"username = {user}",
             f"data_dir = {data_dir or os.path.join(directory, user)}", *extra_lines]
    if fingerprint:
        lines.append(f"server_fingerprint = {fingerprint}")
    if ca_file:
        lines.append(f"ca_file = {ca_file}")
    path = os.path.join(directory, f"{user}.ini")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class CliResult:
    def __init__(self, out, err, code):
        self.out = out.decode("utf-8")
        self.err = err.decode("utf-8")
        self.code = code

    def json_lines(self):
        import json

        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    def __repr__(self):
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


def cli_environment(password, extra_env):
    """The CLI's environment: none of ours inherited; the password only if one is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    if password is not None:
        env["SECURECHAT_PASSWORD"] = password
    env.update(extra_env or {})
    return env


async def run_cli(config, *args, password="correct horse battery staple", stdin=None, timeout=120,
                  extra_env=None, cwd=None):
    """Run the installed ``securechat`` CLI without blocking the reactor (in directory
    ``cwd``, else this one); fire a CliResult (``password=None``: no SECURECHAT_PASSWORD
    in its environment)."""
    from twisted.internet import defer, protocol

    env = cli_environment(password, extra_env)
    done = defer.Deferred()

    class Collect(protocol.ProcessProtocol):
        def __init__(self):
            self.out, self.err = [], []

        def connectionMade(self):
            if stdin is not None:
                self.transport.write(stdin)
            self.transport.closeStdin()

        def outReceived(self, data):
            self.out.append(data)

        def errReceived(self, data):
            self.err.append(data)

        def processEnded(self, reason):
            done.callback(CliResult(b"".join(self.out), b"".join(self.err), reason.value.exitCode))

    proc = Collect()
    transport = reactor.spawnProcess(proc, executable("securechat"),
                                     ["securechat", "--config", str(config), *args], env=env,
                                     path=cwd)
    timer = reactor.callLater(timeout, transport.signalProcess, "KILL")
    result = await done
    if timer.active():
        timer.cancel()
    return result


class InteractiveCli:
    """A long-running ``securechat`` process (``chat``) fed line by line."""

    def __init__(self, config, *args, password="correct horse battery staple", extra_env=None):
        from twisted.internet import defer, protocol

        self.output = []
        self.ended = defer.Deferred()
        outer = self

        class Talk(protocol.ProcessProtocol):
            def outReceived(self, data):
                outer.output.append(data)

            errReceived = outReceived

            def processEnded(self, reason):
                outer.ended.callback(reason.value.exitCode)

        env = cli_environment(password, extra_env)
        self.transport = reactor.spawnProcess(
            Talk(), executable("securechat"), ["securechat", "--config", str(config), *args],
            env=env)

    def text(self):
        return b"".join(self.output).decode("utf-8", "replace")

    def type(self, line):
        self.transport.write(line.encode("utf-8") + b"\n")

    async def wait_for(self, needle, timeout=30):
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.ended.called or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared in:\n{self.text()}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def finish(self, timeout=30):
        timer = reactor.callLater(timeout, self.transport.signalProcess, "KILL")
        code = await self.ended
        if timer.active():
            timer.cancel()
        return code


class DaemonProcess(InteractiveCli):
    """``securechat daemon`` of one device; ``ready()`` once it serves its socket."""

    def __init__(self, config, data_dir, **kwargs):
        super().__init__(config, "daemon", **kwargs)
        self.socket_path = os.path.join(str(data_dir), "daemon.sock")

    async def ready(self, timeout=60):
        await self.wait_for("securechat daemon: serving", timeout)

    async def stop(self, timeout=30):
        """SIGTERM, as systemd or ^C would stop it; the exit code."""
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        return await self.finish(timeout)
