"""One process of W6's devices: each connects, completes a verified TLS handshake and logs
in by its device key, as a registered client does; lean on purpose.

The storm's figure is the relay's, but the load generator shares the machine's
cores with it, so every microsecond a login costs here is one the relay does
not get.  A device is a non-blocking socket with pyOpenSSL on it directly, in
one ``selectors`` loop: no memory BIOs, protocol stack or Deferreds per
connection (the Twisted client spent about 1.7 ms of CPU per login, most of it
around the handshake rather than in it).  What crosses the wire is what the
client sends: TLS 1.2+ verified against the relay's certificate and host
name, ``login.challenge``, and a ``login`` signed with the device's Ed25519 key
over the challenge and the connection's exported keying material
(``wire.device_login_message``).  ``storm.py`` runs several of these processes,
so that the load can use every core.

Run as ``python -m securechat.bench.storm_devices``.  It reads one JSON object
from stdin (``host``, ``port``, ``ca_file``, ``hostname``, ``concurrency`` and
``devices``: ``[user, device, base64 signing key seed]``), sets up, prints
``ready``, logs every device in once it reads ``go``, prints one JSON object
of results, keeps the connections open until stdin closes, then exits.
"""

import errno
import json
import os
import resource
import selectors
import socket
import sys
import time

from nacl.signing import SigningKey
from OpenSSL import SSL

from securechat import wire

# What a device waits for next.
CONNECTING, HANDSHAKE, CHALLENGE, LOGIN, DONE = range(5)

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_context(ca_file, hostname):
    """One TLS client context for every device: TLS 1.2+, the chain verified against
    ``ca_file`` and the certificate's name against ``hostname`` (by OpenSSL, during the
    handshake: a connection to anything else fails it)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.load_verify_locations(ca_file)
    context.set_verify(SSL.VERIFY_PEER, lambda connection, cert, errnum, depth, ok: ok)
    lib = SSL._lib
    param = lib.SSL_CTX_get0_param(context._context)
    if lib.X509_VERIFY_PARAM_set1_host(param, hostname.encode("ascii"), 0) != 1:
        raise RuntimeError("cannot make OpenSSL check the relay's host name")
    return context


class Device:
    """One device's connection and login, advanced by its socket's readiness."""

    __slots__ = ("storm", "user", "device", "signing", "sock", "tls", "state", "buffer",
                 "started", "relay")

    def __init__(self, storm, user, device, seed):
        self.storm = storm
        self.user = user
        self.device = device
        self.signing = SigningKey(seed)
        self.sock = self.tls = None
        self.state = CONNECTING
        self.buffer = b""

    def start(self):
        self.started = time.monotonic()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        code = self.sock.connect_ex(self.storm.address)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        self.storm.selector.register(self.sock, WRITE, self)

    def ready(self):
        if self.state == CONNECTING:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            self.tls = SSL.Connection(self.storm.context, self.sock)
            self.tls.set_connect_state()
            self.tls.set_tlsext_host_name(self.storm.hostname)
            self.state = HANDSHAKE
        if self.state == HANDSHAKE:
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                return self._want(READ)
            except SSL.WantWriteError:
                return self._want(WRITE)
            self.state = CHALLENGE
            self._want(READ)
            return self._send({"op": "login.challenge", "rid": 1})
        try:
            self.buffer += self.tls.recv(65536)
        except SSL.WantReadError:
            return None
        except SSL.ZeroReturnError:
            raise ConnectionError("the relay closed the connection") from None
        while b"\n" in self.buffer and self.state != DONE:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._answer(wire.decode(line))
        return None

    def _want(self, events):
        self.storm.selector.modify(self.sock, events, self)

    def _send(self, frame):
        # A few hundred bytes on a fresh connection: the socket's buffer takes them whole.
        self.tls.send(wire.encode(frame) + b"\n")

    def _answer(self, frame):
        if "event" in frame:
            return
        if "error" in frame:
            error = frame["error"]
            raise RuntimeError(f"{error.get('code')}: {error.get('message')}")
        result = frame["result"]
        if self.state == CHALLENGE:
            binding = self.tls.export_keying_material(wire.LOGIN_EXPORTER_LABEL,
                                                      wire.LOGIN_EXPORTER_BYTES)
            message = wire.device_login_message(result["relay"], self.user, self.device,
                                                wire.b64decode(result["nonce"]), binding)
            signature = self.signing.sign(message).signature
            self.state = LOGIN
            self._send({"op": "login", "rid": 2, "user": self.user, "device": self.device,
                        "signature": wire.b64encode(signature)})
        elif self.state == LOGIN:
            self.state = DONE
            self.storm.logged_in(self)


class Storm:
    """Logs devices in, at most ``concurrency`` under way at once, and counts the outcome."""

    def __init__(self, host, port, ca_file, hostname, concurrency, devices):
        self.address = (host, port)
        self.hostname = hostname.encode("ascii")
        self.context = client_context(ca_file, hostname)
        self.concurrency = concurrency
        self.waiting = [Device(self, user, device, wire.b64decode(seed))
                        for user, device, seed in reversed(devices)]
        self.selector = selectors.DefaultSelector()
        self.under_way = 0
        self.done = []
        self.times_ms = []
        self.failures = []

    def run(self):
        """Log every device in; the figures of this process."""
        started, cpu = time.monotonic(), cpu_seconds()
        self._start_more()
        while self.under_way:
            for key, _ in self.selector.select():
                device = key.data
                try:
                    device.ready()
                except Exception as e:  # counted and reported: a storm that loses logins shows it
                    self._failed(device, e)
        return {"logged_in": len(self.done), "failures": self.failures,
                "times_ms": self.times_ms, "cpu_s": cpu_seconds() - cpu,
                "seconds": time.monotonic() - started}

    def _start_more(self):
        while self.waiting and self.under_way < self.concurrency:
            device = self.waiting.pop()
            self.under_way += 1
            try:
                device.start()
            except OSError as e:
                self._failed(device, e)

    def logged_in(self, device):
        self.times_ms.append((time.monotonic() - device.started) * 1000)
        self.selector.unregister(device.sock)
        self.done.append(device)
        self.under_way -= 1
        self._start_more()

    def _failed(self, device, error):
        self.failures.append(f"{type(error).__name__}: {error}"[:120])
        if device.sock is not None:
            try:
                self.selector.unregister(device.sock)
            except (KeyError, ValueError):
                pass
            device.sock.close()
        self.under_way -= 1
        self._start_more()


def main():
    job = json.loads(sys.stdin.readline())
    storm = Storm(job["host"], job["port"], job["ca_file"], job["hostname"],
                  job["concurrency"], job["devices"])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    print(json.dumps(storm.run()), flush=True)
    sys.stdin.read()  # the devices stay logged in until the tool is done measuring the relay
    for device in storm.done:
        device.sock.close()


if __name__ == "__main__":
    main()
