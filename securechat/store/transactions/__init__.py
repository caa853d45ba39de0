"""Every store operation, written once as an ``async def txn_xxx(txn, ...)`` for both databases.

Each function is the body of one database transaction: it awaits
``txn.execute(sql, args)`` (see ``securechat.store.engine``) and raises a
``StoreError`` to roll everything back.  What it stamps with the time takes
``txn.now_ms``, read from the store's clock as the transaction starts (never
``time.time()``: one clock, which a test may drive, stamps and prunes alike).
The SQL must stay correct when several connections or server nodes run the
same transaction at once on PostgreSQL (READ COMMITTED): uniqueness is
decided by the database itself
(``INSERT ... ON CONFLICT DO NOTHING RETURNING``, never check-then-insert),
counters by ``UPDATE ... RETURNING``, and the one-time keys of a device by
a lock on its row.  On SQLite every transaction is serial anyway.

One module per aggregate, so that a change touches the one it is about:
``migrate`` (the schema), ``accounts`` (accounts, their password and identity
keys, the relay's id), ``devices`` (devices, device lists, one-time and
fallback keys and their claims), ``queue_writes`` (the write group: envelopes
numbered and stored, with the acks that ride along), ``queue_reads`` (what a
device reads from its queue and rooms, and its acks), ``rooms`` (rooms,
members, bans), ``history`` (room history pages and their pruning);
``recovery`` (an account's recovery key and the sealed identity seed, and the
password reset it proves); ``account_deletion`` (an account and everything of it,
in one transaction); ``limits`` (failed logins, registrations, room password
guesses and key claims, counted where every node sees them);
``common`` holds what several of them share.  Callers import the aggregate
they use; this package re-exports nothing, so each name is listed in one
place only.
"""
