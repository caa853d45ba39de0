"""CPU time and memory of processes, read from ``/proc``: the relay's (one process, its
reactor thread on its own) and a database server's (a process and its children)."""

import os


def proc_stat_fields(path):
    """The fields of a ``/proc`` stat file after the command name (which may hold spaces
    and parentheses): index 1 is the parent's pid, 11 and 12 user and system time."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


class ProcSampler:
    """CPU seconds (user + system) and resident memory of one process."""

    def __init__(self, pid):
        self.pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self, with_children_reaped=False):
        """All the process's threads (the relay's reactor, store and argon2id threads); and
        its children that ended and were waited for, if asked."""
        return self._seconds(f"/proc/{self.pid}/stat", with_children_reaped)

    def reactor_cpu_seconds(self):
        """The main thread's alone: ``twistd`` runs the reactor there, so a share near 1.0
        says the relay is bound by its one reactor thread, whatever the others do."""
        return self._seconds(f"/proc/{self.pid}/task/{self.pid}/stat")

    def _seconds(self, stat_path, with_children_reaped=False):
        fields = proc_stat_fields(stat_path)
        ticks = int(fields[11]) + int(fields[12])
        if with_children_reaped:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / self._ticks

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


class ProcessesSampler:
    """The sums of several relay processes' figures (``securechat-bench --nodes``): their
    CPU seconds, their reactor threads' (so a share near the number of processes says
    every reactor is busy) and their resident memory."""

    def __init__(self, samplers):
        self._samplers = samplers

    def cpu_seconds(self):
        return sum(sampler.cpu_seconds() for sampler in self._samplers)

    def reactor_cpu_seconds(self):
        return sum(sampler.reactor_cpu_seconds() for sampler in self._samplers)

    def rss_kib(self):
        return sum(sampler.rss_kib() for sampler in self._samplers)


class ProcessTreeSampler:
    """CPU seconds of a process and all its children, living or ended (a PostgreSQL
    server: the postmaster, its backends, WAL writer, checkpointer ...).

    A child that ends between two samples leaves its time in the parent's
    ``cutime``/``cstime`` once the parent has waited for it (the postmaster
    does at once), so the sum only grows and a window's difference counts
    every process that ran in it.
    """

    def __init__(self, pid):
        self.pid = pid

    def cpu_seconds(self):
        total = ProcSampler(self.pid).cpu_seconds(with_children_reaped=True)
        for child in children(self.pid):
            try:
                total += ProcSampler(child).cpu_seconds()
            except OSError:  # ended since the listing: its time is in the parent's now
                pass
        return total


def parent(pid):
    """The parent's pid of ``pid``, or None when there is no such process here."""
    try:
        return int(proc_stat_fields(f"/proc/{pid}/stat")[1])
    except OSError:
        return None


def command_name(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def children(pid):
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and parent(entry) == pid]
