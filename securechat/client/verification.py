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

import time

from securechat.client.render import safe
from securechat.client.sas_exchange import ExchangeFailed, SasExchange
from securechat.client.settings import MAX_VERIFY_TIMEOUT, VERIFY_TIMEOUT

PENDING_REQUESTS = 16
"""Verification requests kept for the person to answer (the newest, one per user)."""
REQUEST_LIFETIME = MAX_VERIFY_TIMEOUT
"""Seconds after which a request is dropped unanswered: its sender has given up by then
(no side waits longer than ``MAX_VERIFY_TIMEOUT`` for an answer)."""
MAX_TXN = 64
"""The longest transaction id taken from a request (ours are 16 hex digits)."""


ANSWERS_A_REQUEST = ("verify.start", "verify.accept", "verify.cancel")
"""The steps that make or end a pending request: a request; its sender calling it off;
another device of this account answering it or turning it down (its copy)."""


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
        """A step of ``ANSWERS_A_REQUEST`` arrived: a request, or its end (called inside the
        transaction that marks its envelope seen: none is lost nor counted twice)."""
        user, txn = record["from"], (record.get("inner") or {}).get("txn")
        kind = record.get("type")
        if record.get("outgoing"):  # a copy: our other device answered or refused ``to``'s
            if kind in ("verify.accept", "verify.cancel"):
                self._forget((record.get("to"), txn))
        elif kind == "verify.cancel":
            self._forget((user, txn))
        elif is_request(record):
            request = {"id": record["id"], "user": user, "device": record["from_dev"],
                       "txn": record["inner"]["txn"], "sent_at": record["sent_at"],
                       "at": self._clock(), "shown": False}
            self._save([r for r in self._load() if r["user"] != user] + [request])

    def _forget(self, asked):
        """Drop the request ``(user, txn)``."""
        self._save([r for r in self._load() if (r["user"], r["txn"]) != asked])

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


class VerificationFailed(ExchangeFailed):
    doing = "verification"


class Verification(SasExchange):
    """The SAS exchange between two users: each MAC covers the sender's identity key, and
    a match marks the peer's (pinned) identity key verified."""

    PREFIX = "verify"
    Failed = VerificationFailed
    SILENCE = "did not answer the verification request"

    def __init__(self, client, peer, confirm, show, timeout=VERIFY_TIMEOUT):
        super().__init__(client, confirm, show, timeout)
        self._peer = peer
        self.peer_name = peer
        self._their_key = None

    def _from_peer(self, record):
        return record.get("from") == self._peer

    async def _send(self, payload):
        await self._client.send_control(self._peer, payload)

    def _parties(self, their_device):
        return (self._client.user, self._client.device), (self._peer, their_device)

    def _own_mac_value(self):
        return self._client.crypto.identity_key

    async def _their_mac_value(self):
        pinned = (await self._client.trusted_devices(self._peer, sending=False)) and \
            self._client.contacts.record(self._peer)
        self._their_key = pinned.get("pending") or pinned["identity_key"]
        return self._their_key

    def _mac_mismatch(self):
        return f"{self._peer}'s identity key does not match what the server gave us: NOT verified"

    def _not_done(self):
        return "NOT verified"

    async def initiate(self):
        answer = await self.start(
            f"Waiting for {safe(self._peer)} to run 'securechat verify {self._client.user}' "
            f"(for {self._timeout:g} s)...",
            # both asked at once: the request of the user whose name sorts first is answered
            crossed=lambda message: (self._client.user > self._peer
                                     and message["type"] == "verify.start"))
        if isinstance(answer, dict):
            return await self.respond(answer)
        return self._verified()

    async def respond(self, start):
        await self.answer(start)
        return self._verified()

    def _verified(self):
        self._client.contacts.mark_verified(self._peer, self._their_key)
        return self._their_key
