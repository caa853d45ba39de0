"""The operator's admin API, ``/admin/v1/...`` on the operator's HTTP listener.

Every call carries ``Authorization: Bearer TOKEN``, the token the relay keeps in
``[http] admin_token_file`` (made at the first start, mode 0600, so whoever may read
the relay's data directory may administer it, and nobody else).  The token is compared
in constant time; a call without it, or with another, gets 401 and is audit-logged like
every call.  Answers are JSON.  What it shows is what the relay holds about accounts,
devices and rooms (names, counts, times), never a key or a byte of content: the relay
has no content to show.
"""

import hmac
import json
import os
import secrets

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from securechat import wire
from securechat.filemodes import create_private_file
from securechat.server.accounts import invite_hash
from securechat.timestamps import DAY_MS
from securechat.wire import ROOM_RE, USERNAME_RE

ID_CHARS = 12
"""An invite's id: the first characters of its token's hash (the token is not kept)."""

PAGE_LIMIT = 1000
"""The most entries one list call answers; ``after`` (the last name seen) pages on."""


def load_or_make_token(path):
    """The admin token in ``path``, made (32 random bytes, URL-safe, mode 0600) if the
    file does not exist yet."""
    if not os.path.exists(path):
        create_private_file(path)
        with open(path, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _named(pattern, name, what):
    """``name`` when ``pattern`` takes it whole, else a 400 saying it is not a ``what``."""
    if not pattern.fullmatch(name):
        raise AdminError(400, "bad_request", f"{name!r} is not a {what}")
    return name


class AdminError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AdminAPI(resource.Resource):
    """``/admin/v1``: one leaf that routes on the rest of the path."""

    isLeaf = True
    log = Logger()

    def __init__(self, token, relay_service, audit):
        super().__init__()
        self._token = token.encode("ascii")
        self._relay = relay_service
        self._audit = audit
        self._routes = {
            ("GET", ("users",)): self._users,
            ("GET", ("users", "*")): self._user,
            ("GET", ("rooms",)): self._rooms,
            ("GET", ("rooms", "*")): self._room,
            ("GET", ("stats",)): self._stats,
            ("DELETE", ("users", "*")): self._delete,
            ("DELETE", ("users", "*", "devices", "*")): self._remove_device,
            ("POST", ("users", "*", "disable")): self._disable,
            ("POST", ("users", "*", "enable")): self._enable,
            ("POST", ("tls", "reload")): self._tls_reload,
            ("POST", ("invites",)): self._create_invite,
            ("GET", ("invites",)): self._invites,
            ("DELETE", ("invites", "*")): self._revoke_invite,
        }

    def render(self, request):
        d = defer.ensureDeferred(self._answer(request))
        d.addErrback(self._failed)
        d.addCallback(self._write, request)
        return server.NOT_DONE_YET

    def _failed(self, failure):
        self.log.failure("an admin API call failed", failure)
        return 500, {"error": {"code": "internal", "message": "internal error (logged)"}}

    async def _answer(self, request):
        method = request.method.decode("ascii", "replace")
        path = [p.decode("utf-8", "replace") for p in request.postpath if p]
        caller = request.getClientAddress().host
        action = f"{method} /admin/v1/{'/'.join(path)}"
        if not self._authorised(request):
            self._audit.record("admin_refused", action=action, caller=caller)
            return 401, {"error": {"code": "unauthorized",
                                   "message": "a valid 'Authorization: Bearer TOKEN' is "
                                              "required ([http] admin_token_file)"}}
        self._audit.record("admin", action=action, caller=caller)
        handler, names = self._route(method, path)
        try:
            return 200, await handler(request, *names)
        except AdminError as e:
            return e.status, {"error": {"code": e.code, "message": e.message}}

    def _authorised(self, request):
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    def _route(self, method, path):
        """The handler of ``method`` ``path`` and the names it takes (a ``*`` segment)."""
        for (wanted, pattern), handler in self._routes.items():
            if wanted == method and len(pattern) == len(path) and all(
                    p == "*" or p == segment for p, segment in zip(pattern, path)):
                return handler, [s for p, s in zip(pattern, path) if p == "*"]
        return self._not_found, []

    async def _not_found(self, request):
        raise AdminError(404, "not_found", "no such admin call (docs/operations.rst, Admin)")

    @staticmethod
    def _write(answer, request):
        status, body = answer
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(body, sort_keys=True).encode("utf-8") + b"\n")
        request.finish()

    # -- the calls ------------------------------------------------------------------

    def _page(self, request):
        args = request.args
        after = (args.get(b"after") or [b""])[0].decode("utf-8", "replace")
        try:
            limit = int((args.get(b"limit") or [PAGE_LIMIT])[0])
        except ValueError:
            raise AdminError(400, "bad_request", "limit must be a number") from None
        return after, max(1, min(limit, PAGE_LIMIT))

    async def _users(self, request):
        users = await self._relay.store.users_page(*self._page(request))
        return {"users": users}

    async def _user(self, request, user):
        found = await self._relay.store.user_detail(_named(USERNAME_RE, user, "user name"))
        if found is None:
            raise AdminError(404, "unknown_user", f"no user named {user!r}")
        relay = self._relay.factory.relay
        for device in found["devices"]:
            device["online"] = relay.online(user, device["device"])
        return found

    async def _delete(self, request, user):
        """Delete ``user``'s account as if its owner had (``account delete``): its name is
        quarantined like any deleted account's."""
        deleted = await self._relay.factory.accounts.remove(_named(USERNAME_RE, user,
                                                                   "user name"))
        if deleted is None:
            raise AdminError(404, "unknown_user", f"no user named {user!r}")
        self._relay.factory.disabled.discard(user)
        self.log.info("The operator deleted the account {user}", user=user)
        return {"user": user, **deleted}

    async def _remove_device(self, request, user, device):
        """Remove a device as its account's list leaving it out would (a lost phone whose
        owner has no other device to remove it from): its connection is told and closed,
        its logins are refused for good."""
        _named(USERNAME_RE, user, "user name")
        if not await self._relay.store.remove_device(user, _named(wire.DEVICE_RE, device,
                                                                  "device id")):
            raise AdminError(404, "unknown_device", f"{user} has no device {device!r}")
        factory = self._relay.factory
        factory.devices.changed(user)
        factory.relay.devices_changed(user, {"removed": [device]})
        await factory.bus.devices_changed(user, {"removed": [device]})
        return {"user": user, "removed": device}

    async def _disable(self, request, user):
        """Refuse ``user``'s logins from now on and close its connections at once."""
        await self._set_disabled(user, True)
        factory = self._relay.factory
        factory.disabled.add(user)
        factory.relay.end_all_sessions_of(user)
        await factory.bus.user_changed(user, "disabled")
        return {"user": user, "disabled": True}

    async def _enable(self, request, user):
        await self._set_disabled(user, False)
        self._relay.factory.disabled.discard(user)
        await self._relay.factory.bus.user_changed(user, "enabled")
        return {"user": user, "disabled": False}

    async def _set_disabled(self, user, disabled):
        if not await self._relay.store.set_disabled(_named(USERNAME_RE, user, "user name"),
                                                    disabled):
            raise AdminError(404, "unknown_user", f"no user named {user!r}")

    async def _rooms(self, request):
        return {"rooms": await self._relay.store.rooms_page(*self._page(request))}

    async def _room(self, request, room):
        found = await self._relay.store.room_detail(_named(ROOM_RE, room, "room name"))
        if found is None:
            raise AdminError(404, "unknown_room", f"no room named {room!r}")
        return found

    async def _stats(self, request):
        factory = self._relay.factory
        return {**await self._relay.store.stats(), "connections": len(factory.connections)}

    async def _create_invite(self, request):
        """A new invite: ``{uses, expires_days}`` in the JSON body (1 use, no expiry by
        default); answers the token, shown this once (the relay keeps only its hash)."""
        try:
            wanted = json.loads(request.content.read() or b"{}")
            uses = int(wanted.get("uses", 1))
            days = wanted.get("expires_days")
            days = None if days is None else float(days)
        except (ValueError, TypeError, AttributeError):
            raise AdminError(400, "bad_request", "the body is JSON: {uses, expires_days}"
                             ) from None
        if not 1 <= uses <= 100_000 or (days is not None and not 0 < days <= 3650):
            raise AdminError(400, "bad_request", "uses must be 1-100000 and expires_days "
                                                 "above 0 and at most 3650")
        token = wire.pasteable_token(24)
        expires_at = None if days is None else self._relay.store.now_ms() + int(days * DAY_MS)
        await self._relay.store.create_invite(invite_hash(token), uses, expires_at)
        return {"token": token, "id": invite_hash(token)[:ID_CHARS], "uses": uses,
                "expires_at": expires_at}

    async def _invites(self, request):
        return {"invites": [
            {"id": i["token_hash"][:ID_CHARS], "uses_left": i["uses_left"],
             "expires_at": i["expires_at"], "created": i["created"]}
            for i in await self._relay.store.list_invites()]}

    async def _revoke_invite(self, request, given):
        """Revoke by the token itself or by its ``id`` (the first characters of its hash,
        as ``invites list`` shows it)."""
        prefix = given if len(given) == ID_CHARS else invite_hash(given)
        if not await self._relay.store.revoke_invite(prefix):
            raise AdminError(404, "unknown_invite", "no such invite (give its token or the "
                                                    "id 'invites list' shows)")
        return {"revoked": prefix[:ID_CHARS]}

    async def _tls_reload(self, request):
        if not self._relay.reload_tls_everywhere():
            raise AdminError(409, "tls_reload_refused", "the certificate and key could not be "
                                                        "loaded; the current ones stay (see "
                                                        "the relay's log)")
        return {"fingerprint": self._relay.fingerprint}
