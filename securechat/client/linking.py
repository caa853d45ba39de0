"""Linking a new device to an account: ``devices link`` (new machine) and ``devices
approve CODE`` (a device of the account), a SAS exchange over Olm between the two.

::

    new device (pending, CODE)                  approving device (holds the account key)
    password login, keys.upload                 keys.query own user: CODE's self-signed
    prints "link code: CODE", waits             keys, not in the signed list
                                  <----  link.start {txn}
    link.accept {txn, commitment} ---->
                                  <----  link.key {txn, key}
    link.key {txn, key}           ---->
    (both show the emoji and ask y/n on standard input)
    link.mac {txn, mac}           <--->  link.mac {txn, mac}
                                         signs list version+1 with CODE, publishes it
                                  <----  link.account_key {txn, identity_seed, version}
    checks the seed's public key is the account key, keeps it: linked

Each MAC covers the sender's device ed25519 key, the other device's, and the account
identity key as the sender sees them, so equal emoji and matching MACs prove both
devices talk to each other (no relay in the middle) about the same account key.  The
steps are own-account sends to one device (the relay lets those reach a pending device);
the approving device reads only ``link.*`` steps from the device being linked
(``Client.link_peer``).  Any step may be answered ``link.cancel``; a side that waited
its timeout for the other sends one and fails naming the other device.
"""

import time

from nacl.signing import SigningKey
from twisted.internet import defer

from securechat import wire
from securechat.client import device_list
from securechat.client.contacts import verify
from securechat.client.exit_codes import EXIT_NOT_FOUND
from securechat.client.messaging import new_id
from securechat.client.render import safe
from securechat.client.sas_exchange import ExchangeFailed, SasExchange
from securechat.client.session import ClientError

def how_long(seconds):
    """``10 minutes``, or ``90 s`` under two minutes."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 120 else f"{round(seconds / 60)} minutes"


class LinkFailed(ExchangeFailed):
    doing = "link"


class LinkExchange(SasExchange):
    """This device's side of one link exchange with ``peer`` (a device of this account:
    ``(device, device keys)``), under the account key ``account_key``."""

    PREFIX = "link"
    Failed = LinkFailed
    SILENCE = "did not answer the link request"

    def __init__(self, client, peer, account_key, confirm, show, timeout, peer_name):
        super().__init__(client, confirm, show, timeout)
        self._peer_device, self._peer_keys = peer
        self._account_key = account_key
        self.peer_name = peer_name

    def _from_peer(self, record):
        return (record.get("from"), record.get("from_dev")) == (self._client.user,
                                                                 self._peer_device)

    async def _send(self, payload):
        await self._client.sender.send_to_own_device(
            self._peer_device, self._peer_keys,
            {"mid": new_id(), "room": None, "ts": int(time.time() * 1000), **payload})

    def _parties(self, their_device):
        user = self._client.user
        return (user, self._client.device), (user, self._peer_device)

    def _own_mac_value(self):
        return "|".join([self._client.crypto.ed25519, self._peer_keys["ed25519"],
                         self._account_key])

    async def _their_mac_value(self):
        return "|".join([self._peer_keys["ed25519"], self._client.crypto.ed25519,
                         self._account_key])

    def _mac_mismatch(self):
        return (f"{self.peer_name}'s keys or the account key it holds are not what this "
                "device was given: NOT linked")

    def _not_done(self):
        return "NOT linked"

    async def next_step(self, txn, expected, silence=None):
        """The peer's next ``link.EXPECTED`` step of ``txn`` (LinkFailed on a cancel or a
        timeout)."""
        return await self._next(txn, expected, silence=silence)

    async def send_step(self, payload):
        await self._send(payload)


class Links:
    """The link exchanges running on this client: decrypted ``link.*`` steps go to them
    (the client's ``on_control``)."""

    def __init__(self):
        self.running = []

    def control(self, record):
        for exchange in self.running:
            exchange.deliver(record)


def waiting_device(client, entry, code):
    """The keys of the device ``code`` waiting to be linked: self-signed keys the relay
    holds for this account (``pending`` in its own keys.query entry), in no signed list;
    ClientError (exit 6) when there is none."""
    listing = device_list.signed_list(client, entry, required=False)
    listed = listing["devices"] if listing else {}
    signed = (entry.get("pending") or {}).get(code)
    if signed is not None and code not in listed:
        keys = signed["device_keys"]
        if (keys.get("user"), keys.get("device")) == (client.user, code) and verify(
                keys["ed25519"], keys, signed["signature"]):
            return keys
    raise ClientError(f"no device waiting to link with code {code}", EXIT_NOT_FOUND)


async def approve(client, links, code, confirm, show, timeout):
    """``devices approve CODE`` on a device of the account: the SAS exchange with the
    device ``code``; once both people said yes, that device signed into the list and
    handed the account key.  Fire with the new list's version."""
    keys = waiting_device(client, await device_list.own_entry(client), code)
    exchange = LinkExchange(client, (code, keys), client.crypto.identity_key, confirm, show,
                            timeout, f"the new device {code}")
    client.linking = (code, keys)
    links.running.append(exchange)
    try:
        txn = await exchange.start(f"Waiting for the new device {safe(code)} "
                                   f"(for {timeout:g} s)...")
        version = (await device_list.add(client, {code: keys}))["version"]
        await exchange.send_step({"type": "link.account_key", "txn": txn,
                                  "identity_seed": client.crypto.identity_seed.hex(),
                                  "version": version})
        return version
    finally:
        links.running.remove(exchange)
        client.linking = None


async def link(client, links, confirm, show, timeout):
    """``devices link`` on the new machine: made a pending device (``join_account``; a
    run after an interrupted one goes on with the same device and code), print the code,
    answer the newest approval that was not called off, take the account key.  Fire with
    the approving device's id."""
    waiter = Approvals(client.user)
    links.running.append(waiter)  # before the login: steps may wait on the relay
    try:
        # Waits as long as the relay keeps this device pending (the rest of it, when
        # this run goes on from an earlier one), after which it would refuse it.
        account_key, wait = await client.join_account()
        show(f"link code: {client.device}")
        show(f"On a device of {safe(client.user)}'s account, run: securechat devices approve "
             f"{client.device}   (waiting {how_long(wait)})")
        await client.drain(timeout)  # what waited: approvals, and their cancellations
        start = await waiter.first(client.reactor, wait)
    finally:
        links.running.remove(waiter)
    if start is None:
        raise LinkFailed(f"no device of {client.user} approved this one within "
                         f"{how_long(wait)}: NOT linked")
    approver = start["from_dev"]
    approver_keys = (await client.trusted_devices(client.user, sending=False)).get(approver)
    if approver_keys is None:
        raise LinkFailed(f"{client.user}'s device {approver} is not signed by the account key: "
                         "NOT linked")
    exchange = LinkExchange(client, (approver, approver_keys), account_key, confirm, show,
                            timeout, f"{client.user}'s device {approver}")
    links.running.append(exchange)
    try:
        txn = await exchange.answer(start)
        handed = await exchange.next_step(txn, "account_key",
                                          silence="did not hand over the account key")
    finally:
        links.running.remove(exchange)
    seed = handed.get("identity_seed")
    try:
        public = wire.b64encode(bytes(SigningKey(bytes.fromhex(seed)).verify_key))
    except (TypeError, ValueError):
        public = None
    if public != account_key or not isinstance(handed.get("version"), int):
        raise LinkFailed(f"{client.user}'s device {approver} handed over a key that is not the "
                         "account key: NOT linked")
    client.become_linked(seed, handed["version"])
    return approver


class Approvals:
    """The ``link.start`` steps of this account's devices, less those called off
    (``link.cancel``: an approval that timed out while this device was away)."""

    def __init__(self, user):
        self._user = user
        self._open = {}  # txn -> the start, oldest first
        self._wanted = None

    def deliver(self, record):
        inner = record.get("inner") or {}
        if record.get("from") != self._user:
            return
        if record.get("type") == "link.start":
            self._open[inner.get("txn")] = {**inner, "from_dev": record["from_dev"]}
        elif record.get("type") == "link.cancel":
            self._open.pop(inner.get("txn"), None)
        self._answer()

    def _answer(self):
        if self._wanted is not None and not self._wanted.called and self._open:
            self._wanted.callback(list(self._open.values())[-1])

    async def first(self, reactor, wait):
        """The newest open approval, or the next one within ``wait`` seconds (None)."""
        self._wanted = defer.Deferred()
        timer = reactor.callLater(wait, lambda: self._wanted.called
                                  or self._wanted.callback(None))
        self._answer()
        try:
            return await self._wanted
        finally:
            if timer.active():
                timer.cancel()
