"""The client API every caller uses (the CLI, the tests, the benchmarks).

``Client`` owns one device: its key store, its connection (TLS verified by
a CA file or a pinned fingerprint), its published keys, and the sender and
receiver pipelines.  Every public method returns a Deferred-compatible
coroutine; errors are ``ClientError`` with an exit code the CLI passes on.
"""

import collections
import os
import secrets
import shutil
import time

from OpenSSL import SSL
from twisted.internet import defer, error as net_error
from twisted.logger import Logger

from securechat import wire
from securechat.client import device_list, protocol as client_protocol
from securechat.client.contacts import Contacts, TrustError
from securechat.client.exit_codes import (
    EXIT_AUTH, EXIT_CERTIFICATE, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_RATE_LIMITED,
    EXIT_UNAVAILABLE, EXIT_UNKNOWN_USER, EXIT_UNREACHABLE, EXIT_UNTRUSTED)
from securechat.client.events import Events
from securechat.client.file_messages import prune_uploads
from securechat.client.healing import Healer
from securechat.client.messaging import Receiver, Sender, new_id
from securechat.client.outbox import NotSent, Outbox
from securechat.client.protocol import RemoteError
from securechat.client.reconnect import Reconnector
from securechat.client.rooms import RoomClient
from securechat.client.deferreds import returns_deferred
from securechat.client.typing_notices import TypingNotices
from securechat.client.tls import NotPinned, PinnedCertificate, ca_file_options, channel_binding
from securechat.crypto import passwords
from securechat.crypto.device import DeviceCrypto
from securechat.crypto.keystore import KeyStore, KeyStoreError, WrongPassword
from securechat.crypto.recovery import RecoveryKey

OTK_TARGET = 50
OTK_LOW_WATER = 25
ACK_SETTLE_SECONDS = 5
"""How long closing waits for the server to confirm the last receipts and the last
acknowledgements (a missed one only means the envelope is delivered again and skipped, or
the receipt is sent from the outbox next time)."""

NOT_FOUND_CODES = ("unknown_user", "user_deleted", "unknown_room", "not_member")
"""The relay's answers that mean "no such user or room (for you)": exit code 6."""

PASSWORD_KEY_AT = "password_key_relay"
"""Key store meta: the relay id the account's password key is salted with (and known to
that relay).  Absent in a key store registered before password keys: the first login
moves the account (``Client._move_to_password_key``)."""


LINK_PENDING = "link_pending"
"""Key store meta: non-empty while this device waits to be linked (``devices link``)."""
LINK_KEYS_UPLOADED = "link_keys_uploaded"
"""Key store meta: the device waiting to be linked has uploaded its keys."""
LINK_ACCOUNT_KEY = "link_account_key"
"""Key store meta: the account key the relay gave the device waiting to be linked (the
link's SAS proves it; ``join_account``)."""

NO_OTHER_DEVICE = "sent to no device: you have no other device to deliver a note to yourself"
"""What a person sees after writing to themselves from their only device."""


class ClientError(Exception):
    def __init__(self, message, exit_code=EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


class Queued(ClientError):
    """A message could not be sent for want of a connection: it is kept in the outbox and
    goes out after the reconnect (of this process, the next command or the daemon)."""

    def __init__(self, entry_id, reason):
        super().__init__(f"not sent yet ({reason}): the message is kept in the outbox "
                         f"(entry {entry_id}) and is sent after the reconnect (by this "
                         "process, the next securechat command or the daemon)",
                         EXIT_UNREACHABLE)
        self.entry_id = entry_id


class LinkExpired(ClientError):
    """This device waited to be linked longer than the relay's link window: the relay
    refuses its login, and linking starts again with a new device."""

    def __init__(self, message):
        super().__init__(message, EXIT_AUTH)


class DeviceRemoved(ClientError):
    """This device was removed from its account (by another of its devices): the relay
    refuses it for good, so nothing reconnects."""

    def __init__(self, user, device):
        super().__init__(f"this device ({device}) was removed from {user}'s account",
                         EXIT_AUTH)


HARD_ERRORS = (EXIT_AUTH, EXIT_CERTIFICATE)
"""Exit codes of a failed connect that retrying cannot fix: a login refused, a certificate
that is not the relay's.  Every other failure (unreachable, closed, busy) is retried."""

FINAL_STATES = ("replaced", "removed", "closed")
"""Connection states nothing reconnects from."""


def refusal(error, what="the server refused"):
    """The ClientError for a server's error answer: limits and outages get their own exit
    codes, so a script can tell "wait and retry" from "this is wrong"."""
    if error.code == "rate_limited":  # the message says how long to wait when it is known
        return ClientError(f"rate limited: {error.message}", EXIT_RATE_LIMITED)
    if error.code == "unavailable":
        return ClientError(f"the server is unavailable (its database): {error.message}",
                           EXIT_UNAVAILABLE)
    if error.code == "wrong_password":  # a room's
        return ClientError(f"{what}: {error.message}", EXIT_AUTH)
    if error.code in NOT_FOUND_CODES:
        return ClientError(f"{what}: {error.message}", EXIT_NOT_FOUND)
    return ClientError(f"{what}: {error.message}")


LINK_WINDOW = 600
"""Seconds a new device may stay pending (to be linked) on a relay that does not say
(``ping``'s ``link_window_seconds``): the default of ``[accounts] link_window_minutes``."""


def link_window_left(ping, uploaded_at, now):
    """Seconds left (at least 1) of the link window the relay's ``ping`` answer names, for a
    device whose keys went up at ``uploaded_at`` (ms, as kept in the key store; an earlier
    client kept no time there: counted from ``now``)."""
    window = ping.get("link_window_seconds")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        window = LINK_WINDOW
    try:
        started = int(uploaded_at) / 1000
    except (TypeError, ValueError):
        started = now
    if started < 1e9 or started > now:  # no time kept (an earlier client wrote "1")
        started = now
    return max(window - (now - started), 1)


def relay_id(answer):
    """The relay's id from its answer to ``ping`` or ``login.challenge``; a ClientError when
    it gives none (a relay older than this client, or no securechat relay)."""
    relay = answer.get("relay") if isinstance(answer, dict) else None
    if not isinstance(relay, str) or not wire.RELAY_ID_RE.fullmatch(relay):
        raise ClientError("the server reports no relay id: it is older than this client "
                          "(upgrade it) or not a securechat relay")
    return relay


Challenge = collections.namedtuple("Challenge", "relay nonce binding")
"""A connection's login challenge: the relay's id, its nonce, and the connection's TLS
channel binding (``tls.channel_binding``)."""


def require_empty(directory):
    """A ClientError unless ``directory`` is absent or empty: ``recover`` makes a key store
    there, and empties it again if it fails, which must never touch anything else."""
    if os.path.isdir(directory) and os.listdir(directory):
        what = ("already holds a device's key store" if KeyStore.exists(directory)
                else "is not empty")
        raise ClientError(f"{directory} {what}: recover into an empty data directory "
                          "(data_dir in the config)")


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
        self._unsigned = {}  # user -> warnings of their devices left out at the last lookup
        self._requeried = set()  # (user, device) whose unknown device made a keys.query
        self.linking = None  # (device, keys) of the device an approval runs with
        self._password_keys = {}  # relay id -> password key (one argon2 run per process)
        self._key_top_up = defer.DeferredLock()  # one top-up at a time (login, keys.low)
        self.sender = Sender(self)
        self.rooms = RoomClient(self)
        self.healer = Healer(self, reactor.seconds)
        self.receiver = Receiver(self, on_message or (lambda record: None),
                                 on_control or (lambda record: None))
        self.outbox = Outbox(self)
        self.events = Events(self, reactor)
        self.typing = TypingNotices(self)
        # connecting, connected, disconnected (waiting for the next attempt), replaced
        # (another login of this device took the relay connection), removed (from its
        # account, for good) or closed (by the caller, or a hard error); none of the last
        # three reconnects.
        self.state = "closed"
        self.state_detail = None
        self._problem = None  # why the last connection or attempt failed
        self._stopping_relay = None  # the connection whose relay said it is shutting down
        self._on_state = on_state or (lambda state, detail: None)
        self._reconnector = Reconnector(reactor, self._reconnect_once, self._waiting)

    # -- lifecycle ------------------------------------------------------------

    @returns_deferred
    async def register(self, invite=None):
        """Create this device's keys, the account on the server (with the operator's
        ``invite`` where the relay asks for one), and publish the keys."""
        directory = self.settings.data_dir
        if KeyStore.exists(directory):
            raise ClientError(f"{directory} already holds a registered device; use 'login'")
        self.device = new_device_id()
        self.store = KeyStore.create(directory, self._password, {
            "user": self.user, "device": self.device, "server": self.settings.server})
        self.crypto = DeviceCrypto.create(self.store)
        self.contacts = Contacts(self.store, self.user, self.crypto.identity_key)
        with self.store.transaction():
            self.store.set_meta(device_list.FORMAT_META, str(device_list.FORMAT))
        try:
            await self._connect()
            relay = relay_id(await self.request("ping"))
            # ``invite`` only when given: a relay from before invites refuses unknown fields.
            await self.request("register", user=self.user,
                               password_key=self._public_password_key(relay),
                               identity_key=self.crypto.identity_key,
                               **({"invite": invite} if invite else {}))
            with self.store.transaction():
                self.store.set_meta(PASSWORD_KEY_AT, relay)
        except RemoteError as e:
            self.discard_store()
            if e.code in ("invite_required", "invalid_invite", "registration_closed"):
                hint = (": securechat register --invite TOKEN"
                        if e.code == "invite_required" else "")
                raise ClientError(f"{e.message}{hint}", EXIT_AUTH) from None
            if e.code == "user_exists":  # most often: the account is theirs, on another device
                raise ClientError(
                    f"{e.message} on {self.settings.server}: if the account is yours, make "
                    "this machine one of its devices with 'securechat devices link' (and "
                    "'securechat devices approve CODE' on a device you have); otherwise "
                    "choose another name") from None
            raise
        except BaseException:
            self.discard_store()
            raise
        await self._login()
        await self._publish_device()
        self._connected()

    @returns_deferred
    async def recover(self, recovery_key):
        """Make this machine a device of an account whose devices are all lost
        (docs/usage.rst, "Recovery"), with its ``recovery_key`` (a RecoveryKey): log in
        by it, open the account identity key sealed in the relay's backup, give the
        account the password key of this client's password, then upload this device's
        keys and publish a device list holding this device alone (which removes every
        other device of the account).

        A failure before that list is published leaves nothing here (the data
        directory is emptied, as after a failed registration) and the recovery key
        unchanged on the relay: running it again starts afresh.
        """
        directory = self.settings.data_dir
        require_empty(directory)
        self.device = new_device_id()
        self.store = KeyStore.create(directory, self._password, {
            "user": self.user, "device": self.device, "server": self.settings.server})
        try:
            await self._connect()
            challenge = await self._challenge()
            await self._log_in_by_recovery(challenge, recovery_key)
            await self._open_backup(recovery_key)
            await self._reset_password(challenge.relay, recovery_key)
            await device_list.only(self, {self.device: await self._upload_device_keys()})
        except BaseException:
            self.discard_store()
            raise
        self._connected()

    async def _log_in_by_recovery(self, challenge, recovery_key):
        """Sign the relay's challenge with the recovery key, under the recovery context."""
        message = wire.recovery_login_message(challenge.relay, self.user, self.device,
                                              challenge.nonce, challenge.binding)
        try:
            result = await self.request("login", user=self.user, device=self.device,
                                        recovery_signature=wire.b64encode(
                                            recovery_key.sign(message)))
        except RemoteError as e:
            if e.code == "auth_failed":
                raise ClientError(
                    f"the relay refused this recovery key: it is not {self.user}'s recovery "
                    "key (a wrong key, one replaced since by 'devices recovery-key' or by a "
                    "recovery, or the account has none)", EXIT_AUTH) from None
            if e.code in ("rate_limited", "unavailable"):
                raise refusal(e) from None
            raise ClientError(f"recovery refused: {e.message}", EXIT_AUTH) from None
        self.queued_at_login = result["queued"]

    async def _open_backup(self, recovery_key):
        """This device's crypto with the account identity key the relay's backup seals,
        checked against the account's published identity key; the device list's version
        the next one must exceed."""
        own = (await self.request("keys.query", users=[self.user]))["users"][self.user]
        backup = (await self.request("recovery.backup"))["backup"]
        try:
            seed = recovery_key.open(wire.b64decode(backup))
        except ValueError:
            raise ClientError("the relay's recovery backup does not open with this key (was "
                              "it replaced meanwhile?): try again", EXIT_AUTH) from None
        self.crypto = DeviceCrypto.create(self.store, seed)
        if self.crypto.identity_key != own["identity_key"]:
            raise ClientError(f"the recovery backup holds another identity key than "
                              f"{self.user}'s: refused", EXIT_AUTH)
        self.contacts = Contacts(self.store, self.user, self.crypto.identity_key)
        listing = own.get("device_list")
        with self.store.transaction():  # the list this device publishes comes after it
            self.store.set_meta("device_list_version", str(listing["version"] if listing else 0))

    async def _reset_password(self, relay, recovery_key):
        """Make this client's password the account's, signed for by the recovery key on
        this connection (the old password may be forgotten)."""
        public = self._public_password_key(relay)
        message = wire.recovery_password_message(relay, self.user, self.device, public,
                                                 channel_binding(self.protocol.transport))
        await self.request("account.password", password_key=public,
                           recovery_signature=wire.b64encode(recovery_key.sign(message)))
        with self.store.transaction():
            self.store.set_meta(PASSWORD_KEY_AT, relay)

    @returns_deferred
    async def new_recovery_key(self):
        """Make a new recovery key the account's (logged in, a listed device): its public
        half and the identity seed it seals go to the relay, signed by the identity key,
        and the earlier key stops working.  Fire with the key's text, to show once."""
        relay = relay_id(await self.request("ping"))
        key = RecoveryKey.generate()
        public = wire.b64encode(key.public_key)
        backup = wire.b64encode(key.seal(self.crypto.identity_seed))
        signature = self.crypto.sign_as_user(
            wire.recovery_set_fields(relay, self.user, public, backup))
        try:
            await self.request("recovery.set", recovery_key=public, backup=backup,
                               signature=signature)
        except RemoteError as e:
            raise refusal(e, "the relay refused the new recovery key") from None
        return key.text

    def discard_store(self):
        """Close and remove everything in the data directory: a registration that failed
        half-way, or an account deleted for good (its keys can log in nowhere any more)."""
        self.close()
        directory = self.settings.data_dir
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                os.remove(path)
            else:
                shutil.rmtree(path)

    @returns_deferred
    async def open(self):
        """Unlock the key store, connect, log in, top up keys, send what waits in the
        outbox; then envelopes start arriving, and a dropped connection is reconnected.

        A first connect that fails raises (ClientError with its exit code) and
        leaves the store unlocked: ``reconnect()`` then keeps trying.
        """
        if self.store is None:
            self.unlock()
        try:
            await self._establish()
        except ClientError as e:
            self._problem = str(e)
            if e.exit_code in HARD_ERRORS:
                self._give_up(e)
            else:
                self._set_state("disconnected", str(e))
            raise
        await self.outbox.flush()

    def unlock(self, linking=False):
        """Open the key store only (what works without the server: the outbox, the history).
        A device still waiting to be linked (``LINK_PENDING``) opens only for ``linking``:
        it holds no account key yet, so nothing else can run on it."""
        try:
            self.store = KeyStore.open(self.settings.data_dir, self._password)
        except WrongPassword as e:
            raise ClientError(str(e), EXIT_AUTH) from None
        except KeyStoreError as e:
            raise ClientError(str(e)) from None
        if self.store.meta(LINK_PENDING) and not linking:
            self.close()
            raise ClientError(f"this device ({self.settings.data_dir}) is not linked to "
                              f"{self.user}'s account yet: run 'securechat devices link' to "
                              "finish linking it")
        self.device = self.store.meta("device")
        self.crypto = DeviceCrypto.load(self.store)
        self.contacts = Contacts(self.store, self.user, self.crypto.identity_key)
        with self.store.transaction():  # abandoned uploads' resume records go (bounded)
            prune_uploads(self.store, int(time.time() * 1000))

    @returns_deferred
    async def join_account(self):
        """``devices link`` on a new machine, up to waiting: a key store marked
        ``LINK_PENDING`` (made now, or kept from an earlier run of it), a login by the
        password proof, this device's keys uploaded (no device list: it has no account
        key yet, so it is a pending device), and the account key as the relay gives it
        (the link's SAS proves it is the one the approving device holds).  Fire with
        that key and the seconds left of the relay's link window (from the first upload
        of this device's keys, which the relay counts it from)."""
        try:
            return await self._join_account()
        except LinkExpired:
            if self.store is None:
                raise
            self.discard_store()  # an expired request: a new device asks again
            return await self._join_account()

    async def _join_account(self):
        directory = self.settings.data_dir
        resumed = KeyStore.exists(directory)
        if resumed:
            self.unlock(linking=True)
            if not self.store.meta(LINK_PENDING):
                self.close()
                raise ClientError(f"{directory} already holds a device of {self.user}: it "
                                  "needs no linking")
            # Link steps may wait on the relay: they are read as the account key says.
            self.contacts = Contacts(self.store, self.user, self.store.meta(LINK_ACCOUNT_KEY))
        else:
            self.device = new_device_id()
            self.store = KeyStore.create(directory, self._password, {
                "user": self.user, "device": self.device, "server": self.settings.server,
                LINK_PENDING: "1"})
            self.crypto = DeviceCrypto.create(self.store)  # its identity seed is replaced
        try:
            await self._connect()
            ping = await self.request("ping")
            relay = relay_id(ping)
            with self.store.transaction():
                self.store.set_meta(PASSWORD_KEY_AT, relay)  # an account moved long ago
            await self._login()
            if not self.store.meta(LINK_KEYS_UPLOADED):
                await self._upload_device_keys()
                with self.store.transaction():
                    self.store.set_meta(LINK_KEYS_UPLOADED, str(int(time.time() * 1000)))
            if not self.store.meta(LINK_ACCOUNT_KEY):
                account_key = (await device_list.own_entry(self))["identity_key"]
                with self.store.transaction():
                    self.store.set_meta(LINK_ACCOUNT_KEY, account_key)
                self.contacts = Contacts(self.store, self.user, account_key)
        except BaseException:
            if not resumed:
                self.discard_store()
            raise
        self._connected()
        return self.store.meta(LINK_ACCOUNT_KEY), link_window_left(
            ping, self.store.meta(LINK_KEYS_UPLOADED), time.time())

    def become_linked(self, identity_seed, version):
        """The approving device handed over the account key (checked by the caller):
        this device now holds it, knows the list it is in, and is an ordinary device."""
        self.crypto.adopt_identity(identity_seed)
        with self.store.transaction():
            self.store.set_meta("device_list_version", str(version))
            self.store.set_meta(device_list.FORMAT_META, str(device_list.FORMAT))
            self.store.set_meta(LINK_PENDING, "")
        self.contacts = Contacts(self.store, self.user, self.crypto.identity_key)

    def link_peer(self, user, device):
        """The keys of the device being linked that a message came from (``linking``
        marks them: only its link steps are read), else None."""
        if self.linking is not None and (user, device) == (self.user, self.linking[0]):
            return {**self.linking[1], "linking": True}
        return None

    def close(self):
        self._reconnector.stop()
        self._set_state("closed", "closed by this client")
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
            receipts = self.events.flush()  # owed ones; kept in the outbox if not answered
            await self.wait_for(lambda: receipts.called, ACK_SETTLE_SECONDS)
            self.receiver.acks.flush()
            await self.wait_for(self.receiver.acks.settled, ACK_SETTLE_SECONDS)
        protocol = self.protocol
        self.close()
        if protocol is not None:
            await protocol.closed_d

    # -- connection state and reconnects ----------------------------------------

    def _set_state(self, state, detail=None):
        if (state, detail) != (self.state, self.state_detail):
            self.state, self.state_detail = state, detail
            self._on_state(state, detail)

    async def _establish(self):
        """One connect: TLS, login, key top-up; ClientError (with its exit code) if it fails."""
        self._set_state("connecting", self.settings.server)
        try:
            await self._connect()
            counts = await self._login()
            await self._key_top_up.run(lambda: defer.ensureDeferred(self._top_up(counts)))
            await device_list.migrate(self)
        except client_protocol.ConnectionClosed as e:
            raise ClientError(f"the connection to {self.settings.server} closed: {e}",
                              EXIT_UNREACHABLE) from None
        if self.state == "closed":  # closed by the caller while this connected
            self.protocol.transport.loseConnection()
            raise ClientError("closed while connecting")
        self._connected()

    def _connected(self):
        """Logged in on ``self.protocol``: say so, and reconnect when it drops."""
        self.forget_devices()  # device lists may have changed while this device was away
        self._set_state("connected", self.settings.server)
        protocol = self.protocol
        protocol.closed_d.addCallback(lambda _: self._connection_lost(protocol))

    def _give_up(self, error):
        """A hard error: nothing reconnects (``removed`` when this device was removed)."""
        self._set_state("removed" if isinstance(error, DeviceRemoved) else "closed", str(error))

    def _connection_lost(self, protocol):
        if protocol is not self.protocol or self.state in FINAL_STATES:
            return
        reason = protocol.lost_reason
        if protocol is self._stopping_relay:
            reason = "the relay is shutting down"
        self.log.warn("lost the connection to {server} ({reason}); reconnecting",
                      server=self.settings.server, reason=reason)
        self._problem = f"lost the connection ({reason})"
        self._reconnector.start()

    def reconnect(self):
        """Keep trying to connect, with growing delays (after a first connect that failed)."""
        if self.store is not None and self.state == "disconnected":
            self._reconnector.start()

    def _waiting(self, delay):
        """The reconnect loop waits ``delay`` seconds: the state says so, with why."""
        self._set_state("disconnected", f"{self._problem}; next attempt in {delay:.1f} s")

    async def _reconnect_once(self):
        """One attempt of the reconnect loop: True when it is over (connected, or a hard
        error: then the state is ``closed``, or ``removed``, with the error), False to try
        again."""
        if self.state in FINAL_STATES:
            return True
        try:
            await self._establish()
        except Exception as e:
            if self.state == "closed":  # closed by the caller meanwhile
                return True
            if not isinstance(e, (ClientError, RemoteError)):
                raise
            if getattr(e, "exit_code", None) in HARD_ERRORS:
                self.log.error("not reconnecting: {error}", error=str(e))
                self._give_up(e)
                return True
            self._problem = str(e)
            return False
        await self.outbox.flush()
        return self.state != "disconnected"  # dropped again meanwhile: keep trying

    # -- connection -------------------------------------------------------------

    def _tls(self):
        settings = self.settings
        if settings.ca_file:
            return ca_file_options(settings.host, settings.ca_file), None
        pin = settings.server_fingerprint or self._pinned_fingerprint()
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
            if pinning is not None and isinstance(pinning.mismatch, NotPinned):
                raise ClientError(self._not_pinned(pinning.seen), EXIT_CERTIFICATE) from None
            if pinning is not None and pinning.mismatch is not None:
                raise ClientError(f"REFUSED: {pinning.mismatch}", EXIT_CERTIFICATE) from None
            if isinstance(self.protocol.lost_reason, SSL.Error):
                raise ClientError(
                    f"the TLS connection to {server} failed ({self.protocol.lost_reason}); "
                    "is the certificate trusted by the configured ca_file?", EXIT_CERTIFICATE
                ) from None
            # Closed without a TLS error (a relay stopping, a limit): worth trying again.
            raise ClientError(f"the server {server} closed the connection before it answered "
                              f"({self.protocol.lost_reason})", EXIT_UNREACHABLE) from None
        if pinning is not None and self._pinned_fingerprint() is None:
            # The key store remembers the pin it first connected with (one the person
            # confirmed): another spelling of the relay's address is held to it.
            with self.store.transaction():
                self.store.pin_server(self.settings.server, pinning.seen)

    def _not_pinned(self, seen):
        """Why a connection with nothing to verify the relay by was refused, and how to pin."""
        return (f"REFUSED: no fingerprint is pinned for {self.settings.server}, and a relay's "
                f"certificate is never trusted silently; it shows {seen}.  If that is the "
                "fingerprint its operator published, run 'securechat init' or add "
                f"'server_fingerprint = {seen}' to the [client] section of "
                f"{self.settings.source}")

    def request(self, op, **fields):
        if self.protocol is None:
            raise ClientError("not connected")
        return self.protocol.request(op, **fields)

    def _event(self, frame):
        if frame.get("event") == "envelope":
            self.receiver.envelope_event(frame)
        elif frame.get("event") == "typing":
            self.typing.received(frame)
        elif frame.get("event") == "shutdown":
            # The relay is stopping: the connection closes next, and the reconnector
            # connects again once a relay listens.  Said as the reason it closed.
            self._stopping_relay = self.protocol
        elif frame.get("event") == "corrupt":
            self.log.error("the server reports a corrupted stored envelope {id}", id=frame.get("id"))
        elif frame.get("event") == "keys.low":
            self._key_top_up.run(self._refill_keys).addErrback(self._refill_failed)
        elif frame.get("event") == "replaced":
            # Another login of this device took its place at the relay: reconnecting would
            # only push that one out in turn, so the caller hears it and decides.
            self._reconnector.stop()
            self._set_state("replaced", "the server says: " + str(frame.get("message")))
        elif frame.get("event") == "account_disabled":
            # The relay's operator disabled the account: logging in again is refused.
            self._reconnector.stop()
            self._set_state("closed", "the server says: " + str(frame.get("message")))
        elif frame.get("event") == "account_deleted":
            # Deleted from another device: this device's key is gone from the relay.
            self._reconnector.stop()
            self._set_state("closed", "the server says: " + str(frame.get("message")))
        elif frame.get("event") == "device_removed":
            # Another device of the account removed this one: its key is gone for good.
            self._reconnector.stop()
            self._give_up(DeviceRemoved(self.user, self.device))
        else:
            self._unknown_frame(frame)

    def _unknown_frame(self, frame):
        """A pushed frame this client does not know: said in the log (its name or error
        code, never its content), not silently dropped."""
        if "event" in frame:
            self.log.warn("ignored an unknown event from the server: {name!r:.40}",
                          name=frame["event"])
        else:
            error = frame.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            self.log.warn("the server sent an unrequested {what}: {code!r:.40}",
                          what="error" if code else "frame", code=code)

    def _pinned_fingerprint(self):
        """The pin of the address as configured, else the one learnt when this device
        registered: this key store belongs to one relay, so another spelling of its address
        (``localhost`` for ``127.0.0.1``) must show that relay's certificate, never
        whatever certificate comes first."""
        store, server = self.store, self.settings.server
        return store.server_pin(server) or store.server_pin(store.meta("server", server))

    def _password_key(self, relay):
        """The account's password key on ``relay`` (argon2id: derived once per process)."""
        if relay not in self._password_keys:
            self._password_keys[relay] = passwords.password_key(self._password, relay,
                                                                self.user)
        return self._password_keys[relay]

    def _public_password_key(self, relay):
        return wire.b64encode(bytes(self._password_key(relay).verify_key))

    async def _login(self):
        """Log in by signing the connection's challenge (bound to the relay's id, this
        device and this TLS session): with the device key once the device has published
        its keys, with the password key before that."""
        by_key = self.store.meta("device_list_version") is not None  # keys published
        try:
            challenge = await self._challenge()
            if not by_key:
                try:
                    result = await self._log_in_by_password(challenge)
                except RemoteError as e:
                    if e.code != "device_key_required":
                        raise
                    # Its keys got there before a crash: log in by them, on a new
                    # connection (this one's challenge went to the password proof).
                    by_key = True
                    self.protocol.transport.loseConnection()
                    await self._connect()
                    challenge = await self._challenge()
            if by_key:
                result = await self._log_in_by_device_key(challenge)
        except RemoteError as e:
            if e.code == "device_removed":
                raise DeviceRemoved(self.user, self.device) from None
            if e.code == "auth_failed" and by_key:
                raise ClientError(f"the server does not know this device's key ({e.message}): "
                                  f"is {self.user} registered on this server?",
                                  EXIT_AUTH) from None
            if e.code == "auth_failed":
                raise ClientError("wrong user name or password", EXIT_AUTH) from None
            if e.code in ("rate_limited", "unavailable"):
                raise refusal(e) from None
            if e.code == "closed":  # the relay stopped (or dropped it) mid-login: retried
                raise ClientError(f"the server closed the connection during login "
                                  f"({e.message})", EXIT_UNREACHABLE) from None
            if e.code == "device_not_linked":
                raise LinkExpired(f"login refused: {e.message}") from None
            raise ClientError(f"login refused: {e.message}", EXIT_AUTH) from None
        self.queued_at_login = result["queued"]
        if self.store.meta(PASSWORD_KEY_AT) != challenge.relay:
            await self._move_to_password_key(challenge.relay)
        return result

    async def _challenge(self):
        """This connection's login challenge, with what a login signs besides."""
        challenge = await self.request("login.challenge")
        relay = relay_id(challenge)
        try:
            nonce = wire.b64decode(challenge.get("nonce"))
        except (TypeError, ValueError):
            raise ClientError("the server's login challenge carries no nonce") from None
        return Challenge(relay, nonce, channel_binding(self.protocol.transport))

    def _log_in_by_device_key(self, challenge):
        """Sign the relay's challenge, bound to its id, this device and this TLS session."""
        fields = wire.device_login_fields(challenge.relay, self.user, self.device,
                                          challenge.nonce, challenge.binding)
        return self.request("login", user=self.user, device=self.device,
                            signature=self.crypto.sign_as_device(fields))

    def _log_in_by_password(self, challenge):
        """Sign the relay's challenge with the password key, under the password context."""
        message = wire.password_login_message(challenge.relay, self.user, self.device,
                                              challenge.nonce, challenge.binding)
        signature = self._password_key(challenge.relay).sign(message).signature
        return self.request("login", user=self.user, device=self.device,
                            password_signature=wire.b64encode(signature))

    async def _move_to_password_key(self, relay):
        """An account registered before password keys: the relay holds an argon2 hash of
        its legacy login secret (salted with the address typed at registration).  Send that secret once with the public password key, which the
        relay stores in the hash's place after checking it.  ``nothing_to_move`` (another
        device of the account moved it) or ``auth_failed`` (the relay holds another
        secret): nothing this device can move; either way it is recorded, never sent
        again.  A limit or an outage leaves it to the next login."""
        legacy = passwords.address_salted_login_secret(
            self._password, self.store.meta("server", self.settings.server), self.user)
        try:
            await self.request("account.move", legacy_secret=wire.b64encode(legacy),
                               password_key=self._public_password_key(relay))
        except RemoteError as e:
            if e.code not in ("nothing_to_move", "auth_failed"):
                self.log.warn("moving the account to a password key failed: {error}",
                              error=e)
                return
            if e.code == "auth_failed":
                self.log.warn("the relay holds another legacy login secret of this account: "
                              "not moved to a password key")
        with self.store.transaction():
            self.store.set_meta(PASSWORD_KEY_AT, relay)

    @returns_deferred
    async def change_password(self, new_password):
        """Make ``new_password`` the account's password on the relay, then this device's
        key store's (logged in, the store unlocked by the current password).

        The relay first: refused (a wrong password, a limit, an outage), nothing is
        changed.  A crash or a lost answer after the relay took the new key leaves the
        store locked by the old password (it opens, and device-key logins never needed
        either), and running the change again finishes it: the current key is then
        refused, and the same change signed by the new key proves the relay holds it
        already.  Another device of the account catches up the same way.  Store first
        would instead leave, on a crash, a store whose password the relay refuses, and a
        second run signing with that refused key.
        """
        relay = relay_id(await self.request("ping"))
        if self.store.meta(PASSWORD_KEY_AT) != relay:
            raise ClientError("this account has no password key on this relay yet (it moves "
                              "to one at a login): try again later")
        new_key = passwords.password_key(new_password, relay, self.user)
        try:
            try:
                await self._sign_password_change(relay, self._password_key(relay), new_key)
            except RemoteError as e:
                if e.code != "auth_failed":
                    raise
                await self._sign_password_change(relay, new_key, new_key)
        except RemoteError as e:
            if e.code == "auth_failed":
                raise ClientError("the relay refused the current password (if it was changed "
                                  "on another device, give that one as the new password)",
                                  EXIT_AUTH) from None
            if e.code == "password_changed":
                raise ClientError("the password was changed meanwhile on another device",
                                  EXIT_AUTH) from None
            raise refusal(e) from None
        self.store.rewrap(new_password)
        self._password, self._password_keys = new_password, {relay: new_key}

    def _sign_password_change(self, relay, key, new_key):
        """``account.password`` installing ``new_key``, signed by ``key`` on this connection."""
        public = wire.b64encode(bytes(new_key.verify_key))
        message = wire.password_change_message(relay, self.user, self.device, public,
                                               channel_binding(self.protocol.transport))
        return self.request("account.password", password_key=public,
                            signature=wire.b64encode(key.sign(message).signature))

    @returns_deferred
    async def delete_account(self):
        """Delete the account on the relay for good (logged in, the store unlocked), signed
        for by the password key; fire with the relay's answer (``name_frees_at``...).
        Refused (a wrong password, a limit, an outage): nothing is deleted."""
        relay = relay_id(await self.request("ping"))
        if self.store.meta(PASSWORD_KEY_AT) != relay:
            raise ClientError("this account has no password key on this relay yet (it moves "
                              "to one at a login): try again later")
        message = wire.account_delete_message(relay, self.user, self.device,
                                              channel_binding(self.protocol.transport))
        try:
            return await self.request(
                "account.delete",
                signature=wire.b64encode(self._password_key(relay).sign(message).signature))
        except RemoteError as e:
            if e.code == "auth_failed":
                raise ClientError("the relay refused the password", EXIT_AUTH) from None
            raise refusal(e) from None

    # -- keys ---------------------------------------------------------------------

    async def _publish_device(self):
        """Publish this device's keys, then sign it into the account's device list (the
        current list read again and added to: ``device_list.add``)."""
        keys = await self._upload_device_keys()
        await device_list.add(self, {self.device: keys})

    async def _upload_device_keys(self):
        """Publish this device's signed keys, one-time keys and fallback key (a device the
        relay does not know yet); its keys.  Until a device list names it, the device is
        pending: nobody encrypts to it."""
        keys = self.crypto.device_keys(self.user, self.device)
        otks = self.crypto.one_time_keys(self.user, self.device, OTK_TARGET)
        fallback = self.crypto.fallback_key(self.user, self.device)
        await self.request("keys.upload", device_keys=keys, signature=self.crypto.sign_as_device(keys),
                           one_time_keys=otks, fallback_key=fallback)
        self.crypto.mark_published()
        return keys

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
        """Checked device keys of ``user`` (cached for this connection); the devices left
        out (not signed by the account key) are kept for ``unsigned_warnings``."""
        entry = self._directory.get(user)
        if entry is None:
            try:
                result = await self.request("keys.query", users=[user])
            except RemoteError as e:
                if e.code == "unknown_user":
                    raise ClientError(f"no user named {user} on this server",
                                      EXIT_UNKNOWN_USER) from None
                if e.code == "user_deleted":
                    raise ClientError(f"{user} deleted their account", EXIT_UNKNOWN_USER) from None
                raise
            entry = result["users"][user]
            self._directory[user] = entry
        trusted, self._unsigned[user] = self.contacts.devices(user, entry, sending)
        return trusted

    def unsigned_warnings(self, users):
        """What was said of the devices of ``users`` left out at their last lookup."""
        return [warning for user in sorted(set(users)) for warning in self._unsigned.get(user, ())]

    @returns_deferred
    async def sender_keys(self, user, device):
        """The checked keys of ``user``'s ``device`` a message came from, or None.  A device
        not among the cached ones may have been linked since: the user's keys are asked
        for again, once per device and connection (a stranger's messages cannot make this
        client query the relay without end)."""
        trusted = await self.trusted_devices(user, sending=False)
        if device not in trusted and user in self._directory \
                and (user, device) not in self._requeried:
            self._requeried.add((user, device))
            self._directory.pop(user, None)
            trusted = await self.trusted_devices(user, sending=False)
        return trusted.get(device)

    def forget_devices(self, user=None):
        """Forget the keys.query answers kept for this connection (of ``user`` only)."""
        if user is None:
            self._directory.clear()
            self._requeried.clear()
        else:
            self._directory.pop(user, None)

    # -- messaging ----------------------------------------------------------------------

    @returns_deferred
    async def send_text(self, user, text, reply_to=None, mid=None):
        """Send a 1:1 message (``reply_to``: the mid it answers; ``mid``: its own, made
        here if not given); fire with the number of devices it went to once the server
        accepted it (0: a note to ourselves with no other device of ours to take it)."""
        payload = {"type": "msg", "mid": mid or new_id(), "body": text}
        if reply_to is not None:
            payload["reply_to"] = reply_to
        return await self.send_event(user, payload)

    @returns_deferred
    async def send_event(self, user, payload):
        """Send ``payload`` (a message, or a change of one: ``events``) to ``user`` through
        the outbox; fire as ``send_text``."""
        # ``peer``: whom it is written to, for the copies our other devices get (their
        # sealed ``to`` names their own user, as on any envelope): inbound.sent_by_you.
        payload = {"mid": new_id(), **payload, "room": None, "ts": int(time.time() * 1000),
                   "peer": user}
        try:
            return await self.deliver(self.outbox.add(payload, to=user))
        except TrustError as e:
            raise ClientError(str(e), EXIT_UNTRUSTED) from None
        except RemoteError as e:
            raise refusal(e, "the server refused the message") from None

    @returns_deferred
    async def deliver(self, entry_id):
        """Send an outbox entry now; Queued (it stays in the outbox) when not connected."""
        try:
            return await self.outbox.submit(entry_id)
        except NotSent as e:
            raise Queued(entry_id, str(e)) from None

    def outbox_pending(self):
        """The messages not yet accepted by the server (``Outbox.entries``)."""
        return self.outbox.entries()

    @returns_deferred
    async def send_control(self, user, payload):
        """An encrypted non-chat message (verification steps, dummies); ``peer`` names
        ``user`` for the copies our other devices get, as ``send_event``'s do (a request
        answered here is not theirs to answer any more: ``PendingRequests.note``)."""
        await self.sender.send([user], {"mid": new_id(), "room": None,
                                        "ts": int(time.time() * 1000), **payload,
                                        "peer": user})

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
