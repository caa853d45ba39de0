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

Any step may be answered with ``verify.cancel {txn, reason}``.
"""

import secrets

from twisted.internet import defer

from securechat.client.render import safe
from securechat.crypto.sas import SasSession, commitment

TIMEOUT = 180


class VerificationFailed(Exception):
    pass


class Verification:
    def __init__(self, client, peer, confirm, show, timeout=TIMEOUT):
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

    async def _next(self, txn, expected):
        timer = self._client.reactor.callLater(self._timeout, self._incoming.put, None)
        try:
            while True:
                message = await self._incoming.get()
                if message is None:
                    raise VerificationFailed(f"{self._peer} did not answer in time")
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
                   f"'securechat verify {self._client.user}'...")
        accept = await self._next(txn, "verify.accept")
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
        their_mac = await self._next(txn, "verify.mac")
        pinned = (await self._client.trusted_devices(self._peer, sending=False)) and \
            self._client.contacts.record(self._peer)
        their_key = pinned.get("pending") or pinned["identity_key"]
        if not sas.mac_matches(their_key, mac_info + "|" + self._peer, their_mac.get("mac", "")):
            raise VerificationFailed(
                f"{self._peer}'s identity key does not match what the server gave us: NOT verified")
        self._client.contacts.mark_verified(self._peer, their_key)
        return their_key

    async def _cancel(self, txn, reason):
        await self._send({"type": "verify.cancel", "txn": txn, "reason": reason})
