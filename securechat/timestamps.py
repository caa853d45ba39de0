"""Times as a person reads them, the same on the relay's messages and the client's lines."""

import datetime

DAY_MS = 24 * 3600 * 1000
"""A day in milliseconds, the unit of the relay's stored times."""


def utc_date(ms):
    """``ms`` since the epoch as a UTC date and minute: ``2026-12-07 01:40 UTC``."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")
