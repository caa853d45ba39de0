"""The server's shared parts (store, relay, keys, rooms, limits) and the protocol factory."""

from twisted.internet import defer
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from securechat.server.accounts import Accounts
from securechat.server.admission import UnauthenticatedPerAddress, client_address
from securechat.server.audit import NoAuditLog
from securechat.server.auth import LegacySecrets, PasswordKeys, make_portal
from securechat.server.directory import DeviceDirectory
from securechat.server.files import Files
from securechat.server.keys import KeyDirectory
from securechat.server.metrics import RelayMetrics
from securechat.server.nodebus import LoneNode
from securechat.server.protocol import RelayProtocol
from securechat.server.outage import OutageLog
from securechat.server.guards import (
    FAILURE_MEMORY_SECONDS, KeyClaimLimits, LoginGuard, RoomPasswordGuard)
from securechat.server.recovery import Recovery
from securechat.server.relay import Relay
from securechat.server.rooms import Rooms
from securechat.server.waiters import Waiters


class RelayFactory(ServerFactory):
    """Builds one RelayProtocol per connection; every connection shares these parts."""

    log = Logger()

    def __init__(self, config, store, clock, hasher, relay_id, audit=None, bus=None):
        self.config = config
        self.bus = bus if bus is not None else LoneNode()  # the other nodes of the database
        self.relay_id = relay_id  # the store's: the same on every node of one database
        self.store = store
        self.clock = clock
        self.hasher = hasher
        self.devices = DeviceDirectory(store)
        self.store_outage = OutageLog(clock)
        self.audit = audit if audit is not None else NoAuditLog()  # the service opens it
        self.metrics = RelayMetrics()
        self.relay = Relay(store, self.devices, clock, self.store_outage, self.metrics,
                           self.bus)
        self.login_guard = LoginGuard(store, config)
        self.legacy_secrets = LegacySecrets(store, hasher, self.login_guard)
        self.password_keys = PasswordKeys(store, self.login_guard)
        self.recovery = Recovery(store, self.login_guard)
        link_window_ms = config.link_window_minutes * 60_000
        self.portal = make_portal(store, self.relay, self.login_guard, self.password_keys,
                                  self.recovery, link_window_ms)
        self.key_claims = KeyClaimLimits(store, config)
        self.keys = KeyDirectory(store, self.devices, self.relay, self.key_claims,
                                 config.one_time_keys_low, config.max_devices, link_window_ms)
        self.room_passwords = RoomPasswordGuard(store, config)
        self.rooms = Rooms(config, store, self.devices, self.relay, self.hasher,
                           self.room_passwords)
        self.accounts = Accounts(config, store, self.password_keys, self.devices, self.rooms,
                                 self.relay)
        self.files = Files(config, store)
        self.connections = set()
        self.disabled = set()  # accounts the operator disabled (the service loads them)
        self._all_closed = Waiters()  # for the last connection to close
        self.unauthenticated = UnauthenticatedPerAddress(clock, config.unauthenticated_per_address)

    def prune_limits(self):
        """Forget the limits' entries whose time has passed (every node prunes the shared
        tables: a repeated delete finds nothing); a Deferred."""
        return self.store.prune_limits(FAILURE_MEMORY_SECONDS * 1000)

    def buildProtocol(self, addr):
        """A protocol for a new connection; None (the port closes it at once) when its
        address already holds its share of connections that have not logged in."""
        host = client_address(getattr(addr, "host", str(addr)))
        if not self.unauthenticated.admit(host):
            return None
        return RelayProtocol(self, host)

    def stopFactory(self):
        self.unauthenticated.stop()

    def connection_opened(self, protocol):
        self.connections.add(protocol)

    def connection_closed(self, protocol):
        self.connections.discard(protocol)
        if not self.connections:
            self._all_closed.fire()

    def all_closed(self):
        """A Deferred that fires once no connection is open (at once if none is)."""
        if not self.connections:
            return defer.succeed(None)
        return self._all_closed.wait()
