"""What each one-shot command does on an open Client, as JSON-RPC methods.

The daemon serves these on its socket, and a command run without a daemon calls the
same ``Methods`` on a client it opens itself: both paths run one piece of code and
return the same result, which ``cli.py`` prints the same way.  Results are plain JSON
(messages as the objects ``inbox --json`` prints); failures are ``CommandFailed`` with
the CLI's exit code.
"""

import json
import os

from twisted.internet import defer

from securechat.client.commands import HISTORY_LAST, HISTORY_MAX
from securechat.client.contacts import TrustError
from securechat.client.device_list import remove_device
from securechat.client.event_types import CHANGES, MAX_EMOJI_CHARS, REACTION, valid_emoji
from securechat.client.files import FileTransfers
from securechat.client.inbound import iso
from securechat.client.message_size import check_message_size
from securechat.client.messaging import new_id
from securechat.client.protocol import ConnectionClosed, RemoteError
from securechat.client.render import EVENT_KEYS, message_json
from securechat.client.rooms import ROOM_MODES
from securechat.client.exit_codes import (
    EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_UNTRUSTED, EXIT_USAGE)
from securechat.client.rpc import INVALID_PARAMS, METHOD_NOT_FOUND, CommandFailed
from securechat.client.sas_exchange import ExchangeFailed
from securechat.client.session import (
    FINAL_STATES, NO_OTHER_DEVICE, ClientError, Queued, refusal)
from securechat.client.settings import VERIFY_TIMEOUT
from securechat.client.verification import (
    PendingRequests, Verification, is_request, request_message)
from securechat.crypto.fingerprint import key_fingerprint, safety_number
from securechat.wire import BROADCAST_ROOM

INBOX_PAGE = 500
"""Messages one ``inbox`` answer holds at most (``more`` says when others wait)."""
INBOX_MAX_WAIT = 86400
"""The longest ``inbox`` ``wait``, in seconds (it holds a request in flight meanwhile)."""
ANSWER_TIMEOUT = 180
"""Seconds a verification waits for ``verify.confirm`` before it counts as a no."""


class InvalidParams(Exception):
    """A method was called with parameters it does not take (JSON-RPC -32602)."""

    code = INVALID_PARAMS


class UnknownMethod(Exception):
    code = METHOD_NOT_FOUND


def public(record):
    """A stored message as ``inbox --json`` prints it."""
    return json.loads(message_json(record))


def as_command_failed(error):
    """``error`` as the person sees it (message and exit code), or itself when it is not
    one a command reports (a bug: the caller logs it)."""
    if isinstance(error, ClientError):
        return CommandFailed(str(error), error.exit_code)
    if isinstance(error, TrustError):
        return CommandFailed(str(error), getattr(error, "exit_code", 1))
    if isinstance(error, RemoteError):
        error = refusal(error)
        return CommandFailed(str(error), error.exit_code)
    if isinstance(error, ConnectionClosed):
        return CommandFailed(f"{error} (the command may not have completed)", EXIT_UNREACHABLE)
    if isinstance(error, ExchangeFailed):  # a verification's or a link's
        return CommandFailed(f"{error.doing} failed: {error}", EXIT_UNTRUSTED)
    return error


class Params:
    """Checked access to a request's ``params``: a wrong or missing one names itself."""

    def __init__(self, method, params):
        if not isinstance(params, dict):
            raise InvalidParams(f"{method}: params must be an object")
        self._method = method
        self._params = params

    def get(self, name, kind, default=...):
        value = self._params.get(name, default)
        if value is ...:
            raise InvalidParams(f"{self._method}: the parameter {name!r} is missing")
        if value is not default and (not isinstance(value, kind) or isinstance(value, bool)
                                     and kind is not bool):
            what = "a number" if isinstance(kind, tuple) else kind.__name__
            raise InvalidParams(f"{self._method}: {name!r} must be {what}")
        return value


class Methods:
    """The methods, by JSON-RPC name; ``call`` runs one and turns every failure into
    CommandFailed (or InvalidParams / UnknownMethod)."""

    NAMES = {
        "status": "status", "login": "status", "send": "send", "inbox": "inbox",
        "say": "say", "broadcast": "say", "rooms.create": "rooms_create",
        "rooms.list": "rooms_list", "rooms.bans": "rooms_bans", "rooms.mode": "rooms_mode",
        "rooms.admin": "rooms_admin",
        "join": "join", "leave": "leave", "members": "members", "history": "history",
        "invite": "moderate", "kick": "moderate", "unban": "moderate",
        "fingerprint": "fingerprint", "trust": "trust", "verify": "verify",
        "verify.confirm": "verify_confirm", "outbox": "outbox",
        "devices.list": "devices_list", "devices.rename": "devices_rename",
        "devices.remove": "devices_remove",
        "devices.recovery-key": "devices_recovery_key",
        "send-file": "send_file", "say-file": "send_file", "files.get": "files_get",
        "files.list": "files_list",
        "read": "read", "react": "change", "edit": "change", "delete": "change",
        "typing": "typing", "message": "message",
    }
    PROGRESS = ("send_file", "files_get")
    """Methods whose ``show`` is the ``progress(done, total)`` of a transfer."""

    def __init__(self, client, verifications):
        self.client = client
        self.verifications = verifications

    async def call(self, name, params, show=lambda text: None, progress=None):
        """Run method ``name``; ``show`` receives progress lines (verification),
        ``progress(done, total)`` how far a file transfer is (bytes; done None: ended)."""
        attribute = self.NAMES.get(name)
        if attribute is None:
            raise UnknownMethod(f"no method named {name!r}")
        params = Params(name, params)
        try:
            return await getattr(self, attribute)(
                name, params, progress if attribute in self.PROGRESS else show)
        except Exception as e:
            raise as_command_failed(e) from None

    async def status(self, name, params, show):
        client = self.client
        return {"user": client.user, "device": client.device, "state": client.state,
                "state_detail": client.state_detail, "queued": client.queued_at_login}

    async def send(self, name, params, show):
        user, text = params.get("user", str), params.get("text", str)
        reply_to = self._reply_to(params)
        check_message_size(text)
        client, mid = self.client, new_id()
        devices = await self._send_or_keep(
            params, lambda: client.send_text(user, text, reply_to, mid))
        own = 0  # of ``devices``, our own other devices (each gets a copy: sent-message sync)
        if devices and user != client.user:
            own = len(await client.trusted_devices(client.user, sending=False)) - 1
        return {"devices": devices, "own_devices": own, "id": mid,
                "notice": NO_OTHER_DEVICE if devices == 0 else None,
                "warnings": client.unsigned_warnings({user, client.user})}

    def _reply_to(self, params):
        """A message's ``reply_to`` param: the mid of a message this device holds."""
        reply_to = params.get("reply_to", str, None)
        if reply_to is not None and self.client.events.state(reply_to) is None:
            raise ClientError(f"no message {reply_to} on this device to reply to (the ID "
                              "is a message's \"mid\" in inbox --json or history --json)",
                              EXIT_NOT_FOUND)
        return reply_to

    async def _send_or_keep(self, params, send):
        """Run ``send()`` (a message send); with the server unreachable the message waits in
        the outbox (Queued: exit 4) unless ``wait`` seconds give the reconnect time to send
        it.  What ``send`` fires with (None when the reconnect sent it)."""
        wait = params.get("wait", (int, float), 0)
        try:
            return await send()
        except Queued as queued:
            if wait <= 0:
                raise
            return await self._wait_sent(queued, wait)

    async def _wait_sent(self, queued, wait):
        """Wait for the reconnect to send an outbox entry; Queued again at the deadline,
        the reason if the server refused it."""
        client, entry = self.client, queued.entry_id
        client.reconnect()
        await client.wait_for(lambda: not client.outbox.holds(entry)
                              or client.outbox.error(entry) is not None
                              or client.state in FINAL_STATES, wait)
        if client.state == "removed":  # for good: the outbox can never send it
            raise ClientError(client.state_detail, EXIT_AUTH)
        error = client.outbox.error(entry)
        if error is not None:
            client.outbox.drop(entry)
            raise ClientError(f"the server refused the message: {error}")
        if client.outbox.holds(entry):
            raise queued
        return None

    async def inbox(self, name, params, show):
        """What was received and not shown yet (oldest first), marked shown by this answer."""
        client = self.client
        wait = params.get("wait", (int, float), 0)
        limit = params.get("limit", int, INBOX_PAGE)
        if not 0 <= wait <= INBOX_MAX_WAIT or not 0 < limit <= INBOX_PAGE:
            raise InvalidParams(f"inbox: wait must be 0-{INBOX_MAX_WAIT} s, "
                                f"limit 1-{INBOX_PAGE}")
        read = params.get("read", bool, True)
        requests = PendingRequests(client.store)
        if not client.unread() and wait > 0:
            await client.wait_for(lambda: client.unread() or requests.waiting(), wait)
        await client.wait_for(client.receiver.idle, 10)
        unread = client.unread()
        page = unread[:limit]
        if page:
            client.mark_read(page[-1][0])
            if read:
                client.events.owe("read", [record for _, record in page])
        asked = [request_message(request, client.contacts.is_verified(request["user"]))
                 for request in requests.unshown()]
        return {"messages": asked + [public(client.events.overlay(record))
                                     for _, record in page],
                "more": len(unread) > limit,
                "unreachable": None if client.state == "connected" else client.state_detail}

    async def outbox(self, name, params, show):
        """The messages the relay has not accepted yet, or ``drop`` one (works offline)."""
        outbox, drop = self.client.outbox, params.get("drop", str, None)
        if drop is not None:
            if not outbox.drop(drop):
                raise ClientError(f"no entry {drop} in the outbox")
            return {"dropped": drop}
        return {"entries": [{"id": entry["id"], "to": entry["to"], "room": entry["room"],
                             "text": entry["text"], "queued_at": iso(entry["queued_at"]),
                             "error": entry["error"]}
                            for entry in self.client.outbox_pending()]}

    async def say(self, name, params, show):
        room = BROADCAST_ROOM if name == "broadcast" else params.get("room", str)
        text, reply_to = params.get("text", str), self._reply_to(params)
        check_message_size(text)
        mid = await self._send_or_keep(params,
                                       lambda: self.client.rooms.say(room, text, reply_to))
        return {"id": mid, "warnings": self.client.rooms.left_out.get(room, [])}

    async def send_file(self, name, params, progress):
        """Encrypt and upload a file, then send its message to a user or a room."""
        path = params.get("path", str)
        if not os.path.isabs(path):
            raise InvalidParams(f"{name}: 'path' must be absolute (the daemon's directory is "
                                "not yours)")
        transfers = FileTransfers(self.client)
        if name == "send-file":
            user = params.get("user", str)
            result = await self._send_or_keep(
                params, lambda: transfers.send(path, user=user, progress=progress))
        else:
            room = params.get("room", str)
            result = await self._send_or_keep(
                params, lambda: transfers.send(path, room=room, progress=progress))
        return result or {}

    async def files_get(self, name, params, progress):
        """Fetch, check and decrypt a received file."""
        out, directory = params.get("out", str, None), params.get("directory", str, None)
        if not any(p is not None and os.path.isabs(p) for p in (out, directory)):
            raise InvalidParams("files.get: 'out' or 'directory' must be an absolute path")
        return await FileTransfers(self.client).get(params.get("file_id", str), out,
                                                    directory, progress)

    async def files_list(self, name, params, show):
        return {"files": FileTransfers(self.client).list()}

    async def rooms_create(self, name, params, show):
        room, password = params.get("room", str), params.get("password", str, None)
        await self.client.rooms.create(room, password)
        return {"room": room, "password": password is not None}

    async def rooms_list(self, name, params, show):
        return {"rooms": (await self.client.request("rooms.list"))["rooms"]}

    async def rooms_bans(self, name, params, show):
        bans = await self.client.rooms.bans(params.get("room", str))
        return {"bans": [{"user": ban["user"], "by": ban["by"], "role": ban["role"],
                          "created": iso(ban["created"])} for ban in bans]}

    async def rooms_mode(self, name, params, show):
        mode = params.get("mode", str)
        if mode not in ROOM_MODES:
            raise InvalidParams(f"rooms.mode: mode must be one of {', '.join(sorted(ROOM_MODES))}")
        return {"text": await self.client.rooms.set_mode(params.get("room", str), mode)}

    async def devices_list(self, name, params, show):
        """The account's devices as the relay lists them, this one marked, times in ISO
        UTC (``last_seen`` null for a device not seen since the relay started keeping it)."""
        this = self.client.device
        return {"devices": [
            {"id": d["device"], "name": d["name"], "added": iso(d["created"]),
             "last_seen": None if d["last_seen"] is None else iso(d["last_seen"]),
             "this": d["device"] == this}
            for d in (await self.client.request("devices.list"))["devices"]]}

    async def devices_rename(self, name, params, show):
        return await self.client.request("devices.rename", device=params.get("device", str),
                                         name=params.get("name", str))

    async def devices_remove(self, name, params, show):
        """Publish the account's device list without the device: the relay removes it."""
        device = params.get("device", str)
        answer = await remove_device(self.client, device)
        return {"device": device, "user": self.client.user, "version": answer["version"]}

    async def devices_recovery_key(self, name, params, show):
        """Never through a daemon or the chat (commands.standalone_only): a new recovery key
        takes the whole account over, so it asks for the password, as ``password`` does."""
        raise CommandFailed("a new recovery key is made by 'securechat devices recovery-key' "
                            "while no daemon or chat runs (it asks for the password)",
                            EXIT_USAGE)

    async def join(self, name, params, show):
        """Join a room.  A password room joined without a password, like a wrong password,
        fails with exit code 3 (EXIT_AUTH): the chat, which joins without one first, asks
        for the password when it sees that code."""
        room, password = params.get("room", str), params.get("password", str, None)
        try:
            result = await self.client.rooms.join(room, password)
        except RemoteError as e:
            if e.code != "wrong_password":
                raise
            if password is None:
                raise ClientError(f"{room} needs a password: securechat join {room} --password",
                                  EXIT_AUTH) from None
            raise ClientError(f"the server refused: {e.message}", EXIT_AUTH) from None
        return {"members": result["members"]}

    async def leave(self, name, params, show):
        await self.client.rooms.leave(params.get("room", str))
        return {}

    async def members(self, name, params, show):
        """Each member's devices, its role in the room (owner, admin or member) and
        whether this device has verified its identity key."""
        client = self.client
        result = await client.request("room.members", room=params.get("room", str))
        members, roles = result["members"], result.get("roles", {})
        return {"members": members, "you": client.user,
                "roles": {user: roles.get(user, "member") for user in members},
                "verified": {user: client.contacts.is_verified(user) for user in members}}

    async def history(self, name, params, show):
        """A room's history from the relay (``room``), or the newest ``last`` messages of
        a 1:1 conversation from the key store (``user``, works offline); ``name`` is
        the room when you are in a room of that name (asked of the relay when connected),
        else the user.  Each message as ``inbox --json`` prints it, plus ``outgoing``."""
        client = self.client
        last = params.get("last", int, None)
        if last is not None and not 0 < last <= HISTORY_MAX:
            raise InvalidParams(f"history: last must be 1-{HISTORY_MAX}")
        room, user = params.get("room", str, None), params.get("user", str, None)
        if room is None and user is None:
            room, user = await self._room_or_user(params.get("name", str))
        overlay = client.events.overlay
        if room is not None:  # all the relay gives unless ``last`` is said
            records = [r for r in await client.rooms.history(room)
                       if r is not None and r["type"] not in CHANGES]
            records = records[-last:] if last else records
            return {"messages": [{**public(overlay(r)), "outgoing": bool(r.get("outgoing"))}
                                 for r in records], "more": False}
        return {"messages": [{**public(overlay(r)), "outgoing": r["outgoing"],
                              "to": r.get("to", client.user)}
                             for r in client.store.conversation(user, last or HISTORY_LAST)],
                "more": False}

    async def read(self, name, params, show):
        """The chat showed these messages (``mids``) to the person: their read receipts."""
        mids = params.get("mids", list)
        states = [(mid, self.client.events.state(mid)) for mid in mids[:INBOX_PAGE]]
        self.client.events.owe("read", [
            {"type": "msg", "mid": mid, "from": state["author"], "room": state["room"]}
            for mid, state in states if state is not None])
        return {}

    async def message(self, name, params, show):
        """What happened to message ``mid`` since it was written, as ``inbox --json``
        would add it (``text`` only when edited): the chat updates its line with it."""
        client, mid = self.client, params.get("mid", str)
        state = client.events.state(mid)
        if state is None:
            raise ClientError(f"no message {mid} on this device", EXIT_NOT_FOUND)
        shown = client.events.overlay({"type": "msg", "mid": mid, "from": state["author"]})
        return {key: value for key, value in shown.items()
                if key in EVENT_KEYS or key == "text" and shown.get("edited")}

    async def typing(self, name, params, show):
        """Tell ``user`` (or ``room``) that this person started or stopped (``state``)
        typing: only their devices connected now see it."""
        state = params.get("state", str)
        if state not in ("start", "stop"):
            raise InvalidParams("typing: state must be start or stop")
        user, room = params.get("user", str, None), params.get("room", str, None)
        if (user is None) == (room is None):
            raise InvalidParams("typing: give user or room")
        return {"devices": await self.client.typing.send(state, user=user, room=room)}

    async def change(self, name, params, show):
        """``react``, ``edit`` or ``delete`` message ``id`` (its mid): sent where the
        message went (its 1:1 conversation or its room).  Only the author edits or deletes
        (the receiving clients refuse anyone else's: this says so before sending)."""
        client, mid = self.client, params.get("id", str)
        state = client.events.state(mid)
        if state is None:
            raise ClientError(f"no message {mid} on this device (the ID is a message's "
                              "\"mid\" in inbox --json or history --json)", EXIT_NOT_FOUND)
        kind = REACTION if name == "react" else name
        payload = {"type": kind, "target": mid}
        if kind == REACTION:
            emoji = params.get("emoji", str)
            if not valid_emoji(emoji):
                raise InvalidParams(f"react: {emoji!r} is not an emoji (1-{MAX_EMOJI_CHARS} "
                                    "printable characters)")
            payload.update(emoji=emoji, remove=params.get("remove", bool, False))
        elif state["author"] != client.user:
            raise ClientError(f"only its author can {name} a message: {mid} is "
                              f"{state['author']}'s")
        elif name == "edit" and state.get("file"):
            raise ClientError(f"a file cannot be edited: {mid} is a file message (delete "
                              "it and send the file again)")
        if name == "edit":
            payload["body"] = params.get("text", str)
            check_message_size(payload["body"])
        if state["room"] is not None:
            sent = await self._send_or_keep(
                params, lambda: client.rooms.send_event(state["room"], payload))
        else:
            sent = await self._send_or_keep(
                params, lambda: client.send_event(state["peer"], payload))
        return {"id": mid, "room": state["room"], "user": state["peer"],
                "notice": NO_OTHER_DEVICE if sent == 0 else None}

    async def _room_or_user(self, name):
        """``(room, None)`` when this user is in a room called ``name``, else ``(None, name)``;
        without the relay to ask, the user (the local store is what can be read then)."""
        if self.client.state != "connected":
            return None, name
        rooms = (await self.client.request("rooms.list"))["rooms"]
        return (name, None) if name in rooms else (None, name)

    async def moderate(self, name, params, show):
        return {"text": await self.client.rooms.moderate(
            name, params.get("room", str), params.get("user", str))}

    async def rooms_admin(self, name, params, show):
        """The owner makes a member an admin, or (``remove``) a plain member again."""
        room, user = params.get("room", str), params.get("user", str)
        result = await self.client.request("room.admin", room=room, user=user,
                                           admin=not params.get("remove", bool, False))
        return {"room": room, "user": user, "role": result["role"]}

    async def fingerprint(self, name, params, show):
        """The own fingerprint (from the key store: no relay needed), or a contact's with
        the safety number: from the identity key this device pinned, refreshed from the
        relay when connected; the relay is needed only for a user not met yet."""
        client, user = self.client, params.get("user", str, None)
        own = client.crypto.identity_key
        if user is None or user == client.user:
            return {"user": client.user, "fingerprint": key_fingerprint(own)}
        record = client.contacts.record(user)
        if record is None or client.state == "connected":
            if client.state != "connected":
                raise ClientError(f"{user}'s keys are not on this device yet, and the server "
                                  f"is not reachable ({client.state_detail})", EXIT_UNREACHABLE)
            await client.trusted_devices(user, sending=False)
            record = client.contacts.record(user)
        theirs = record.get("pending") or record["identity_key"]
        return {"user": user, "fingerprint": key_fingerprint(theirs),
                "verified": client.contacts.is_verified(user),
                "safety_number": safety_number(client.user, own, user, theirs)}

    async def trust(self, name, params, show):
        user = params.get("user", str)
        await self.client.trusted_devices(user, sending=False)
        key = self.client.contacts.trust(user)
        return {"user": user, "accepted": key_fingerprint(key) if key is not None else None}

    async def verify(self, name, params, show):
        """Run the SAS exchange with ``user`` up to the comparison: fires with the
        verification's number and the emoji text; ``verify.confirm`` gives the answer."""
        return await self.verifications.start(self.client, params.get("user", str), show)

    async def verify_confirm(self, name, params, show):
        return await self.verifications.confirm(params.get("verification", int),
                                                params.get("match", bool))


class Verifications:
    """SAS verifications, each answered by the person through a callback or a second call.

    ``run`` is the whole exchange with a ``confirm`` callback (the standalone CLI asks
    on its terminal).  Over the daemon's socket ``start`` (method ``verify``) returns as
    soon as the emoji are ready, and ``confirm`` (method ``verify.confirm``) gives the
    person's answer and returns once both sides exchanged their MACs.  Requests from
    others wait in the key store (verification.PendingRequests) until someone runs
    ``verify`` for that user; ``on_request(user, device)`` hears of each as it arrives.
    """

    def __init__(self, timeout=VERIFY_TIMEOUT, on_request=lambda user, device: None):
        self._timeout = timeout
        self._on_request = on_request
        self._running = []
        self._questions = {}  # verification number -> (answer Deferred, outcome Deferred)
        self._numbers = iter(range(1, 2**31))

    def control(self, record):
        """A decrypted control message (``verify.*``) arrived (and a request is kept)."""
        if is_request(record):
            self._on_request(record["from"], record["from_dev"])
        for verification in self._running:
            verification.deliver(record)

    async def run(self, client, user, confirm, show):
        """One verification with ``user``: answer their request if one waits, else start one."""
        verification = Verification(client, user, confirm, show, self._timeout)
        self._running.append(verification)
        requests = PendingRequests(client.store)
        try:
            request = requests.take(user)
            if request is not None:
                await verification.respond(request)
            else:
                await verification.initiate()
            requests.take(user)  # a request that crossed ours is answered too
            show(f"{user} is verified")
        finally:
            self._running.remove(verification)

    async def start(self, client, user, show):
        number = next(self._numbers)
        asked, answer, shown = defer.Deferred(), defer.Deferred(), []

        def keep(text):
            shown.append(text)
            show(text)

        def confirm():
            timer = client.reactor.callLater(ANSWER_TIMEOUT, self._unanswered, number)
            answer.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
            asked.callback({"verification": number, "text": shown[-1] if shown else ""})
            return answer

        def failed_before_asking(failure):
            if asked.called:
                return failure
            asked.errback(failure)
            return None

        outcome = defer.ensureDeferred(self.run(client, user, confirm, keep))
        self._questions[number] = (answer, outcome)
        outcome.addErrback(failed_before_asking)
        try:
            return await asked
        except BaseException:
            self._questions.pop(number, None)
            raise

    def _unanswered(self, number):
        """Nobody confirmed in time: the answer is no (the other side is told)."""
        answer, outcome = self._questions.pop(number, (None, None))
        if answer is not None:
            outcome.addErrback(lambda failure: None)
            answer.callback(False)

    async def confirm(self, number, match):
        answer, outcome = self._questions.pop(number, (None, None))
        if answer is None or answer.called:
            raise InvalidParams(f"verify.confirm: no verification {number} waits for an answer")
        answer.callback(match)
        await outcome
        return {"verified": True}
