"""The server's shared parts (store, relay, keys, rooms, limits) and the protocol factory."""

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from securechat.server.auth import make_portal
from securechat.server.directory import DeviceDirectory
from securechat.server.keys import KeyDirectory
from securechat.server.protocol import RelayProtocol
from securechat.server.outage import OutageLog
from securechat.server.ratelimit import SlidingWindow
from securechat.server.relay import Relay
from securechat.server.rooms import Rooms


class RelayFactory(ServerFactory):
    """Builds one RelayProtocol per connection; every connection shares these parts."""

    log = Logger()

    def __init__(self, config, store, clock, hasher, dummy_hash):
        self.config = config
        self.store = store
        self.clock = clock
        self.hasher = hasher
        self.devices = DeviceDirectory(store)
        self.store_outage = OutageLog(clock)
        self.relay = Relay(store, self.devices, clock, self.store_outage)
        self.portal = make_portal(store, self.relay, self.hasher, dummy_hash)
        self.keys = KeyDirectory(store, self.devices)
        self.rooms = Rooms(config, store, self.devices, self.relay, self.hasher)
        window = config.login_window_seconds
        self.login_per_account = SlidingWindow(clock, config.login_attempts_per_account, window)
        self.login_per_address = SlidingWindow(clock, config.login_attempts_per_address, window)
        self.connections = set()

    def buildProtocol(self, addr):
        return RelayProtocol(self)

    def connection_opened(self, protocol):
        self.connections.add(protocol)

    def connection_closed(self, protocol):
        self.connections.discard(protocol)
