"""The device key directory: upload, query and claim of published keys.

The server cannot read messages, but it can refuse keys that their owner
did not sign: every device key set is self-signed with the device's
Ed25519 key, every one-time and fallback key is signed by that same key,
and a user's device list is signed by the user's identity key.  What is
signed is the canonical JSON given in docs/protocol.rst.

The signed list is the truth of which devices an account has: its devices
are the current ones that others query, claim keys of and encrypt to; a
device with keys in no list is *pending* (being linked) and is shown only
to its own account (``pending`` in ``keys.query``), whose devices may claim
its keys to talk to it.  Publishing a list removes the listed devices it
leaves out (``IStore.set_device_list``), and the relay closes them at once.
"""

import json

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from twisted.internet import defer
from twisted.logger import Logger

from securechat import wire
from securechat.server.accounts import no_such_user
from securechat.server.auth import device_removed
from securechat.store import errors as store_errors
from securechat.wire import ProtocolError, canonical_json


def verify_signature(public_key_b64, signed_obj, signature_b64, what):
    """Raise ProtocolError ``bad_signature`` unless the signature covers ``signed_obj``."""
    try:
        VerifyKey(wire.b64decode(public_key_b64)).verify(
            canonical_json(signed_obj), wire.b64decode(signature_b64)
        )
    except (BadSignatureError, ValueError):
        raise ProtocolError("bad_signature", f"the signature of the {what} does not verify")


def one_time_key_payload(user, device, kid, key, fallback):
    """What a device signs for each one-time (or fallback) key it publishes."""
    return {"user": user, "device": device, "kid": kid, "key": key, "fallback": fallback}


class KeyDirectory:
    log = Logger()

    def __init__(self, store, directory, relay, claim_limits, low_water, max_devices,
                 link_window_ms):
        self._store = store
        self._directory = directory
        self._relay = relay
        self._claim_limits = claim_limits  # guards.KeyClaimLimits
        self._low_water = low_water
        self._max_devices = max_devices  # [accounts] max_devices
        self._link_window_ms = link_window_ms  # [accounts] link_window_minutes

    async def upload(self, user, device, fields):
        """Store a device's signed keys; answer with the device's key counts."""
        device_keys = fields["device_keys"]
        if device_keys is not None:
            await self._upload_device_keys(user, device, device_keys, fields["signature"])
        signing_key = await self._device_signing_key(user, device)
        otks = fields["one_time_keys"] or {}
        checked = []
        for kid, signed in otks.items():
            payload = one_time_key_payload(user, device, kid, signed["key"], False)
            verify_signature(signing_key, payload, signed["signature"], f"one-time key {kid}")
            checked.append((kid, signed["key"], signed["signature"]))
        fallback = fields["fallback_key"] or {}
        for kid, signed in fallback.items():
            payload = one_time_key_payload(user, device, kid, signed["key"], True)
            verify_signature(signing_key, payload, signed["signature"], f"fallback key {kid}")
        try:
            if checked:
                await self._store.add_one_time_keys(user, device, checked)
        except store_errors.KeyConflict as e:
            raise ProtocolError("key_conflict", str(e) or "a one-time key id was already used")
        for kid, signed in fallback.items():
            await self._store.set_fallback_key(user, device, kid, signed["key"], signed["signature"])
        return await self._store.key_counts(user, device)

    async def _upload_device_keys(self, user, device, device_keys, signature):
        if signature is None:
            raise ProtocolError("missing_field", "field 'signature' is missing")
        if device_keys["user"] != user or device_keys["device"] != device:
            raise ProtocolError(
                "bad_field", "device_keys must name the logged-in user and device"
            )
        verify_signature(device_keys["ed25519"], device_keys, signature, "device keys")
        try:
            current = await self._store.set_device_keys(
                user, device, canonical_json(device_keys).decode("utf-8"), signature,
                self._max_devices)
        except store_errors.KeyConflict:
            raise ProtocolError(
                "key_conflict", f"device {device} already published other identity keys"
            )
        except store_errors.DeviceRemoved:
            raise device_removed(user, device)
        except store_errors.TooManyDevices:
            raise ProtocolError(
                "too_many_devices", f"{user} already has the most devices this relay allows "
                                    f"({self._max_devices}, and one being linked); remove one "
                                    "first (securechat devices remove ID)")
        if current:  # an account with no list yet: its devices are current at once
            self._directory.changed(user)
            self._relay.devices_changed(user, {"added": [device]})
            await self._relay.bus.devices_changed(user, {"added": [device]})

    async def _device_signing_key(self, user, device):
        for row in await self._store.get_devices(user):
            if row["device"] == device:
                return json.loads(row["device_keys"])["ed25519"]
        if await self._store.removed_at(user, device) is not None:
            raise device_removed(user, device)
        raise ProtocolError(
            "no_device_keys", "upload this device's identity keys before its one-time keys"
        )

    async def publish_device_list(self, user, device_list, signature):
        """Store the user's signed device list after checking it against the known devices,
        and make it the truth: devices it leaves out are removed (and closed), pending ones
        it takes in become current."""
        account = await self._store.get_account(user)
        if device_list["user"] != user:
            raise ProtocolError("bad_field", "device_list.user must be the logged-in user")
        if len(device_list["devices"]) > self._max_devices:
            raise ProtocolError(
                "too_many_devices", f"a device list may hold at most {self._max_devices} "
                                    "devices on this relay")
        verify_signature(account["identity_key"], device_list, signature, "device list")
        known = {
            row["device"]: json.loads(row["device_keys"])
            for row in await self._store.get_devices(user)
        }
        for dev, keys in device_list["devices"].items():
            if not _same_keys(known.get(dev), keys):
                raise _not_published(dev)
        try:
            changes = await self._store.set_device_list(
                user, device_list["version"], canonical_json(device_list).decode("utf-8"),
                signature, list(device_list["devices"]), self._link_window_ms)
        except store_errors.StaleVersion:
            raise ProtocolError(
                "stale_version", "the device list version must be above the published one"
            )
        except store_errors.UnknownDevice as e:  # removed meanwhile
            raise _not_published(e.args[0])
        self._directory.changed(user)
        self._relay.devices_changed(user, changes)
        await self._relay.bus.devices_changed(user, changes)
        if changes["removed"]:
            self.log.info("User {user} removed devices {devices}", user=user,
                          devices=", ".join(changes["removed"]))
        return {"version": device_list["version"], **changes}

    async def query(self, users, asker):
        """Identity key, signed device list and signed keys of each user's current devices;
        for the asker's own account also its ``pending`` devices (being linked), with when
        each published its keys, so one of its devices can find the one it links."""
        result = {}
        for user in users:
            account = await self._store.get_account(user)
            if account is None:
                raise await no_such_user(self._store, user)
            listed = await self._store.get_device_list(user)
            devices = await self._store.get_devices(user)
            result[user] = {
                "identity_key": account["identity_key"],
                "device_list": json.loads(listed["device_list"]) if listed else None,
                "device_list_signature": listed["signature"] if listed else None,
                "devices": _signed_keys(row for row in devices if row["listed"]),
            }
            if user == asker:
                result[user]["pending"] = _signed_keys(
                    (row for row in devices if not row["listed"]), with_created=True)
        return {"users": result}

    async def claim(self, claimer, wanted):
        """One key per requested device: a one-time key, or the flagged fallback key.

        Of a current device, or of a pending device of the claimer's own account
        (to talk to the device it links).

        Limited per claimer and per device (``KeyClaimLimits``); a device whose
        one-time keys run low is told so, to top them up.
        """
        self._claim_limits.check_size(sum(len(devices) for devices in wanted.values()))
        pairs = []
        for user, devices in wanted.items():
            current = {row["device"] for row in await self._store.get_devices(user)
                       if row["listed"] or user == claimer}  # own pending devices too
            if not current and await self._store.get_account(user) is None:
                raise ProtocolError("unknown_user", f"no user named {user!r}")
            for device in devices:
                if device not in current:
                    raise ProtocolError("unknown_device", f"user {user} has no device {device}")
                pairs.append((user, device))
        rationed = await self._claim_limits.admit(claimer, pairs)
        claimed = await self._store.claim_keys(pairs, rationed)
        keys = {}
        for (user, device), key in claimed.items():
            keys.setdefault(user, {})[device] = {
                "kid": key["kid"],
                "key": key["key"],
                "signature": key["signature"],
                "fallback": bool(key["fallback"]),
            }
        for user, device in {pair for pair, key in claimed.items() if not key["fallback"]}:
            if self._relay.online(user, device):  # an offline one learns it at its login
                d = defer.ensureDeferred(self._warn_if_low(user, device))
                d.addErrback(self._low_check_failed, user, device)
        return {"keys": keys}

    async def _warn_if_low(self, user, device):
        """Tell an online device whose one-time keys fell below the low-water mark.

        Not awaited by the claim: its answer must not wait for a read per key,
        nor fail after the keys it hands out were committed as claimed."""
        counts = await self._store.key_counts(user, device)
        if counts["otk_count"] < self._low_water:
            self._relay.push_event(user, device, wire.encode({"event": "keys.low", **counts}))

    def _low_check_failed(self, failure, user, device):
        if not failure.check(store_errors.StoreUnavailable):  # then: told at its next claim
            self.log.failure("Checking the one-time keys left to {user}/{device} failed",
                             failure, user=user, device=device)


def _same_keys(published, listed):
    """Whether a list's entry names the keys a device published (``added`` aside)."""
    return published is not None and (published["curve25519"], published["ed25519"]) == (
        listed["curve25519"], listed["ed25519"])


def _not_published(device):
    return ProtocolError("unknown_device", f"device {device} has not published these keys")


def _signed_keys(rows, with_created=False):
    """``{device: {"device_keys", "signature"}}`` (and ``created``) of device rows."""
    return {row["device"]: {"device_keys": json.loads(row["device_keys"]),
                            "signature": row["signature"],
                            **({"created": row["created"]} if with_created else {})}
            for row in rows}
