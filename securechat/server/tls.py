"""The server's TLS identity: a configured certificate, or one made on first start.

A fresh install has no certificate, and a relay that cannot start until an
operator runs openssl is a relay nobody tries.  So the first start writes a
self-signed certificate into the data dir and logs its SHA-256 fingerprint,
which clients pin on first use (or compare with what the operator tells them).
"""

import datetime
import hashlib
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from securechat.server.tls_memory import restrict_key_exchange

log = Logger()

SELF_SIGNED_CERT = os.path.join("tls", "server-cert.pem")
SELF_SIGNED_KEY = os.path.join("tls", "server-key.pem")
VALIDITY = datetime.timedelta(days=3650)


def fingerprint(cert_pem):
    """SHA-256 of the DER certificate, as colon-separated upper-case hex (what clients pin)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return format_fingerprint(hashlib.sha256(der).digest())


def format_fingerprint(digest):
    return ":".join(f"{b:02X}" for b in digest)


def ensure_self_signed(data_dir, hostnames=("localhost",), addresses=("127.0.0.1", "::1")):
    """Create the self-signed certificate and key unless they exist; return their paths."""
    cert_path = os.path.join(data_dir, SELF_SIGNED_CERT)
    key_path = os.path.join(data_dir, SELF_SIGNED_KEY)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securechat relay")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(h) for h in hostnames] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in addresses
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, True


def _write_private(path, data):
    """Write a file readable by its owner only, atomically (no half-written key on a crash)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def server_context_factory(config):
    """TLS 1.2+ options for the listener, from the config or a first-start certificate."""
    if config.certificate:
        cert_path, key_path, created = config.certificate, config.private_key, False
    else:
        cert_path, key_path, created = ensure_self_signed(config.data_dir)
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
        identity = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
    except OSError as e:
        raise ValueError(f"cannot read TLS file {e.filename}: {e.strerror}") from None
    except Exception as e:
        raise ValueError(f"cannot load TLS certificate {cert_path} / key {key_path}: {e}") from None
    fp = fingerprint(cert_pem)
    if created:
        log.info("Generated a self-signed certificate {path}", path=cert_path)
    log.info("TLS certificate SHA-256 fingerprint: {fingerprint}", fingerprint=fp)
    options = ssl.CertificateOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    if config.key_exchange == "classic":
        restrict_key_exchange(options.getContext())
    return options, fp
