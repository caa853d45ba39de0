"""One SAS exchange over Olm between two devices, whatever it proves.

``securechat verify`` (two users: each proves its account identity key to the other) and
``securechat devices approve`` / ``devices link`` (two devices of one account: each
proves its device key and the account key both see) run the same steps::

    initiator                              responder
    PREFIX.start {txn}            ---->
                                  <----    PREFIX.accept {txn, commitment}
    PREFIX.key {txn, key}         ---->
                                  <----    PREFIX.key {txn, key}
    (initiator checks the commitment; both show the emoji and ask the person)
    PREFIX.mac {txn, mac}         <--->    PREFIX.mac {txn, mac}
    (each checks the other's MAC over the keys it expects)

Any step may be answered with ``PREFIX.cancel {txn, reason}``; a side that waited its
timeout for the other's next step sends one and fails, naming the other side and the
time waited.  Subclasses say who the peer is, how a step reaches it, and what the MACs
cover (``SasExchange`` hooks).
"""

import secrets

from twisted.internet import defer
from twisted.logger import Logger

from securechat.client.render import safe
from securechat.crypto.sas import SasSession, commitment


class ExchangeFailed(Exception):
    """The exchange ended without proving anything; the message says why."""

    doing = "exchange"


class SasExchange:
    """One side of one exchange; ``deliver`` feeds it the peer's decrypted steps."""

    log = Logger()
    PREFIX = None
    """The steps' type prefix (``verify``, ``link``)."""
    Failed = ExchangeFailed
    SILENCE = "did not answer"
    """What a timeout says the peer did not do (before the emoji were shown)."""

    def __init__(self, client, confirm, show, timeout):
        self._client = client
        self._confirm = confirm
        self._show = show
        self._timeout = timeout
        self._incoming = defer.DeferredQueue()

    # -- hooks ----------------------------------------------------------------------

    peer_name = None
    """Who the other side is, as the person reads it in a message."""

    def _from_peer(self, record):
        """Whether a decrypted message came from the other side."""
        raise NotImplementedError

    async def _send(self, payload):
        raise NotImplementedError

    def _parties(self, their_device):
        """``(me, them)``: the ``(user, device)`` of each side, as the SAS info names them."""
        raise NotImplementedError

    def _own_mac_value(self):
        """What this side's MAC covers."""
        raise NotImplementedError

    async def _their_mac_value(self):
        """What the peer's MAC must cover for the exchange to prove anything."""
        raise NotImplementedError

    def _mac_mismatch(self):
        """Why the exchange fails when the peer's MAC does not match."""
        raise NotImplementedError

    # -- the steps ------------------------------------------------------------------

    def deliver(self, record):
        """Feed a received message (routed here by the client): the peer's steps are kept."""
        if self._from_peer(record) and str(record.get("type", "")).startswith(self.PREFIX + "."):
            self._incoming.put(record["inner"])

    def _step(self, name):
        return f"{self.PREFIX}.{name}"

    async def _next(self, txn, expected, crossed=lambda message: False, silence=None):
        """The peer's next step of ``txn``, or a message ``crossed`` accepts (a request of
        theirs that crossed ours); Failed saying the peer's ``silence`` when nothing came
        within the timeout."""
        timer = self._client.reactor.callLater(self._timeout, self._incoming.put, None)
        try:
            while True:
                message = await self._incoming.get()
                if message is None:
                    await self._cancel(txn, "timed out")
                    raise self.Failed(f"{self.peer_name} {silence or self.SILENCE} "
                                      f"within {self._timeout:g} s")
                if crossed(message):
                    return message
                if message.get("txn") != txn:
                    continue
                if message["type"] == self._step("cancel"):
                    raise self.Failed(f"{self.peer_name} cancelled: {message.get('reason')}")
                if message["type"] == self._step(expected):
                    return message
        finally:
            if timer.active():
                timer.cancel()

    async def start(self, waiting, crossed=lambda message: False):
        """Send the first step and run the initiator's side; ``waiting`` is said meanwhile.
        A message ``crossed`` accepts instead of the answer is returned as it came."""
        txn = secrets.token_hex(8)
        start = {"type": self._step("start"), "txn": txn}
        await self._send(start)
        self._show(waiting)
        accept = await self._next(txn, "accept", crossed)
        if accept["type"] != self._step("accept"):
            return accept
        sas = SasSession()
        await self._send({"type": self._step("key"), "txn": txn, "key": sas.public_key})
        their = await self._next(txn, "key")
        if commitment(their["key"], start) != accept.get("commitment"):
            await self._cancel(txn, "commitment mismatch")
            raise self.Failed("the other side's key does not match its commitment (attack?)")
        sas.establish(their["key"])
        await self._compare(txn, sas, sas.public_key, their["key"], True, their["from_dev"])
        return txn

    async def answer(self, start):
        """Run the responder's side of ``start`` (the peer's first step); fire with its txn."""
        txn = start["txn"]
        sas = SasSession()
        await self._send({"type": self._step("accept"), "txn": txn,
                          "commitment": commitment(sas.public_key, {"type": self._step("start"),
                                                                    "txn": txn})})
        their = await self._next(txn, "key")
        sas.establish(their["key"])
        await self._send({"type": self._step("key"), "txn": txn, "key": sas.public_key})
        await self._compare(txn, sas, their["key"], sas.public_key, False, their["from_dev"])
        return txn

    async def _compare(self, txn, sas, initiator_key, responder_key, initiator, their_device):
        me, them = self._parties(their_device)
        first, second = (me, them) if initiator else (them, me)
        info = "|".join([f"SECURECHAT_SAS_V1{self._info_tag()}", *first, initiator_key,
                         *second, responder_key, txn])
        emoji, decimals = sas.short_string(info)
        self._show(f"Compare with {safe(self.peer_name)}:\n  {emoji}\n  or the numbers: {decimals}")
        if not await self._confirm():
            await self._cancel(txn, "the emoji did not match")
            raise self.Failed(f"you said the emoji do not match: {self._not_done()}")
        mac_info = f"SECURECHAT_MAC_V1{self._info_tag()}|{txn}"
        await self._send({"type": self._step("mac"), "txn": txn,
                          "mac": sas.mac(self._own_mac_value(), mac_info + self._mac_name(me))})
        their_mac = await self._next(txn, "mac", silence="did not confirm the emoji")
        expected = await self._their_mac_value()
        if not sas.mac_matches(expected, mac_info + self._mac_name(them),
                               their_mac.get("mac", "")):
            raise self.Failed(self._mac_mismatch())

    def _info_tag(self):
        """What sets this kind of exchange's SAS and MACs apart from another kind's (none
        for ``verify``, whose strings predate the others)."""
        return "" if self.PREFIX == "verify" else "_" + self.PREFIX.upper()

    def _mac_name(self, party):
        """Whose MAC it is, in the MAC's info: the user for ``verify`` (as before), the
        user and the device when both sides are one user's devices."""
        return "|" + (party[0] if self.PREFIX == "verify" else "|".join(party))

    def _not_done(self):
        return "NOT done"

    async def _cancel(self, txn, reason):
        """Tell the peer this exchange is over (best effort: it is over anyway, and the
        peer's own wait is bounded)."""
        try:
            await self._send({"type": self._step("cancel"), "txn": txn, "reason": reason})
        except Exception as e:
            self.log.info("could not tell {peer} the exchange ended: {error}",
                          peer=self.peer_name, error=e)
