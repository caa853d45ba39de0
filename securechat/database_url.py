"""PostgreSQL URLs in log lines and error messages: never with any part of their password.

libpq reads ``postgresql://user:password@host:port/database?param=value``.  In
that form a password holding ``@`` or ``/`` must be percent-encoded (``%40``,
``%2F``; ``:`` may be ``%3A``): written as is, libpq would cut the URL at
the wrong place and echo a piece of the password back as a host or port
name in its error.  So such a URL is refused at configuration time, and
everything that shows a URL or a database error removes the password first
(as written, and decoded), including a ``password=`` parameter.
"""

import re
from urllib.parse import unquote

HIDDEN = "***"
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)([^&]*)")


def _userinfo(url):
    """(start, end) of the ``user:password`` part of ``url``, or None when it has none."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    at = url.rfind("@", start)  # the last: an unencoded "@" in the password hides nothing
    return None if at < 0 else (start, at)


def _password_span(url):
    span = _userinfo(url)
    if span is None:
        return None
    colon = url.find(":", *span)
    return None if colon < 0 else (colon + 1, span[1])


def check(url):
    """Raise ValueError (without echoing the URL) if its user or password is not URL-safe.

    Only the last ``@`` may be written as is: any other (in a parameter too)
    would make this module and libpq disagree on where the password ends.
    """
    span = _userinfo(url)
    if span is not None and any(c in url[span[0]:span[1]] for c in "@/"):
        raise ValueError("the user name or password holds '@' or '/': percent-encode them "
                         "in the URL (@ as %40, / as %2F, : as %3A)")


def redact(url):
    """``url`` fit for a log line: its password (and any ``password=`` parameter) hidden."""
    span = _password_span(url)
    if span is not None:
        url = url[:span[0]] + HIDDEN + url[span[1]:]
    return _PASSWORD_PARAMETER.sub(lambda m: m.group(1) + HIDDEN, url)


def passwords(url):
    """Every form of the password in ``url`` that a message might quote."""
    span = _password_span(url)
    written = [url[span[0]:span[1]]] if span is not None else []
    written += [m.group(2) for m in _PASSWORD_PARAMETER.finditer(url)]
    found = {form for text in written for form in (text, unquote(text)) if form}
    return sorted(found, key=len, reverse=True)


def scrub(text, url):
    """``text`` (say a database driver's error) on one line, with no password of ``url`` in it."""
    for password in passwords(url):
        text = text.replace(password, HIDDEN)
    return " ".join(text.split())


def without_password(url):
    """``(url without its user's password, the password decoded or None)``: for a client
    tool given the password in its environment (PGPASSWORD), not on its command line,
    where every user of the machine could read it."""
    span = _password_span(url)
    if span is None:
        return url, None
    return url[:span[0] - 1] + url[span[1]:], unquote(url[span[0]:span[1]])
