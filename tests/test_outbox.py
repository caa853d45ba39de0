"""The outbox: a resend after a lost "accepted" counts as accepted (real relay over TLS), a
waiting message is encrypted again when the recipient's devices changed, and the key
store's nested transactions that keep an entry and its ratchet state together."""

import sqlite3
import types

import pytest
import pytest_twisted
from twisted.internet import reactor

from securechat.client.events import Events
from securechat.client.outbox import Outbox
from securechat.client.protocol import RemoteError
from securechat.client.session import Client
from securechat.client.settings import RESEND_DAYS, ClientSettings
from securechat.crypto.keystore import KeyStore
from tests.support import keep_encrypted_outbox_entries, poll_until

PASSWORD = "correct horse battery staple"


def client_for(server, tmp_path, user, **kw):
    settings = ClientSettings(host="127.0.0.1", port=server.port, username=user,
                              data_dir=str(tmp_path / user), ca_file=server.cert_path,
                              server_fingerprint=None, source="test")
    return Client(reactor, settings, PASSWORD, **kw)


@pytest.fixture
def server(start_relay):
    return start_relay()


def queued_ids(server, user):
    database = sqlite3.connect(server.service.config.database)
    try:
        return [row[0] for row in database.execute(
            "SELECT envelope_id FROM queue WHERE user_id = ?", (user,))]
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_a_resend_the_relay_already_accepted_counts_as_sent_and_arrives_once(
        server, tmp_path):
    """A crash after the relay accepted a message but before its outbox entry was removed:
    the next flush sends the ORIGINAL envelope ids again, the relay answers
    duplicate_envelope, the entry goes (not marked failed), the relay holds the message
    once and bob reads it once."""
    bob = client_for(server, tmp_path, "bob")
    await bob.register()
    await bob.disconnect()  # offline: the relay keeps the envelope until bob acknowledges
    alice = client_for(server, tmp_path, "alice")
    await alice.register()
    kept = keep_encrypted_outbox_entries(alice)
    assert await alice.send_text("bob", "exactly once") == 1
    assert alice.outbox_pending() == []
    (entry_id, record, envelopes), = kept
    with alice.store.transaction():  # the entry as the crash left it
        alice.store.outbox_add(entry_id, {**record, "envelopes": envelopes})
    await alice.outbox.flush()
    assert alice.outbox_pending() == []
    assert queued_ids(server, "bob") == [envelopes[0]["id"]]
    await alice.disconnect()
    received = []
    bob = client_for(server, tmp_path, "bob", on_message=received.append)
    await bob.open()
    await poll_until(lambda: received and bob.receiver.idle())
    assert [r["text"] for r in received] == ["exactly once"]
    await bob.disconnect()


class DevicesChangedClient:
    """What the outbox uses of a Client, on a real key store, whose relay answers every
    resend with devices_mismatch (the recipient added a device while the message waited)."""

    def __init__(self, store):
        self.store = store
        self.user, self.device = "alice", "DEV1"
        self.settings = types.SimpleNamespace(resend_days=RESEND_DAYS)
        self.state = "connected"
        self.forgotten = 0
        self.sender = self
        self.encrypted_again = []
        self.events = Events(self, reactor)

    def request(self, op, **fields):
        raise RemoteError("devices_mismatch", "the envelopes must cover exactly ...",
                          {"missing": {"bob": ["NEW"]}, "extra": {}})

    def forget_devices(self):
        self.forgotten += 1

    async def send(self, users, payload, outbox_id=None):
        self.encrypted_again.append((users, payload["body"], outbox_id))
        return 2


@pytest.fixture
def store(tmp_path):
    made = KeyStore.create(str(tmp_path / "keys"), PASSWORD, {"user": "alice"})
    yield made
    made.close()


@pytest_twisted.ensureDeferred
async def test_a_waiting_message_is_encrypted_again_for_changed_devices(store):
    """An encrypted entry whose resend gets devices_mismatch is encrypted again (for the
    devices there are now: the cached device lists are dropped first), then removed."""
    client = DevicesChangedClient(store)
    outbox = Outbox(client)
    entry = outbox.add({"type": "msg", "mid": "m1", "ts": 0, "body": "hi"}, to="bob")
    with store.transaction():
        outbox.encrypted(entry, [{"id": "old-envelope-id-0000", "to": "bob", "to_dev": "OLD"}])
    await outbox.flush()
    assert client.forgotten == 1
    assert client.encrypted_again == [(["bob"], "hi", entry)]
    assert outbox.entries() == []


def test_a_nested_transaction_that_fails_undoes_only_its_own_writes(store):
    """A transaction inside another is a savepoint: its failure rolls back its writes, the
    outer one still commits (and a failure of the outer undoes both)."""
    with store.transaction():
        store.set_meta("outer", "1")
        with pytest.raises(ValueError):
            with store.transaction():
                store.set_meta("inner", "1")
                raise ValueError("inner step failed")
    assert (store.meta("outer"), store.meta("inner")) == ("1", None)
    with pytest.raises(ValueError):
        with store.transaction():
            with store.transaction():
                store.set_meta("both", "1")
            raise ValueError("outer step failed")
    assert store.meta("both") is None
