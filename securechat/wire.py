"""Frames on the wire: one UTF-8 JSON object per line, and the schema of every request.

Shared by the server and the client; no I/O here.  Every problem with a
frame is a ``ProtocolError`` carrying a stable ``code`` (documented in
docs/protocol.rst) and a message a person can act on.
"""

import base64
import binascii
import json
import re
import secrets

import orjson


def pasteable_token(nbytes):
    """A random URL-safe token of ``nbytes`` bytes that does not start with ``-``: people
    paste these ids (a message's mid, a file's id, an invite) as a command's argument, and
    one starting with ``-`` would be read as an option there."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token

MAX_LINE_BYTES = 1024 * 1024
"""Longest accepted line, delimiter excluded (a frame of several envelopes fits)."""

MAX_CIPHERTEXT_CHARS = 256 * 1024
"""Longest accepted ``ct`` of one envelope (base64 characters)."""

MAX_ENVELOPES_PER_SEND = 256
MAX_BATCH_ITEMS = 512
"""Longest list in any request (ids to ack, users to query, keys to upload...)."""

# Whole-string patterns: always used with ``fullmatch``.  (With ``match`` and
# ``^...$``, "$" also matches before a final newline, so "alice\n" would pass
# as a user name that looks like "alice".)
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
ROOM_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# What a NEW name must also be: "alice." or "alice__" beside "alice" is a trap for the
# eye, so a separator (. _ -) stands alone between letters or digits.  Names registered
# before this rule keep working: every other request still takes USERNAME_RE / ROOM_RE.
NEW_USERNAME_RE = re.compile(r"(?=.{1,32}\Z)[a-z0-9]+(?:[._-][a-z0-9]+)*")
NEW_ROOM_RE = re.compile(r"(?=.{1,64}\Z)[a-z0-9]+(?:[._-][a-z0-9]+)*")
_ENVELOPE_ID = r"[A-Za-z0-9_-]{16,64}"
ENVELOPE_ID_RE = re.compile(_ENVELOPE_ID)
ENVELOPE_IDS_RE = re.compile(rf"{_ENVELOPE_ID}(?:\n{_ENVELOPE_ID})*")
"""Envelope ids joined by newlines (which no id holds): a whole ack checked in one match."""
RELAY_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
KEY_ID_RE = re.compile(r"[A-Za-z0-9_+/=-]{1,64}")
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_+/=-]{1,128}")
REQUEST_ID_MAX = 64


class ProtocolError(Exception):
    """A frame or a request that breaks the protocol; ``code`` is stable, ``message`` human."""

    def __init__(self, code, message, details=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.details = details

    def to_error(self):
        error = {"code": self.code, "message": self.message}
        if self.details:
            error.update(self.details)
        return error


def encode(frame):
    """One frame as the bytes of one line (without the delimiter): compact UTF-8 JSON.

    orjson, not the standard library: encoding and decoding frames is work
    the relay does for every message, and orjson does it about four times faster.
    """
    return orjson.dumps(frame)


def canonical_json(obj):
    """The bytes that signatures cover: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def decode(line):
    """Parse one received line into a dict, or raise ProtocolError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError("bad_utf8", f"line is not valid UTF-8 (byte {e.start})") from None
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError("bad_json", f"line is not valid JSON: {e}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_frame", "a frame must be a JSON object")
    return frame


def request_id(frame):
    """The ``rid`` of a request: a short string or an integer, echoed in the answer."""
    rid = frame.get("rid")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        raise ProtocolError("bad_field", "field 'rid' must be an integer or a string")
    if isinstance(rid, str) and len(rid) > REQUEST_ID_MAX:
        raise ProtocolError("bad_field", f"field 'rid' is longer than {REQUEST_ID_MAX}")
    return rid


def pad_b64(text):
    """Add the ``=`` padding that vodozemac leaves off (Python's decoder requires it)."""
    return text + "=" * (-len(text) % 4)


def b64decode(text):
    """Decode standard base64 with padding; raise ValueError when it is not."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: a str with non-ASCII characters
        raise ValueError("not valid base64") from None


def b64encode(data):
    return base64.b64encode(data).decode("ascii")


# -- field checkers: each returns the value or raises _Invalid -----------------
#
# Checkers see values only, never names: the name of a bad field (like
# ``envelopes[3].ct``) is put together while the error travels up, so a
# valid request (the hot path: every message) builds no strings at all.


class _Invalid(Exception):
    """A field failed its check; ``path`` grows by one segment at each level it passes."""

    def __init__(self, code, before, after=""):
        super().__init__(code)
        self.code, self.before, self.after, self.path = code, before, after, ""

    def at(self, segment):
        self.path = segment + self.path
        return self

    def protocol_error(self):
        return ProtocolError(self.code, f"{self.before}'{self.path}'{self.after}")


def _bad(what):
    return _Invalid("bad_field", "field ", f" must be {what}")


def text_matching(pattern, what):
    def check(value):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _bad(what)
        return value

    return check


def printable_text(max_len, what):
    """A name a person gave: 1 to ``max_len`` printable characters (``str.isprintable``:
    no control character, no line break, no format character such as U+202E that would
    reorder what a terminal shows), not only spaces."""
    def check(value):
        if (not isinstance(value, str) or not 0 < len(value) <= max_len
                or not value.isprintable() or not value.strip()):
            raise _bad(what)
        return value

    return check


def base64_bytes(min_len, max_len):
    what = f"base64 (with padding) of {min_len} to {max_len} bytes"

    def check(value):
        if not isinstance(value, str) or len(value) > (max_len + 2) // 3 * 4:
            raise _bad(what)
        try:
            raw = b64decode(value)
        except ValueError:
            raise _bad(what) from None
        if not min_len <= len(raw) <= max_len:
            raise _bad(what)
        return value

    return check


def one_of(*choices):
    choices = frozenset(choices)
    what = " or ".join(f"'{choice}'" for choice in sorted(choices, key=len))

    def check(value):
        if not isinstance(value, str) or value not in choices:
            raise _bad(what)
        return value

    return check


def boolean(value):
    if not isinstance(value, bool):
        raise _bad("true or false")
    return value


def integer(low, high):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(f"an integer from {low} to {high}")
        return value

    return check


def optional(checker):
    def check(value):
        return None if value is None else checker(value)

    check.optional = True
    return check


def list_of(checker, max_items=MAX_BATCH_ITEMS, joined=None):
    """A list of items each passing ``checker``.  ``joined``, a pattern that matches
    newline-free items joined by newlines exactly when each passes, checks a list of
    strings in one match (an ack names up to 512 ids); the items are checked one by one
    only to name the first bad one."""

    def check(value):
        if not isinstance(value, list) or len(value) > max_items:
            raise _bad(f"a list of at most {max_items} items")
        if joined is not None:
            try:
                text = "\n".join(value)
            except TypeError:  # an item that is no string: the checker below names it
                text = None
            # The count: an item holding a newline would pass as two.
            if text is not None and text.count("\n") == len(value) - 1 and joined.fullmatch(text):
                return list(value)
        try:
            return list(map(checker, value))
        except _Invalid as e:
            raise e.at(f"[{_first_invalid(checker, value)}]") from None

    return check


def _first_invalid(checker, items):
    """The index of the first of ``items`` that ``checker`` refuses (for the error's path)."""
    for i, item in enumerate(items):
        try:
            checker(item)
        except _Invalid:
            return i


def obj(fields):
    """A JSON object with exactly ``fields`` (a dict name -> checker)."""
    schema = _Schema(fields)

    def check(value):
        if not isinstance(value, dict):
            raise _bad("an object")
        try:
            return schema.check(value)
        except _Invalid as e:
            raise e.at(".") from None

    return check


def map_of(key_checker, value_checker, max_items=MAX_BATCH_ITEMS):
    """A JSON object used as a map: every key and every value checked."""

    def check(value):
        if not isinstance(value, dict) or len(value) > max_items:
            raise _bad(f"an object of at most {max_items} entries")
        checked = {}
        for k, v in value.items():
            try:
                key = key_checker(k)
            except _Invalid as e:
                raise e.at(" key") from None
            try:
                checked[key] = value_checker(v)
            except _Invalid as e:
                raise e.at(f".{k}") from None
        return checked

    return check


class _Schema:
    """The fields of one object: unknown ones are refused (they hint at a bug).

    ``passed_over`` names fields that may be present and are checked elsewhere.
    """

    def __init__(self, fields, passed_over=()):
        self.fields = fields
        self.names = frozenset(fields).union(passed_over)
        self.required = frozenset(
            name for name, checker in fields.items() if not getattr(checker, "optional", False))

    def check(self, frame):
        if not self.names.issuperset(frame):
            extra = sorted(set(frame) - self.names)[0]
            raise _Invalid("bad_field", "unknown field ").at(extra[:40])
        if not self.required.issubset(frame):
            missing = next(name for name in self.fields if name in self.required - set(frame))
            raise _Invalid("missing_field", "field ", " is missing").at(missing)
        checked = {}
        for name, checker in self.fields.items():
            try:
                checked[name] = checker(frame.get(name))
            except _Invalid as e:
                raise e.at(name) from None
        return checked


# -- the request schema ---------------------------------------------------------

USER = text_matching(
    USERNAME_RE, "a user name: 1-32 of a-z 0-9 . _ -, starting with a letter or digit"
)
DEVICE = text_matching(DEVICE_RE, "a device id: 1-32 of A-Z a-z 0-9 _ -")
ROOM = text_matching(ROOM_RE, "a room name: 1-64 of a-z 0-9 . _ -, starting with a letter or digit")
_NEW_NAME_RULE = "starting and ending with a letter or digit, with no two of . _ - in a row"
NEW_USER = text_matching(NEW_USERNAME_RE,
                         f"a new user name: 1-32 of a-z 0-9 . _ -, {_NEW_NAME_RULE}")
NEW_ROOM = text_matching(NEW_ROOM_RE, f"a new room name: 1-64 of a-z 0-9 . _ -, {_NEW_NAME_RULE}")
ENVELOPE_ID = text_matching(ENVELOPE_ID_RE, "an envelope id: 16-64 of A-Z a-z 0-9 _ -")
KEY_ID = text_matching(KEY_ID_RE, "a key id: 1-64 base64 characters")
SESSION_ID = text_matching(SESSION_ID_RE, "a session id: 1-128 base64 characters")
PUBLIC_KEY = base64_bytes(32, 32)
INVITE = text_matching(re.compile(r"[A-Za-z0-9_-]{16,64}"),
                       "an invite token: 16-64 of A-Z a-z 0-9 _ -")
SIGNATURE = base64_bytes(64, 64)
SECRET = base64_bytes(16, 64)
PASSWORD = base64_bytes(16, 64)
CIPHERTEXT = base64_bytes(1, MAX_CIPHERTEXT_CHARS * 3 // 4)
RECOVERY_BACKUP = base64_bytes(40, 1024)
"""The account identity key's seed sealed by the recovery key's backup key (SecretBox:
a nonce, the sealed bytes and their tag; 72 bytes for a seed today)."""
DEVICE_NAME_MAX = 64
DEVICE_NAME = printable_text(
    DEVICE_NAME_MAX, f"a device name: 1-{DEVICE_NAME_MAX} printable characters, not only spaces")
KIND = one_of("olm", "megolm")
TIMESTAMP = integer(0, 2**53)
VERSION = integer(1, 2**53)

DEVICE_KEYS = obj({"user": USER, "device": DEVICE, "curve25519": PUBLIC_KEY, "ed25519": PUBLIC_KEY})
SIGNED_KEY = obj({"key": PUBLIC_KEY, "signature": SIGNATURE})
MAX_LISTED_DEVICES = 64
"""Devices one signed list may hold (and one key claim may name per user): the bound of
the relay's ``[accounts] max_devices``."""
_LISTED_KEYS = {"curve25519": PUBLIC_KEY, "ed25519": PUBLIC_KEY}
_LISTED_DEVICE_V1 = obj(_LISTED_KEYS)
_LISTED_DEVICE_V2 = obj({**_LISTED_KEYS, "added": TIMESTAMP})


def _listed_device(value):
    """A device list's entry: its keys, and since list format 2 ``added`` (when it was
    signed into the list).  An entry without ``added`` stays without it: the signature
    covers the list as its signer wrote it."""
    if isinstance(value, dict) and "added" in value:
        return _LISTED_DEVICE_V2(value)
    return _LISTED_DEVICE_V1(value)


DEVICE_LIST = obj(
    {
        "user": USER,
        "version": VERSION,
        "devices": map_of(DEVICE, _listed_device, max_items=MAX_LISTED_DEVICES),
        "ts": TIMESTAMP,
    }
)

ENVELOPE_FIELDS = {
    "id": ENVELOPE_ID,
    "kind": KIND,
    "sid": SESSION_ID,
    "otype": optional(integer(0, 1)),
    "ct": CIPHERTEXT,
}
UNICAST_ENVELOPE = obj({**ENVELOPE_FIELDS, "to": USER, "to_dev": DEVICE})

MAX_TYPING_DEVICES = 64
"""Devices one ``typing`` notice may name (a 1:1 peer's and a small room's)."""
MAX_TYPING_CIPHERTEXT = 2048
"""The longest ``ct`` of a typing notice, in bytes (its sealed content is a few hundred)."""
TYPING_ENVELOPE = obj({"to": USER, "to_dev": DEVICE, "kind": one_of("olm"), "sid": SESSION_ID,
                       "otype": optional(integer(0, 1)),
                       "ct": base64_bytes(1, MAX_TYPING_CIPHERTEXT)})

BROADCAST_ROOM = "everyone"
"""The reserved room every user belongs to: broadcasts are room messages to it."""

HISTORY_PAGE_MAX = 500

FILE_CHUNK_PLAIN = 64 * 1024
"""Plaintext bytes of every chunk of a file but its last (the client's secretstream)."""
FILE_CHUNK_OVERHEAD = 17
"""Bytes a secretstream chunk adds to its plaintext (its tag and MAC)."""
FILE_CHUNK_MAX = FILE_CHUNK_PLAIN + FILE_CHUNK_OVERHEAD
"""Ciphertext bytes of one chunk at most.  Its base64 (87,404 characters) fits a line many times over, and a connection's
chunks in flight (``server.files.FILE_WINDOW``) are what the relay holds of it."""


def file_chunks(size):
    """Chunks of a file of ``size`` plaintext bytes (an empty file is one, its last)."""
    return max(1, -(-size // FILE_CHUNK_PLAIN))


def file_cipher_size(size):
    """Ciphertext bytes of a file of ``size`` plaintext bytes: what the relay stores."""
    return size + file_chunks(size) * FILE_CHUNK_OVERHEAD


FILE_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
FILE_ID = text_matching(FILE_ID_RE, "a file id: 16-64 of A-Z a-z 0-9 _ -")
FILE_HASH = text_matching(SHA256_RE, "a SHA-256: 64 hex digits")
FILE_INDEX = integer(0, 2**40)

REQUESTS = {
    "ping": {},
    # ``password_key``: the Ed25519 public key derived from the password (its proofs).
    "register": {"user": NEW_USER, "password_key": PUBLIC_KEY, "identity_key": PUBLIC_KEY,
                 "invite": optional(INVITE)},
    "login.challenge": {},
    # A device with published keys signs the challenge with its device key (``signature``);
    # a device not yet known to the relay (just registered, or being added) signs it with
    # the password key (``password_signature``), or, recovering an account whose devices
    # are lost, with the recovery key (``recovery_signature``).
    "login": {"user": USER, "device": DEVICE, "signature": optional(SIGNATURE),
              "password_signature": optional(SIGNATURE),
              "recovery_signature": optional(SIGNATURE)},
    # An account registered before password keys: its legacy login secret, once, to
    # replace the relay's argon2 hash of it with the password key.
    "account.move": {"legacy_secret": SECRET, "password_key": PUBLIC_KEY},
    # A password change: the new password key, signed for by the current one; or, on a
    # connection logged in by recovery proof, by the recovery key (``recovery_signature``).
    "account.password": {"password_key": PUBLIC_KEY, "signature": optional(SIGNATURE),
                         "recovery_signature": optional(SIGNATURE)},
    # Deleting the account for good: signed for by the password key.
    "account.delete": {"signature": SIGNATURE},
    # The account's recovery key (its public half) and the identity seed it seals, signed
    # by the account identity key; replaces the earlier one.  A listed device only.
    "recovery.set": {"recovery_key": PUBLIC_KEY, "backup": RECOVERY_BACKUP,
                     "signature": SIGNATURE},
    # The sealed identity seed, on a connection logged in by recovery proof only.
    "recovery.backup": {},
    "logout": {},
    "keys.upload": {
        "device_keys": optional(DEVICE_KEYS),
        "signature": optional(SIGNATURE),
        "one_time_keys": optional(map_of(KEY_ID, SIGNED_KEY, max_items=100)),
        "fallback_key": optional(map_of(KEY_ID, SIGNED_KEY, max_items=1)),
    },
    "keys.count": {},
    "keys.query": {"users": list_of(USER, max_items=100)},
    "keys.claim": {"devices": map_of(USER, list_of(DEVICE, max_items=MAX_LISTED_DEVICES),
                                      max_items=100)},
    "devices.publish": {"device_list": DEVICE_LIST, "signature": SIGNATURE},
    # The logged-in device's own account's devices, and naming one of them.
    "devices.list": {},
    "devices.rename": {"device": DEVICE, "name": DEVICE_NAME},
    "send": {"envelopes": list_of(UNICAST_ENVELOPE, max_items=MAX_ENVELOPES_PER_SEND)},
    "room.send": {"room": ROOM, **ENVELOPE_FIELDS},
    "broadcast": ENVELOPE_FIELDS,
    "ack": {"ids": list_of(ENVELOPE_ID, joined=ENVELOPE_IDS_RE)},
    # An ephemeral notice (someone is typing): pushed to those devices that are connected
    # now, never stored (docs/protocol.rst, "Receipts, typing, ...").
    "typing": {"envelopes": list_of(TYPING_ENVELOPE, max_items=MAX_TYPING_DEVICES)},
    "room.create": {"room": NEW_ROOM, "password": optional(PASSWORD)},
    "room.join": {"room": ROOM, "password": optional(PASSWORD)},
    "room.leave": {"room": ROOM},
    "room.members": {"room": ROOM},
    "room.invite": {"room": ROOM, "user": USER},
    "room.kick": {"room": ROOM, "user": USER},
    "room.unban": {"room": ROOM, "user": USER},
    "room.bans": {"room": ROOM, "after": optional(USER)},
    "room.admin": {"room": ROOM, "user": USER, "admin": boolean},
    "room.mode": {"room": ROOM, "invite_only": boolean},
    "room.history": {"room": ROOM, "before": optional(integer(1, 2**62)),
                     "limit": optional(integer(1, HISTORY_PAGE_MAX))},
    "rooms.list": {},
    # Encrypted files (docs/protocol.rst, "Files"): ciphertext only, in order.
    "file.begin": {"size": integer(1, 2**53)},
    "file.chunk": {"file_id": FILE_ID, "index": FILE_INDEX,
                   "data": base64_bytes(1, FILE_CHUNK_MAX)},
    "file.finish": {"file_id": FILE_ID, "size": integer(1, 2**53), "hash": FILE_HASH,
                    "to": optional(list_of(USER, max_items=100)), "room": optional(ROOM)},
    "file.info": {"file_id": FILE_ID},
    "file.get": {"file_id": FILE_ID, "index": FILE_INDEX},
    "file.done": {"file_id": FILE_ID},
}
"""Every request op and its fields (besides ``op`` and ``rid``)."""

ANONYMOUS_OPS = frozenset({"ping", "register", "login.challenge", "login"})
"""Ops allowed before login."""

LOGIN_CONTEXT = "securechat-device-login-v1"
"""What a device's login signature is for (so it can never pass as another signature)."""
PASSWORD_LOGIN_CONTEXT = "securechat-password-login-v1"
"""What a password key's login signature is for: never a device's login, nor the reverse."""
PASSWORD_CHANGE_CONTEXT = "securechat-password-change-v1"
"""What a password key's signature of a password change is for."""
ACCOUNT_DELETE_CONTEXT = "securechat-account-delete-v1"
"""What a password key's signature of an account's deletion is for."""
RECOVERY_SET_CONTEXT = "securechat-recovery-set-v1"
"""What the account identity key's signature of a recovery key and its backup is for."""
RECOVERY_LOGIN_CONTEXT = "securechat-recovery-login-v1"
"""What a recovery key's login signature is for: never a password's or a device's login."""
RECOVERY_PASSWORD_CONTEXT = "securechat-recovery-password-v1"
"""What a recovery key's signature of a new password key is for."""
LOGIN_EXPORTER_LABEL = b"EXPORTER-securechat-device-login"
"""The TLS exporter label (RFC 5705 / RFC 8446 section 7.5) of a login's channel binding."""
LOGIN_EXPORTER_BYTES = 32
LOGIN_NONCE_BYTES = 32


def device_login_fields(relay, user, device, nonce, channel_binding):
    """What a device signs to log in (as ``canonical_json``), and the relay checks.

    It binds the login to this relay (its stable id), this device, this
    connection's single challenge (``nonce``, bytes) and this very TLS
    connection (``channel_binding``: keying material exported from its
    session, which no other connection shares, not even one relayed by an
    interceptor): a signature seen once is worth nothing anywhere else.
    """
    return {"context": LOGIN_CONTEXT, "relay": relay, "user": user, "device": device,
            "nonce": b64encode(nonce), "tls_exporter": b64encode(channel_binding)}


def device_login_message(relay, user, device, nonce, channel_binding):
    """The signed bytes of ``device_login_fields``."""
    return canonical_json(device_login_fields(relay, user, device, nonce, channel_binding))


def password_login_message(relay, user, device, nonce, channel_binding):
    """The bytes a password key signs to log in a device not yet known to the relay: the
    fields of a device's login under their own context (``PASSWORD_LOGIN_CONTEXT``), so a
    password proof never passes as a device proof, nor the reverse."""
    return canonical_json({**device_login_fields(relay, user, device, nonce, channel_binding),
                           "context": PASSWORD_LOGIN_CONTEXT})


def recovery_login_message(relay, user, device, nonce, channel_binding):
    """The bytes a recovery key signs to log in a device not yet known to the relay: the
    fields of a device's login under their own context (``RECOVERY_LOGIN_CONTEXT``)."""
    return canonical_json({**device_login_fields(relay, user, device, nonce, channel_binding),
                           "context": RECOVERY_LOGIN_CONTEXT})


def recovery_set_fields(relay, user, recovery_key, backup):
    """What the account identity key signs (as ``canonical_json``) to make ``recovery_key``
    (base64 public key) and ``backup`` (base64) the account's recovery: bound to this
    relay and user.  Not to a connection: it is the account's own statement."""
    return {"context": RECOVERY_SET_CONTEXT, "relay": relay, "user": user,
            "recovery_key": recovery_key, "backup": backup}


def _password_proof(context, relay, user, device, channel_binding, **fields):
    """The bytes a password key signs for what ``context`` names on a logged-in
    connection: bound to this relay, this device and this TLS session, so the proof is
    worth nothing on any other connection, nor for any other purpose."""
    return canonical_json({"context": context, "relay": relay, "user": user,
                           "device": device, **fields,
                           "tls_exporter": b64encode(channel_binding)})


def password_change_message(relay, user, device, password_key, channel_binding):
    """The bytes the current password key signs to replace itself by ``password_key``
    (base64)."""
    return _password_proof(PASSWORD_CHANGE_CONTEXT, relay, user, device, channel_binding,
                           password_key=password_key)


def recovery_password_message(relay, user, device, password_key, channel_binding):
    """The bytes a recovery key signs to make ``password_key`` (base64) the account's
    password key (the old password may be forgotten), bound to this TLS session."""
    return _password_proof(RECOVERY_PASSWORD_CONTEXT, relay, user, device, channel_binding,
                           password_key=password_key)


def account_delete_message(relay, user, device, channel_binding):
    """The bytes the password key signs to delete its account."""
    return _password_proof(ACCOUNT_DELETE_CONTEXT, relay, user, device, channel_binding)


def parse_header(frame):
    """The ``(op, rid)`` of a decoded request; the op must exist."""
    rid = request_id(frame)
    op = frame.get("op")
    if not isinstance(op, str):
        raise ProtocolError("bad_field", "field 'op' must be a string")
    if op not in REQUESTS:
        raise ProtocolError("unknown_op", f"unknown op {op[:40]!r}")
    return op, rid


_REQUEST_SCHEMAS = {op: _Schema(fields, passed_over=("op", "rid"))
                    for op, fields in REQUESTS.items()}


def parse_fields(op, frame):
    """The checked fields of a request whose header is valid (``op`` and ``rid`` left out)."""
    try:
        return _REQUEST_SCHEMAS[op].check(frame)
    except _Invalid as e:
        raise e.protocol_error() from None


def parse_request(frame):
    """Check a decoded frame against the schema: ``(op, rid, fields)`` or ProtocolError."""
    op, rid = parse_header(frame)
    return op, rid, parse_fields(op, frame)
