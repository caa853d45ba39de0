"""Errors the store raises; the server maps each to a wire error code."""


class StoreError(Exception):
    """Base class of every error a store backend raises on purpose."""


class UserExists(StoreError):
    """The user name is already registered."""


class NameQuarantined(StoreError):
    """The user name belonged to an account deleted too recently to be registered again;
    ``frees_at`` is when it may be (ms since the epoch)."""

    def __init__(self, user, frees_at):
        super().__init__(user, frees_at)
        self.user, self.frees_at = user, frees_at


class RoomExists(StoreError):
    """The room name is already taken."""


class Banned(StoreError):
    """The user is banned from the room it was to be added to."""


class KeyConflict(StoreError):
    """A key upload contradicts what is stored (other key for a known id, or a re-used id)."""


class StaleVersion(StoreError):
    """A signed device list does not have a version above the stored one."""


class DeviceRemoved(StoreError):
    """The device was removed from its account's device list: its id never comes back."""


class TooManyDevices(StoreError):
    """The account already has as many devices with keys as the relay allows."""


class UnknownDevice(StoreError):
    """A device list names a device that has no published keys (``args[0]``: its id)."""


class DuplicateEnvelope(StoreError):
    """An envelope id is still queued for a recipient device (or in its room's history),
    or was given twice; ``args[0]`` is the id."""

    @property
    def envelope_id(self):
        return self.args[0]


class StoreUnavailable(StoreError):
    """The database cannot be reached (down, restarting, or it dropped the connection);
    nothing of the failed call was stored.  ``args[0]`` says why, briefly (for the log).

    A request refused by it is answered ``unavailable`` with ``client_message``;
    the relay logs ``log_message`` once per interval, not each refusal
    (``securechat.server.outage``).
    """

    client_message = "the server cannot reach its database; nothing was stored, try again shortly"
    log_message = "The database cannot be reached"


class StoreFull(StoreUnavailable):
    """The database's disk is full (SQLite's SQLITE_FULL, PostgreSQL's disk_full, SQLSTATE
    53100): the transaction was rolled back whole, so nothing of it was stored, and
    what was committed before stays readable and deliverable."""

    client_message = "the server's disk is full; nothing was stored, try again later"
    log_message = "The server's disk is full"


class InvalidInvite(StoreError):
    """A registration's invite is unknown, used up, revoked or expired."""


class FileRefused(StoreError):
    """A file request the relay refuses; ``code`` is its wire error code (docs/protocol.rst,
    "Files"), ``message`` says why, ``details`` (a dict or None) rides along."""

    def __init__(self, code, message, details=None):
        super().__init__(code, message)
        self.code, self.message, self.details = code, message, details
