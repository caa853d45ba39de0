"""Accounts and logins, the twisted.cred way: credentials, checkers, a realm.

A device with published keys logs in by its key: it signs the connection's
challenge, bound to the TLS session (``wire.device_login_message``), and the
relay checks the signature against the device's published Ed25519 key
(``DeviceKeyChecker``).  That costs well under a millisecond, so a relay
restart followed by thousands of reconnecting devices is not a queue of
password hashes, and nothing reusable crosses the wire.

The password is needed only where no device key can vouch: a new device's
first login and a password change.  It is proved the same way, by a signature
of the connection's challenge under its own context
(``wire.password_login_message``) with the account's *password key*, an
Ed25519 key the client derives from the password; the relay holds only its
public half (``PasswordKeys``).  No value that would work on another
connection crosses the wire, and account logins cost no argon2 work.

argon2id (64 MiB and tens of milliseconds per call) remains for room
passwords and, once per account, for the legacy login secret of an account
registered before password keys (``LegacySecrets``).  It runs in the
reactor's thread pool behind a fair queue that bounds how many run at once
(memory and CPU stay predictable) and serves clients in turn, account moves
first (see ``securechat.server.fairqueue``).
"""

import json

from nacl import pwhash
from nacl.exceptions import BadSignatureError, InvalidkeyError
from nacl.signing import VerifyKey
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from zope.interface import Attribute, Interface, implementer, implementer_only

from securechat.server.fairqueue import FairQueue, QueueFull
from securechat import wire
from securechat.server.ratelimit import rate_limited
from securechat.wire import ProtocolError

LOGIN_WORK = 0
"""Legacy login secrets of accounts moving to a password key, queued per client address:
always served first."""
ROOM_WORK = 1
"""Room password checks and hashes, queued per user."""


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


class IPasswordSignature(credentials.ICredentials):
    """A device not yet known to the relay proving the account's password: a signature of
    ``message`` by the account's password key.  Not an ``IDeviceSignature``, so the portal
    never hands a password proof to the device-key checker, nor the reverse."""

    user = Attribute("user name")
    device = Attribute("device id")
    message = Attribute("the signed bytes (wire.password_login_message)")
    signature = Attribute("the Ed25519 signature by the password key, bytes")
    address = Attribute("the client's address (failures are counted per account and address)")


@implementer_only(IPasswordSignature)
class PasswordSignature(DeviceSignature):
    """A device signature's fields, for the password key's checker only."""


class IRecoverySignature(credentials.ICredentials):
    """A device not yet known to the relay proving the account's recovery key (every
    device of the account lost): a signature of ``message`` by the recovery signing key.
    Neither a password proof nor a device's, so no other checker ever sees it."""

    user = Attribute("user name")
    device = Attribute("device id")
    message = Attribute("the signed bytes (wire.recovery_login_message)")
    signature = Attribute("the Ed25519 signature by the recovery key, bytes")
    address = Attribute("the client's address (failures are counted per account and address)")


@implementer_only(IRecoverySignature)
class RecoverySignature(DeviceSignature):
    """A device signature's fields, for the recovery key's checker only."""


class IDevice(Interface):
    """The avatar of a logged-in device."""

    user = Attribute("user name")
    device = Attribute("device id")


@implementer(IDevice)
class DeviceAvatar:
    def __init__(self, user, device, login_counts=None):
        self.user = user
        self.device = device
        # What the login's check read of the store for the login's answer (None: nothing).
        self.login_counts = login_counts


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


class LegacySecrets:
    """Moves an account registered before password keys to its password key, once.

    Such an account's row holds an argon2id hash of its legacy login secret.
    Its device, logged in by device key, sends that secret once with the new
    password key; the relay checks the secret (argon2 through the fair queue,
    limited like a login by the ``guard``, ``guards.LoginGuard``) and then
    stores the key in place of the hash.
    """

    def __init__(self, store, hasher, guard):
        self._store = store
        self._hasher = hasher
        self._guard = guard

    async def move(self, user, legacy_secret, password_key, address):
        """Store ``password_key`` once ``legacy_secret`` matches the account's hash;
        ``nothing_to_move`` when the account already holds a password key,
        ``UnauthorizedLogin`` for a wrong secret."""
        account = await self._store.get_account(user)
        hashed = account and account["secret_hash"]
        if not hashed:
            raise ProtocolError("nothing_to_move", "the account already has a password key")
        attempt = await self._guard.attempt(user, address)
        try:
            matches = await self._hasher.verify(hashed, legacy_secret, LOGIN_WORK, address)
        except Exception:
            attempt.abandoned()
            raise
        if not matches:
            await attempt.failed()
            raise error.UnauthorizedLogin("wrong legacy login secret")
        await attempt.succeeded()
        if not await self._store.move_to_password_key(user, hashed, password_key):
            raise ProtocolError("nothing_to_move", "the account already has a password key")


async def guarded_proof(guard, user, address, read_key, message, signature, refusal):
    """The key ``read_key(user)`` fires with (base64 Ed25519, or None) when ``signature``
    is its signature of ``message``; else ``UnauthorizedLogin(refusal)``.  Counted as a
    failed login of ``(user, address)`` from the moment it is let through
    (``LoginGuard.attempt``) until it succeeds: a proof of a secret a person holds
    (a password, a recovery key) is limited like a password login."""
    attempt = await guard.attempt(user, address)
    try:
        key = await read_key(user)
    except Exception:
        attempt.abandoned()
        raise
    if not key or not verifies(key, message, signature):
        await attempt.failed()
        raise error.UnauthorizedLogin(refusal)
    await attempt.succeeded()
    return key


class PasswordKeys:
    """Checks a signature by an account's password key, and changes that key.

    No argon2 work: an Ed25519 verification and a store read.  Unlike a
    device key's login, a password proof counts as failed from the moment it
    is let through (``LoginGuard.attempt``): it can be guessed (with offline
    argon2 work per guess), password proofs are rare (a new device, a
    password change), and guesses sent at once must not all pass the limit
    before the first is counted.  An unknown user, an account not moved to a
    password key yet and a wrong signature get the same error.
    """

    def __init__(self, store, guard):
        self._store = store
        self._guard = guard

    async def prove(self, user, message, signature, address):
        """Fire with the account's password key (base64) when ``signature`` is its
        signature of ``message``; else ``UnauthorizedLogin``."""
        return await guarded_proof(self._guard, user, address, self._password_key, message,
                                   signature, "wrong user name or password")

    async def _password_key(self, user):
        account = await self._store.get_account(user)
        return account and account["password_key"]

    async def change(self, user, message, signature, new_key, address):
        """Replace the account's password key by ``new_key`` once ``signature`` proves the
        current one (a password change)."""
        key = await self.prove(user, message, signature, address)
        if not await self._store.replace_password_key(user, key, new_key):
            raise ProtocolError("password_changed", "the password was changed meanwhile; "
                                                    "prove the new one")


@implementer(ICredentialsChecker)
class PasswordKeyChecker:
    """A device not yet known to the relay logs in with the account's password key.

    A device that has published its keys logs in by its key only
    (``device_key_required``): a password proof cannot take the place of an
    existing device and read or acknowledge its queue.  The proof is checked
    by ``PasswordKeys.prove`` (a ``RecoveryKeyChecker``: ``Recovery.prove``).
    """

    credentialInterfaces = (IPasswordSignature,)

    def __init__(self, store, password_keys):
        self._store = store
        self._password_keys = password_keys  # what has ``prove(user, message, sig, addr)``

    def requestAvatarId(self, creds):
        return defer.ensureDeferred(self._check(creds))

    async def _check(self, creds):
        if await self._store.get_device_keys(creds.user, creds.device) is not None:
            raise ProtocolError(
                "device_key_required",
                f"device {creds.device} has published keys: it logs in with its device key")
        if await self._store.removed_at(creds.user, creds.device) is not None:
            raise device_removed(creds.user, creds.device)
        await self._password_keys.prove(creds.user, creds.message, creds.signature,
                                        creds.address)
        return (creds.user, creds.device, None, False)  # no keys yet: in no list


class RecoveryKeyChecker(PasswordKeyChecker):
    """A device not yet known to the relay logs in with the account's recovery key: the
    same rules as a password login, the proof checked by ``Recovery.prove``."""

    credentialInterfaces = (IRecoverySignature,)


@implementer(ICredentialsChecker)
class DeviceKeyChecker:
    """Checks a device's signature of its login against the Ed25519 key it published.

    No argon2 work: an Ed25519 verification and one store read, shared with
    the logins arriving with it (``IStore.device_login``), which also answers
    the counts the login's answer carries (the avatar's ``login_counts``).  The
    login limits still apply (``LoginGuard``): a wrong signature counts as a
    failed login of that (account, address) pair and of that address, and a
    pair or address past its limit waits as after wrong passwords.  Only a
    failure counts (``LoginGuard.check``): many devices behind one address
    logging in together are not refused for each other's logins in flight.
    An unknown user, an unknown device and a wrong signature get the same
    error.
    """

    credentialInterfaces = (IDeviceSignature,)

    def __init__(self, store, guard, link_window_ms):
        self._store = store
        self._guard = guard
        self._link_window_ms = link_window_ms

    def requestAvatarId(self, creds):
        return defer.ensureDeferred(self._check(creds))

    async def _check(self, creds):
        attempt = await self._guard.check(creds.user, creds.address)
        found = await self._store.device_login(creds.user, creds.device)
        if found is not None and "removed_at" in found:
            raise device_removed(creds.user, creds.device)
        if found is None or not _signed_by(found["device_keys"], creds.message,
                                           creds.signature):
            await attempt.failed()
            raise error.UnauthorizedLogin("unknown device or wrong signature")
        await attempt.succeeded()
        pending_since = found["pending_since"]
        if (pending_since is not None
                and self._store.now_ms() - pending_since > self._link_window_ms):
            raise ProtocolError(
                "device_not_linked",
                f"device {creds.device} was not linked to {creds.user}'s account within "
                f"{self._link_window_ms // 60_000} minutes of publishing its keys; link it "
                "again from a new start")
        return (creds.user, creds.device, found["counts"], pending_since is None)


def device_removed(user, device):
    """The answer to anything a removed device asks for: its id never comes back."""
    return ProtocolError("device_removed", f"this device ({device}) was removed from "
                                           f"{user}'s account")


def _signed_by(device_keys, message, signature):
    """Whether ``signature`` is the Ed25519 signature of ``message`` by the published key."""
    try:
        key = json.loads(device_keys)["ed25519"]
    except (ValueError, KeyError):
        return False
    return verifies(key, message, signature)


def verifies(public_key, message, signature):
    """Whether ``signature`` is the Ed25519 signature of ``message`` by ``public_key``
    (base64)."""
    try:
        VerifyKey(wire.b64decode(public_key)).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


@implementer(portal.IRealm)
class DeviceRealm:
    """Turns a checked ``(user, device, login_counts or None, current)`` into an avatar
    attached to the relay (``current``: in its account's signed list, so it gets room
    traffic)."""

    def __init__(self, relay):
        self._relay = relay

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if IDevice not in interfaces:
            raise NotImplementedError("securechat only offers IDevice avatars")
        user, device, login_counts, current = avatar_id
        avatar = DeviceAvatar(user, device, login_counts)
        self._relay.attach(user, device, mind, current)
        return IDevice, avatar, lambda: self._relay.detach(user, device, mind)


def make_portal(store, relay, guard, password_keys, recovery, link_window_ms):
    return portal.Portal(DeviceRealm(relay), [PasswordKeyChecker(store, password_keys),
                                              RecoveryKeyChecker(store, recovery),
                                              DeviceKeyChecker(store, guard, link_window_ms)])
