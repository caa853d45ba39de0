"""Accounts and logins, the twisted.cred way: credentials, checkers, a realm.

A device with published keys logs in by its key: it signs the connection's
challenge, bound to the TLS session (``wire.device_login_message``), and the
relay checks the signature against the device's published Ed25519 key
(``DeviceKeyChecker``).  That costs well under a millisecond, so a relay
restart followed by thousands of reconnecting devices is not a queue of
password hashes, and nothing reusable crosses the wire.

The password is needed only where no device key can vouch: registering, a
new device's first login, changing the secret.  The client never sends the
password itself but a login secret derived from it (see docs/protocol.rst),
and the server keeps only an argon2id hash of that secret.  argon2id costs
64 MiB and tens of milliseconds per call, so it runs in the reactor's thread
pool behind a fair queue that bounds how many run at once (memory and CPU
stay predictable under a login storm) and serves clients in turn, logins
first (see ``securechat.server.fairqueue``).
"""

import json

from nacl import pwhash
from nacl.exceptions import BadSignatureError, InvalidkeyError
from nacl.signing import VerifyKey
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from zope.interface import Attribute, Interface, implementer

from securechat.server.fairqueue import FairQueue, QueueFull
from securechat import wire
from securechat.server.ratelimit import rate_limited
from securechat.wire import ProtocolError

LOGIN_WORK = 0
"""Logins and registrations, queued per client address: always served first."""
ROOM_WORK = 1
"""Room password checks and hashes, queued per user."""


class IDeviceSecret(credentials.ICredentials):
    """A device of an account proving the account's login secret."""

    user = Attribute("user name")
    device = Attribute("device id")
    secret = Attribute("login secret, bytes")
    address = Attribute("the client's address (failures are counted per account and address)")


@implementer(IDeviceSecret)
class DeviceSecret:
    def __init__(self, user, device, secret, address):
        self.user = user
        self.device = device
        self.secret = secret
        self.address = address


class IDeviceSignature(credentials.ICredentials):
    """A device proving it holds the Ed25519 key it published: its signature of ``message``."""

    user = Attribute("user name")
    device = Attribute("device id")
    message = Attribute("the signed bytes (wire.device_login_message)")
    signature = Attribute("the Ed25519 signature, bytes")
    address = Attribute("the client's address (failures are counted per account and address)")


@implementer(IDeviceSignature)
class DeviceSignature:
    def __init__(self, user, device, message, signature, address):
        self.user = user
        self.device = device
        self.message = message
        self.signature = signature
        self.address = address


class IDevice(Interface):
    """The avatar of a logged-in device."""

    user = Attribute("user name")
    device = Attribute("device id")


@implementer(IDevice)
class DeviceAvatar:
    def __init__(self, user, device):
        self.user = user
        self.device = device


class SecretHasher:
    """argon2id hashing and verification off the reactor thread, queued fairly.

    Every call names its kind of work (``LOGIN_WORK``, ``ROOM_WORK``) and who
    asked (a client address, a user); a caller with too many calls waiting
    gets ``rate_limited`` at once.
    """

    OPSLIMIT = pwhash.argon2id.OPSLIMIT_INTERACTIVE
    MEMLIMIT = pwhash.argon2id.MEMLIMIT_INTERACTIVE

    def __init__(self, reactor, concurrency, waiting_per_client):
        self.queue = FairQueue(concurrency, waiting_per_client, ROOM_WORK + 1,
                               self._in_thread)
        self._reactor = reactor

    def _in_thread(self, fn, *args):
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    def _submit(self, work, principal, fn, *args):
        d = self.queue.submit(work, principal, fn, *args)
        return d.addErrback(_refuse_when_full)

    def hash(self, secret, work, principal):
        """Fire with the argon2id string (text) of ``secret`` (bytes)."""
        d = self._submit(work, principal, pwhash.argon2id.str, secret, self.OPSLIMIT,
                         self.MEMLIMIT)
        return d.addCallback(lambda h: h.decode("ascii"))

    def verify(self, hashed, secret, work, principal):
        """Fire with True when ``secret`` matches ``hashed``, False otherwise."""

        def check():
            try:
                return pwhash.verify(hashed.encode("ascii"), secret)
            except InvalidkeyError:
                return False

        return self._submit(work, principal, check)


def _refuse_when_full(failure):
    failure.trap(QueueFull)
    raise rate_limited("too many password checks of yours are waiting", 1)


class AccountSecrets:
    """Checks and replaces an account's login secret against its stored argon2id hash.

    An unknown user and a wrong secret get the same error after the same
    work (a hash of a dummy secret), so a caller cannot probe for names.
    The ``guard`` (``ratelimit.LoginGuard``) refuses, before any argon2 work,
    an address or an (account, address) pair that failed too often.
    """

    def __init__(self, store, hasher, dummy_hash, guard):
        self._store = store
        self._hasher = hasher
        self._dummy_hash = dummy_hash
        self._guard = guard

    async def check(self, user, secret, address):
        """Return when ``secret`` is the account's; else ``UnauthorizedLogin``."""
        self._guard.attempt(user, address)
        try:
            account = await self._store.get_account(user)
            hashed = account["secret_hash"] if account else self._dummy_hash
            matches = await self._hasher.verify(hashed, secret, LOGIN_WORK, address)
        except Exception:
            self._guard.login_abandoned(user, address)
            raise
        if account is None or not matches:
            raise error.UnauthorizedLogin("wrong user name or password")
        self._guard.login_succeeded(user, address)

    async def replace(self, user, old_secret, new_secret, address):
        """Store the hash of ``new_secret`` once ``old_secret`` is proved the current one."""
        await self.check(user, old_secret, address)
        hashed = await self._hasher.hash(new_secret, LOGIN_WORK, address)
        await self._store.set_secret_hash(user, hashed)


@implementer(ICredentialsChecker)
class SecretChecker:
    """A device not yet known to the relay logs in with the account's login secret.

    A device that has published its keys logs in by its key only: the
    login secret (which crossed the wire at registration) cannot be used to
    take the place of an existing device and read or acknowledge its queue.
    """

    credentialInterfaces = (IDeviceSecret,)

    def __init__(self, store, secrets):
        self._store = store
        self._secrets = secrets

    def requestAvatarId(self, creds):
        return defer.ensureDeferred(self._check(creds))

    async def _check(self, creds):
        if await self._store.get_device_keys(creds.user, creds.device) is not None:
            raise ProtocolError(
                "device_key_required",
                f"device {creds.device} has published keys: it logs in with its device key")
        await self._secrets.check(creds.user, creds.secret, creds.address)
        return (creds.user, creds.device)


@implementer(ICredentialsChecker)
class DeviceKeyChecker:
    """Checks a device's signature of its login against the Ed25519 key it published.

    No argon2 work: an Ed25519 verification and one store read.  The
    login limits still apply (``LoginGuard``): a wrong signature counts as a
    failed login of that (account, address) pair and of that address, and a
    pair or address past its limit waits as after wrong passwords.  Only a
    failure counts (``LoginGuard.check``): many devices behind one address
    logging in together are not refused for each other's logins in flight.
    An unknown user, an unknown device and a wrong signature get the same
    error.
    """

    credentialInterfaces = (IDeviceSignature,)

    def __init__(self, store, guard):
        self._store = store
        self._guard = guard

    def requestAvatarId(self, creds):
        return defer.ensureDeferred(self._check(creds))

    async def _check(self, creds):
        self._guard.check(creds.user, creds.address)
        device_keys = await self._store.get_device_keys(creds.user, creds.device)
        if device_keys is None or not _signed_by(device_keys, creds.message, creds.signature):
            self._guard.failed(creds.user, creds.address)
            raise error.UnauthorizedLogin("unknown device or wrong signature")
        self._guard.verified(creds.user, creds.address)
        return (creds.user, creds.device)


def _signed_by(device_keys, message, signature):
    """Whether ``signature`` is the Ed25519 signature of ``message`` by the published key."""
    try:
        key = VerifyKey(wire.b64decode(json.loads(device_keys)["ed25519"]))
        key.verify(message, signature)
    except (BadSignatureError, ValueError, KeyError):
        return False
    return True


@implementer(portal.IRealm)
class DeviceRealm:
    """Turns a checked ``(user, device)`` into an avatar attached to the relay."""

    def __init__(self, relay):
        self._relay = relay

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if IDevice not in interfaces:
            raise NotImplementedError("securechat only offers IDevice avatars")
        user, device = avatar_id
        avatar = DeviceAvatar(user, device)
        self._relay.attach(user, device, mind)
        return IDevice, avatar, lambda: self._relay.detach(user, device, mind)


def make_portal(store, relay, secrets, guard):
    return portal.Portal(DeviceRealm(relay),
                         [SecretChecker(store, secrets), DeviceKeyChecker(store, guard)])
