"""Benchmark peers: real protocol clients with real keys and random opaque payloads.

The relay cannot tell these payloads from ciphertext (it never looks), so
what is measured is exactly the relay's work.  Each peer registers, logs in
and publishes signed device keys like a real client, using the same
protocol library as the CLI.
"""

import secrets
import time

from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.internet import reactor

from securechat import wire
from securechat.client.acks import AckBatcher
from securechat.client.protocol import connect
from securechat.client.tls import ca_file_options, channel_binding

DEVICE = "BENCH"


def percentile(samples, fraction):
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Latencies:
    """Send times by envelope id, and delivery latencies (ms) inside the measuring window."""

    def __init__(self):
        self.sent_at = {}
        self.samples = []
        self.measuring = False
        self.delivered_in_window = 0
        self.delivered = 0

    def sent(self, envelope_id):
        self.sent_at[envelope_id] = time.monotonic()

    def arrived(self, envelope_id):
        start = self.sent_at.get(envelope_id)
        if start is None:
            return
        self.delivered += 1
        if self.measuring:
            self.delivered_in_window += 1
            self.samples.append((time.monotonic() - start) * 1000)

    def summary(self):
        return distribution(self.samples)


class GroupedLatencies(Latencies):
    """Latencies also kept apart by a group each envelope is sent in (W2 across nodes:
    "same_node" and "cross_node" pairs)."""

    def __init__(self):
        super().__init__()
        self._group_of = {}
        self.groups = {}

    def sent(self, envelope_id, group=None):
        super().sent(envelope_id)
        self._group_of[envelope_id] = group

    def arrived(self, envelope_id):
        before = len(self.samples)
        super().arrived(envelope_id)
        group = self._group_of.get(envelope_id)
        if len(self.samples) > before and group is not None:  # None: one node, no groups
            self.groups.setdefault(group, []).append(self.samples[-1])

    def summary(self):
        figures = distribution(self.samples)
        for group, samples in sorted(self.groups.items()):
            figures.update(distribution(samples, prefix=f"{group}_"))
        return figures


def distribution(samples, prefix=""):
    """The median, 99th percentile and maximum of ``samples`` (milliseconds), rounded, as
    ``{prefix}p50_ms``, ``{prefix}p99_ms`` and ``{prefix}max_ms`` (None when empty)."""
    return {f"{prefix}p50_ms": _round(percentile(samples, 0.50)),
            f"{prefix}p99_ms": _round(percentile(samples, 0.99)),
            f"{prefix}max_ms": _round(max(samples) if samples else None)}


def _round(value):
    return None if value is None else round(value, 3)


def tls_options(server):
    """The TLS client options of ``server``, made once: every peer's connections share them
    (making them costs a new OpenSSL context and reading the certificate file, more than a
    handshake costs the client)."""
    options = getattr(server, "tls_client_options", None)
    if options is None:
        options = server.tls_client_options = ca_file_options("localhost", server.cert_path)
    return options


class Peer:
    """One user with one device and one connection, to ``node`` (one of ``server.nodes``;
    the first by default)."""

    def __init__(self, server, name, on_envelope=None, node=None):
        self.server = server
        self.node = node or server.nodes[0]
        self.received = 0  # envelopes pushed to it (by its node)
        self.user = name
        self.password = SigningKey.generate()  # the account's password key
        self.signing = SigningKey.generate()
        self.keys_published = False  # from then on it logs in by its device key
        self.protocol = None
        self._on_envelope = on_envelope
        # Acknowledged like the CLI does: what arrived within 50 ms, in one request.
        self._acks = AckBatcher(self.request, on_acked=lambda removed: self.on_acked(removed))
        self.on_acked = lambda removed: None

    async def connect(self):
        options = tls_options(self.server)
        self.protocol = await connect(reactor, self.node.host, self.node.port, options,
                                      on_event=self._event)
        return self

    def _event(self, frame):
        if frame.get("event") == "envelope":
            self.received += 1
            envelope_id = frame["envelope"]["id"]
            if self._on_envelope is not None:
                self._on_envelope(self, envelope_id)
            self._acks.add(envelope_id)

    def request(self, op, **fields):
        return self.protocol.request(op, **fields)

    async def register_and_login(self, publish_keys=True):
        await self.connect()
        await self.request("register", user=self.user,
                           password_key=wire.b64encode(bytes(self.password.verify_key)),
                           identity_key=wire.b64encode(bytes(SigningKey.generate().verify_key)))
        return await self.login(publish_keys)

    def device_keys(self):
        """This device's identity keys and their self-signature, as a client publishes them."""
        keys = {"user": self.user, "device": DEVICE,
                "curve25519": wire.b64encode(bytes(PrivateKey.generate().public_key)),
                "ed25519": wire.b64encode(bytes(self.signing.verify_key))}
        return keys, wire.b64encode(self.signing.sign(wire.canonical_json(keys)).signature)

    async def login(self, publish_keys=False):
        if self.protocol is None or self.protocol.transport is None:
            await self.connect()
        if self.keys_published:
            return await self.key_login()
        result = await self._signed_login(wire.password_login_message, self.password,
                                          "password_signature")
        if publish_keys:
            keys, signature = self.device_keys()
            await self.request("keys.upload", device_keys=keys, signature=signature)
            self.keys_published = True
        return result

    def key_login(self):
        """Log in as the CLI does once registered: sign the connection's challenge."""
        return self._signed_login(wire.device_login_message, self.signing, "signature")

    async def _signed_login(self, message, key, field):
        """Sign ``message`` (a ``wire`` login message) of the connection's challenge with
        ``key``, sent as ``field``: the device key's login, or the password key's."""
        if self.protocol is None or self.protocol.transport is None:
            await self.connect()
        challenge = await self.request("login.challenge")
        signed = message(challenge["relay"], self.user, DEVICE, wire.b64decode(challenge["nonce"]),
                         channel_binding(self.protocol.transport))
        return await self.request("login", user=self.user, device=DEVICE,
                                  **{field: wire.b64encode(key.sign(signed).signature)})

    async def close(self):
        if self.protocol is not None and self.protocol.transport is not None:
            self._acks.flush()
            self.protocol.transport.loseConnection()
            await self.protocol.closed_d
        self.protocol = None


def new_id():
    return secrets.token_hex(16)


def unicast(to, payload):
    return {"id": new_id(), "to": to, "to_dev": DEVICE, "kind": "olm",
            "sid": "YmVuY2g", "otype": 1, "ct": payload}


def random_payload(size):
    """``size`` random bytes as the base64 a real ciphertext would be."""
    return wire.b64encode(secrets.token_bytes(size))
