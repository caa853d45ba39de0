"""The account's signed device list, as one of its devices changes it.

The list is the relay's truth of which devices an account has: contacts encrypt only to
the devices it names, and the relay removes a device the moment a list without it is
published (its keys, its waiting messages, its logins).  Only a device holding the
account identity key can sign one, so a change never starts from what this device
remembers: it starts from the list the relay publishes, checked against our own identity
key (a relay cannot slip in a list of its own), and publishes the next version with the
other entries exactly as they were (``added`` included).  A list built from this device
alone would drop every other device.

Format 2 (``FORMAT``): each listed device carries ``added``, ms since the epoch, set by
the device that signed it in.  Lists of accounts made before it have none: the first
login of a device holding the account key re-signs such a list in format 2 (``migrate``),
once; the meta ``device_list_format`` remembers it is done.
"""

import time

from twisted.logger import Logger

from securechat.client import session  # ClientError, refusal (session imports this module)
from securechat.client.contacts import verify
from securechat.client.exit_codes import EXIT_NOT_FOUND, EXIT_USAGE
from securechat.client.protocol import RemoteError

FORMAT = 2
FORMAT_META = "device_list_format"
"""Key store meta: ``"2"`` once this device knows its account's list is in format 2."""

log = Logger()


def now_ms():
    return int(time.time() * 1000)


def listed_entry(keys, added):
    """A device's entry in a format 2 list."""
    return {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"], "added": added}


async def own_entry(client):
    """The relay's ``keys.query`` entry of this account (fresh, never the cached one)."""
    result = await client.request("keys.query", users=[client.user])
    return result["users"][client.user]


def signed_list(client, entry, required=True):
    """The account's list in ``entry`` (a keys.query entry) once its signature is checked
    with this account's identity key; None when the account never published one and it
    is not ``required``."""
    user = client.user
    listing, signature = entry.get("device_list"), entry.get("device_list_signature")
    if listing is None and not required:
        return None
    if (not isinstance(listing, dict) or listing.get("user") != user
            or not verify(client.crypto.identity_key, listing, signature or "")):
        raise session.ClientError(f"the relay's device list of {user} is not signed by your "
                                  "account key: not changing it")
    return listing


async def publish_next(client, listing, devices):
    """Sign and publish the version after ``listing`` (None: the first) holding
    ``devices``; the relay's answer (``removed``: the devices it removed)."""
    following = {"user": client.user, "version": (listing["version"] if listing else 0) + 1,
                 "ts": now_ms(), "devices": devices}
    try:
        answer = await client.request("devices.publish", device_list=following,
                                      signature=client.crypto.sign_as_user(following))
    except RemoteError as e:
        if e.code == "stale_version":
            raise session.ClientError("your device list changed meanwhile (on another of "
                                      "your devices): run the command again") from None
        raise session.refusal(e) from None
    with client.store.transaction():
        client.store.set_meta("device_list_version", str(following["version"]))
        client.store.set_meta(FORMAT_META, str(FORMAT))
    client.forget_devices()
    return {**answer, "version": following["version"]}


def still_held(listing, entry):
    """The entries of ``listing`` whose device the relay still has keys of: a device its
    operator removed (``securechat-admin devices remove``) is left out of the next list,
    which the relay would otherwise refuse (it checks every listed device's keys)."""
    return {device: keys for device, keys in listing["devices"].items()
            if device in entry["devices"]}


async def add(client, devices):
    """Publish the current list with ``devices`` (``{id: device keys}``) added (``added``
    now): the current list re-read and checked first, so no device of it is dropped.
    The relay's answer, with the new ``version``."""
    entry = await own_entry(client)
    listing = signed_list(client, entry, required=False)
    current = still_held(listing, entry) if listing else {}
    for device, keys in devices.items():
        current[device] = listed_entry(keys, now_ms())
    return await publish_next(client, listing, current)


async def only(client, devices):
    """Publish a list holding ``devices`` alone (a recovery: every lost device goes), as
    the version after the account's current list (checked with the account key, which a
    recovered device holds again).  The relay's answer, with the new ``version``."""
    listing = signed_list(client, await own_entry(client), required=False)
    return await publish_next(client, listing, {
        device: listed_entry(keys, now_ms()) for device, keys in devices.items()})


async def remove_device(client, device):
    """Publish the account's list without ``device``: the relay removes it at once."""
    if device == client.device:
        raise session.ClientError(f"{device} is this device: remove it from another of your "
                                  "devices (or delete the account: securechat account delete)",
                                  EXIT_USAGE)
    entry = await own_entry(client)
    listing = signed_list(client, entry)
    if device not in listing["devices"]:
        raise session.ClientError(f"{client.user}'s device list has no device {device} (see "
                                  "'securechat devices')", EXIT_NOT_FOUND)
    kept = {d: keys for d, keys in still_held(listing, entry).items() if d != device}
    return await publish_next(client, listing, kept)


async def migrate(client):
    """At a login: re-sign the account's list in format 2 when it is older (no ``added``);
    ``added`` is when the relay says the device was created, else now.  Done once per
    device (the meta says so); a failure is logged and tried at the next login."""
    if client.store.meta(FORMAT_META) == str(FORMAT):
        return
    try:
        entry = await own_entry(client)
        listing = signed_list(client, entry, required=False)
        if listing is not None and any("added" not in d for d in listing["devices"].values()):
            created = {d["device"]: d["created"]
                       for d in (await client.request("devices.list"))["devices"]}
            await publish_next(client, listing, {
                device: listed_entry(keys, keys.get("added") or created.get(device) or now_ms())
                for device, keys in still_held(listing, entry).items()})
            log.info("re-signed the account's device list in format {version}", version=FORMAT)
        else:
            with client.store.transaction():
                client.store.set_meta(FORMAT_META, str(FORMAT))
    except (RemoteError, session.ClientError) as e:
        log.warn("could not move the account's device list to format {version}: {error}",
                 version=FORMAT, error=str(e))
