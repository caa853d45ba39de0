"""The SAS verification exchange between two users, carried as Olm-encrypted messages.

::

    initiator                              responder
    verify.start {txn}            ---->
                                  <----    verify.accept {txn, commitment}
    verify.key {txn, key}         ---->
                                  <----    verify.key {txn, key}
    (initiator checks the commitment; both show the emoji and ask the person)
    verify.mac {txn, mac}         <--->    verify.mac {txn, mac}
    (each checks the other's MAC over the identity key it has pinned)

Any step may be answered with ``verify.cancel {txn, reason}``; a side that waited
``verify_timeout`` seconds (client ini, default 120) for the other's next step sends
one and fails, naming the other user and the time waited.

The responder usually is not running ``verify`` when the request arrives, so a
request is kept, sealed in the key store, until it is answered, cancelled or too old
(``PendingRequests``): ``inbox`` shows it once ("alice asks to verify your keys"),
the daemon tells its subscribers (``verify.request``), and a later ``verify alice``
answers it.  When both ask at the same moment, the request of the user whose name
sorts first is the one answered.
"""

import secrets
import time

from twisted.internet import defer
from twisted.logger import Logger

from securechat.client.render import safe
from securechat.client.settings import MAX_VERIFY_TIMEOUT, VERIFY_TIMEOUT
from securechat.crypto.sas import SasSession, commitment

PENDING_REQUESTS = 16
"""Verification requests kept for the person to answer (the newest, one per user)."""
REQUEST_LIFETIME = MAX_VERIFY_TIMEOUT
"""Seconds after which a request is dropped unanswered: its sender has given up by then
(no side waits longer than ``MAX_VERIFY_TIMEOUT`` for an answer)."""
MAX_TXN = 64
"""The longest transaction id taken from a request (ours are 16 hex digits)."""


def is_request(record):
    """A decrypted 1:1 ``verify.start`` from someone else with a usable transaction id (not
    the copy of one this user sent from another device: every message goes to the
    sender's other devices too)."""
    inner = record.get("inner") or {}
    txn = inner.get("txn")
    return (record.get("type") == "verify.start" and record.get("room") is None
            and inner.get("to") != record.get("from")
            and isinstance(txn, str) and 0 < len(txn) <= MAX_TXN)


class PendingRequests:
    """The verification requests others sent this device, not yet answered: a sealed list
    in the key store (who asked is nobody else's business), so a request received by one
    command (``inbox``) is answered by the next (``verify``)."""

    KEY = "verify_requests"

    def __init__(self, store, clock=time.time):
        self._store = store
        self._clock = clock

    def _load(self):
        oldest = self._clock() - REQUEST_LIFETIME
        return [r for r in self._store.secret(self.KEY) or [] if r["at"] >= oldest]

    def _save(self, requests):
        with self._store.transaction():
            self._store.set_secret(self.KEY, requests[-PENDING_REQUESTS:])

    def note(self, record):
        """A ``verify.start`` or ``verify.cancel`` from someone arrived (called inside the
        transaction that marks its envelope seen: neither is lost nor counted twice)."""
        user = record["from"]
        if record.get("type") == "verify.cancel":
            txn = (record.get("inner") or {}).get("txn")
            self._save([r for r in self._load() if (r["user"], r["txn"]) != (user, txn)])
        elif is_request(record):
            request = {"id": record["id"], "user": user, "device": record["from_dev"],
                       "txn": record["inner"]["txn"], "sent_at": record["sent_at"],
                       "at": self._clock(), "shown": False}
            self._save([r for r in self._load() if r["user"] != user] + [request])

    def take(self, user):
        """``user``'s request (removed: it is being answered), or None."""
        requests = self._load()
        theirs = [r for r in requests if r["user"] == user]
        if theirs:
            self._save([r for r in requests if r["user"] != user])
        return theirs[-1] if theirs else None

    def waiting(self):
        """Whether a request waits to be shown."""
        return any(not r["shown"] for r in self._load())

    def unshown(self):
        """The requests not shown yet, now counted as shown."""
        requests = self._load()
        new = [r for r in requests if not r["shown"]]
        if new:
            self._save([{**r, "shown": True} for r in requests])
        return new

    def mark_shown(self, user):
        """``user``'s request was told to someone (the daemon's subscribers)."""
        requests = self._load()
        self._save([{**r, "shown": r["shown"] or r["user"] == user} for r in requests])


def request_message(request, verified):
    """A pending request as ``inbox`` shows it (render.format_message, ``--json``)."""
    return {"id": request["id"], "type": "verify_request", "from": request["user"],
            "from_device": request["device"], "room": None, "text": None,
            "sent_at": request["sent_at"], "verified": verified, "error": None,
            "warning": None}


class VerificationFailed(Exception):
    pass


class Verification:
    log = Logger()

    def __init__(self, client, peer, confirm, show, timeout=VERIFY_TIMEOUT):
        self._client = client
        self._peer = peer
        self._confirm = confirm
        self._show = show
        self._timeout = timeout
        self._incoming = defer.DeferredQueue()

    def deliver(self, record):
        """Feed a received ``verify.*`` message (routed here by the client)."""
        if record.get("from") == self._peer and str(record.get("type", "")).startswith("verify."):
            self._incoming.put(record["inner"])

    async def _next(self, txn, expected, their_request_wins=False,
                    silence="did not answer the verification request"):
        """The peer's next step of ``txn``, or (``their_request_wins``) a request of
        theirs that crossed ours; VerificationFailed saying the peer's ``silence`` when
        nothing came within the timeout."""
        timer = self._client.reactor.callLater(self._timeout, self._incoming.put, None)
        try:
            while True:
                message = await self._incoming.get()
                if message is None:
                    await self._cancel(txn, "timed out")
                    raise VerificationFailed(
                        f"{self._peer} {silence} within {self._timeout:g} s")
                if their_request_wins and message["type"] == "verify.start":
                    return message
                if message.get("txn") != txn:
                    continue
                if message["type"] == "verify.cancel":
                    raise VerificationFailed(f"{self._peer} cancelled: {message.get('reason')}")
                if message["type"] == expected:
                    return message
        finally:
            if timer.active():
                timer.cancel()

    async def _send(self, payload):
        await self._client.send_control(self._peer, payload)

    async def initiate(self):
        txn = secrets.token_hex(8)
        start = {"type": "verify.start", "txn": txn}
        await self._send(start)
        self._show(f"Waiting for {safe(self._peer)} to run "
                   f"'securechat verify {self._client.user}' "
                   f"(for {self._timeout:g} s)...")
        accept = await self._next(txn, "verify.accept",
                                  their_request_wins=self._client.user > self._peer)
        if accept["type"] == "verify.start":  # both asked at once: theirs is answered
            return await self.respond(accept)
        sas = SasSession()
        await self._send({"type": "verify.key", "txn": txn, "key": sas.public_key})
        their = await self._next(txn, "verify.key")
        if commitment(their["key"], start) != accept.get("commitment"):
            await self._cancel(txn, "commitment mismatch")
            raise VerificationFailed("the other side's key does not match its commitment (attack?)")
        sas.establish(their["key"])
        return await self._compare(txn, sas, sas.public_key, their["key"], initiator=True,
                                   their_device=their["from_dev"])

    async def respond(self, start):
        txn = start["txn"]
        sas = SasSession()
        await self._send({"type": "verify.accept", "txn": txn,
                          "commitment": commitment(sas.public_key, {"type": "verify.start",
                                                                    "txn": txn})})
        their = await self._next(txn, "verify.key")
        sas.establish(their["key"])
        await self._send({"type": "verify.key", "txn": txn, "key": sas.public_key})
        return await self._compare(txn, sas, their["key"], sas.public_key, initiator=False,
                                   their_device=their["from_dev"])

    async def _compare(self, txn, sas, initiator_key, responder_key, initiator, their_device):
        me = (self._client.user, self._client.device)
        them = (self._peer, their_device)
        first, second = (me, them) if initiator else (them, me)
        info = "|".join(["SECURECHAT_SAS_V1", *first, initiator_key, *second, responder_key, txn])
        emoji, decimals = sas.short_string(info)
        self._show(f"Compare with {safe(self._peer)}:\n  {emoji}\n  or the numbers: {decimals}")
        if not await self._confirm():
            await self._cancel(txn, "the emoji did not match")
            raise VerificationFailed("you said the emoji do not match: NOT verified")
        mac_info = "SECURECHAT_MAC_V1|" + txn
        own_key = self._client.crypto.identity_key
        await self._send({"type": "verify.mac", "txn": txn,
                          "mac": sas.mac(own_key, mac_info + "|" + self._client.user)})
        their_mac = await self._next(txn, "verify.mac", silence="did not confirm the emoji")
        pinned = (await self._client.trusted_devices(self._peer, sending=False)) and \
            self._client.contacts.record(self._peer)
        their_key = pinned.get("pending") or pinned["identity_key"]
        if not sas.mac_matches(their_key, mac_info + "|" + self._peer, their_mac.get("mac", "")):
            raise VerificationFailed(
                f"{self._peer}'s identity key does not match what the server gave us: NOT verified")
        self._client.contacts.mark_verified(self._peer, their_key)
        return their_key

    async def _cancel(self, txn, reason):
        """Tell the peer this verification is over (best effort: it is over anyway, and
        the peer's own wait is bounded)."""
        try:
            await self._send({"type": "verify.cancel", "txn": txn, "reason": reason})
        except Exception as e:
            self.log.info("could not tell {peer} the verification ended: {error}",
                          peer=self._peer, error=e)
