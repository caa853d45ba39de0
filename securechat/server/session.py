"""What one connection may do, and in which state: anonymous, logged in, closed.

The protocol object only frames lines; this object gives them meaning.  It
answers every request with a result or an error frame carrying the same
``rid``, and it talks back through a few calls only (``send``, ``disconnect``,
``pause``/``resume`` reading) and the ``gate`` of its send buffer
so tests can drive it without sockets.
"""

from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.logger import Logger

from securechat import wire
from securechat.server.auth import LOGIN_WORK, DeviceSecret, IDevice
from securechat.server.ratelimit import TokenBucket
from securechat.store import errors as store_errors
from securechat.wire import ProtocolError

MAX_PENDING = 256
"""Requests in progress per connection before we stop reading from it (backpressure)."""

REFUSALS_BEFORE_DISCONNECT = 100
"""Rate-limited requests in a row after which a flooding connection is dropped."""


class ConnectionSession:
    log = Logger()

    def __init__(self, server, peer_host, send, gate, disconnect, pause, resume):
        self._server = server
        self._peer = peer_host
        self._send = send
        self.gate = gate
        self._disconnect = disconnect
        self._pause = pause
        self._resume = resume
        self._bucket = TokenBucket(server.clock, server.config.requests_per_second,
                                   server.config.request_burst)
        self._refusals = 0
        self._pending = 0
        self._paused = False
        self.state = "anonymous"
        self.user = None
        self.device = None
        self._logout = None

    # -- framing callbacks ------------------------------------------------

    def line_received(self, line):
        if self.state == "closed":
            return
        rid = None
        try:
            frame = wire.decode(line)
            rid = frame.get("rid") if isinstance(frame.get("rid"), (int, str)) else None
            op, rid = wire.parse_header(frame)
            if op not in wire.ANONYMOUS_OPS and self.state != "authenticated":
                raise ProtocolError("not_logged_in", f"log in before {op!r}")
            fields = wire.parse_fields(op, frame)
        except ProtocolError as e:
            self._answer_error(rid, e)
            return
        if not self._bucket.take():
            self._refusals += 1
            self._answer_error(rid, ProtocolError("rate_limited", "too many requests; slow down"))
            if self._refusals >= REFUSALS_BEFORE_DISCONNECT:
                self.log.warn("Disconnecting {peer}: request flood", peer=self._peer)
                self._disconnect()
            return
        self._refusals = 0
        self._start(op, rid, fields)

    def line_too_long(self):
        self._answer_error(
            None,
            ProtocolError("line_too_long", f"a line may hold at most {wire.MAX_LINE_BYTES} bytes"),
        )
        self._disconnect()

    def connection_lost(self):
        self.state = "closed"
        self._release()

    def _release(self):
        """Leave the relay's presence table (cred's logout)."""
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    # -- called by the relay ----------------------------------------------

    def push_line(self, line):
        if self.state != "closed":
            self._send(line)

    def replaced(self):
        """The same device logged in on another connection: this one ends."""
        self.push_line(wire.encode({"event": "replaced", "message": "this device logged in elsewhere"}))
        self.connection_lost()
        self._disconnect()

    # -- request dispatch ---------------------------------------------------

    def _start(self, op, rid, fields):
        handler = getattr(self, "op_" + op.replace(".", "_"))
        self._pending += 1
        if self._pending >= MAX_PENDING and not self._paused:
            self._paused = True
            self._pause()
        d = defer.maybeDeferred(handler, fields)  # the hot ops return Deferreds, the rest coroutines
        d.addCallbacks(self._answer, self._failed, callbackArgs=(rid,), errbackArgs=(rid, op))

    def _finished(self):
        self._pending -= 1
        if self._paused and self._pending < MAX_PENDING // 2:
            self._paused = False
            self._resume()

    def _answer(self, result, rid):
        self._finished()
        if self.state != "closed":
            self._send(wire.encode({"rid": rid, "result": result}))

    def _answer_error(self, rid, error):
        if self.state != "closed":
            self._send(wire.encode({"rid": rid, "error": error.to_error()}))

    def _failed(self, failure, rid, op):
        self._finished()
        if failure.check(ProtocolError):
            self._answer_error(rid, failure.value)
        elif failure.check(store_errors.StoreUnavailable):
            self._server.store_outage.refused(failure.value)
            self._answer_error(rid, ProtocolError("unavailable", failure.value.client_message))
        else:
            self.log.failure("{op} failed", failure, op=op)
            self._answer_error(rid, ProtocolError("internal", f"the server failed to handle {op!r}"))

    # -- anonymous ops ------------------------------------------------------

    async def op_ping(self, fields):
        return {"pong": True}

    async def op_register(self, fields):
        self._server.login_guard.registering(self._peer)
        hashed = await self._server.hasher.hash(wire.b64decode(fields["secret"]), LOGIN_WORK,
                                                self._peer)
        try:
            await self._server.store.create_account(fields["user"], hashed, fields["identity_key"])
        except store_errors.UserExists:
            raise ProtocolError("user_exists", f"user name {fields['user']!r} is taken")
        self.log.info("Registered user {user}", user=fields["user"])
        return {"user": fields["user"]}

    async def op_login(self, fields):
        if self.state == "authenticated":
            raise ProtocolError("already_logged_in", "this connection is already logged in")
        user, device = fields["user"], fields["device"]
        creds = DeviceSecret(user, device, wire.b64decode(fields["secret"]), self._peer)
        try:
            _, avatar, logout = await self._server.portal.login(creds, self, IDevice)
        except cred_error.UnauthorizedLogin:
            raise ProtocolError("auth_failed", "wrong user name or password")
        if self.state == "closed":
            logout()
            raise ProtocolError("closed", "connection closed during login")
        self.state = "authenticated"
        self.user, self.device, self._logout = avatar.user, avatar.device, logout
        counts = await self._server.store.key_counts(user, device)
        queued = await self._server.store.queue_length(user, device)
        self._server.clock.callLater(0, self._start_delivery)
        return {"user": user, "device": device, "queued": queued, **counts}

    def _start_delivery(self):
        cursor = self._server.relay.cursor(self.user, self.device)
        if cursor is not None and self.state == "authenticated":
            cursor.pump()

    # -- authenticated ops --------------------------------------------------

    async def op_logout(self, fields):
        self._release()
        self.state = "anonymous"
        self._server.clock.callLater(0, self._disconnect)
        return {"bye": True}

    async def op_keys_upload(self, fields):
        return await self._server.keys.upload(self.user, self.device, fields)

    async def op_keys_count(self, fields):
        return await self._server.store.key_counts(self.user, self.device)

    async def op_keys_query(self, fields):
        return await self._server.keys.query(fields["users"])

    async def op_keys_claim(self, fields):
        return await self._server.keys.claim(self.user, fields["devices"])

    async def op_devices_publish(self, fields):
        return await self._server.keys.publish_device_list(
            self.user, fields["device_list"], fields["signature"]
        )

    def op_send(self, fields):
        return self._server.relay.send_unicast(self.user, self.device, fields["envelopes"])

    async def op_room_send(self, fields):
        return await self._server.rooms.send(self.user, self.device, fields)

    async def op_broadcast(self, fields):
        return await self._server.rooms.send(
            self.user, self.device, {**fields, "room": wire.BROADCAST_ROOM})

    def op_ack(self, fields):
        cursor = self._server.relay.cursor(self.user, self.device)
        ids, positions = cursor.acknowledged(fields["ids"]) if cursor else (fields["ids"], None)
        d = self._server.store.ack(self.user, self.device, ids, positions)
        return d.addCallback(lambda removed: {"removed": removed})

    async def op_room_create(self, fields):
        return await self._server.rooms.create(self.user, fields["room"], fields["password"])

    async def op_room_join(self, fields):
        return await self._server.rooms.join(self.user, fields["room"], fields["password"])

    async def op_room_leave(self, fields):
        return await self._server.rooms.leave(self.user, fields["room"])

    async def op_room_members(self, fields):
        return await self._server.rooms.members(self.user, fields["room"])

    async def op_room_invite(self, fields):
        return await self._server.rooms.invite(self.user, fields["room"], fields["user"])

    async def op_room_kick(self, fields):
        return await self._server.rooms.kick(self.user, fields["room"], fields["user"])

    async def op_room_unban(self, fields):
        return await self._server.rooms.unban(self.user, fields["room"], fields["user"])

    async def op_room_bans(self, fields):
        return await self._server.rooms.bans(self.user, fields["room"], fields["after"])

    async def op_room_admin(self, fields):
        return await self._server.rooms.set_admin(
            self.user, fields["room"], fields["user"], fields["admin"])

    async def op_room_mode(self, fields):
        return await self._server.rooms.set_invite_only(
            self.user, fields["room"], fields["invite_only"])

    async def op_room_history(self, fields):
        return await self._server.rooms.history(
            self.user, fields["room"], fields["before"], fields["limit"])

    async def op_rooms_list(self, fields):
        return await self._server.rooms.list(self.user)
