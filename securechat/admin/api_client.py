"""``securechat-admin``'s way into a running relay: its admin API on the operator port.

The address and the token come from the relay's own ini (``[http] interface``, ``port``
and ``admin_token_file``), so the tool needs nothing the relay's user does not already
have.  A relay that does not answer is said to be not running, in those words.
"""

import json
import urllib.error
import urllib.parse
import urllib.request

from securechat.admin.backup import AdminError


def call(config, method, path, params=None, body=None):
    """``method`` ``/admin/v1/PATH`` on the configured relay (with ``body`` as JSON); the
    decoded JSON answer."""
    if not config.http_enabled:
        raise AdminError("the relay's operator port is off ([http] enabled = no): the admin "
                         "commands need it")
    if not config.admin_token_file:
        raise AdminError("the admin API is off ([http] admin_token_file is empty)")
    host = "127.0.0.1" if config.http_interface in ("0.0.0.0", "::") else config.http_interface
    base = f"http://{host}:{config.http_port}"
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    request = urllib.request.Request(
        f"{base}/admin/v1/{path}{query}", method=method,
        data=None if body is None else json.dumps(body).encode("utf-8"),
        headers={"Authorization": f"Bearer {_token(config)}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            raise AdminError(f"the relay answered {e.code} to {method} {path}") from None
        raise AdminError(error["message"]) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise AdminError(f"the relay is not running (nothing answers on {base}: {reason})"
                         ) from None


def _token(config):
    try:
        with open(config.admin_token_file, encoding="ascii") as f:
            return f.read().strip()
    except OSError as e:
        raise AdminError(f"cannot read the admin token {config.admin_token_file}: "
                         f"{e.strerror} (the relay makes it at its first start; run this as "
                         "the relay's user)") from None
