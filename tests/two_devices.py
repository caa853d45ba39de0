"""A second device of an account, made by hand, for the tests of what several devices do.

It stands in for the link ceremony only (``securechat devices link`` on the new machine,
``devices approve`` on the old one): the end state is the one a link leaves -- a data
dir whose key store holds the account's identity key and its own device keys, those keys
published, and a device list signed by the identity key that names both devices -- but
the seed is read here from the first device's key store (opened with the password)
instead of travelling over Olm after a SAS.  Everything after that is the real thing:
the second device logs in (by password proof, then by its device key), and the relay,
the first device and every contact see a signed second device.
"""

import time

from twisted.internet import reactor

from securechat.client import settings as client_settings
from securechat.client.session import OTK_TARGET, PASSWORD_KEY_AT, Client, new_device_id
from securechat.crypto.device import DeviceCrypto
from securechat.crypto.keystore import KeyStore
from tests.processes import write_client_config

PASSWORD = "correct horse battery staple"


def account_secrets(data_dir, password=PASSWORD):
    """The identity seed and password-key relay id in the key store of ``data_dir`` (no
    process may hold that store meanwhile: it is locked to one)."""
    store = KeyStore.open(str(data_dir), password)
    try:
        return store.secret("identity_seed"), store.meta(PASSWORD_KEY_AT)
    finally:
        store.close()


async def second_device(first_data_dir, directory, user, port, password=PASSWORD, **config):
    """Make ``user``'s second device: its config under ``directory`` (its data dir
    ``directory``/``user``), its key store holding the account's identity seed, logged in
    by password proof, its keys uploaded, and a device list version+1 naming every listed
    device and this one published, signed by the identity key.  Fires with its config path
    and device id."""
    seed, password_key_at = account_secrets(first_data_dir, password)
    path = write_client_config(str(directory), user, port, **config)
    settings = client_settings.load(path)
    device = new_device_id()
    store = KeyStore.create(settings.data_dir, password, {
        "user": user, "device": device, "server": settings.server})
    try:
        DeviceCrypto.create(store)
        with store.transaction():
            store.set_secret("identity_seed", seed)  # what link.account_key would hand over
            store.set_meta(PASSWORD_KEY_AT, password_key_at)
    finally:
        store.close()
    client = Client(reactor, settings, password)
    client.unlock()
    try:
        await client._connect()
        await client._login()  # no device_list_version yet: by password proof
        await _publish_keys_and_list(client)
    finally:
        await client.disconnect()
    return path, device


async def _publish_keys_and_list(client):
    """Upload the device's keys, then sign the account's current list plus this device."""
    user, device, crypto = client.user, client.device, client.crypto
    keys = crypto.device_keys(user, device)
    await client.request("keys.upload", device_keys=keys, signature=crypto.sign_as_device(keys),
                         one_time_keys=crypto.one_time_keys(user, device, OTK_TARGET),
                         fallback_key=crypto.fallback_key(user, device))
    crypto.mark_published()
    entry = (await client.request("keys.query", users=[user]))["users"][user]
    current = entry["device_list"]
    listing = {"user": user, "version": current["version"] + 1, "ts": int(time.time() * 1000),
               "devices": {**current["devices"],
                           device: {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"]}}}
    await client.request("devices.publish", device_list=listing,
                         signature=crypto.sign_as_user(listing))
    with client.store.transaction():
        client.store.set_meta("device_list_version", str(listing["version"]))
