"""The client API every caller uses (the CLI, the tests, the benchmarks).

``Client`` owns one device: its key store, its connection (TLS verified by
a CA file or a pinned fingerprint), its published keys, and the sender and
receiver pipelines.  Every public method returns a Deferred-compatible
coroutine; errors are ``ClientError`` with an exit code the CLI passes on.
"""

import os
import secrets
import shutil
import time

from twisted.internet import defer, error as net_error
from twisted.logger import Logger

from securechat import wire
from securechat.client import protocol as client_protocol
from securechat.client.contacts import Contacts, TrustError
from securechat.client.messaging import Receiver, Sender, new_id
from securechat.client.protocol import RemoteError
from securechat.client.rooms import RoomClient
from securechat.client.deferreds import returns_deferred
from securechat.client.tls import PinnedCertificate, ca_file_options
from securechat.crypto import passwords
from securechat.crypto.device import DeviceCrypto
from securechat.crypto.keystore import KeyStore, KeyStoreError, WrongPassword

OTK_TARGET = 50
OTK_LOW_WATER = 25
ACK_SETTLE_SECONDS = 5
"""How long closing waits for the server to confirm the last acknowledgements (a missed
one only means the envelope is delivered again and skipped)."""

EXIT_ERROR = 1
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_CERTIFICATE = 5
EXIT_UNKNOWN_USER = 6
EXIT_UNTRUSTED = 7
EXIT_RATE_LIMITED = 8
EXIT_UNAVAILABLE = 9


NO_OTHER_DEVICE = "sent to no device: you have no other device to deliver a note to yourself"
"""What a person sees after writing to themselves from their only device."""


class ClientError(Exception):
    def __init__(self, message, exit_code=EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def refusal(error, what="the server refused"):
    """The ClientError for a server's error answer: limits and outages get their own exit
    codes, so a script can tell "wait and retry" from "this is wrong"."""
    if error.code == "rate_limited":  # the message says how long to wait when it is known
        return ClientError(f"rate limited: {error.message}", EXIT_RATE_LIMITED)
    if error.code == "unavailable":
        return ClientError(f"the server is unavailable (its database): {error.message}",
                           EXIT_UNAVAILABLE)
    return ClientError(f"{what}: {error.message}")


def new_device_id():
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(10))


class Client:
    log = Logger()

    def __init__(self, reactor, settings, password, on_message=None, on_control=None,
                 on_state=None):
        self.reactor = reactor
        self.settings = settings
        self._password = password
        self.user = settings.username
        self.device = None
        self.store = None
        self.crypto = None
        self.contacts = None
        self.protocol = None
        self.queued_at_login = 0
        self._directory = {}
        self._key_top_up = defer.DeferredLock()  # one top-up at a time (login, keys.low)
        self.sender = Sender(self)
        self.rooms = RoomClient(self)
        self.receiver = Receiver(self, on_message or (lambda record: None),
                                 on_control or (lambda record: None))
        self.state = "connecting"
        self._on_state = on_state or (lambda state, detail: None)

    def _set_state(self, state, detail=None):
        """``on_state(state, detail)`` hears each change: connecting, connected,
        disconnected, closed."""
        if state != self.state:
            self.state = state
            self._on_state(state, detail)

    # -- lifecycle ------------------------------------------------------------

    @returns_deferred
    async def register(self):
        """Create this device's keys, the account on the server, and publish the keys."""
        directory = self.settings.data_dir
        if KeyStore.exists(directory):
            raise ClientError(f"{directory} already holds a registered device; use 'login'")
        self.device = new_device_id()
        self.store = KeyStore.create(directory, self._password, {
            "user": self.user, "device": self.device, "server": self.settings.server})
        self.crypto = DeviceCrypto.create(self.store)
        self.contacts = Contacts(self.store, self.user, self.crypto.identity_key)
        try:
            await self._connect()
            await self.request("register", user=self.user, secret=self._login_secret(),
                               identity_key=self.crypto.identity_key)
        except BaseException:
            self._discard_new_store(directory)
            raise
        await self._login()
        await self._publish_device()

    def _discard_new_store(self, directory):
        self.close()
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                os.remove(path)
            else:
                shutil.rmtree(path)

    @returns_deferred
    async def open(self):
        """Unlock the key store, connect, log in, top up keys; then envelopes start arriving."""
        try:
            self.store = KeyStore.open(self.settings.data_dir, self._password)
        except WrongPassword as e:
            raise ClientError(str(e), EXIT_AUTH) from None
        except KeyStoreError as e:
            raise ClientError(str(e)) from None
        self.device = self.store.meta("device")
        self.crypto = DeviceCrypto.load(self.store)
        self.contacts = Contacts(self.store, self.user, self.crypto.identity_key)
        await self._connect()
        counts = await self._login()
        await self._key_top_up.run(lambda: defer.ensureDeferred(self._top_up(counts)))
        self._set_state("connected")
        self.protocol.closed_d.addCallback(
            lambda _: self.state == "closed" or self._set_state("disconnected"))

    def close(self):
        self._set_state("closed")
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
        if self.store is not None:
            self.store.close()
            self.store = None

    @returns_deferred
    async def disconnect(self):
        """Send the acknowledgements still waiting, close the connection and wait until it
        is closed, then the store."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.receiver.acks.flush()
            await self.wait_for(self.receiver.acks.settled, ACK_SETTLE_SECONDS)
        protocol = self.protocol
        self.close()
        if protocol is not None:
            await protocol.closed_d

    # -- connection -------------------------------------------------------------

    def _tls(self):
        settings = self.settings
        if settings.ca_file:
            return ca_file_options(settings.host, settings.ca_file), None
        pin = settings.server_fingerprint or self.store.server_pin(settings.server)
        creator = PinnedCertificate(pin)
        return creator, creator

    async def _connect(self):
        creator, pinning = self._tls()
        server = self.settings.server
        try:
            self.protocol = await client_protocol.connect(
                self.reactor, self.settings.host, self.settings.port, creator,
                on_event=self._event)
        except (net_error.ConnectError, net_error.DNSLookupError) as e:
            raise ClientError(f"cannot reach the server {server}: {e}", EXIT_UNREACHABLE) from None
        try:
            await self.request("ping")
        except client_protocol.ConnectionClosed:
            if pinning is not None and pinning.mismatch is not None:
                raise ClientError(f"REFUSED: {pinning.mismatch}", EXIT_CERTIFICATE) from None
            raise ClientError(
                f"the TLS connection to {server} failed ({self.protocol.lost_reason}); "
                "is the certificate trusted by the configured ca_file?", EXIT_CERTIFICATE
            ) from None
        if pinning is not None and pinning.expected is None:
            with self.store.transaction():
                self.store.pin_server(self.settings.server, pinning.seen)
            self.log.info("pinned the certificate of {server}: {fp}", server=self.settings.server,
                          fp=pinning.seen)

    def request(self, op, **fields):
        if self.protocol is None:
            raise ClientError("not connected")
        return self.protocol.request(op, **fields)

    def _event(self, frame):
        if frame.get("event") == "envelope":
            self.receiver.envelope_event(frame)
        elif frame.get("event") == "corrupt":
            self.log.error("the server reports a corrupted stored envelope {id}", id=frame.get("id"))
        elif frame.get("event") == "keys.low":
            self._key_top_up.run(self._refill_keys).addErrback(self._refill_failed)

    def _login_secret(self):
        return wire.b64encode(passwords.login_secret(self._password, self.settings.server, self.user))

    async def _login(self):
        try:
            result = await self.request("login", user=self.user, device=self.device,
                                        secret=self._login_secret())
        except RemoteError as e:
            if e.code == "auth_failed":
                raise ClientError("wrong user name or password", EXIT_AUTH) from None
            if e.code in ("rate_limited", "unavailable"):
                raise refusal(e) from None
            raise ClientError(f"login refused: {e.message}", EXIT_AUTH) from None
        self.queued_at_login = result["queued"]
        return result

    # -- keys ---------------------------------------------------------------------

    async def _publish_device(self):
        keys = self.crypto.device_keys(self.user, self.device)
        otks = self.crypto.one_time_keys(self.user, self.device, OTK_TARGET)
        fallback = self.crypto.fallback_key(self.user, self.device)
        await self.request("keys.upload", device_keys=keys, signature=self.crypto.sign_as_device(keys),
                           one_time_keys=otks, fallback_key=fallback)
        self.crypto.mark_published()
        version = int(self.store.meta("device_list_version", "0")) + 1
        listing = {"user": self.user, "version": version, "ts": int(time.time() * 1000),
                   "devices": {self.device: {"curve25519": keys["curve25519"],
                                             "ed25519": keys["ed25519"]}}}
        await self.request("devices.publish", device_list=listing,
                           signature=self.crypto.sign_as_user(listing))
        with self.store.transaction():
            self.store.set_meta("device_list_version", str(version))

    async def _top_up(self, counts, low_water=OTK_LOW_WATER):
        """Keep enough one-time keys published, and always a fallback key.

        Keys generated but never acknowledged (a lost answer) are sent again
        first: the server accepts the same id and key twice.
        """
        otks, fallback = self.crypto.unpublished_keys(self.user, self.device)
        missing = OTK_TARGET - counts["otk_count"] - len(otks)
        if counts["otk_count"] < low_water and missing > 0:
            otks = self.crypto.one_time_keys(self.user, self.device, missing)
        if not counts["has_fallback"] and not fallback:
            fallback = self.crypto.fallback_key(self.user, self.device)
        if otks or fallback:
            await self.request("keys.upload", one_time_keys=otks or None,
                               fallback_key=fallback or None)
            self.crypto.mark_published()

    @returns_deferred
    async def _refill_keys(self):
        """The server said this device's one-time keys run low (others claimed them): back
        up to the full set, whatever this client's own low-water mark."""
        await self._top_up(await self.request("keys.count"), low_water=OTK_TARGET)

    def _refill_failed(self, failure):
        if not failure.check(client_protocol.ConnectionClosed):  # closed: the next login tops up
            self.log.warn("topping up one-time keys failed: {error}", error=failure.value)

    # -- the key directory ----------------------------------------------------------

    @returns_deferred
    async def trusted_devices(self, user, sending):
        """Checked device keys of ``user`` (cached for this connection)."""
        entry = self._directory.get(user)
        if entry is None:
            try:
                result = await self.request("keys.query", users=[user])
            except RemoteError as e:
                if e.code == "unknown_user":
                    raise ClientError(f"no user named {user} on this server",
                                      EXIT_UNKNOWN_USER) from None
                raise
            entry = result["users"][user]
            self._directory[user] = entry
        return self.contacts.devices(user, entry, sending)

    def forget_devices(self):
        self._directory.clear()

    # -- messaging ----------------------------------------------------------------------

    @returns_deferred
    async def send_text(self, user, text):
        """Send a 1:1 message; fire with the number of devices it went to once the server
        accepted it (0: a note to ourselves with no other device of ours to take it)."""
        payload = {"type": "msg", "mid": new_id(), "room": None, "ts": int(time.time() * 1000),
                   "body": text}
        try:
            return await self.sender.send([user], payload)
        except TrustError as e:
            raise ClientError(str(e), EXIT_UNTRUSTED) from None
        except RemoteError as e:
            raise refusal(e, "the server refused the message") from None

    @returns_deferred
    async def send_control(self, user, payload):
        """An encrypted non-chat message (verification steps, dummies)."""
        await self.sender.send([user], {"mid": new_id(), "room": None,
                                        "ts": int(time.time() * 1000), **payload})

    @returns_deferred
    async def start_fresh_session(self, user, device):
        await self.sender.send([user], {"type": "dummy", "mid": new_id(), "room": None,
                                        "ts": int(time.time() * 1000)}, fresh={(user, device)})

    def unread(self):
        """Messages stored (by any command) but not yet shown: ``[(pos, record)]``.

        Every command that connects receives, decrypts and stores what is
        waiting; ``inbox`` and ``chat`` show it from here.
        """
        return self.store.messages(int(self.store.meta("shown_pos", "0")))

    def mark_read(self, pos):
        with self.store.transaction():
            self.store.set_meta("shown_pos", str(pos))

    @returns_deferred
    async def drain(self, timeout):
        """Wait until everything queued at login is processed (bounded by ``timeout`` seconds)."""
        await self.wait_for(lambda: self.receiver.processed >= self.queued_at_login, timeout)

    @returns_deferred
    async def wait_for(self, predicate, timeout, interval=0.02):
        deadline = self.reactor.seconds() + timeout
        while not predicate():
            if self.reactor.seconds() >= deadline:
                return False
            d = defer.Deferred()
            self.reactor.callLater(interval, d.callback, None)
            await d
        return True
