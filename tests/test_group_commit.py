"""GroupCommit's batching, driven by task.Clock: which writes share a transaction, and when."""

from twisted.internet import defer, task

from securechat.store.errors import StoreFull
from securechat.store.sqlstore import ACK_GATHER_SECONDS, GroupCommit


class Transactions:
    """Stands for the database: records each group body call and lets the test finish it."""

    def __init__(self):
        self.groups = []
        self.pending = []

    def run(self, body, items):
        self.groups.append(list(items))
        d = defer.Deferred()
        self.pending.append((d, items))
        return d

    def commit_next(self):
        d, items = self.pending.pop(0)
        d.callback([("done", item) for item in items])


def make():
    transactions, clock = Transactions(), task.Clock()
    return transactions, clock, GroupCommit(transactions.run, group_body=None, clock=clock)


def test_an_urgent_write_commits_at_once_and_later_ones_share_the_next_transaction():
    transactions, clock, group = make()
    first = group.submit("e1")
    assert transactions.groups == [["e1"]]
    second, third = group.submit("e2"), group.submit("e3")
    assert transactions.groups == [["e1"]]  # one transaction at a time
    transactions.commit_next()
    assert first.result == ("done", "e1")
    assert transactions.groups == [["e1"], ["e2", "e3"]]
    transactions.commit_next()
    assert (second.result, third.result) == (("done", "e2"), ("done", "e3"))


def test_an_ack_waits_for_company_and_rides_with_the_next_envelope():
    transactions, clock, group = make()
    ack = group.submit("a1", gather=ACK_GATHER_SECONDS)
    clock.advance(ACK_GATHER_SECONDS / 2)
    assert transactions.groups == []
    envelope = group.submit("e1")
    assert transactions.groups == [["a1", "e1"]]
    transactions.commit_next()
    assert (ack.result, envelope.result) == (("done", "a1"), ("done", "e1"))
    clock.advance(ACK_GATHER_SECONDS)
    assert transactions.groups == [["a1", "e1"]]  # the cancelled timer commits nothing more


def test_an_ack_alone_commits_after_the_gather_time():
    transactions, clock, group = make()
    ack = group.submit("a1", gather=ACK_GATHER_SECONDS)
    group.submit("a2", gather=ACK_GATHER_SECONDS)
    clock.advance(ACK_GATHER_SECONDS)
    assert transactions.groups == [["a1", "a2"]]
    transactions.commit_next()
    assert ack.result == ("done", "a1")


def test_a_store_outage_fails_every_caller_of_its_group_only():
    """An unavailable database (down, disk full) fails the whole group, and nothing later."""
    transactions, clock, group = make()
    group.submit("e1")
    second, third = group.submit("e2"), group.submit("e3")
    transactions.commit_next()
    failures = []
    second.addErrback(failures.append)
    third.addErrback(failures.append)
    d, _ = transactions.pending.pop(0)
    d.errback(StoreFull("disk full"))
    assert [f.value.args for f in failures] == [("disk full",), ("disk full",)]
    later = group.submit("e4")
    assert transactions.groups[-1] == ["e4"]
    transactions.commit_next()
    assert later.result == ("done", "e4")


def test_a_group_failing_as_a_whole_is_committed_again_one_item_at_a_time():
    """A transaction failing for one caller's item (a bug, a value the database refuses)
    fails that caller alone: the group's items are retried one per transaction, in order,
    before the writes that arrived meanwhile."""
    transactions, clock, group = make()
    group.submit("e1")
    good, bad, other = (group.submit(name) for name in ("e2", "bad", "e4"))
    failures = []
    bad.addErrback(failures.append)
    transactions.commit_next()
    d, _ = transactions.pending.pop(0)
    d.errback(KeyError(0))
    later = group.submit("e5")
    assert transactions.groups[-1] == ["e2"]
    transactions.commit_next()
    assert transactions.groups[-1] == ["bad"]
    d, _ = transactions.pending.pop(0)  # alone it fails again: only its caller hears
    d.errback(KeyError(0))
    assert transactions.groups[-1] == ["e4"]
    transactions.commit_next()
    assert transactions.groups[-1] == ["e5"]
    transactions.commit_next()
    assert (good.result, other.result, later.result) == (
        ("done", "e2"), ("done", "e4"), ("done", "e5"))
    assert [f.type for f in failures] == [KeyError]
