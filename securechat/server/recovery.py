"""Account recovery: the recovery key that signs a new device in when every device is lost.

The relay keeps, per account, the public half of the recovery signing key
and the account identity key's seed sealed by the recovery key's backup key
(``securechat.crypto.recovery`` on the client; the relay cannot open it).  A
listed device of the account sets them (``recovery.set``), signed by the
account identity key, and a new one replaces the old at once.  A device the
relay does not know may then log in by a signature of the recovery key
(``RecoveryKeyChecker``, limited like a password proof); on that connection
only it may read the sealed seed (``recovery.backup``) and give the account
a new password key (``account.password`` with ``recovery_signature``), since
the person recovering may have forgotten the old password too.
"""

import json

from securechat import wire
from securechat.server.auth import guarded_proof
from securechat.server.keys import verify_signature
from securechat.wire import ProtocolError


class Recovery:
    def __init__(self, store, guard):
        self._store = store
        self._guard = guard

    async def set(self, relay, user, device, recovery_key, backup, signature):
        """Make ``recovery_key`` and ``backup`` the account's recovery, once ``device`` is
        in the account's signed device list and the identity key signed them."""
        listed = await self._store.get_device_list(user)
        if listed is None or device not in json.loads(listed["device_list"])["devices"]:
            raise ProtocolError("not_listed", f"device {device} is not in {user}'s signed "
                                              "device list: only a listed device sets the "
                                              "recovery key")
        account = await self._store.get_account(user)
        if account is None:  # deleted meanwhile
            raise ProtocolError("auth_failed", "no such account")
        verify_signature(account["identity_key"],
                         wire.recovery_set_fields(relay, user, recovery_key, backup),
                         signature, "recovery key")
        if not await self._store.set_recovery(user, recovery_key, backup):
            raise ProtocolError("auth_failed", "no such account")
        return {"set": True}

    async def prove(self, user, message, signature, address):
        """Fire with the account's recovery key (base64) when ``signature`` is its
        signature of ``message``; else ``UnauthorizedLogin`` (an unknown user, an
        account with no recovery key and a wrong key alike)."""
        return await guarded_proof(self._guard, user, address, self._recovery_key, message,
                                   signature, "wrong user name or recovery key")

    async def _recovery_key(self, user):
        recovery = await self._store.get_recovery(user)
        return recovery and recovery["recovery_key"]

    async def backup(self, user):
        """The account's sealed identity seed."""
        recovery = await self._store.get_recovery(user)
        if recovery is None:
            raise ProtocolError("no_recovery_key", f"{user} has no recovery key")
        return {"backup": recovery["backup"]}

    async def reset_password(self, user, message, signature, password_key, address):
        """Make ``password_key`` the account's once ``signature`` proves the recovery key
        on ``message`` (``wire.recovery_password_message``)."""
        recovery_key = await self.prove(user, message, signature, address)
        if not await self._store.reset_password_key(user, recovery_key, password_key):
            raise ProtocolError("recovery_key_changed", "the recovery key was replaced "
                                                        "meanwhile")
