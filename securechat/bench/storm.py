"""W6, the reconnect storm: every device logs in at once, as after a relay restart.

The accounts and their devices' published keys are written straight into
the relay's store (through ``IStore``, as registering and ``keys.upload``
would leave them): registering 10,000 accounts over the wire would cost
10,000 more connections, set-up that measures nothing of a login.
The relay is then restarted and every device connects and logs in by its
device key (TLS handshake, ``login.challenge``, a signed ``login``), at
most ``concurrency`` handshakes under way at once; the figure is the time
until the last one is logged in.
"""

import time

from securechat import wire
from securechat.bench.peers import DEVICE, Peer, distribution
from securechat.bench.workloads import Window, bounded_gather, close_all
from securechat.store import make_store

SEED_CONCURRENCY = 16
"""Accounts written to the store at once while seeding (the store serialises them anyway)."""


async def seed(server, peers):
    """Write each peer's account and published device keys into the relay's store."""
    config = server.store_config()
    store = make_store(config.database, config.data_dir)
    await store.start()
    try:
        async def write(peer):
            await store.create_account(peer.user,
                                       wire.b64encode(bytes(peer.password.verify_key)),
                                       wire.b64encode(bytes(peer.signing.verify_key)))
            keys, signature = peer.device_keys()
            await store.set_device_keys(peer.user, DEVICE,
                                        wire.canonical_json(keys).decode("utf-8"), signature)
            peer.keys_published = True

        await bounded_gather([lambda p=p: write(p) for p in peers], SEED_CONCURRENCY)
    finally:
        await store.stop()


async def w6_reconnect_storm(server, prefix, connections=10000, concurrency=1000):
    """``connections`` devices log in by device key at once right after a relay restart
    (a relay the tool started: ``server.restart``)."""
    peers = [Peer(server, f"{prefix}d{i}") for i in range(connections)]
    await seed(server, peers)
    await server.restart()
    failures = []
    logged_in = []
    window = Window(server)
    window.open()
    started = time.monotonic()

    times = []

    async def log_in(peer):
        try:
            begun = time.monotonic()
            await peer.key_login()
            times.append((time.monotonic() - begun) * 1000)
            logged_in.append(peer)
        except Exception as e:  # counted and reported: a storm that loses logins shows it
            failures.append(f"{type(e).__name__}: {e}"[:120])

    await bounded_gather([lambda p=p: log_in(p) for p in peers], concurrency)
    seconds = time.monotonic() - started
    await window.close()
    rss = server.sampler.rss_kib() if server.sampler else None
    await close_all(peers)
    return {"devices": connections, "concurrency": concurrency, "logged_in": len(logged_in),
            "failed": len(failures), "failures": sorted(set(failures))[:5], "all_logged_in_s": round(seconds, 2),
            "logins_per_s": round(len(logged_in) / seconds, 1),
            **distribution(times, "login_"),
            "server_rss_after_kib": rss, **window.figures(len(logged_in), "login")}
