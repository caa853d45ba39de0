"""Limits on guessing that every node shares: failed logins, registrations, room password
guesses and key claims, kept where every node reads them (``securechat.server.guards``).

Two tables.  ``login_failures`` holds one row per (account, address) pair
that failed to log in: how many failures in a row and when the last was (its
back-off grows with them; a success deletes the row).  ``limit_events`` holds
one row per counted event of a sliding window (a failed login or a
registration of an address, a wrong room password, a claimed key), with its
weight and when it leaves every window it counts in (``expires_at``).

Cheap by construction: a check is one indexed read (``txn_read_limits``: the
pair's row and each window's newest events, one statement), a failure one
write (``txn_record_limits``), and rows are written only for failures, never
for a success.  ``txn_prune_limits`` keeps both tables bounded.
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


async def txn_window_totals(txn, scope, subjects, since_ms):
    """``{subject: total weight of its events after since_ms}`` of the ``subjects`` (those
    with none left out): many windows of one scope at once (a claim's target devices)."""
    totals = {}
    for chunk in _chunks(sorted(set(subjects))):
        marks = ", ".join("?" * len(chunk))
        for subject, total in await txn.execute(
                f"SELECT subject, sum(weight) FROM limit_events WHERE scope = ? "
                f"AND subject IN ({marks}) AND at > ? GROUP BY subject",
                (scope, *chunk, since_ms)):
            totals[subject] = int(total)
    return totals


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


async def txn_forget_failures(txn, user, address):
    """The pair logged in: its failures are forgotten."""
    await txn.execute("DELETE FROM login_failures WHERE user_id = ? AND address = ?",
                      (user, address))


async def txn_prune_limits(txn, pair_memory_ms):
    """Delete pairs whose last failure is ``pair_memory_ms`` old and events out of every
    window, then, beyond ``MAX_ROWS`` a table, those that would be forgotten soonest;
    fires with the number of rows deleted."""
    deleted = await txn.count("DELETE FROM login_failures WHERE last_at <= ?",
                              (txn.now_ms - pair_memory_ms,))
    deleted += await txn.count("DELETE FROM limit_events WHERE expires_at <= ?",
                               (txn.now_ms,))
    for table, column in (("login_failures", "last_at"), ("limit_events", "expires_at")):
        deleted += await txn.count(
            f"DELETE FROM {table} WHERE {column} < (SELECT {column} FROM {table} "
            f"ORDER BY {column} DESC LIMIT 1 OFFSET ?)", (MAX_ROWS - 1,))
    return deleted
