"""The account's signed device list, as one of its devices changes it.

The list is the relay's truth of which devices an account has: contacts
encrypt only to the devices it names, and the relay removes a device the
moment a list without it is published (its keys, its waiting messages, its
logins).  Only a device holding the account identity key can sign one, so a
change starts from the list the relay publishes, checked against our own
identity key (a relay cannot slip in a list of its own), and publishes the
next version with the other entries exactly as they were (``added``
included, when the list has it).
"""

import time

from securechat.client.contacts import verify
from securechat.client.exit_codes import EXIT_NOT_FOUND, EXIT_USAGE
from securechat.client.protocol import RemoteError
from securechat.client.session import ClientError, refusal


async def published_list(client):
    """The account's device list as the relay publishes it, once its signature is checked
    with this account's identity key."""
    user = client.user
    entry = (await client.request("keys.query", users=[user]))["users"][user]
    listing, signature = entry.get("device_list"), entry.get("device_list_signature")
    if (not isinstance(listing, dict) or listing.get("user") != user
            or not verify(client.crypto.identity_key, listing, signature or "")):
        raise ClientError(f"the relay's device list of {user} is not signed by your account "
                          "key: not changing it")
    return listing


async def publish_next(client, listing, devices):
    """Sign and publish the version after ``listing`` holding ``devices``; the relay's
    answer (``removed``: the devices it removed)."""
    following = {"user": listing["user"], "version": listing["version"] + 1,
                 "ts": int(time.time() * 1000), "devices": devices}
    try:
        answer = await client.request("devices.publish", device_list=following,
                                      signature=client.crypto.sign_as_user(following))
    except RemoteError as e:
        if e.code == "stale_version":
            raise ClientError("your device list changed meanwhile (on another of your "
                              "devices): run the command again") from None
        raise refusal(e) from None
    with client.store.transaction():
        client.store.set_meta("device_list_version", str(following["version"]))
    client.forget_devices()
    return answer


async def remove_device(client, device):
    """Publish the account's list without ``device``: the relay removes it at once."""
    if device == client.device:
        raise ClientError(f"{device} is this device: remove it from another of your devices "
                          "(or delete the account: securechat account delete)", EXIT_USAGE)
    listing = await published_list(client)
    if device not in listing["devices"]:
        raise ClientError(f"{client.user}'s device list has no device {device} (see "
                          "'securechat devices')", EXIT_NOT_FOUND)
    kept = {d: entry for d, entry in listing["devices"].items() if d != device}
    return await publish_next(client, listing, kept)
