"""A decorator for the client's public API: coroutine methods that return Deferreds."""

import functools

from twisted.internet import defer


def returns_deferred(method):
    """Public methods return Deferreds: Twisted code adds callbacks, coroutines await them."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return defer.ensureDeferred(method(*args, **kwargs))

    return wrapper
