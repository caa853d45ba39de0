"""Deleting an account: everything the relay holds of it goes in one transaction.

Its own module because it crosses the aggregates: the account row
(``accounts``), its devices and their keys (``devices``), its queues
(``queue_writes``/``queue_reads``) and its room memberships (``rooms``, which
decides who inherits a room it owned).  What stays is the name and the time
(``deleted_accounts``), so the name is not registered again before the
relay's quarantine ends and lookups of it answer "deleted".  Room messages it
sent stay in their rooms' histories: they belong to the conversation (and
are ciphertext the relay cannot tell apart).
"""

from securechat.store.transactions.common import _first
from securechat.store.transactions.devices import DEVICE_TABLES
from securechat.store.transactions.rooms import txn_leave_for_good, txn_rooms_of

ACCOUNT_TABLES = (*DEVICE_TABLES, "removed_devices", "device_lists", "room_bans", "accounts")
"""Every table with rows of one account (by ``user_id``), the account's own row last."""


async def txn_delete_account(txn, user):
    """Delete ``user``'s account; fire with ``{"devices", "rooms", "heirs", "deleted_at"}``
    (its device ids, the rooms it left, ``{room: new owner}`` of those it owned and passed
    on, when), or None for no such account."""
    if await _first(txn, "SELECT 1 FROM accounts WHERE user_id = ?", (user,)) is None:
        return None
    devices = [row[0] for row in await txn.execute(
        "SELECT device_id FROM devices WHERE user_id = ? ORDER BY device_id", (user,))]
    rooms = await txn_rooms_of(txn, user)
    heirs = {}
    for room in rooms:
        heir = await txn_leave_for_good(txn, room, user)
        if heir is not None:
            heirs[room] = heir
    for table in ACCOUNT_TABLES:
        await txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user,))
    await txn.execute(
        "INSERT INTO deleted_accounts (user_id, deleted_at) VALUES (?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET deleted_at = excluded.deleted_at",
        (user, txn.now_ms))
    return {"devices": devices, "rooms": rooms, "heirs": heirs, "deleted_at": txn.now_ms}
