"""Limits on guessing that every node shares: failed logins, registrations, room password
guesses and key claims, kept where every node reads them (``securechat.server.guards``).

Three tables.  ``login_failures`` holds one row per (account, address) pair
that failed to log in: how many failures in a row and when the last was (its
back-off grows with them; a success deletes the row).  ``limit_events`` holds
one row per counted event of a sliding window (a failed login or a
registration of an address, a wrong room password), with its weight and when
it leaves the window (``expires_at``).  ``limit_buckets`` holds the token
buckets of key claims (per claimer, per device giving out one-time keys),
taken from in the database itself, so nodes taking at once never both take
the last token.

Cheap by construction: a check is one indexed read (``txn_read_limits``: the
pair's row and each window's newest events, one statement), a failure one
write (``txn_record_limits``), and of logins only failures are written; a
claim takes its tokens in one transaction (``txn_take_tokens``).
``txn_prune_limits`` keeps every table bounded.
"""

from securechat.store.transactions.common import _chunks, _values

MAX_ROWS = 100_000
"""Rows each table keeps at most: past that the soonest to be forgotten go first, so the
tables stay bounded whatever names and addresses a guesser cycles through (guarantee 7)."""


async def txn_read_limits_group(txn, items):
    """``txn_read_limits`` of each ``(pair, windows)`` of a group of checks (logins arriving
    together), in one transaction."""
    return [await txn_read_limits(txn, pair, windows) for pair, windows in items]


async def txn_read_limits(txn, pair, windows):
    """What a check needs, in one statement: ``(failures, last_at)`` of the ``(user,
    address)`` ``pair`` (None: no row, or no pair asked), and for each window ``(scope,
    subject, since_ms, rows)`` its newest events after ``since_ms``, at most ``rows`` of
    them, as ``[(at, weight), ...]`` newest first."""
    parts, args = [], []
    if pair is not None:
        parts.append("SELECT -1, last_at, failures FROM login_failures "
                     "WHERE user_id = ? AND address = ?")
        args.extend(pair)
    for i, (scope, subject, since_ms, rows) in enumerate(windows):
        parts.append(f"SELECT {i}, at, weight FROM (SELECT at, weight FROM limit_events "
                     "WHERE scope = ? AND subject = ? AND at > ? ORDER BY at DESC LIMIT ?) "
                     f"w{i}")
        args.extend((scope, subject, since_ms, rows))
    found = [[] for _ in windows]
    pair_row = None
    for tag, at, weight in await txn.execute(" UNION ALL ".join(parts), tuple(args)):
        if tag < 0:
            pair_row = (weight, at)
        else:
            found[tag].append((at, weight))
    for events in found:
        events.sort(reverse=True)
    return pair_row, found


async def txn_record_limits(txn, pair, events):
    """Count one failure of the ``(user, address)`` ``pair`` (None: none) and store the
    ``events`` ``(scope, subject, weight, window_ms)``, all stamped now, in one
    transaction.  The pair's count is raised in the database itself, so two nodes
    counting at once both count."""
    if pair is not None:
        await txn.execute(
            "INSERT INTO login_failures (user_id, address, failures, last_at) "
            "VALUES (?, ?, 1, ?) ON CONFLICT (user_id, address) DO UPDATE SET "
            "failures = login_failures.failures + 1, last_at = excluded.last_at",
            (*pair, txn.now_ms))
    rows = [(scope, subject, txn.now_ms, weight, txn.now_ms + window_ms)
            for scope, subject, weight, window_ms in events]
    for chunk in _chunks(rows):
        values, args = _values(chunk)
        await txn.execute(
            f"INSERT INTO limit_events (scope, subject, at, weight, expires_at) {values}", args)


async def txn_take_tokens(txn, first, rest):
    """Take ``cost`` tokens from the bucket ``first``, ``(scope, subject, cost, per_ms,
    burst)``, then one from each bucket of ``rest``, ``(scope, subjects, per_ms, burst)``,
    that has one, in one transaction; a bucket saves ``per_ms`` tokens a millisecond, at
    most ``burst``, and starts full.  Fires with ``(wait_ms, taken)``: 0 and the subjects
    of ``rest`` taken from, or the ms until ``first`` has its cost (nothing taken)."""
    scope, subject, cost, per_ms, burst = first
    if not await _take(txn, scope, [subject], cost, per_ms, burst):
        tokens, stamp = (await txn.execute(
            "SELECT tokens, stamp FROM limit_buckets WHERE scope = ? AND subject = ?",
            (scope, subject)))[0]
        now_tokens = min(burst, tokens + (txn.now_ms - stamp) * per_ms)
        return (cost - now_tokens) / per_ms, set()
    scope, subjects, per_ms, burst = rest
    taken = set()
    for chunk in _chunks(sorted(set(subjects))):
        taken |= await _take(txn, scope, chunk, 1, per_ms, burst)
    return 0, taken


_SAVED = "limit_buckets.tokens + (? - limit_buckets.stamp) * ?"
_REFILLED = f"(CASE WHEN {_SAVED} >= ? THEN ? ELSE {_SAVED} END)"
"""A bucket row's tokens now: saved up since its stamp, at most the burst."""


async def _take(txn, scope, subjects, cost, per_ms, burst):
    """Take ``cost`` from each bucket of ``scope`` and ``subjects`` that has it, in the
    database itself (two nodes taking at once never both take the last token); the set
    of the subjects taken from.  A bucket is forgotten (``expires_at``) once it would be
    full again."""
    now, ms_per_token = txn.now_ms, 1 / per_ms
    refilled = (now, per_ms, burst, burst, now, per_ms)
    values, args = _values([(scope, subject, burst - cost, now,
                             now + int(cost * ms_per_token) + 1) for subject in subjects])
    rows = await txn.execute(
        f"INSERT INTO limit_buckets (scope, subject, tokens, stamp, expires_at) {values} "
        f"ON CONFLICT (scope, subject) DO UPDATE SET tokens = {_REFILLED} - ?, stamp = ?, "
        f"expires_at = ? + CAST((? - {_REFILLED} + ?) * ? AS BIGINT) + 1 "
        f"WHERE {_REFILLED} >= ? RETURNING subject",
        (*args, *refilled, cost, now, now, burst, *refilled, cost, ms_per_token,
         *refilled, cost))
    return {row[0] for row in rows}


async def txn_forget_failures(txn, user, address):
    """The pair logged in: its failures are forgotten."""
    await txn.execute("DELETE FROM login_failures WHERE user_id = ? AND address = ?",
                      (user, address))


async def txn_prune_limits(txn, pair_memory_ms):
    """Delete pairs whose last failure is ``pair_memory_ms`` old, events out of their
    window and buckets full again (a new one starts full too), then, beyond ``MAX_ROWS``
    a table, those that would be forgotten soonest; fires with the number deleted."""
    deleted = await txn.count("DELETE FROM login_failures WHERE last_at <= ?",
                              (txn.now_ms - pair_memory_ms,))
    for table in ("limit_events", "limit_buckets"):
        deleted += await txn.count(f"DELETE FROM {table} WHERE expires_at <= ?",
                                   (txn.now_ms,))
    for table, column in (("login_failures", "last_at"), ("limit_events", "expires_at"),
                          ("limit_buckets", "expires_at")):
        deleted += await txn.count(
            f"DELETE FROM {table} WHERE {column} < (SELECT {column} FROM {table} "
            f"ORDER BY {column} DESC LIMIT 1 OFFSET ?)", (MAX_ROWS - 1,))
    return deleted
