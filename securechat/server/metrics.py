"""What the relay counts for its operator, exposed in the Prometheus text format.

The relay's hot path (send, room.send, ack, deliveries) only adds one to a
plain attribute of ``RelayMetrics``: no lock, no allocation, no label lookup.
``RelayCollector`` turns those numbers into metric families when Prometheus
scrapes ``/metrics`` (docs/operations.rst, "Monitoring"), together with
what is read at that moment (open connections, the argon2 queue, queued
envelopes) and the histograms of store commits, which are observed once per
commit, not per message.

No label ever holds a user, device or room name: the series stay few (a
label per name would grow with the users) and the metrics say nothing about
who talks to whom.
"""

from collections import Counter

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

ENVELOPE_KINDS = ("unicast", "room", "broadcast")

COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: an fsync on a fast disk takes well under a millisecond, a slow one tens."""


class RelayMetrics:
    """The relay's counters, each bumped where the event happens (see the module doc)."""

    def __init__(self):
        self.logins_ok = 0
        self.logins_failed = Counter()  # error code -> count (a fixed set of codes)
        self.registrations = 0
        self.accepted = dict.fromkeys(ENVELOPE_KINDS, 0)
        self.delivered = dict.fromkeys(ENVELOPE_KINDS, 0)
        self.acknowledged = dict.fromkeys(ENVELOPE_KINDS, 0)
        self.rate_limited = Counter()  # op refused -> count (the ops are a fixed set)
        self.handshake_failures = 0
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "securechat_store_commit_seconds",
            "Time one group commit of envelopes and acks took (its fsync included).",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.push_seconds = Histogram(
            "securechat_push_seconds",
            "Time from the oldest envelope (or ack) of a group commit being handed to the "
            "store until that commit ended and its pushes went out: the longest any "
            "envelope of the group waited.",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)  # RSS, open files, CPU of this process

    def login_failed(self, code):
        self.logins_failed[code] += 1

    def acked(self, counts):
        """What one ack removed: ``(unicast, room, broadcast)`` counts (the store's)."""
        acknowledged = self.acknowledged
        for kind, count in zip(ENVELOPE_KINDS, counts):
            acknowledged[kind] += count


class RelayCollector:
    """Reads ``RelayMetrics`` and the relay's live state at scrape time.

    ``live()`` returns ``{"connections", "argon2_waiting", "queued", "store"}``
    as of now: the caller reads the queued count from the store before it asks
    the registry for the text (a collector cannot wait for the store).
    """

    def __init__(self, metrics, live):
        self._metrics = metrics
        self._live = live

    def collect(self):
        m = self._metrics
        live = self._live()
        yield _gauge("securechat_connections_open", "TLS connections open now.",
                     live["connections"])
        yield _gauge("securechat_argon2_waiting", "Password hashes waiting for a worker.",
                     live["argon2_waiting"])
        queued = GaugeMetricFamily("securechat_envelopes_queued",
                                   "Envelopes stored and not yet acknowledged by every "
                                   "recipient device (1:1 queues; room history not counted).",
                                   labels=["store"])
        if live["queued"] is not None:
            queued.add_metric([live["store"]], live["queued"])
        yield queued
        logins = CounterMetricFamily("securechat_logins", "Logins answered, by outcome.",
                                     labels=["outcome"])
        logins.add_metric(["ok"], m.logins_ok)
        for code, count in sorted(m.logins_failed.items()):
            logins.add_metric([code], count)
        yield logins
        yield _counter("securechat_registrations", "Accounts registered.", m.registrations)
        yield _by_kind("securechat_envelopes_accepted",
                       "Envelopes committed, by how they were addressed.", m.accepted)
        yield _by_kind("securechat_envelopes_delivered",
                       "Envelopes pushed to a device, by how they were addressed (a "
                       "redelivery after a reconnect counts again).", m.delivered)
        yield _by_kind("securechat_envelopes_acknowledged",
                       "Envelopes a device acknowledged that were still pending, by how "
                       "they were addressed ('unicast' includes the relay's membership "
                       "notices).", m.acknowledged)
        limited = CounterMetricFamily("securechat_rate_limited",
                                      "Requests refused with rate_limited, by the request "
                                      "refused ('requests': the per-connection request rate).",
                                      labels=["op"])
        for op, count in sorted(m.rate_limited.items()):
            limited.add_metric([op], count)
        yield limited
        yield _counter("securechat_tls_handshake_failures",
                       "Connections closed before their TLS handshake finished (a failure or "
                       "the handshake timeout).", m.handshake_failures)


def _gauge(name, documentation, value):
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _by_kind(name, documentation, counts):
    family = CounterMetricFamily(name, documentation, labels=["kind"])
    for kind in ENVELOPE_KINDS:
        family.add_metric([kind], counts[kind])
    return family


def _counter(name, documentation, value):
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family
