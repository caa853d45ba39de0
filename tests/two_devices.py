"""A second real device of an account, made by hand for tests.

This stands in for ``securechat devices link``'s ceremony only (the SAS between the two
devices and the hand-over of the account key over Olm): the test reads the account
identity seed from the first device's key store itself, with its password.  Everything
else is what a linked device is: its own data directory and key store (holding the account
key), logged in by password proof, its keys uploaded (pending until a list names it), then
a device list naming both devices signed by the account key and published, after which it
logs in by its device key like any device.
"""

from twisted.internet import reactor

from securechat.client import settings as client_settings
from securechat.client.device_list import publish_next, published_list
from securechat.client.session import Client, new_device_id
from securechat.crypto.device import DeviceCrypto
from securechat.crypto.keystore import KeyStore


async def add_device(first_config, second_config, password):
    """Make the device of ``second_config`` (an ini naming the same user as
    ``first_config``, another data dir) a second device of that account: fire with its id.
    No process may hold the first device's key store meanwhile (its lock)."""
    first = KeyStore.open(client_settings.load(first_config).data_dir, password)
    try:
        seed = first.secret("identity_seed")
    finally:
        first.close()
    settings = client_settings.load(second_config)
    store = KeyStore.create(settings.data_dir, password, {
        "user": settings.username, "device": new_device_id(), "server": settings.server})
    DeviceCrypto.create(store)
    with store.transaction():
        store.set_secret("identity_seed", seed)
    store.close()
    client = Client(reactor, settings, password)
    client.unlock()
    try:
        await client._connect()
        await client._login()  # by password proof: the relay does not know this device
        keys = await client._upload_device_keys()
        listing = await published_list(client)
        await publish_next(client, listing, {
            **listing["devices"],
            client.device: {"curve25519": keys["curve25519"], "ed25519": keys["ed25519"]}})
        return client.device
    finally:
        await client.disconnect()
