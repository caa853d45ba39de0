"""How many connections one address may hold before they log in.

Until a connection logs in nobody answers for it, yet it holds a file
descriptor and, while its TLS handshake runs, OpenSSL's memory.  An address
already holding ``cap`` such connections has its next ones closed as they are
accepted, before any TLS, so one host cannot fill the process's file table;
connections that have logged in no longer count (their user answers for them).
"""

import ipaddress

from twisted.logger import Logger

from securechat.server.logthrottle import INTERVAL, ThrottledWarning


def client_address(host):
    """What the per-address limits count a client as: its IPv4 address, or the /64 network
    of an IPv6 one.  A single IPv6 host is commonly given a whole /64, so counting its
    addresses one by one would let it cycle through billions of them past every cap."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 4:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


class UnauthenticatedPerAddress:
    """Counts each address's connections that have not logged in yet, up to ``cap``."""

    log = Logger()

    def __init__(self, clock, cap):
        self._cap = cap
        self._counts = {}
        self._refused = ThrottledWarning(
            clock, self.log,
            "Refused {count} connection(s) from an address already holding {cap} connections "
            f"that have not logged in (the latest from {{host}}; logged at most every "
            f"{INTERVAL:g} s)")
        self._late = {
            step: ThrottledWarning(
                clock, self.log,
                f"Closed {{count}} connection(s) that did not finish their {step} in time "
                f"(the latest from {{host}}; logged at most every {INTERVAL:g} s)")
            for step in ("TLS handshake", "login")}

    def admit(self, host):
        """Count a new connection from ``host``; False (and counted nothing) over the cap."""
        count = self._counts.get(host, 0)
        if count >= self._cap:
            self._refused(host=host, cap=self._cap)
            return False
        self._counts[host] = count + 1
        return True

    def release(self, host):
        """A connection ``admit`` counted logged in or closed."""
        count = self._counts[host] - 1
        if count:
            self._counts[host] = count
        else:
            del self._counts[host]

    def missed_deadline(self, host, step):
        """A connection from ``host`` was closed for not finishing ``step`` ("TLS
        handshake" or "login") by its deadline: logged, but never a line per connection."""
        self._late[step](host=host)

    def holding(self, host):
        """How many connections from ``host`` have not logged in yet."""
        return self._counts.get(host, 0)

    def stop(self):
        self._refused.stop()
        for warning in self._late.values():
            warning.stop()
