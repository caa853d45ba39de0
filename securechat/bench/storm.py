"""W6, the reconnect storm: every device logs in at once, as after a relay restart.

The accounts and their devices' published keys are written straight into
the relay's store (through ``IStore``, as registering and ``keys.upload``
would leave them): registering 10,000 accounts over the wire would cost
10,000 more connections, set-up that measures nothing of a login.
The relay is then restarted and every device connects and logs in by its
device key (TLS handshake, ``login.challenge``, a signed ``login``), at
most ``concurrency`` handshakes under way at once; the figure is the time
until the last one is logged in.  The devices run in ``processes`` lean
processes of their own (``storm_devices``): the load generator shares the
cores with the relay, so what it spends per login counts against the figure.
"""

import json
import subprocess
import sys

from twisted.internet import defer, threads

from securechat import wire
from securechat.bench.peers import DEVICE, Peer, distribution
from securechat.bench.workloads import Window, bounded_gather
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


class DeviceProcesses:
    """The storm's devices, split over ``processes`` processes of ``storm_devices``.

    Each process sets up (imports, keys, its TLS context) before the clock
    starts, as the devices of a real storm are running when their relay comes
    back; the clock runs from ``go`` until every process has answered.
    """

    def __init__(self, server, peers, processes, concurrency):
        shares = [peers[i::processes] for i in range(processes)]
        self._procs = []
        for share in shares:
            proc = subprocess.Popen([sys.executable, "-m", "securechat.bench.storm_devices"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            proc.stdin.write(json.dumps({
                "host": server.host, "port": server.port, "ca_file": server.cert_path,
                "hostname": "localhost", "concurrency": max(1, concurrency // processes),
                "devices": [[p.user, DEVICE, wire.b64encode(bytes(p.signing))]
                            for p in share]}) + "\n")
            proc.stdin.flush()
            self._procs.append(proc)

    async def ready(self):
        for proc in self._procs:
            if (await threads.deferToThread(proc.stdout.readline)).strip() != "ready":
                raise RuntimeError("a process of the storm's devices failed to start")

    async def log_in(self):
        """Every device logs in; each process's results (``storm_devices.Storm.run``)."""
        for proc in self._procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        lines = await defer.gatherResults(
            [threads.deferToThread(proc.stdout.readline) for proc in self._procs])
        return [json.loads(line) for line in lines]

    def close(self):
        """The devices disconnect (their processes exit)."""
        for proc in self._procs:
            proc.stdin.close()
        for proc in self._procs:
            proc.wait(timeout=60)


async def w6_reconnect_storm(server, prefix, connections=10000, concurrency=1000, processes=2):
    """``connections`` devices log in by device key at once right after a relay restart
    (a relay the tool started: ``server.restart``), from ``processes`` processes."""
    peers = [Peer(server, f"{prefix}d{i}") for i in range(connections)]
    await seed(server, peers)
    await server.restart()
    devices = DeviceProcesses(server, peers, processes, concurrency)
    try:
        await devices.ready()
        window = Window(server)
        window.open()
        results = await devices.log_in()
        await window.close()
        rss = server.sampler.rss_kib() if server.sampler else None
    finally:
        devices.close()
    window.client_cpu += sum(r["cpu_s"] for r in results)
    logged_in = sum(r["logged_in"] for r in results)
    failures = [f for r in results for f in r["failures"]]
    times = [t for r in results for t in r["times_ms"]]
    seconds = window.seconds
    return {"devices": connections, "concurrency": concurrency, "processes": processes,
            "logged_in": logged_in, "failed": len(failures),
            "failures": sorted(set(failures))[:5], "all_logged_in_s": round(seconds, 2),
            "logins_per_s": round(logged_in / seconds, 1),
            **distribution(times, "login_"),
            "server_rss_after_kib": rss, **window.figures(logged_in, "login")}
