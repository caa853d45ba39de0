"""Accounts as a whole: registering a name (held back while a deleted account's quarantine
runs) and deleting an account for good.

A deletion is proved by the account's password key, checked by the same
``PasswordKeys.prove`` as a password change (limited like a login), and done
by the store in one transaction (``IStore.delete_account``).  The relay then
forgets what it cached of the account and its rooms and ends every
connection of its devices at once: none of them can do anything more.
"""

import hashlib

from twisted.logger import Logger

from securechat.store.errors import InvalidInvite, NameQuarantined, UserExists
from securechat.timestamps import DAY_MS, utc_date
from securechat.wire import ProtocolError


async def no_such_user(store, user):
    """The error for a lookup of ``user`` that found no account: ``user_deleted`` when it
    names a deleted account (its contacts' clients say so), else ``unknown_user``."""
    if await store.deleted_at(user) is not None:
        return ProtocolError("user_deleted", f"{user!r} deleted their account")
    return ProtocolError("unknown_user", f"no user named {user!r}")


def invite_hash(token):
    """What the relay keeps of an invite: the SHA-256 of its token (hex), never the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Accounts:
    log = Logger()

    def __init__(self, config, store, password_keys, devices, rooms, relay):
        self._quarantine_ms = config.name_quarantine_days * DAY_MS
        self._registration = config.registration
        self._store = store
        self._password_keys = password_keys
        self._devices = devices
        self._rooms = rooms
        self._relay = relay

    async def register(self, user, password_key, identity_key, invite=None):
        """Create the account as ``[accounts] registration`` allows (``registration_closed``;
        ``invite_required``, ``invalid_invite``); ``user_exists`` for a taken name,
        ``name_quarantined`` (with ``frees_at``, ms) for the name of an account deleted
        within the quarantine."""
        invite_hash = self._admission(invite)
        try:
            await self._store.create_account(user, password_key, identity_key,
                                             self._quarantine_ms, invite_hash)
        except InvalidInvite:
            raise ProtocolError("invalid_invite", "this invite is unknown, used up, revoked "
                                                  "or expired: ask the relay's operator for "
                                                  "a new one")
        except UserExists:
            raise ProtocolError("user_exists", f"user name {user!r} is taken")
        except NameQuarantined as e:
            raise ProtocolError(
                "name_quarantined", f"user name {user!r} belonged to a deleted account; it "
                                    f"can be registered again from {utc_date(e.frees_at)}",
                {"frees_at": e.frees_at})

    def _admission(self, invite):
        """The invite's hash a registration must use up, or None (open registration)."""
        if self._registration == "closed":
            raise ProtocolError("registration_closed", "this relay registers no new accounts")
        if self._registration == "open":
            return None
        if invite is None:
            raise ProtocolError("invite_required", "this relay registers new accounts by "
                                                   "invitation: ask its operator for an invite")
        return invite_hash(invite)

    async def delete(self, user, device, message, signature, address):
        """Delete ``user``'s account once ``signature`` proves its password key on
        ``message`` (``wire.account_delete_message``); fire with what the client is told:
        ``{"deleted", "devices", "rooms", "heirs", "name_frees_at"}``.  The connections of
        the account's other devices are closed; ``device``'s (the caller's) closes after
        its answer."""
        await self._password_keys.prove(user, message, signature, address)
        answer = await self.remove(user, keep_open=device)
        if answer is None:  # deleted meanwhile, by another of its devices
            raise ProtocolError("auth_failed", "wrong user name or password")
        self.log.info("User {user} deleted its account", user=user)
        return answer

    async def remove(self, user, keep_open=None):
        """Delete ``user``'s account (its owner asked, proved by ``delete``, or the relay's
        operator did): close its devices' connections but ``keep_open``'s (which closes
        after its answer), tell its rooms it left; fire with ``{"deleted", "devices",
        "rooms", "heirs", "name_frees_at"}``, or None when there is no such account."""
        deleted = await self._store.delete_account(user)
        if deleted is None:
            return None
        self._devices.changed(user)
        self._relay.end_sessions_of(user, [d for d in deleted["devices"] if d != keep_open])
        await self._relay.bus.user_changed(user, "deleted")
        try:  # the deletion is committed: a notice that fails must not say otherwise
            await self._rooms.left_for_good(user, deleted["rooms"])
        except Exception:
            self.log.failure("Telling the rooms of {user} that it left failed", user=user)
        return {"deleted": True, "devices": len(deleted["devices"]), "rooms": deleted["rooms"],
                "heirs": deleted["heirs"],
                "name_frees_at": deleted["deleted_at"] + self._quarantine_ms}
