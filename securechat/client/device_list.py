"""The account's signed device list, as a device holding the account key extends it.

The list is the truth of which devices the account has (the relay routes to what it
names, contacts encrypt to what it signs), so this device never writes one from what it
remembers: it reads the relay's current list, checks it is signed by the account key,
and publishes the next version with what it adds.  A list built from this device alone
would drop every other device (the relay removes what a new list omits).

Format 2 (``FORMAT``): each listed device carries ``added``, ms since the epoch, set by
the device that signed it in.  Lists of accounts made before it have none: the first
login of a device holding the account key re-signs such a list in format 2 (``migrate``),
once; the meta ``device_list_format`` remembers it is done.
"""

import time

from twisted.logger import Logger

from securechat.client.contacts import verify
from securechat.client.protocol import RemoteError

FORMAT = 2
FORMAT_META = "device_list_format"
"""Key store meta: ``"2"`` once this device knows its account's list is in format 2."""

log = Logger()


class DeviceListError(Exception):
    """The relay's list of this account cannot be extended safely; the message says why."""


def listed_entry(keys, added):
    """A device's entry in a format 2 list."""
    return {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"], "added": added}


def now_ms():
    return int(time.time() * 1000)


async def own_entry(client):
    """The relay's ``keys.query`` entry of this account (fresh, never the cached one)."""
    result = await client.request("keys.query", users=[client.user])
    return result["users"][client.user]


def signed_list(client, entry):
    """The account's list in ``entry`` (a keys.query entry), checked: None when the
    account never published one; DeviceListError when its signature is not the account
    key's (a relay handing out a list of its own)."""
    listing = entry.get("device_list")
    if listing is None:
        return None
    if entry.get("identity_key") != client.crypto.identity_key:
        raise DeviceListError("the relay gives another account key for your account than the "
                              "one this device holds: not publishing a device list")
    if listing.get("user") != client.user or not verify(
            client.crypto.identity_key, listing, entry.get("device_list_signature") or ""):
        raise DeviceListError("the relay's device list of your account is not signed by your "
                              "account key: not publishing over it")
    return listing


async def add(client, devices):
    """Publish the current list with ``devices`` (``{id: device keys}``) added (``added``
    now) and fire with the new version: the current list re-read and checked first, so
    no device of it is dropped.  A list published meanwhile by another device of the
    account (``stale_version``) is read again, once."""
    for attempt in (1, 2):
        listing = signed_list(client, await own_entry(client))
        current = dict(listing["devices"]) if listing else {}
        for device, keys in devices.items():
            current[device] = listed_entry(keys, now_ms())
        try:
            return await _publish(client, listing, current)
        except RemoteError as e:
            if e.code != "stale_version" or attempt == 2:
                raise


async def _publish(client, listing, devices):
    """Sign and publish the version after ``listing``'s (and after this device's own) with
    ``devices``; remember the version and the format; fire with the version."""
    known = int(client.store.meta("device_list_version", "0"))
    version = max(listing["version"] if listing else 0, known) + 1
    new = {"user": client.user, "version": version, "ts": now_ms(), "devices": devices}
    await client.request("devices.publish", device_list=new,
                         signature=client.crypto.sign_as_user(new))
    with client.store.transaction():
        client.store.set_meta("device_list_version", str(version))
        client.store.set_meta(FORMAT_META, str(FORMAT))
    return version


async def migrate(client):
    """At a login: re-sign the account's list in format 2 when it is older (no ``added``);
    ``added`` is when the relay says the device was created, else now.  Done once per
    device (the meta says so); a failure is logged and tried at the next login."""
    if client.store.meta(FORMAT_META) == str(FORMAT):
        return
    try:
        listing = signed_list(client, await own_entry(client))
        if listing is not None and any("added" not in d for d in listing["devices"].values()):
            created = {d["device"]: d["created"]
                       for d in (await client.request("devices.list"))["devices"]}
            await _publish(client, listing, {
                device: listed_entry(keys, keys.get("added") or created.get(device) or now_ms())
                for device, keys in listing["devices"].items()})
            log.info("re-signed the account's device list in format {version}", version=FORMAT)
        else:
            with client.store.transaction():
                client.store.set_meta(FORMAT_META, str(FORMAT))
    except (RemoteError, DeviceListError) as e:
        log.warn("could not move the account's device list to format {version}: {error}",
                 version=FORMAT, error=str(e))
