"""Errors the store raises; the server maps each to a wire error code."""


class StoreError(Exception):
    """Base class of every error a store backend raises on purpose."""


class UserExists(StoreError):
    """The user name is already registered."""


class RoomExists(StoreError):
    """The room name is already taken."""


class Banned(StoreError):
    """The user is banned from the room it was to be added to."""


class KeyConflict(StoreError):
    """A key upload contradicts what is stored (other key for a known id, or a re-used id)."""


class StaleVersion(StoreError):
    """A signed device list does not have a version above the stored one."""


class DuplicateEnvelope(StoreError):
    """An envelope id is still queued for a recipient device (or in its room's history),
    or was given twice; ``args[0]`` is the id."""

    @property
    def envelope_id(self):
        return self.args[0]


class StoreUnavailable(StoreError):
    """The database cannot be reached (down, restarting, or it dropped the connection);
    nothing of the failed call was stored."""
