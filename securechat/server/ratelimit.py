"""Rate limits: requests per connection, login failures, room password guesses, key claims.

Everything takes the clock as an argument (``IReactorTime``) so tests drive
it with ``task.Clock`` instead of sleeping.  Every table keyed by something a
client chooses (a user name, an address, a room) holds at most
``MAX_KEYS`` entries: past that the least recently touched is forgotten, so
memory stays bounded whatever names and addresses an attacker cycles through.
"""

import math
from collections import OrderedDict, deque

from securechat.wire import ProtocolError

MAX_KEYS = 100_000
"""Entries one limit table keeps at most (the least recently touched is dropped first)."""

FAILURE_MEMORY_SECONDS = 24 * 3600
"""How long a run of failed logins of one (account, address) pair is remembered."""


def rate_limited(what, wait):
    """The error a client sees when a limit is hit: what happened and how long to wait."""
    seconds = max(1, math.ceil(wait))
    return ProtocolError("rate_limited", f"{what}; try again in {seconds} s",
                         {"retry_after": seconds})


class _BoundedTable(OrderedDict):
    """A dict that forgets its least recently touched entry beyond ``MAX_KEYS``."""

    def touch(self, key, make):
        """The entry of ``key`` (made by ``make()`` if new), now the most recent."""
        entry = self.pop(key, None)
        if entry is None:
            entry = make()
            if len(self) >= MAX_KEYS:
                self.popitem(last=False)
        self[key] = entry
        return entry


class SlidingWindow:
    """At most ``limit`` events per key in the last ``window`` seconds.

    A key's deque never holds more than ``limit`` entries and ``prune``
    forgets keys whose window has passed.
    """

    def __init__(self, clock, limit, window):
        self._clock = clock
        self._limit = limit
        self._window = window
        self._events = _BoundedTable()

    def retry_after(self, key):
        """Seconds until ``key`` may have another event (0: it may now)."""
        events = self._events.get(key)
        if not events or len(events) < self._limit:
            return 0
        return max(0, events[0] + self._window - self._clock.seconds())

    def record(self, key):
        """Count one event of ``key`` (the oldest falls out once ``limit`` are kept)."""
        events = self._events.touch(key, lambda: deque(maxlen=self._limit))
        events.append(self._clock.seconds())

    def unrecord(self, key):
        """Take back the newest event of ``key`` (an attempt counted before its outcome,
        which turned out not to be a failure).  A key left with no event is forgotten:
        ``prune`` reads each kept key's newest event."""
        events = self._events.get(key)
        if events:
            events.pop()
            if not events:
                del self._events[key]

    def prune(self):
        horizon = self._clock.seconds() - self._window
        for key in [k for k, ev in self._events.items() if ev[-1] <= horizon]:
            del self._events[key]


class FailureBackoff:
    """Growing delays after a key's repeated failures: ``free`` failures cost nothing, then
    each further one makes the key wait 1, 2, 4 ... seconds (at most ``max_delay``) before
    its next try.  A success forgets the key; so does a day without failures."""

    def __init__(self, clock, free, max_delay):
        self._clock = clock
        self._free = free
        self._max_delay = max_delay
        self._failures = _BoundedTable()  # key -> [failures, time of the last one]

    def retry_after(self, key):
        entry = self._failures.get(key)
        if entry is None or entry[0] < self._free:
            return 0
        delay = min(self._max_delay, 2 ** min(entry[0] - self._free, 32))
        return max(0, entry[1] + delay - self._clock.seconds())

    def failed(self, key):
        entry = self._failures.touch(key, lambda: [0, 0])
        entry[0] += 1
        entry[1] = self._clock.seconds()

    def succeeded(self, key):
        self._failures.pop(key, None)

    def unfailed(self, key):
        """Take back one failure of ``key`` (an attempt that ended neither way)."""
        entry = self._failures.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:
                del self._failures[key]

    def prune(self):
        horizon = self._clock.seconds() - FAILURE_MEMORY_SECONDS
        for key in [k for k, (_, last) in self._failures.items() if last <= horizon]:
            del self._failures[key]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per request."""

    def __init__(self, clock, rate, burst):
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self, cost=1):
        """Spend ``cost`` tokens if saved up (``take(0)`` only brings the count up to date)."""
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, cost=1):
        """Seconds until ``cost`` tokens are saved up."""
        self.take(0)
        return max(0, (cost - self._tokens) / self._rate)

    @property
    def full(self):
        self.take(0)
        return self._tokens >= self._burst


class KeyedBuckets:
    """A token bucket per key: ``limit`` tokens per ``window`` seconds, ``limit`` saved at most."""

    def __init__(self, clock, limit, window):
        self._clock = clock
        self.limit = limit
        self._rate = limit / window
        self._buckets = _BoundedTable()

    def bucket(self, key):
        return self._buckets.touch(key, lambda: TokenBucket(self._clock, self._rate, self.limit))

    def prune(self):
        """Forget full buckets: a new one starts full too."""
        for key in [k for k, bucket in self._buckets.items() if bucket.full]:
            del self._buckets[key]


class LoginGuard:
    """Login and registration limits that lock out a guesser, never an account's owner.

    Only failures count.  An account's failures are counted per (account,
    client address): after ``login_failures_per_account`` of them that pair
    waits longer and longer before each new try, so a guesser elsewhere
    cannot lock the owner out, and the owner's success resets the pair.
    Each address also has at most ``login_failures_per_address`` failed
    logins and registrations per ``login_window_seconds`` (password spraying
    across many accounts).  A refused attempt costs no argon2 work.

    An attempt counts as a failure from the moment it is let through
    (``attempt``) until it succeeds (``login_succeeded``) or ends without a
    verdict (``login_abandoned``): counted only once its argon2 check had
    finished, dozens of guesses sent at once over several connections would
    all pass the check before the first was counted.
    """

    def __init__(self, clock, config):
        self._pairs = FailureBackoff(clock, config.login_failures_per_account,
                                     config.login_delay_max_seconds)
        self._addresses = SlidingWindow(clock, config.login_failures_per_address,
                                        config.login_window_seconds)

    def attempt(self, user, address):
        """Raise ``rate_limited`` when this pair or this address must wait; otherwise count
        the attempt as a failure until its outcome says otherwise."""
        self.check(user, address)
        self.failed(user, address)

    def check(self, user, address):
        """Raise ``rate_limited`` when this pair or this address must wait; count nothing.

        For checks that end within the same few milliseconds (a device key's signature):
        nothing worth guessing passes meanwhile, so only a real failure is counted
        (``failed``), and a storm of devices reconnecting from one address (a NAT) is
        never refused for the logins still in flight."""
        self._check_address(address)
        wait = self._pairs.retry_after((user, address))
        if wait > 0:
            raise rate_limited(f"too many failed logins for {user}", wait)

    def failed(self, user, address):
        """Count one failed login of this pair and this address."""
        self._pairs.failed((user, address))
        self._addresses.record(address)

    def verified(self, user, address):
        """A login let through by ``check`` succeeded: the pair's failures are forgotten."""
        self._pairs.succeeded((user, address))

    def login_succeeded(self, user, address):
        """A login let through by ``attempt`` succeeded: it was no failure after all."""
        self.verified(user, address)
        self._addresses.unrecord(address)

    def login_abandoned(self, user, address):
        """The attempt ended without a verdict (the store or the argon2 queue refused it)."""
        self._pairs.unfailed((user, address))
        self._addresses.unrecord(address)

    def registering(self, address):
        """Every registration counts against its address (each creates an account)."""
        self._check_address(address)
        self._addresses.record(address)

    def _check_address(self, address):
        wait = self._addresses.retry_after(address)
        if wait > 0:
            raise rate_limited("too many failed attempts from your address", wait)

    def prune(self):
        self._pairs.prune()
        self._addresses.prune()


class RoomPasswordGuard:
    """Wrong room passwords lock out the guesser, never the room.

    At most ``room_password_failures_per_room`` per (room, user) in
    ``room_password_room_window_seconds`` and ``room_password_failures_per_user``
    per user (over all rooms) in ``room_password_user_window_seconds``;
    others with the right password join meanwhile.  As with logins, a guess
    counts as wrong from ``attempt`` until ``succeeded`` or ``abandoned``
    says otherwise, so guesses sent at once cannot all pass the check.
    """

    def __init__(self, clock, config):
        self._per_room = SlidingWindow(clock, config.room_password_failures_per_room,
                                       config.room_password_room_window_seconds)
        self._per_user = SlidingWindow(clock, config.room_password_failures_per_user,
                                       config.room_password_user_window_seconds)

    def attempt(self, room, user):
        """Raise ``rate_limited`` when the user must wait; otherwise count the guess as
        wrong until its outcome says otherwise."""
        wait = self._per_room.retry_after((room, user))
        if wait > 0:
            raise rate_limited(f"too many wrong passwords for room {room!r}", wait)
        wait = self._per_user.retry_after(user)
        if wait > 0:
            raise rate_limited("too many wrong room passwords", wait)
        self._per_room.record((room, user))
        self._per_user.record(user)

    def succeeded(self, room, user):
        """The password was right (or the check ended without a verdict): not a guess."""
        self._per_room.unrecord((room, user))
        self._per_user.unrecord(user)

    abandoned = succeeded

    def prune(self):
        self._per_room.prune()
        self._per_user.prune()


class KeyClaimLimits:
    """Nobody drains a device's one-time keys.

    A claimer may claim ``key_claims_per_minute`` keys a minute
    (``rate_limited`` past that).  A device gives out at most
    ``one_time_keys_per_device_per_minute`` one-time keys a minute; past
    that claimers get its fallback key, so sessions can still start (Olm
    accepts a fallback key) while the one-time keys last until its owner
    tops them up.
    """

    def __init__(self, clock, config):
        self._claimers = KeyedBuckets(clock, config.key_claims_per_minute, 60)
        self._targets = KeyedBuckets(clock, config.one_time_keys_per_device_per_minute, 60)

    def check_claimer(self, user, count):
        """Take ``count`` claims from ``user``'s allowance or raise ``rate_limited``."""
        if count > self._claimers.limit:
            raise rate_limited(
                f"a minute allows claiming at most {self._claimers.limit} keys", 60)
        bucket = self._claimers.bucket(user)
        if not bucket.take(count):
            raise rate_limited("too many key claims", bucket.retry_after(count))

    def one_time_key_allowed(self, user, device):
        """Whether ``device`` may give out one more one-time key now (else: its fallback)."""
        return self._targets.bucket((user, device)).take()

    def prune(self):
        self._claimers.prune()
        self._targets.prune()
