"""Clients that do what no real client does, for the abuse tests: connections that never
start TLS, and a logged-in member that asks for large answers and never reads them.

Plain sockets of the standard library, so nothing on the client side reads on
the hostile connection's behalf (a Twisted transport would keep draining it).
"""

import json
import secrets
import socket
import struct

from OpenSSL import SSL

from securechat import wire
from tests.support import new_envelope_id


def half_open(port, source="127.0.0.1"):
    """A TCP connection to the relay from ``source`` (any 127/8 address is loopback on
    Linux) that never starts TLS."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def closed_by_peer(sock):
    """Whether the relay closed ``sock`` (end of file or reset); False while it is open."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def tls_login(port, cert_path, user, device, password, receive_buffer=8192):
    """Blocking (run it in a thread): a TLS connection (pyOpenSSL, for the login's channel
    binding) logged in as ``user``/``device`` by a signature of ``password`` (the account's
    password key), whose kernel receive buffer is kept small, so what it leaves unread
    stays in the relay's buffers rather than in this process's kernel."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # blocking, for pyOpenSSL, but
        raw.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", 30, 0))  # bounded
    raw.connect(("127.0.0.1", port))
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(cert_path)
    context.set_verify(SSL.VERIFY_PEER, lambda connection, cert, errno, depth, ok: ok)
    tls = SSL.Connection(context, raw)
    tls.set_tlsext_host_name(b"localhost")
    tls.set_connect_state()
    tls.do_handshake()
    tls.sendall(wire.encode({"op": "login.challenge", "rid": 0}) + b"\n")
    challenge = _answer(tls, 0, user)
    message = wire.password_login_message(
        challenge["relay"], user, device, wire.b64decode(challenge["nonce"]),
        tls.export_keying_material(wire.LOGIN_EXPORTER_LABEL, wire.LOGIN_EXPORTER_BYTES))
    tls.sendall(wire.encode({"op": "login", "rid": 1, "user": user, "device": device,
                             "password_signature": wire.b64encode(
                                 password.sign(message).signature)}) + b"\n")
    _answer(tls, 1, user)
    return tls


def _answer(tls, rid, user):
    """The result of request ``rid``, read byte-exactly up to its line (no further)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = tls.recv(1)
        if not chunk:
            raise AssertionError(f"the relay closed the login of {user}: {line!r}")
        line += chunk
    frame = json.loads(line)
    if frame.get("rid") != rid or "result" not in frame:
        raise AssertionError(f"login of {user} refused: {frame}")
    return frame["result"]


def history_request(room, rid, limit=wire.HISTORY_PAGE_MAX):
    return wire.encode({"op": "room.history", "rid": rid, "room": room, "limit": limit}) + b"\n"


async def room_of_large_messages(owner, room, count, size=190_000):
    """``owner`` (a logged-in ScriptedDevice) creates ``room`` and sends ``count`` messages
    of about ``size`` bytes of ciphertext each."""
    await owner.request("room.create", room=room)
    ciphertext = wire.b64encode(secrets.token_bytes(size * 3 // 4))
    for _ in range(count):
        await owner.request("room.send", room=room, id=new_envelope_id(), kind="megolm",
                            sid="c2lk", ct=ciphertext)
