"""A fair queue for expensive jobs (argon2id): no client's backlog delays another's.

Each job has a *class* (a lower number is always served first: logins and
registrations before room passwords, so room work never starves a login)
and a *principal* (who asked: a client address, a user).  Within a class the
principals waiting take turns, one job each (round robin), so a principal
with a thousand jobs waiting delays another's next job by at most one job
per principal ahead of it in its turn.  Each principal may have at most
``per_principal`` jobs waiting per class; past that ``submit`` fails at
once with ``QueueFull`` instead of queueing more.
"""

from collections import OrderedDict, deque

from twisted.internet import defer


class QueueFull(Exception):
    """The principal already has as many jobs waiting as it may."""


class FairQueue:
    def __init__(self, concurrency, per_principal, classes, run):
        """``run(fn, *args)`` starts one job and returns a Deferred (a thread pool, or a
        fake in tests); at most ``concurrency`` run at once."""
        self._free = concurrency
        self._per_principal = per_principal
        self._run = run
        self._waiting = [OrderedDict() for _ in range(classes)]  # principal -> deque of jobs

    def submit(self, job_class, principal, fn, *args):
        """Fire with ``fn(*args)``'s result once it has run in its turn."""
        jobs = self._waiting[job_class].get(principal)
        if jobs is not None and len(jobs) >= self._per_principal:
            return defer.fail(QueueFull(principal))
        if self._free > 0:
            return self._start(fn, args)
        waiter = defer.Deferred()
        self._waiting[job_class].setdefault(principal, deque()).append((waiter, fn, args))
        return waiter

    def waiting(self, job_class=None):
        """How many jobs wait (of one class, or of all)."""
        queues = self._waiting if job_class is None else [self._waiting[job_class]]
        return sum(len(jobs) for queue in queues for jobs in queue.values())

    def _start(self, fn, args):
        self._free -= 1
        d = self._run(fn, *args)
        d.addBoth(self._finished)
        return d

    def _finished(self, result):
        self._free += 1
        self._next()
        return result

    def _next(self):
        for queue in self._waiting:
            if queue:
                principal, jobs = next(iter(queue.items()))
                waiter, fn, args = jobs.popleft()
                if jobs:
                    queue.move_to_end(principal)  # its next job waits for the others' turns
                else:
                    del queue[principal]
                self._start(fn, args).chainDeferred(waiter)
                return

