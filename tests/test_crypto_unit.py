"""Unit tests of the client cryptography (no sockets): key store, Olm devices, Megolm rooms."""

import pytest

from securechat.crypto.device import DecryptError, DeviceCrypto
from securechat.crypto.fingerprint import key_fingerprint, safety_number
from securechat.crypto.group import ROTATE_AFTER_MESSAGES, ROTATE_AFTER_SECONDS, RoomCrypto
from securechat.crypto.keystore import KeyStore, StoreLocked, WrongPassword
from securechat import wire


@pytest.fixture
def devices(tmp_path):
    stores = [KeyStore.create(str(tmp_path / name), "pw", {"user": name}) for name in ("a", "b")]
    yield [DeviceCrypto.create(store) for store in stores], stores
    for store in stores:
        store.close()


def start_session(sender, receiver):
    """A signed one-time key of ``receiver``, as ``sender`` would claim it."""
    otks = receiver.one_time_keys("bob", "B", 1)
    receiver.mark_published()
    (otk,) = otks.values()
    return otk["key"]


def test_key_store_password_and_single_process(tmp_path):
    """A wrong password does not open the store, and a second process cannot open it while it is open."""
    store = KeyStore.create(str(tmp_path / "d"), "right", {"user": "u"})
    with pytest.raises(StoreLocked):
        KeyStore.open(str(tmp_path / "d"), "right")
    store.close()
    with pytest.raises(WrongPassword):
        KeyStore.open(str(tmp_path / "d"), "wrong")
    KeyStore.open(str(tmp_path / "d"), "right").close()


def test_olm_round_trip_and_replay(devices):
    """A pre-key message starts a session, replies flow, and a replayed message is refused."""
    (alice, bob), (store_a, store_b) = devices
    otk = start_session(alice, bob)
    sid, otype, ct = alice.encrypt("bob", "B", bob.curve25519, b"hello", otk)
    assert otype == 0
    with store_b.transaction():
        assert bob.decrypt("alice", "A", alice.curve25519, sid, otype, ct) == b"hello"
    sid2, otype2, ct2 = bob.encrypt("alice", "A", alice.curve25519, b"hi back")
    with store_a.transaction():
        assert alice.decrypt("bob", "B", bob.curve25519, sid2, otype2, ct2) == b"hi back"
    with pytest.raises(DecryptError), store_b.transaction():
        bob.decrypt("alice", "A", alice.curve25519, sid, otype, ct)


def test_tampered_olm_message_is_refused_without_changing_state(devices):
    """A flipped bit fails decryption and leaves the session usable for the genuine message."""
    (alice, bob), (_, store_b) = devices
    otk = start_session(alice, bob)
    sid, otype, ct = alice.encrypt("bob", "B", bob.curve25519, b"genuine", otk)
    raw = bytearray(wire.b64decode(ct))
    raw[-3] ^= 1
    with pytest.raises(DecryptError), store_b.transaction():
        bob.decrypt("alice", "A", alice.curve25519, sid, otype, wire.b64encode(bytes(raw)))
    with store_b.transaction():
        assert bob.decrypt("alice", "A", alice.curve25519, sid, otype, ct) == b"genuine"


def share(sender_store, receiver_store, room, members, now=1000.0):
    crypto = RoomCrypto(sender_store)
    session, meta, rotated = crypto.outbound(room, members, now=now)
    key = crypto.key_for_sharing(session)
    with receiver_store.transaction():
        RoomCrypto(receiver_store).add_inbound(room, "alice", "A", "CURVE", key)
    return crypto, session, meta, rotated


def test_megolm_rotation_rules(devices):
    """A new session when the member devices change, after 100 messages and after 7 days."""
    _, (store_a, store_b) = devices
    crypto, session, meta, rotated = share(store_a, store_b, "ops", {("bob", "B")})
    assert rotated
    crypto.encrypt("ops", session, meta, b"x", [["bob", "B"]])
    same, meta, rotated = crypto.outbound("ops", {("bob", "B")}, now=1000.0)
    assert not rotated and same.session_id == session.session_id
    _, _, rotated = crypto.outbound("ops", {("bob", "B"), ("carol", "C")}, now=1000.0)
    assert rotated
    _, _, rotated = crypto.outbound("ops", {("bob", "B")}, now=1000.0 + ROTATE_AFTER_SECONDS)
    assert rotated
    for _ in range(ROTATE_AFTER_MESSAGES - 1):
        same, meta, _ = crypto.outbound("ops", {("bob", "B")}, now=1000.0)
        crypto.encrypt("ops", same, meta, b"x", [["bob", "B"]])
    _, _, rotated = crypto.outbound("ops", {("bob", "B")}, now=1000.0)
    assert rotated


def test_megolm_replay_and_late_key(devices):
    """A repeated message is a silent duplicate, a different one at a known index an alarm,
    and a key shared later cannot read earlier messages."""
    _, (store_a, store_b) = devices
    sender = RoomCrypto(store_a)
    session, meta, _ = sender.outbound("ops", {("bob", "B")})
    sid, early = sender.encrypt("ops", session, meta, b"before the key", [])
    session, meta, rotated = sender.outbound("ops", {("bob", "B")})
    assert not rotated
    key = sender.key_for_sharing(session)
    sid, ct = sender.encrypt("ops", session, meta, b"after", [])
    receiver = RoomCrypto(store_b)
    with store_b.transaction():
        receiver.add_inbound("ops", "alice", "A", "CURVE", key)
        assert receiver.decrypt("ops", "alice", "A", "CURVE", sid, "id1", ct) == b"after"
        assert receiver.decrypt("ops", "alice", "A", "CURVE", sid, "id1", ct) is None
        with pytest.raises(DecryptError, match="replayed or forged"):
            receiver.decrypt("ops", "alice", "A", "CURVE", sid, "id2", ct)
        with pytest.raises(DecryptError, match="not decryptable on this device"):
            receiver.decrypt("ops", "alice", "A", "CURVE", sid, "id0", early)
        with pytest.raises(DecryptError, match="another sender"):
            receiver.decrypt("ops", "mallory", "M", "CURVE", sid, "id3", ct)


def test_fingerprints_are_stable_and_symmetric():
    """Known answers: the fingerprint of a fixed key, and one safety number for both sides."""
    key_a = wire.b64encode(bytes(range(32)))
    key_b = wire.b64encode(bytes(range(32, 64)))
    assert key_fingerprint(key_a) == "630D CD29 66C4 3366 9112 5448 BBB2 5B4F"
    number = safety_number("alice", key_a, "bob", key_b)
    assert number == safety_number("bob", key_b, "alice", key_a)
    assert number == ("30995 66850 10881 98914 36086 86589 "
                      "42897 09292 78922 06503 11987 06478")
