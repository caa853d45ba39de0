"""Helpers for the tests: a real relay on 127.0.0.1, and test devices that sign like real ones.

The test devices use PyNaCl keys (Ed25519 signatures interoperate with
vodozemac's), so the server tests exercise real signature checks without
the client's crypto package.
"""

import os
import secrets
import time

from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.internet import defer, reactor, task

from securechat import config as config_module
from securechat import wire
from securechat.client.protocol import RemoteError, connect
from securechat.client.tls import ca_file_options, channel_binding
from securechat.server.service import RelayService
from securechat.server.tls import SELF_SIGNED_CERT


def write_config(directory, port=0, database=None, extra=""):
    """Write an ini file for a server whose data lives in ``directory``; return its path."""
    lines = [
        "[server]",
        "interface = 127.0.0.1",
        f"port = {port}",
        f"data_dir = {directory}",
    ]
    if database:
        lines += ["[store]", f"database = {database}"]
    if "[http]" not in extra:  # several relays at once: each its own operator port
        lines += ["[http]", "port = 0"]
    path = os.path.join(directory, "securechat.ini")
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + extra)
    return path


class RunningServer:
    """An in-process relay listening on an ephemeral port of 127.0.0.1."""

    def __init__(self, service):
        self.service = service

    @property
    def port(self):
        return self.service.port.getHost().port

    @property
    def cert_path(self):
        return os.path.join(self.service.config.data_dir, SELF_SIGNED_CERT)

    def stop(self):
        return self.service.stopService()


async def start_server(directory, database=None, extra=""):
    settings = config_module.load(write_config(str(directory), database=database, extra=extra))
    service = RelayService(settings, reactor)
    service.startService()
    await service.started
    if service.port is None:
        raise RuntimeError("the relay did not start (see the log)")
    return RunningServer(service)


async def poll_until(predicate, timeout=10.0, interval=0.01):
    """Wait (without blocking the reactor) until ``predicate()`` is true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, interval, lambda: None)


async def poll_until_async(check, timeout=10.0, interval=0.05):
    """Like poll_until for a check that is itself asynchronous (returns a coroutine)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, interval, lambda: None)


async def expect_error(code, d):
    """Await ``d`` (a request) and check the relay refused it with ``code``; the error."""
    try:
        await d
    except RemoteError as error:
        assert error.code == code, error
        return error
    raise AssertionError(f"expected the error {code!r}, the request succeeded")


def keep_encrypted_outbox_entries(client):
    """``(entry id, stored entry, envelopes)`` of each message ``client`` encrypts from now
    on, in a list that fills as it sends (to replay a send whose answer was lost)."""
    kept = []
    encrypted = client.outbox.encrypted

    def spy(entry_id, envelopes):
        kept.append((entry_id, client.store.outbox_entry(entry_id), envelopes))
        encrypted(entry_id, envelopes)

    client.outbox.encrypted = spy
    return kept


def new_envelope_id():
    return secrets.token_hex(16)


class ScriptedDevice:
    """A user's device as the server sees it: signing keys, a connection, received events."""

    def __init__(self, user, device="DEV1", password=None, identity=None):
        self.user = user
        self.device = device
        self.password = password or SigningKey.generate()  # the account's password key
        self.identity = identity or SigningKey.generate()
        self.signing = SigningKey.generate()
        self.curve = PrivateKey.generate()
        self.events = []
        self.protocol = None
        self.keys_published = False  # then it logs in by its device key

    # -- keys -------------------------------------------------------------

    def device_keys(self):
        return {
            "user": self.user,
            "device": self.device,
            "curve25519": wire.b64encode(bytes(self.curve.public_key)),
            "ed25519": wire.b64encode(bytes(self.signing.verify_key)),
        }

    def sign(self, obj, key=None):
        key = key or self.signing
        return wire.b64encode(key.sign(wire.canonical_json(obj)).signature)

    def one_time_key(self, kid, fallback=False):
        key = wire.b64encode(bytes(PrivateKey.generate().public_key))
        payload = {"user": self.user, "device": self.device, "kid": kid, "key": key,
                   "fallback": fallback}
        return {"key": key, "signature": self.sign(payload)}

    # -- connection -------------------------------------------------------

    async def connect(self, server):
        options = ca_file_options("localhost", server.cert_path)
        self.protocol = await connect(reactor, "127.0.0.1", server.port, options,
                                      on_event=self.events.append)
        return self.protocol

    def request(self, op, **fields):
        return self.protocol.request(op, **fields)

    async def register(self, server):
        if self.protocol is None:
            await self.connect(server)
        return await self.request(
            "register", user=self.user, password_key=self.password_key(),
            identity_key=wire.b64encode(bytes(self.identity.verify_key)),
        )

    async def login(self, server, upload_keys=True, otks=0):
        if self.protocol is None:
            await self.connect(server)
        if self.keys_published:
            result = await self.key_login()
        else:
            result = await self.password_login()
        if upload_keys:
            await self.request(
                "keys.upload",
                device_keys=self.device_keys(),
                signature=self.sign(self.device_keys()),
                one_time_keys={f"k{i:04d}": self.one_time_key(f"k{i:04d}") for i in range(otks)},
                fallback_key={"fb1": self.one_time_key("fb1", fallback=True)},
            )
            self.keys_published = True
        return result

    def again(self):
        """The same device (same keys) for a new connection, its events not yet seen."""
        twin = ScriptedDevice(self.user, self.device, self.password, self.identity)
        twin.signing, twin.curve, twin.keys_published = self.signing, self.curve, self.keys_published
        return twin

    def login_frame(self, challenge, key=None):
        """The fields of a device-key login answering ``challenge`` on this connection."""
        message = wire.device_login_message(
            challenge["relay"], self.user, self.device, wire.b64decode(challenge["nonce"]),
            channel_binding(self.protocol.transport))
        signature = (key or self.signing).sign(message).signature
        return {"user": self.user, "device": self.device, "signature": wire.b64encode(signature)}

    def password_key(self):
        """The public half of the account's password key, as registered."""
        return wire.b64encode(bytes(self.password.verify_key))

    def password_login_frame(self, challenge, key=None):
        """The fields of a password login (a device not yet known to the relay) answering
        ``challenge`` on this connection, signed by the password key (or ``key``)."""
        message = wire.password_login_message(
            challenge["relay"], self.user, self.device, wire.b64decode(challenge["nonce"]),
            channel_binding(self.protocol.transport))
        signature = (key or self.password).sign(message).signature
        return {"user": self.user, "device": self.device,
                "password_signature": wire.b64encode(signature)}

    async def password_login(self, key=None):
        """Log in by signing this connection's challenge with the password key (or ``key``)."""
        challenge = await self.request("login.challenge")
        return await self.request("login", **self.password_login_frame(challenge, key))

    async def key_login(self, key=None):
        """Log in by signing this connection's challenge with the device key (or ``key``)."""
        challenge = await self.request("login.challenge")
        return await self.request("login", **self.login_frame(challenge, key))

    def envelopes(self):
        return [e for e in self.events if e.get("event") == "envelope"]

    async def close(self):
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
            await self.protocol.closed_d
        self.protocol = None


def unicast(to, to_dev, ct=b"opaque ciphertext", envelope_id=None):
    return {
        "id": envelope_id or new_envelope_id(),
        "to": to,
        "to_dev": to_dev,
        "kind": "olm",
        "sid": "c2Vzc2lvbg",
        "otype": 0,
        "ct": wire.b64encode(ct),
    }


def cleanup(*devices):
    return defer.gatherResults([defer.ensureDeferred(d.close()) for d in devices])
