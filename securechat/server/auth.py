"""Accounts and logins, the twisted.cred way: credentials, a checker, a realm.

The client never sends its password: it sends a login secret derived from
it (see docs/protocol.rst), and the server keeps only an argon2id hash of
that secret.  argon2id costs 64 MiB and tens of milliseconds per call, so
it runs in the reactor's thread pool behind a semaphore that bounds how
many run at once (memory and CPU stay predictable under a login storm).
"""

from nacl import pwhash
from nacl.exceptions import InvalidkeyError
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from zope.interface import Attribute, Interface, implementer


class IDeviceSecret(credentials.ICredentials):
    """A device of an account proving the account's login secret."""

    user = Attribute("user name")
    device = Attribute("device id")
    secret = Attribute("login secret, bytes")


@implementer(IDeviceSecret)
class DeviceSecret:
    def __init__(self, user, device, secret):
        self.user = user
        self.device = device
        self.secret = secret


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
    """argon2id hashing and verification off the reactor thread, bounded concurrency."""

    OPSLIMIT = pwhash.argon2id.OPSLIMIT_INTERACTIVE
    MEMLIMIT = pwhash.argon2id.MEMLIMIT_INTERACTIVE

    def __init__(self, reactor, concurrency):
        self._semaphore = defer.DeferredSemaphore(concurrency)
        self._reactor = reactor

    def _in_thread(self, fn, *args):
        return self._semaphore.run(
            threads.deferToThreadPool, self._reactor, self._reactor.getThreadPool(), fn, *args
        )

    def hash(self, secret):
        """Fire with the argon2id string (text) of ``secret`` (bytes)."""
        d = self._in_thread(pwhash.argon2id.str, secret, self.OPSLIMIT, self.MEMLIMIT)
        return d.addCallback(lambda h: h.decode("ascii"))

    def verify(self, hashed, secret):
        """Fire with True when ``secret`` matches ``hashed``, False otherwise."""

        def check():
            try:
                return pwhash.verify(hashed.encode("ascii"), secret)
            except InvalidkeyError:
                return False

        return self._in_thread(check)


@implementer(ICredentialsChecker)
class SecretChecker:
    """Checks a device's login secret against the account's stored argon2id hash.

    An unknown user and a wrong secret get the same error after the same
    work (a hash of a dummy secret), so a caller cannot probe for names.
    """

    credentialInterfaces = (IDeviceSecret,)

    def __init__(self, store, hasher, dummy_hash):
        self._store = store
        self._hasher = hasher
        self._dummy_hash = dummy_hash

    def requestAvatarId(self, creds):
        return defer.ensureDeferred(self._check(creds))

    async def _check(self, creds):
        account = await self._store.get_account(creds.user)
        hashed = account["secret_hash"] if account else self._dummy_hash
        matches = await self._hasher.verify(hashed, creds.secret)
        if account is None or not matches:
            raise error.UnauthorizedLogin("wrong user name or password")
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


def make_portal(store, relay, hasher, dummy_hash):
    return portal.Portal(DeviceRealm(relay), [SecretChecker(store, hasher, dummy_hash)])
