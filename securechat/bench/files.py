"""W7, file transfers: upload and download throughput through the relay, and its memory
while ten clients move files both ways at once.

The peers move random bytes in chunks of the largest size (``wire.FILE_CHUNK_MAX``):
the relay cannot tell them from secretstream ciphertext, so what is measured is its
work (the store's included), not the clients' encryption.  Each peer keeps
``WINDOW`` chunk requests in flight, as the CLI does.

1. One client uploads a file of ``size`` MiB, then one downloads it: ``upload_mib_s``
   and ``download_mib_s``, each alone on the relay.
2. ``clients`` clients, each having uploaded a file for its neighbour before, upload a
   second file while they download their neighbour's, all at once: the aggregate
   ``concurrent_up_mib_s`` and ``concurrent_down_mib_s``, and the relay's RSS before
   and at its peak (sampled every 50 ms) while they run.  Every download is compared
   with what was uploaded (``corrupted`` counts those that differ).
"""

import hashlib
import secrets
import time

from twisted.internet import defer, task

from securechat import wire
from securechat.bench.peers import Peer
from securechat.bench.workloads import bounded_gather, close_all, sleep
from securechat.client.files import WINDOW
from securechat.store.transactions.files import chunks_hash

MIB = 1024 * 1024
RSS_INTERVAL = 0.05


def random_file(size):
    """``size`` bytes in chunks of the largest size, as the relay stores them."""
    chunk = wire.FILE_CHUNK_MAX
    return [secrets.token_bytes(min(chunk, size - at)) for at in range(0, size, chunk)]


async def pipelined(requests):
    """Run ``requests`` (factories of Deferreds), ``WINDOW`` in flight; their results."""
    results, in_flight = [], []
    for make in requests:
        in_flight.append(make())
        if len(in_flight) >= WINDOW:
            results.append(await in_flight.pop(0))
    for d in in_flight:
        results.append(await d)
    return results


async def upload(peer, chunks, to):
    """Upload ``chunks`` for user ``to``; the file id."""
    size = sum(map(len, chunks))
    file_id = (await peer.request("file.begin", size=size))["file_id"]
    await pipelined([lambda i=i, c=c: peer.request("file.chunk", file_id=file_id, index=i,
                                                   data=wire.b64encode(c))
                     for i, c in enumerate(chunks)])
    digests = [hashlib.sha256(c).hexdigest() for c in chunks]
    await peer.request("file.finish", file_id=file_id, size=size, hash=chunks_hash(digests),
                       to=[to])
    return file_id


async def download(peer, file_id, count):
    """The file's chunks, fetched ``WINDOW`` at a time; the relay is told it has them."""
    answers = await pipelined([lambda i=i: peer.request("file.get", file_id=file_id, index=i)
                               for i in range(count)])
    await peer.request("file.done", file_id=file_id)
    return [wire.b64decode(a["data"]) for a in answers]


class PeakRss:
    """The relay's RSS sampled every ``RSS_INTERVAL`` seconds; the highest seen."""

    def __init__(self, sampler):
        self._sampler = sampler
        self.peak = 0
        self._loop = task.LoopingCall(self._sample)

    def _sample(self):
        self.peak = max(self.peak, self._sampler.rss_kib())

    def start(self):
        if self._sampler is not None:
            self._loop.start(RSS_INTERVAL, now=True)

    def stop(self):
        if self._loop.running:
            self._loop.stop()
            self._sample()
        return self.peak or None


def mib_per_s(size, seconds):
    return round(size / MIB / seconds, 1) if seconds else None


async def w7_files(server, prefix, clients=10, size=8):
    """Files of ``size`` MiB: one client alone, then ``clients`` both ways at once."""
    size_bytes = size * MIB
    peers = [Peer(server, f"{prefix}f{i}") for i in range(max(clients, 2))]
    await bounded_gather([p.register_and_login for p in peers])
    try:
        first = random_file(size_bytes)
        started = time.monotonic()
        file_id = await upload(peers[0], first, peers[1].user)
        up_s = time.monotonic() - started
        started = time.monotonic()
        got = await download(peers[1], file_id, len(first))
        down_s = time.monotonic() - started
        corrupted = int(got != first)

        files = [random_file(size_bytes) for _ in peers]
        neighbours = [peers[(i + 1) % len(peers)] for i in range(len(peers))]
        waiting = await defer.gatherResults([defer.ensureDeferred(
            upload(p, f, n.user)) for p, f, n in zip(peers, files, neighbours)])
        await sleep(0.5)
        rss_before = server.sampler.rss_kib() if server.sampler else None
        rss = PeakRss(server.sampler)
        rss.start()
        started = time.monotonic()

        async def both_ways(i):
            # Its second upload: the same bytes again, as a new file (the relay stores
            # each file apart), so the client holds one file's bytes, not two.
            sent = defer.ensureDeferred(upload(peers[i], files[i], neighbours[i].user))
            # What peer i downloads is what its predecessor uploaded for it.
            before = (i - 1) % len(peers)
            received = await download(peers[i], waiting[before], len(files[before]))
            await sent
            return received == files[before]

        same = await defer.gatherResults([defer.ensureDeferred(both_ways(i))
                                          for i in range(len(peers))])
        both_s = time.monotonic() - started
        peak = rss.stop()
        corrupted += same.count(False)
    finally:
        await close_all(peers)
    moved = size_bytes * len(peers)  # each way
    return {"clients": len(peers), "file_mib": size, "chunk_bytes": wire.FILE_CHUNK_MAX,
            "upload_mib_s": mib_per_s(size_bytes, up_s),
            "download_mib_s": mib_per_s(size_bytes, down_s),
            "concurrent_s": round(both_s, 2),
            "concurrent_up_mib_s": mib_per_s(moved, both_s),
            "concurrent_down_mib_s": mib_per_s(moved, both_s),
            "server_rss_before_kib": rss_before, "server_rss_peak_kib": peak,
            "corrupted": corrupted}
