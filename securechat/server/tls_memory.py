"""OpenSSL memory per connection: the two settings pyOpenSSL has no public API for.

An idle TLS 1.3 connection cost the relay 38 KiB, nearly all of it OpenSSL's
(docs/benchmarks.rst, W4).  Two parts of that can be given back:

* **The memory BIOs.**  Twisted runs TLS over a pair of in-memory BIOs per
  connection, and a memory BIO keeps the capacity of the largest burst it ever
  held after it is drained: about 4 KiB after the handshake, and up to 64 KiB
  plus the largest frame once a connection has carried a big envelope.
  ``release_buffers`` swaps a drained pair for fresh, empty ones (OpenSSL
  frees the old pair); ``IdleSweep`` does that for connections that have been
  quiet for a whole sweep interval.
* **The key share kept after the handshake.**  OpenSSL holds on to the
  client's key share for the life of the connection: 6 KiB for the hybrid
  post-quantum group X25519MLKEM768, a few hundred bytes for X25519.
  ``[tls] key_exchange = classic`` offers only X25519 and P-256 (no
  post-quantum protection of the transport; the messages themselves are
  end-to-end encrypted either way).  The default, ``hybrid``, keeps
  OpenSSL's defaults, which prefer X25519MLKEM768.

Both go through pyOpenSSL's cffi binding of OpenSSL (``OpenSSL.SSL._lib``)
and a pyOpenSSL connection's BIO attributes, which are private: if a future
pyOpenSSL lacks them, ``release_buffers`` does nothing and ``classic`` stops
start-up with an error saying so, rather than guessing.
"""

from OpenSSL import SSL

CLASSIC_GROUPS = b"X25519:secp256r1"
"""The key exchange groups of ``[tls] key_exchange = classic``."""


def restrict_key_exchange(context):
    """Offer only the classic groups on ``context`` (an OpenSSL.SSL.Context)."""
    binding = getattr(SSL, "_lib", None)
    set_groups = getattr(binding, "SSL_CTX_set1_curves_list", None)
    if set_groups is None or set_groups(context._context, CLASSIC_GROUPS) != 1:
        raise ValueError("[tls] key_exchange = classic: this pyOpenSSL/OpenSSL cannot restrict "
                         "the key exchange groups; use hybrid")


def release_buffers(tls_transport):
    """Give a connection's drained memory BIOs back to the allocator; True if it was done.

    Nothing happens while bytes wait in either BIO or once the connection is
    closing (a closing connection's incoming BIO carries its end-of-file mark).
    """
    get_handle = getattr(tls_transport, "getHandle", None)  # None: not a TLS transport
    connection = get_handle() if get_handle is not None else None
    try:
        ssl, incoming, outgoing = connection._ssl, connection._into_ssl, connection._from_ssl
        lib, ffi = SSL._lib, SSL._ffi
    except AttributeError:
        return False
    if tls_transport.disconnecting or incoming is None or outgoing is None:
        return False
    pending = ffi.new("char **")
    if lib.BIO_get_mem_data(incoming, pending) or lib.BIO_get_mem_data(outgoing, pending):
        return False
    fresh_in, fresh_out = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
    if fresh_in == ffi.NULL or fresh_out == ffi.NULL:
        for bio in (fresh_in, fresh_out):
            if bio != ffi.NULL:
                lib.BIO_free(bio)
        return False
    lib.SSL_set_bio(ssl, fresh_in, fresh_out)  # frees the old pair, owns the new one
    connection._into_ssl, connection._from_ssl = fresh_in, fresh_out
    return True


class IdleSweep:
    """Every ``interval`` seconds, connections quiet since the previous sweep release their
    TLS buffers, once (until they are active again).

    A connection marks itself ``active`` whenever it reads or writes; the
    sweep clears the mark, so a busy connection is never touched and its
    buffers keep the size its traffic needs.
    """

    interval = 10.0

    def __init__(self, connections):
        self._connections = connections

    def __call__(self):
        released = 0
        for protocol in list(self._connections):
            if protocol.active:
                protocol.active = False
                protocol.buffers_released = False
            elif not protocol.buffers_released and protocol.transport is not None:
                protocol.buffers_released = release_buffers(protocol.transport)
                released += protocol.buffers_released
        return released
