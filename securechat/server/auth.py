"""Accounts and logins, the twisted.cred way: credentials, a checker, a realm.

The client never sends its password: it sends a login secret derived from
it (see docs/protocol.rst), and the server keeps only an argon2id hash of
that secret.  argon2id costs 64 MiB and tens of milliseconds per call, so
it runs in the reactor's thread pool behind a fair queue that bounds how
many run at once (memory and CPU stay predictable under a login storm) and
serves clients in turn, logins first (see ``securechat.server.fairqueue``).
"""

from nacl import pwhash
from nacl.exceptions import InvalidkeyError
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from zope.interface import Attribute, Interface, implementer

from securechat.server.fairqueue import FairQueue, QueueFull
from securechat.server.ratelimit import rate_limited

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


@implementer(ICredentialsChecker)
class SecretChecker:
    """Checks a device's login secret against the account's stored argon2id hash.

    An unknown user and a wrong secret get the same error after the same
    work (a hash of a dummy secret), so a caller cannot probe for names.
    The ``guard`` (``ratelimit.LoginGuard``) refuses, before any argon2 work,
    an address or an (account, address) pair that failed too often.
    """

    credentialInterfaces = (IDeviceSecret,)

    def __init__(self, store, hasher, dummy_hash, guard):
        self._store = store
        self._hasher = hasher
        self._dummy_hash = dummy_hash
        self._guard = guard

    def requestAvatarId(self, creds):
        return defer.ensureDeferred(self._check(creds))

    async def _check(self, creds):
        self._guard.attempt(creds.user, creds.address)
        try:
            account = await self._store.get_account(creds.user)
            hashed = account["secret_hash"] if account else self._dummy_hash
            matches = await self._hasher.verify(hashed, creds.secret, LOGIN_WORK, creds.address)
        except Exception:
            self._guard.login_abandoned(creds.user, creds.address)
            raise
        if account is None or not matches:
            raise error.UnauthorizedLogin("wrong user name or password")
        self._guard.login_succeeded(creds.user, creds.address)
        return (creds.user, creds.device)


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


def make_portal(store, relay, hasher, dummy_hash, guard):
    return portal.Portal(DeviceRealm(relay), [SecretChecker(store, hasher, dummy_hash, guard)])
