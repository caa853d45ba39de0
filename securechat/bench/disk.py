"""How long the relay's disk takes to make a small write durable, sampled during a workload.

Every commit the relay answers "accepted" after waits for one ``fdatasync``.
On a busy or shared disk (a virtual machine's) that wait, not CPU, can set
the floor under the latencies W2 and W3 report: the same sync that takes
0.1-0.4 ms on an idle machine took 0.8-4 ms at the 99th percentile while the
relay committed hundreds to a thousand times a second.  ``FsyncProbe`` writes 4 KiB to a
scratch file in a directory on the relay's disk and times ``fdatasync``,
every ``interval`` seconds while a measuring window is open, in a thread (the
sync blocks), so a reader can tell a disk-bound figure from a CPU-bound one.
At 20 syncs a second it adds little to the relay's own.
"""

import os
import time

from twisted.internet import reactor, task, threads

from securechat.bench.peers import distribution

PROBE_INTERVAL = 0.05
PAGE = b"\0" * 4096


def timed_sync(fd):
    """Rewrite the file's one page and make it durable; the sync's milliseconds."""
    os.pwrite(fd, PAGE, 0)
    started = time.perf_counter()
    os.fdatasync(fd)
    return (time.perf_counter() - started) * 1000


class FsyncProbe:
    """Samples ``fdatasync`` latency in ``directory`` between ``start`` and ``stop``."""

    def __init__(self, directory, interval=PROBE_INTERVAL, clock=reactor):
        self._path = os.path.join(directory, f".securechat-bench-fsync-{os.getpid()}")
        self._interval = interval
        self._clock = clock
        self._samples = []
        self._fd = None
        self._loop = None
        self._stopped = None

    def start(self):
        self._samples = []
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._loop = task.LoopingCall(self._sample)
        self._loop.clock = self._clock
        self._stopped = self._loop.start(self._interval, now=True)

    def _sample(self):
        # Returning the Deferred makes the loop wait for a slow sync: never two at once.
        return threads.deferToThread(timed_sync, self._fd).addCallback(self._samples.append)

    async def stop(self):
        """Stop sampling, once a sync under way has ended; the figures (milliseconds)."""
        if self._loop.running:  # else a sync failed: awaiting the loop raises its error
            self._loop.stop()
        try:
            await self._stopped
        finally:
            os.close(self._fd)
            os.unlink(self._path)
        return distribution(self._samples, "disk_fsync_")


NO_PROBE = distribution([], "disk_fsync_")
"""The figures when no directory on the relay's disk is known (an attached relay)."""
