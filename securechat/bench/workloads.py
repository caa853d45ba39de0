"""The workloads of docs/benchmarks.rst (W6 in ``storm``).  Each is bounded in time and count.

Every workload returns a flat dict of figures.  Server CPU comes from
/proc (user + system time of the relay process) over the measuring window;
client CPU is this process's own, so a reader can tell a server-bound
figure from a client-bound one; the disk's ``fdatasync`` latency, sampled
over the same window, tells a disk-bound one.
"""

import itertools
import resource
import time

from twisted.internet import defer, reactor, task

from securechat.bench.disk import NO_PROBE, FsyncProbe
from securechat.bench.peers import (GroupedLatencies, Latencies, Peer, new_id, random_payload,
                                    unicast)

DRAIN_TIMEOUT = 60
SETUP_CONCURRENCY = 8


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def client_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:
    """Server and client CPU seconds spent between ``open`` and ``close`` (the server's
    reactor thread's too, and its PostgreSQL server's when that is local), and the
    disk's sync latency meanwhile (in the relay's directory, when the tool knows it)."""

    def __init__(self, server):
        self._sampler = server.sampler
        self._database = server.database_sampler
        self._probe = FsyncProbe(server.disk_dir) if server.disk_dir else None
        self._disk = NO_PROBE
        self.server_cpu = self.reactor_cpu = self.database_cpu = 0.0
        self.client_cpu = self.seconds = 0.0

    def open(self):
        if self._probe is not None:
            self._probe.start()
        self._t = time.monotonic()
        # The process is read before its reactor thread here and after it in close, so
        # the thread's interval lies within the process's (its share can still exceed
        # the process's by a clock tick: /proc rounds the two apart).
        self._server = self._sampler.cpu_seconds() if self._sampler else 0.0
        self._reactor = self._sampler.reactor_cpu_seconds() if self._sampler else 0.0
        self._database_start = self._database.cpu_seconds() if self._database else 0.0
        self._client = client_cpu()

    async def close(self):
        self.seconds = time.monotonic() - self._t
        if self._sampler:
            self.reactor_cpu = self._sampler.reactor_cpu_seconds() - self._reactor
            self.server_cpu = self._sampler.cpu_seconds() - self._server
        if self._database:
            self.database_cpu = self._database.cpu_seconds() - self._database_start
        self.client_cpu = client_cpu() - self._client
        if self._probe is not None:
            self._disk = await self._probe.stop()

    def figures(self, units, unit_name):
        per = (lambda cpu: round(cpu * 1e6 / units, 2) if units else None)
        share = (lambda cpu: round(cpu / self.seconds, 3))
        figures = {
            f"server_cpu_us_per_{unit_name}": per(self.server_cpu) if self._sampler else None,
            f"client_cpu_us_per_{unit_name}": per(self.client_cpu),
            "server_cpu_share": share(self.server_cpu) if self._sampler else None,
            "server_reactor_cpu_share": share(self.reactor_cpu) if self._sampler else None,
            "client_cpu_share": share(self.client_cpu),
        }
        if self._database:  # the PostgreSQL server's processes, not in the relay's figures
            figures[f"database_cpu_us_per_{unit_name}"] = per(self.database_cpu)
            figures["database_cpu_share"] = share(self.database_cpu)
        return {**figures, **self._disk}


async def measure(server, latencies, warmup, duration):
    """Let the load settle for ``warmup`` seconds, then measure ``duration`` seconds of it."""
    await sleep(warmup)
    window = Window(server)
    latencies.measuring = True
    window.open()
    await sleep(duration)
    await window.close()
    latencies.measuring = False
    return window


class InFlight:
    """Requests sent on a timer, so the end of a run can wait for their answers."""

    def __init__(self):
        self._pending = set()

    def track(self, d):
        self._pending.add(d)
        d.addErrback(lambda f: None)
        d.addBoth(lambda _: self._pending.discard(d))

    def settled(self, timeout=DRAIN_TIMEOUT):
        """Wait (at most ``timeout`` seconds) until every tracked request is answered."""
        return defer.ensureDeferred(wait_until(lambda: not self._pending, timeout))


async def bounded_gather(factories, concurrency=SETUP_CONCURRENCY):
    """Run coroutine factories with at most ``concurrency`` at once (setup storms hurt argon2)."""
    semaphore = defer.DeferredSemaphore(concurrency)
    return await defer.gatherResults(
        [semaphore.run(lambda f=f: defer.ensureDeferred(f())) for f in factories],
        consumeErrors=True)


async def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await sleep(0.01)
    return predicate()


def same_node(server):
    """Where pair i sits: sender and receiver on one node, the pairs taking the relay's
    nodes in turn."""
    nodes = server.nodes
    return lambda index: (nodes[index % len(nodes)],) * 2


def half_cross_node(server):
    """Where pair i sits: the pairs two by two on each node in turn, the first of the two
    with its receiver on the same node, the second with its receiver on the next node
    (on one node, every pair on it)."""
    nodes = server.nodes

    def place(index):
        node = index // 2
        return nodes[node % len(nodes)], nodes[(node + index % 2) % len(nodes)]
    return place


async def make_pairs(server, prefix, count, latencies, place=None):
    """``count`` (sender, receiver) pairs, logged in, placed on the relay's nodes by
    ``place`` (pair index -> (sender's node, receiver's node); ``same_node`` by default)."""
    place = place or same_node(server)
    couples = []
    for i in range(count):
        sender_node, receiver_node = place(i)
        couples.append((Peer(server, f"{prefix}s{i}", node=sender_node),
                        Peer(server, f"{prefix}r{i}", lambda peer, eid: latencies.arrived(eid),
                             node=receiver_node)))
    await bounded_gather([p.register_and_login for c in couples for p in c])
    return couples


def per_node(server, peers):
    """Envelopes pushed to ``peers`` by each node, when the relay runs several (each
    node then shows it delivered its share); nothing for one node."""
    if len(server.nodes) == 1:
        return {}
    return {"nodes": len(server.nodes),
            "delivered_per_node": [sum(p.received for p in peers if p.node is node)
                                   for node in server.nodes]}


async def close_all(peers):
    await defer.gatherResults([defer.ensureDeferred(p.close()) for p in peers])


async def w1_throughput(server, prefix, pairs=10, inflight=200, size=200, warmup=2.0,
                        duration=10.0):
    """Pairs send as fast as ``inflight`` outstanding sends per pair allow."""
    latencies = Latencies()
    couples = await make_pairs(server, prefix, pairs, latencies)
    payload = random_payload(size)
    state = {"accepted": 0, "running": True}

    async def lane(sender, receiver):
        while state["running"]:
            envelope = unicast(receiver.user, payload)
            latencies.sent(envelope["id"])
            await sender.request("send", envelopes=[envelope])
            state["accepted"] += 1

    lanes = [defer.ensureDeferred(lane(s, r)) for s, r in couples for _ in range(inflight)]
    window = await measure(server, latencies, warmup, duration)
    state["running"] = False
    await defer.gatherResults(lanes, consumeErrors=True)
    await wait_until(lambda: latencies.delivered >= state["accepted"], DRAIN_TIMEOUT)
    await close_all([p for c in couples for p in c])
    delivered = latencies.delivered_in_window
    return {"pairs": pairs, "inflight_per_pair": inflight, "payload_bytes": size,
            "window_s": round(window.seconds, 2),
            "delivered_per_s": round(delivered / window.seconds, 1),
            **latencies.summary(), **window.figures(delivered, "message"),
            **per_node(server, [r for _, r in couples]),
            "accepted": state["accepted"], "lost": state["accepted"] - latencies.delivered}


def fixed_rate(send_one):
    """A LoopingCall that keeps its rate when the reactor runs late: a tick after missed
    ones sends one message per interval elapsed.  (A plain LoopingCall skips them, and
    the load offered would fall below the rate asked for without a word.)"""
    def tick(intervals):
        for _ in range(intervals):
            send_one()
    return task.LoopingCall.withCount(tick)


def in_turn(send_one, senders):
    """One fixed-rate timer for many senders, taking them in turn: started with an
    interval of ``1 / (len(senders) * rate)``, each sends ``rate`` messages a second,
    spread evenly over the period.  One timer keeps the spread when the reactor runs
    late: the turns missed are taken on the next tick, in order, and the ones after
    keep their places.  A timer per sender does not: timers due while the reactor is
    busy (as it is right after setup) start together and stay in lockstep; W2 had
    half of its 50 pairs sending in the same millisecond, 20 times a second."""
    turn = itertools.cycle(senders)
    return fixed_rate(lambda: send_one(*next(turn)))


async def w2_latency(server, prefix, pairs=50, rate=20.0, size=200, warmup=2.0, duration=10.0):
    """Pairs each send ``rate`` messages a second: what latency does a light load see?

    On several nodes every other pair is a cross-node one (its receiver on another node
    than its sender, so the push follows a hint between nodes): the figures then also
    come apart, ``same_node_*`` and ``cross_node_*``, measured under the same load."""
    latencies = GroupedLatencies()
    couples = await make_pairs(server, prefix, pairs, latencies, half_cross_node(server))
    group = {id(sender): ("cross_node" if sender.node is not receiver.node else "same_node")
             for sender, receiver in couples} if len(server.nodes) > 1 else {}
    payload = random_payload(size)
    state = {"accepted": 0}

    in_flight = InFlight()

    def tick(sender, receiver):
        envelope = unicast(receiver.user, payload)
        latencies.sent(envelope["id"], group.get(id(sender)))
        d = sender.request("send", envelopes=[envelope])
        d.addCallback(lambda _: state.__setitem__("accepted", state["accepted"] + 1))
        in_flight.track(d)

    loop = in_turn(tick, couples)
    loop.start(1.0 / (pairs * rate), now=True)
    window = await measure(server, latencies, warmup, duration)
    loop.stop()
    await in_flight.settled()
    await wait_until(lambda: latencies.delivered >= state["accepted"], DRAIN_TIMEOUT)
    await close_all([p for c in couples for p in c])
    delivered = latencies.delivered_in_window
    return {"pairs": pairs, "rate_per_pair": rate, "offered_per_s": pairs * rate,
            "window_s": round(window.seconds, 2),
            "delivered_per_s": round(delivered / window.seconds, 1), **latencies.summary(),
            **window.figures(delivered, "message"), **per_node(server, [r for _, r in couples]),
            "accepted": state["accepted"], "lost": state["accepted"] - latencies.delivered}


async def make_room(server, prefix, members, latencies, node):
    """A room of ``members`` devices and its owner (the sender), all on ``node``."""
    owner = Peer(server, f"{prefix}owner", node=node)
    audience = [Peer(server, f"{prefix}m{i}", lambda peer, eid: latencies.arrived(eid),
                     node=node) for i in range(members)]
    await bounded_gather([p.register_and_login for p in [owner] + audience])
    room = f"{prefix}room"
    await owner.request("room.create", room=room)
    for member in audience:
        await owner.request("room.invite", room=room, user=member.user)
    return owner, room, audience


async def w3_fanout(server, prefix, members=50, rates=(100.0, 1000.0), size=200, warmup=1.0,
                    duration=10.0):
    """One sender, one room of ``members`` devices, at each rate in turn.

    On several nodes, one such room per node (its sender and members on that node),
    the rooms taking the messages in turn: the same deliveries a second as on one node,
    spread over the processes."""
    latencies = Latencies()
    rooms = [await make_room(server, prefix + ("" if k == 0 else f"n{k}"), members, latencies,
                             node) for k, node in enumerate(server.nodes)]
    payload = random_payload(size)
    results = {"members": members, "payload_bytes": size}
    in_flight = InFlight()
    accepted = {"count": 0}

    def count_accepted(answer):
        accepted["count"] += 1

    for rate in rates:
        latencies.samples, latencies.delivered_in_window = [], 0

        def tick(owner, room, audience):
            envelope_id = new_id()
            latencies.sent(envelope_id)
            sent = owner.request("room.send", room=room, id=envelope_id, kind="megolm",
                                 sid="YmVuY2g", ct=payload)
            in_flight.track(sent.addCallback(count_accepted))

        loop = in_turn(tick, rooms)
        loop.start(1.0 / rate, now=False)
        window = await measure(server, latencies, warmup, duration)
        loop.stop()
        delivered = latencies.delivered_in_window
        label = f"at_{int(rate)}"
        figures = {"deliveries_per_s": round(delivered / window.seconds, 1),
                   **latencies.summary(), **window.figures(delivered, "delivery")}
        results.update({f"{label}_{k}": v for k, v in figures.items()})
        await in_flight.settled()
    expected = accepted["count"] * members  # every accepted message reaches every member
    await wait_until(lambda: latencies.delivered >= expected, DRAIN_TIMEOUT)
    everyone = [peer for owner, _, audience in rooms for peer in [owner] + audience]
    await close_all(everyone)
    return {**results, **per_node(server, [p for _, _, audience in rooms for p in audience]),
            "accepted": accepted["count"], "lost": expected - latencies.delivered}


async def w4_connections(server, prefix, connections=10000, idle=25.0):
    """Authenticated idle connections: memory per connection, and how long opening them takes.

    Memory is the marginal cost: the relay's RSS after the first tenth of the
    connections is the baseline (one-off growth such as the SQLite page cache
    and allocator arenas is behind it), and the rest are divided into what
    they added.  Both samples are taken after the connections have been idle
    for ``idle`` seconds: the relay gives an idle connection's TLS buffers
    back after 10-20 s, so this measures what an idle connection costs, not
    one that has just logged in.
    """
    peers = [Peer(server, f"{prefix}c{i}") for i in range(connections)]
    warm = max(1, connections // 10)
    started = time.monotonic()

    async def open_all(group):
        await bounded_gather([lambda p=p: p.register_and_login(publish_keys=False)
                              for p in group], concurrency=64)

    await open_all(peers[:warm])
    await sleep(idle)
    baseline = server.sampler.rss_kib() if server.sampler else None
    await open_all(peers[warm:])
    opened = time.monotonic() - started - idle
    await sleep(max(idle, 1.0))
    alive = sum(1 for p in peers if p.protocol is not None and p.protocol.transport is not None)
    after = server.sampler.rss_kib() if server.sampler else None
    await close_all(peers)
    marginal = connections - warm
    return {"connections": connections, "idle_s": idle, "held": alive,
            "open_s": round(opened, 2),
            "opens_per_s": round(connections / opened, 1),
            "server_rss_baseline_kib": baseline, "server_rss_after_kib": after,
            "server_kib_per_connection": round((after - baseline) / marginal, 2)
            if server.sampler and marginal else None}


async def w5_offline_drain(server, prefix, envelopes=10000, size=200, inflight=200):
    """Envelopes queued for an offline device; time from its login to the last acknowledgement."""
    sender = Peer(server, f"{prefix}sender")
    acked = {"count": 0}
    receiver = Peer(server, f"{prefix}offline")
    await sender.register_and_login()
    await receiver.register_and_login()
    await receiver.close()
    payload = random_payload(size)
    remaining = {"n": envelopes}

    async def lane():
        while remaining["n"] > 0:
            remaining["n"] -= 1
            await sender.request("send", envelopes=[unicast(receiver.user, payload)])

    await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(inflight)])
    receiver.on_acked = lambda removed: acked.__setitem__("count", acked["count"] + removed)
    window = Window(server)
    window.open()
    await receiver.login()
    drained = await wait_until(lambda: acked["count"] >= envelopes, DRAIN_TIMEOUT)
    await window.close()
    await close_all([sender, receiver])
    return {"envelopes": envelopes, "drained": drained, "acknowledged": acked["count"],
            "login_to_last_ack_s": round(window.seconds, 3),
            **window.figures(acked["count"], "envelope")}


def raise_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(max(soft, wanted), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


WORKLOADS = {"w1": w1_throughput, "w2": w2_latency, "w3": w3_fanout, "w4": w4_connections,
             "w5": w5_offline_drain}
