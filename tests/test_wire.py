"""Unit tests of the frame codec and request schema (no sockets)."""

import pytest

from securechat import wire
from securechat.wire import ProtocolError


def parse(frame):
    return wire.parse_request(wire.decode(wire.encode(frame)))


def test_valid_request_is_checked_and_returned():
    """A well-formed request comes back as (op, rid, fields) with every field present."""
    op, rid, fields = parse({"op": "room.join", "rid": 7, "room": "ops"})
    assert (op, rid, fields) == ("room.join", 7, {"room": "ops", "password": None})


@pytest.mark.parametrize("line, code", [
    (b"\xc3\x28", "bad_utf8"),
    (b"{", "bad_json"),
    (b"42", "bad_frame"),
])
def test_undecodable_lines_have_stable_codes(line, code):
    """Each way a line can fail to be a JSON object has its own code."""
    with pytest.raises(ProtocolError) as info:
        wire.decode(line)
    assert info.value.code == code


@pytest.mark.parametrize("frame, code, words", [
    ({"op": "nope", "rid": 1}, "unknown_op", "nope"),
    ({"op": "ping"}, "bad_field", "rid"),
    ({"op": "ping", "rid": True}, "bad_field", "rid"),
    ({"op": "login", "rid": 1, "user": "Bad Name", "device": "d", "password_signature": "x"},
     "bad_field", "user"),
    ({"op": "login", "rid": 1, "user": "bob", "signature": "x"}, "missing_field", "device"),
    ({"op": "login", "rid": 1, "user": "alice\n", "device": "d", "password_signature": "x"},
     "bad_field", "user"),
    ({"op": "room.join", "rid": 1, "room": "ops\n"}, "bad_field", "room"),
    ({"op": "ack", "rid": 1, "ids": ["a" * 16 + "\n"]}, "bad_field", "ids[0]"),
    ({"op": "ack", "rid": 1, "ids": ["a" * 16, "b" * 16 + "\n" + "c" * 16]}, "bad_field", "ids[1]"),
    ({"op": "ack", "rid": 1, "ids": ["a" * 16, 7, "b" * 16]}, "bad_field", "ids[1]"),
    ({"op": "ack", "rid": 1, "ids": ["a" * 16, "b" * 15]}, "bad_field", "ids[1]"),
    ({"op": "ping", "rid": 1, "extra": 1}, "bad_field", "extra"),
    ({"op": "ack", "rid": 1, "ids": ["x" * 16] * (wire.MAX_BATCH_ITEMS + 1)}, "bad_field", "ids"),
])
def test_bad_requests_name_the_field(frame, code, words):
    """A schema violation names the offending field in its message."""
    with pytest.raises(ProtocolError) as info:
        parse(frame)
    assert info.value.code == code
    assert words in info.value.message


def test_base64_must_be_padded_and_sized():
    """Keys are padded base64 of exactly 32 bytes; vodozemac's unpadded form must be padded first."""
    key = wire.b64encode(b"k" * 32)

    def upload(curve25519):
        keys = {"user": "bob", "device": "D", "curve25519": curve25519, "ed25519": key}
        return parse({"op": "keys.upload", "rid": 1, "device_keys": keys,
                      "signature": wire.b64encode(b"s" * 64)})

    assert upload(key)[2]["device_keys"]["curve25519"] == key
    assert upload(wire.pad_b64(key.rstrip("=")))[2]["device_keys"]["curve25519"] == key
    for bad in (key.rstrip("="), wire.b64encode(b"k" * 31)):
        with pytest.raises(ProtocolError) as info:
            upload(bad)
        assert "'device_keys.curve25519' must be base64" in info.value.message


def test_canonical_json_is_sorted_and_compact():
    """Signatures cover sorted keys, no spaces, UTF-8 (a known answer)."""
    assert wire.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode("utf-8")


def test_an_ack_of_many_valid_ids_is_returned_whole():
    ids = [f"{i:032x}" for i in range(wire.MAX_BATCH_ITEMS)]
    assert parse({"op": "ack", "rid": 1, "ids": ids})[2] == {"ids": ids}


def test_pasted_ids_never_start_with_a_dash():
    """Ids people paste as a command's argument (mids, file ids, invites) never start with
    '-' (argparse would take one for an option): 2,000 of them, where plain
    token_urlsafe starts one in 64 with it."""
    tokens = [wire.pasteable_token(16) for _ in range(2000)]
    assert not [token for token in tokens if token.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(token) == 22 for token in tokens)
