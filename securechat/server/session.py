"""What one connection may do, and in which state: an explicit state machine.

::

    handshaking --TLS done--> logging_in --login--> checking_login --accepted--> authenticated
                                   ^                      |                         |
                                   +------refused---------+        logout, replaced, account
                                                                   deleted, device removed,
                                                                   closed by the server
                                                                   -> closing
    before login: deadline passed, closed by the server ----------------------------> closing
    (closed by the server: a flood, an overlong line, output stalled over its budget)
    any state --connection lost--> closed

Every request is checked against the ops its state allows (one set lookup:
this runs for every message): anonymous ops before login, all ops after it,
and a second login is refused while one is checked (two logins in one read
used to both pass and leave the first in the relay's table after the
connection closed).  ``closing`` reads nothing more but still answers the
requests in flight (``logout`` gets its answer); ``closed`` writes nothing.

The protocol object only frames lines; this object gives them meaning.  It
answers every request with a result or an error frame carrying the same
``rid``, and acts on the connection through a few calls only (``send_line``,
``disconnect``, ``abort_transport``, ``hold_reading``/``release_reading``) and
the ``gate`` of its send buffer, so tests can drive it without sockets.
"""

from automat import MethodicalMachine
from nacl.utils import random as random_bytes
from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.logger import Logger

from securechat import wire
from securechat.server.auth import (
    DeviceSignature, IDevice, PasswordSignature, RecoverySignature)
from securechat.server.files import FileWindow
from securechat.server.ratelimit import TokenBucket
from securechat.store import errors as store_errors
from securechat.wire import ProtocolError

MAX_PENDING = 256
"""Requests in progress per connection before we stop reading from it (backpressure)."""

REFUSALS_BEFORE_DISCONNECT = 100
"""Rate-limited requests in a row after which a flooding connection is dropped."""

CHALLENGE_USED = b""
"""The connection's one login challenge was handed out and used up (by a login)."""

HANDSHAKING = "handshaking"
LOGGING_IN = "logging_in"
CHECKING_LOGIN = "checking_login"
AUTHENTICATED = "authenticated"
CLOSING = "closing"
CLOSED = "closed"

ALLOWED_OPS = {
    HANDSHAKING: frozenset(),
    LOGGING_IN: wire.ANONYMOUS_OPS,
    CHECKING_LOGIN: wire.ANONYMOUS_OPS - {"login"},
    AUTHENTICATED: frozenset(wire.REQUESTS) - {"login"},
    CLOSING: None,  # nothing is read any more
    CLOSED: None,
}
"""The requests each state accepts."""


def _acknowledged(removed):
    return {"removed": removed}


class ConnectionSession:
    log = Logger()
    _machine = MethodicalMachine()

    def __init__(self, server, peer_host, connection):
        self._server = server
        self._peer = peer_host
        self._connection = connection
        self._send = connection.send_line
        self.gate = connection.gate
        self._bucket = TokenBucket(server.clock, server.config.requests_per_second,
                                   server.config.request_burst)
        self._typing_bucket = TokenBucket(server.clock, server.config.typing_per_second,
                                          server.config.typing_burst)
        self._refusals = 0
        self._pending = 0
        self._close_when_answered = False  # the relay is stopping: close once none pends
        self._limits_audited = set()  # ops whose refusal by a limit is in the audit log
        self.state = HANDSHAKING
        self.allowed = ALLOWED_OPS[HANDSHAKING]
        self.user = None
        self.device = None
        self._logout = None
        self._by_recovery = False  # logged in by the account's recovery key
        self._challenge = None  # None: none asked yet; bytes: waiting; CHALLENGE_USED
        self._file_window = None  # made by the connection's first chunk request
        self._deadline = server.clock.callLater(
            server.config.handshake_timeout_seconds, self.deadline_passed)

    def describe(self):
        """Who this connection is, for a log line."""
        if self.user is not None:
            return f"{self.user}/{self.device}"
        return f"an anonymous connection from {self._peer}"

    # -- framing callbacks ------------------------------------------------

    def line_received(self, line):
        allowed = self.allowed
        if allowed is None:
            return
        rid = None
        try:
            frame = wire.decode(line)
            rid = frame.get("rid") if isinstance(frame.get("rid"), (int, str)) else None
            op, rid = wire.parse_header(frame)
            if op not in allowed:
                raise self._refusal(op)
            fields = wire.parse_fields(op, frame)
        except ProtocolError as e:
            self._answer_error(rid, e)
            return
        if not self._bucket.take():
            self._server.metrics.rate_limited["requests"] += 1
            self._refusals += 1
            self._answer_error(rid, ProtocolError("rate_limited", "too many requests; slow down"))
            if self._refusals >= REFUSALS_BEFORE_DISCONNECT:
                self.log.warn("Disconnecting {peer}: request flood", peer=self._peer)
                self._server.audit.record("disconnected", reason="request flood",
                                          user=self.user, address=self._peer)
                self.close()
            return
        self._refusals = 0
        self._start(op, rid, fields)

    def _refusal(self, op):
        """The error for ``op`` in this state (not on the hot path: only refusals get here)."""
        if op != "login":
            return ProtocolError("not_logged_in", f"log in before {op!r}")
        if self.state == AUTHENTICATED:
            return ProtocolError("already_logged_in", "this connection is already logged in")
        return ProtocolError("login_in_progress",
                             "a login on this connection is still being checked")

    def line_too_long(self):
        self._answer_error(
            None,
            ProtocolError("line_too_long", f"a line may hold at most {wire.MAX_LINE_BYTES} bytes"),
        )
        self.close()

    # -- called by the relay ----------------------------------------------

    def push_line(self, line):
        if self.state is not CLOSED:
            self._send(line)

    # -- request dispatch ---------------------------------------------------

    def _start(self, op, rid, fields):
        handler = getattr(self, "op_" + op.replace(".", "_"))
        self._pending += 1
        if self._pending == MAX_PENDING:
            self._connection.hold_reading("requests")
        d = defer.maybeDeferred(handler, fields)  # the hot ops return Deferreds, the rest coroutines
        d.addCallbacks(self._answer, self._failed, callbackArgs=(rid,), errbackArgs=(rid, op))

    def _finished(self):
        self._pending -= 1
        if self._pending == MAX_PENDING // 2 - 1:
            self._connection.release_reading("requests")
        elif not self._pending and self._close_when_answered:
            self._server.clock.callLater(0, self._connection.disconnect)  # after this answer

    def _answer(self, result, rid):
        self._finished()
        if self.state is not CLOSED:
            self._send(wire.encode({"rid": rid, "result": result}))

    def _answer_error(self, rid, error):
        if self.state is not CLOSED:
            self._send(wire.encode({"rid": rid, "error": error.to_error()}))

    def _limited(self, op):
        """A request refused by a limit: counted, and in the audit log once per request kind
        and connection (a client hammering a limit must not flood the disk)."""
        self._server.metrics.rate_limited[op] += 1
        if op != "login" and op not in self._limits_audited:  # a login's is its failure
            self._limits_audited.add(op)
            self._server.audit.record("rate_limited", op=op, user=self.user,
                                      address=self._peer)

    def _failed(self, failure, rid, op):
        self._finished()
        if failure.check(ProtocolError):
            if failure.value.code == "rate_limited":
                self._limited(op)
            self._answer_error(rid, failure.value)
        elif failure.check(store_errors.StoreUnavailable):
            self._server.store_outage.refused(failure.value)
            self._answer_error(rid, ProtocolError("unavailable", failure.value.client_message))
        else:
            self.log.failure("{op} failed", failure, op=op)
            self._answer_error(rid, ProtocolError("internal", f"the server failed to handle {op!r}"))

    # -- anonymous ops ------------------------------------------------------

    async def op_ping(self, fields):
        """Who the relay is, and how long a new device may wait to be linked (``devices
        link`` waits that long, not a guess)."""
        return {"pong": True, "relay": self._server.relay_id,
                "link_window_seconds": self._server.config.link_window_minutes * 60}

    async def op_login_challenge(self, fields):
        """This connection's one login challenge: a fresh nonce, used by the next login."""
        if self._challenge is not None:
            raise ProtocolError("challenge_used", "a connection gets one login challenge; "
                                                  "connect again to log in again")
        self._challenge = random_bytes(wire.LOGIN_NONCE_BYTES)
        return {"relay": self._server.relay_id, "nonce": wire.b64encode(self._challenge)}

    async def op_register(self, fields):
        """Create an account holding the public half of its password key (no secret: the
        relay never sees anything that would prove the password on another connection)."""
        await self._server.login_guard.registering(self._peer)
        await self._server.accounts.register(fields["user"], fields["password_key"],
                                             fields["identity_key"], fields["invite"])
        self._server.metrics.registrations += 1
        self._server.audit.record("registered", user=fields["user"], address=self._peer)
        self.log.info("Registered user {user}", user=fields["user"])
        return {"user": fields["user"]}

    def op_login(self, fields):
        """Check a login; until it is answered the session is in ``checking_login``."""
        self.login_started()
        return defer.ensureDeferred(self._log_in(fields)).addErrback(self._login_refused,
                                                                     fields)

    def _login_refused(self, failure, fields):
        code = failure.value.code if failure.check(ProtocolError) else "error"
        self._server.metrics.login_failed(code)
        self._server.audit.record("login_failed", user=fields["user"], device=fields["device"],
                                  reason=code, address=self._peer)
        if self.state == CHECKING_LOGIN:
            self.login_failed()
        return failure

    async def _log_in(self, fields):
        user, device = fields["user"], fields["device"]
        creds = self._credentials(user, device, fields)
        try:
            _, avatar, logout = await self._server.portal.login(creds, self, IDevice)
        except cred_error.UnauthorizedLogin as e:
            raise ProtocolError("auth_failed", str(e))
        if user in self._server.disabled:  # said only once the proof is right
            logout()
            raise ProtocolError("account_disabled", f"the relay's operator disabled the "
                                                    f"account {user}")
        self.login_succeeded(avatar, logout)
        self._by_recovery = isinstance(creds, RecoverySignature)
        self._server.metrics.logins_ok += 1
        if self.state != AUTHENTICATED:
            raise ProtocolError("closed", "connection closed during login")
        counts = avatar.login_counts
        if counts is None:  # a new device's login: its check read nothing of the kind
            counts = await self._server.store.login_counts(user, device)
        return {"user": user, "device": device, **counts}

    _PROOFS = (("signature", wire.device_login_message, DeviceSignature),
               ("password_signature", wire.password_login_message, PasswordSignature),
               ("recovery_signature", wire.recovery_login_message, RecoverySignature))
    """A login's kinds of proof: its field, the bytes it signs, its credentials."""

    def _credentials(self, user, device, fields):
        """A login's signature over this connection's challenge and TLS session: by the
        device key (a device with published keys), by the password key (a new device,
        ``password_signature``) or by the recovery key (a new device of an account whose
        devices are lost, ``recovery_signature``); any uses the challenge up, right or
        wrong."""
        given = [proof for proof in self._PROOFS if fields[proof[0]] is not None]
        if len(given) != 1:
            raise ProtocolError("bad_field", "a login carries one of 'signature' (a device "
                                             "with published keys), 'password_signature' or "
                                             "'recovery_signature' (a new device)")
        ((field, message, credentials),) = given
        signed = self._login_message(message, user, device)
        return credentials(user, device, signed, wire.b64decode(fields[field]), self._peer)

    def _login_message(self, message, user, device):
        """``message`` (a ``wire`` login message) of this connection's challenge, which it
        uses up, and its TLS session."""
        nonce = self._challenge
        if not nonce:
            raise ProtocolError("no_challenge", "a login signs this connection's "
                                                "login.challenge: ask for one first")
        self._challenge = CHALLENGE_USED
        return message(self._server.relay_id, user, device, nonce, self._tls_binding())

    def _tls_binding(self):
        """The keying material of this connection's TLS session that a signature binds."""
        binding = self._connection.tls_exporter()
        if binding is None:
            raise ProtocolError("auth_failed", "this connection has no TLS session to bind to")
        return binding

    # -- authenticated ops --------------------------------------------------

    async def op_logout(self, fields):
        self.logged_out()
        return {"bye": True}

    async def op_account_move(self, fields):
        """Move an account registered before password keys to its password key, proving its
        legacy login secret (the last time a password-derived secret crosses the wire)."""
        try:
            await self._server.legacy_secrets.move(
                self.user, wire.b64decode(fields["legacy_secret"]), fields["password_key"],
                self._peer)
        except cred_error.UnauthorizedLogin:
            raise ProtocolError("auth_failed", "the legacy login secret is wrong")
        self.log.info("User {user} moved to a password key", user=self.user)
        return {"moved": True}

    async def op_account_password(self, fields):
        """Change the password: the new password key, signed for by the current one over
        this connection's TLS session, or by the recovery key on a connection logged in
        by it (``recovery_signature``: the old password may be forgotten)."""
        signature, by_recovery = fields["signature"], fields["recovery_signature"]
        if (signature is None) == (by_recovery is None):
            raise ProtocolError("bad_field", "a password change carries either 'signature' "
                                             "(the password key) or 'recovery_signature'")
        if by_recovery is not None:
            return await self._reset_password(fields["password_key"], by_recovery)
        message = wire.password_change_message(self._server.relay_id, self.user, self.device,
                                               fields["password_key"], self._tls_binding())
        try:
            await self._server.password_keys.change(
                self.user, message, wire.b64decode(signature), fields["password_key"],
                self._peer)
        except cred_error.UnauthorizedLogin:
            raise ProtocolError("auth_failed", "wrong password")
        self.log.info("User {user} changed its password", user=self.user)
        return {"changed": True}

    async def _reset_password(self, password_key, signature):
        self._need_recovery_login("a password change signed by the recovery key")
        message = wire.recovery_password_message(self._server.relay_id, self.user,
                                                 self.device, password_key, self._tls_binding())
        try:
            await self._server.recovery.reset_password(
                self.user, message, wire.b64decode(signature), password_key, self._peer)
        except cred_error.UnauthorizedLogin:
            raise ProtocolError("auth_failed", "wrong recovery key")
        self.log.info("User {user} set a new password by its recovery key", user=self.user)
        return {"changed": True}

    def _need_recovery_login(self, what):
        if not self._by_recovery:
            raise ProtocolError("not_recovery_login",
                                f"{what} is allowed only on a connection logged in by the "
                                "recovery key")

    async def op_recovery_set(self, fields):
        """Make a new recovery key the account's (signed by its identity key; the calling
        device must be in the account's signed device list); the old one stops working."""
        result = await self._server.recovery.set(
            self._server.relay_id, self.user, self.device, fields["recovery_key"],
            fields["backup"], fields["signature"])
        self.log.info("User {user} set a new recovery key", user=self.user)
        return result

    async def op_recovery_backup(self, fields):
        """The account identity seed sealed by the recovery key: to a recovery login only."""
        self._need_recovery_login("reading the recovery backup")
        return await self._server.recovery.backup(self.user)

    async def op_account_delete(self, fields):
        """Delete the account for good, signed for by its password key over this
        connection's TLS session (``PasswordKeys.prove``, as a password change); the
        account's other connections are closed at once, this one once it is answered."""
        message = wire.account_delete_message(self._server.relay_id, self.user, self.device,
                                              self._tls_binding())
        try:
            result = await self._server.accounts.delete(
                self.user, self.device, message, wire.b64decode(fields["signature"]),
                self._peer)
        except cred_error.UnauthorizedLogin:
            raise ProtocolError("auth_failed", "wrong password")
        if self.state == AUTHENTICATED:
            self.logged_out()
        return result

    async def op_keys_upload(self, fields):
        return await self._server.keys.upload(self.user, self.device, fields)

    async def op_keys_count(self, fields):
        return await self._server.store.key_counts(self.user, self.device)

    async def op_keys_query(self, fields):
        return await self._server.keys.query(fields["users"], self.user)

    async def op_keys_claim(self, fields):
        return await self._server.keys.claim(self.user, fields["devices"])

    async def op_devices_publish(self, fields):
        answer = await self._server.keys.publish_device_list(
            self.user, fields["device_list"], fields["signature"]
        )
        for event in ("added", "removed"):  # the operator's record of who holds an account
            for device in answer[event]:
                self._server.audit.record(f"device_{event}", user=self.user, device=device,
                                          by=self.device, address=self._peer)
        return answer

    async def op_devices_list(self, fields):
        """This account's devices (a device sees only its own account's): id, name,
        created and last seen (ms): now for a device connected to this relay, else when
        its last connection ended."""
        now = int(self._server.clock.seconds() * 1000)
        relay = self._server.relay
        return {"devices": [
            {**d, "last_seen": now} if relay.online(self.user, d["device"]) else d
            for d in await self._server.store.list_devices(self.user)]}

    async def op_devices_rename(self, fields):
        """Name one of this account's devices; any other device id (another account's
        included) is ``unknown_device``."""
        if not await self._server.store.rename_device(self.user, fields["device"],
                                                      fields["name"]):
            raise ProtocolError("unknown_device",
                                f"your account has no device {fields['device']}")
        return {"device": fields["device"], "name": fields["name"]}

    def op_send(self, fields):
        return self._server.relay.send_unicast(self.user, self.device, fields["envelopes"])

    async def op_room_send(self, fields):
        return await self._server.rooms.send(self.user, self.device, fields)

    async def op_broadcast(self, fields):
        return await self._server.rooms.send(
            self.user, self.device, {**fields, "room": wire.BROADCAST_ROOM})

    def op_typing(self, fields):
        """Push a typing notice to the devices it names that are connected now; the rest
        is dropped (never stored).  The answer says nothing of who was reached."""
        if not self._typing_bucket.take():
            config = self._server.config
            raise ProtocolError("rate_limited", f"at most {config.typing_burst} typing notices "
                                                f"in a row, then {config.typing_per_second} a "
                                                "second")
        self._server.relay.push_typing(self.user, self.device, fields["envelopes"])
        return {}

    def op_ack(self, fields):
        cursor = self._server.relay.cursor(self.user, self.device)
        ids, positions = cursor.acknowledged(fields["ids"]) if cursor else (fields["ids"], None)
        d = self._server.store.ack(self.user, self.device, ids, positions)
        return d.addCallback(_acknowledged)

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

    # -- files (server.files): chunk requests go through the connection's window ----------

    def _chunk_request(self, d):
        if self._file_window is None:
            self._file_window = FileWindow(self._connection)
        return self._file_window.track(d)

    def op_file_begin(self, fields):
        return self._server.files.begin(self.user, self.device, fields["size"])

    def op_file_chunk(self, fields):
        return self._chunk_request(self._server.files.put_chunk(self.user, fields))

    def op_file_finish(self, fields):
        return self._server.files.finish(self.user, fields)

    def op_file_info(self, fields):
        return self._server.files.info(self.user, self.device, fields["file_id"])

    def op_file_get(self, fields):
        return self._chunk_request(self._server.files.get(self.user, self.device, fields))

    def op_file_done(self, fields):
        return self._server.files.done(self.user, self.device, fields["file_id"])

    # -- the state machine ----------------------------------------------------------------

    @_machine.state(initial=True)
    def handshaking(self):
        "TCP is connected, TLS is being negotiated: nothing can be read yet."

    @_machine.state()
    def logging_in(self):
        "TLS is up; anonymous: ping, register, login.challenge and login are allowed."

    @_machine.state()
    def checking_login(self):
        "A login's credentials are being checked: a second login is refused."

    @_machine.state()
    def authenticated(self):
        "Logged in as one device, attached to the relay's table of online devices."

    @_machine.state()
    def closing(self):
        "Being closed: nothing more is read; answers to requests in flight still go out."

    @_machine.state()
    def closed(self):
        "The connection is gone: nothing more is written."

    @_machine.input()
    def handshake_completed(self):
        "The TLS handshake finished."

    @_machine.input()
    def login_started(self):
        "A login request is being checked."

    @_machine.input()
    def login_succeeded(self, avatar, logout):
        "The portal accepted the login (and the realm attached the device to the relay)."

    @_machine.input()
    def login_failed(self):
        "The login was refused (wrong secret, rate limited, store unavailable)."

    @_machine.input()
    def logged_out(self):
        "The client asked to log out."

    @_machine.input()
    def replaced(self):
        "The same device logged in on another connection: this one ends."

    @_machine.input()
    def account_deleted(self):
        "The account was deleted (by another of its devices): this connection ends."

    @_machine.input()
    def device_removed(self, event):
        """This device may no longer use the relay (removed from its account, dropped
        unlinked, its account disabled): ``event`` says so."""

    @_machine.input()
    def shutting_down(self):
        "The relay is stopping: what is in flight is answered, then the connection closes."

    @_machine.input()
    def deadline_passed(self):
        "The handshake or the login took longer than the configured deadline."

    @_machine.input()
    def close(self):
        "The server closes the connection once what was written has gone (abuse)."

    @_machine.input()
    def abort(self):
        "The server closes the connection at once (it does not read what it is sent)."

    @_machine.input()
    def connection_lost(self):
        "The transport closed."

    def _enter(self, state):
        self.state = state
        self.allowed = ALLOWED_OPS[state]

    @_machine.output()
    def _now_logging_in(self):
        self._enter(LOGGING_IN)

    @_machine.output()
    def _now_checking_login(self):
        self._enter(CHECKING_LOGIN)

    @_machine.output()
    def _now_authenticated(self):
        self._enter(AUTHENTICATED)

    @_machine.output()
    def _now_closing(self):
        self._enter(CLOSING)

    @_machine.output()
    def _now_closed(self):
        self._enter(CLOSED)

    @_machine.output()
    def _start_login_deadline(self):
        self._stop_deadline()
        self._deadline = self._server.clock.callLater(
            self._server.config.login_timeout_seconds, self.deadline_passed)

    @_machine.output()
    def _cancel_deadline(self):
        self._stop_deadline()

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    @_machine.output()
    def _leave_unauthenticated(self):
        self._server.unauthenticated.release(self._peer)

    @_machine.output()
    def _log_late_handshake(self):
        self._server.unauthenticated.missed_deadline(self._peer, "TLS handshake")

    @_machine.output()
    def _log_late_login(self):
        self._server.unauthenticated.missed_deadline(self._peer, "login")

    @_machine.output()
    def _keep_avatar(self, avatar, logout):
        self.user, self.device, self._logout = avatar.user, avatar.device, logout

    @_machine.output()
    def _release_avatar(self):
        """Leave the relay's table of online devices (cred's logout)."""
        logout, self._logout = self._logout, None
        logout()

    @_machine.output()
    def _release_late_avatar(self, avatar, logout):
        """A login accepted after the connection began closing is undone at once."""
        logout()

    @_machine.output()
    def _start_delivery(self):
        self._server.clock.callLater(0, self._pump)

    def _pump(self):
        cursor = self._server.relay.cursor(self.user, self.device)
        if cursor is not None and self.state is AUTHENTICATED:
            cursor.pump()

    @_machine.output()
    def _say_replaced(self):
        self._send(wire.encode({"event": "replaced", "message": "this device logged in elsewhere"}))

    @_machine.output()
    def _say_account_deleted(self):
        self._send(wire.encode({"event": "account_deleted",
                                "message": "this account was deleted"}))

    @_machine.output()
    def _say_event(self, event):
        self._send(event)

    @_machine.output()
    def _say_shutting_down(self):
        self._send(wire.encode({"event": "shutdown", "message": "the relay is shutting down; "
                                                                "connect again in a moment"}))

    @_machine.output()
    def _disconnect_once_answered(self):
        """Close once every request in flight has its answer written (``_finished``)."""
        if self._pending:
            self._close_when_answered = True
        else:
            self._connection.disconnect()

    @_machine.output()
    def _say_login_timeout(self):
        seconds = self._server.config.login_timeout_seconds
        self._answer_error(None, ProtocolError(
            "login_timeout", f"no login within {seconds:g} s of connecting; closing"))

    @_machine.output()
    def _disconnect(self):
        self._connection.disconnect()

    @_machine.output()
    def _disconnect_after_answer(self):
        self._server.clock.callLater(0, self._connection.disconnect)

    @_machine.output()
    def _abort_transport(self):
        self._connection.abort_transport()

    # The transition table.  Leaving the three anonymous states ends the connection's
    # count against its address's cap (_leave_unauthenticated), exactly once.
    _anonymous_ends = [_now_closing, _cancel_deadline, _leave_unauthenticated]

    handshaking.upon(handshake_completed, enter=logging_in,
                     outputs=[_now_logging_in, _start_login_deadline])
    handshaking.upon(deadline_passed, enter=closing,
                     outputs=[_log_late_handshake, *_anonymous_ends, _abort_transport])
    logging_in.upon(login_started, enter=checking_login, outputs=[_now_checking_login])
    logging_in.upon(deadline_passed, enter=closing,
                    outputs=[_log_late_login, _say_login_timeout, *_anonymous_ends, _disconnect])
    checking_login.upon(login_succeeded, enter=authenticated,
                        outputs=[_keep_avatar, _now_authenticated, _cancel_deadline,
                                 _leave_unauthenticated, _start_delivery])
    checking_login.upon(login_failed, enter=logging_in, outputs=[_now_logging_in])
    checking_login.upon(deadline_passed, enter=closing,
                        outputs=[_log_late_login, _say_login_timeout, *_anonymous_ends,
                                 _disconnect])
    checking_login.upon(replaced, enter=closing,
                        outputs=[_say_replaced, *_anonymous_ends, _disconnect])
    checking_login.upon(device_removed, enter=closing,
                        outputs=[_say_event, *_anonymous_ends, _disconnect])
    handshaking.upon(shutting_down, enter=closing, outputs=[*_anonymous_ends, _abort_transport])
    for _state in (logging_in, checking_login):
        _state.upon(shutting_down, enter=closing,
                    outputs=[_say_shutting_down, *_anonymous_ends, _disconnect_once_answered])
    for _state in (handshaking, logging_in, checking_login):
        _state.upon(close, enter=closing, outputs=[*_anonymous_ends, _disconnect])
        _state.upon(abort, enter=closing, outputs=[*_anonymous_ends, _abort_transport])
        _state.upon(connection_lost, enter=closed,
                    outputs=[_now_closed, _cancel_deadline, _leave_unauthenticated])

    authenticated.upon(logged_out, enter=closing,
                       outputs=[_now_closing, _release_avatar, _disconnect_after_answer])
    authenticated.upon(replaced, enter=closing,
                       outputs=[_say_replaced, _now_closing, _release_avatar, _disconnect])
    authenticated.upon(account_deleted, enter=closing,
                       outputs=[_say_account_deleted, _now_closing, _release_avatar, _disconnect])
    authenticated.upon(device_removed, enter=closing,
                       outputs=[_say_event, _now_closing, _release_avatar, _disconnect])
    authenticated.upon(close, enter=closing, outputs=[_now_closing, _release_avatar, _disconnect])
    authenticated.upon(shutting_down, enter=closing,
                       outputs=[_say_shutting_down, _now_closing, _release_avatar,
                                _disconnect_once_answered])
    authenticated.upon(abort, enter=closing,
                       outputs=[_now_closing, _release_avatar, _abort_transport])
    authenticated.upon(connection_lost, enter=closed, outputs=[_now_closed, _release_avatar])

    closing.upon(abort, enter=closing, outputs=[_abort_transport])
    closing.upon(connection_lost, enter=closed, outputs=[_now_closed])
    for _state in (closing, closed):
        _state.upon(login_succeeded, enter=_state, outputs=[_release_late_avatar])
        for _input in (login_failed, handshake_completed, replaced, account_deleted,
                       device_removed, close, deadline_passed, shutting_down):
            _state.upon(_input, enter=_state, outputs=[])
    closed.upon(abort, enter=closed, outputs=[])
    closed.upon(connection_lost, enter=closed, outputs=[])
    del _state, _input, _anonymous_ends
