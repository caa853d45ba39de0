"""How the client trusts a server: a CA file, or a pinned certificate fingerprint.

There is no unverified mode.  A self-hosted relay usually has a self-signed
certificate, so like ssh's known_hosts the client pins its SHA-256 fingerprint --
one the person confirmed (``securechat init``) or wrote in the ini, never one it
just saw: a connection with no pin is refused, showing what it saw.
"""

import hashlib

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.compat import nativeString
from zope.interface import implementer

from securechat import wire
from securechat.client.settings import normalise_fingerprint


class FingerprintMismatch(Exception):
    """The server presented a certificate other than the pinned one."""

    def __init__(self, expected, seen):
        super().__init__(
            f"the server certificate fingerprint is {seen}, but {expected} is pinned: "
            "someone may be intercepting the connection (or the server's certificate changed)"
        )
        self.expected = expected
        self.seen = seen


class NotPinned(Exception):
    """No fingerprint is pinned for the server: its certificate was refused, not trusted on
    first use; ``seen`` is its fingerprint, for the person to compare and pin."""

    def __init__(self, seen):
        super().__init__(f"no fingerprint is pinned; the server's is {seen}")
        self.seen = seen


def certificate_fingerprint(x509):
    der = x509.to_cryptography().public_bytes(Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def channel_binding(tls_transport):
    """Keying material exported from the TLS session of ``tls_transport`` (RFC 5705 / RFC
    8446 7.5), which a device-key login signs: the relay derives the same bytes only on
    this very connection, so a signature relayed to another connection is refused."""
    return tls_transport.getHandle().export_keying_material(wire.LOGIN_EXPORTER_LABEL,
                                                            wire.LOGIN_EXPORTER_BYTES)


def ca_file_options(hostname, ca_file):
    """Verify the chain against ``ca_file`` and the name against ``hostname``."""
    with open(ca_file, "rb") as f:
        roots = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(pem) for pem in _split_pem(f.read())]
        )
    return ssl.optionsForClientTLS(
        nativeString(hostname),
        trustRoot=roots,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )


def _split_pem(data):
    marker = b"-----END CERTIFICATE-----"
    return [chunk + marker for chunk in data.split(marker) if b"-----BEGIN" in chunk]


@implementer(IOpenSSLClientConnectionCreator)
class PinnedCertificate:
    """Accepts exactly the certificate whose SHA-256 fingerprint is ``expected``.

    With ``expected=None`` it refuses every certificate (``mismatch`` is then NotPinned);
    either way ``seen`` holds the fingerprint the server showed.
    """

    def __init__(self, expected=None):
        self.expected = normalise_fingerprint(expected) if expected else None
        self.seen = None
        self.mismatch = None

    def _verify(self, conn, x509, errno, depth, ok):
        if depth != 0:
            return True
        self.seen = certificate_fingerprint(x509)
        if self.expected is None:
            self.mismatch = NotPinned(self.seen)
            return False
        if self.seen != self.expected:
            self.mismatch = FingerprintMismatch(self.expected, self.seen)
            return False
        return True

    def clientConnectionForTLS(self, tlsProtocol):
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        return connection
