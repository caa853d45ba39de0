"""Connection states over real TLS to an in-process relay: a second login of the same
device replaces the first, which says so and does not fight back."""

import shutil

import pytest
import pytest_twisted
from twisted.internet import reactor

from securechat.client.session import Client
from securechat.client.settings import ClientSettings
from tests.support import poll_until

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server(start_relay):
    return start_relay()


def client_for(server, data_dir, **kw):
    settings = ClientSettings(host="127.0.0.1", port=server.port, username="bob",
                              data_dir=str(data_dir), ca_file=server.cert_path,
                              server_fingerprint=None, source="test")
    return Client(reactor, settings, PASSWORD, **kw)


@pytest_twisted.ensureDeferred
async def test_a_copy_of_the_device_logging_in_replaces_the_first_without_a_fight(
        server, tmp_path):
    """When a copy of bob's device (a restored backup) logs in, the first Client's state
    becomes 'replaced' with the relay's reason, it does not reconnect, and the copy
    stays connected."""
    first = client_for(server, tmp_path / "bob")
    await first.register()
    await first.disconnect()
    shutil.copytree(tmp_path / "bob", tmp_path / "copy", ignore=shutil.ignore_patterns("*.lock"))
    states = []
    first = client_for(server, tmp_path / "bob",
                       on_state=lambda state, detail: states.append((state, detail)))
    await first.open()
    copy = client_for(server, tmp_path / "copy")
    await copy.open()
    await poll_until(lambda: first.state == "replaced" and first.protocol.closed)
    assert states[-1] == ("replaced", "the server says: this device logged in elsewhere")
    assert not first._reconnector.running
    assert copy.state == "connected" and not copy.protocol.closed
    assert (await copy.request("ping"))["pong"] is True
    first.close()
    await copy.disconnect()
