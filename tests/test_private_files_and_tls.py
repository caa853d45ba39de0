"""What a relay leaves on disk and offers on the wire: owner-only files, a leaf certificate,
TLS 1.2 with ECDHE and AEAD suites only; and a relay in a process that merely hosts it
(these tests) leaves that process's garbage collector alone."""

import datetime
import gc
import os
import socket
import ssl
import stat

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import threads
from twisted.logger import capturedLogs, formatEvent

from securechat.server.service import GC_YOUNG_THRESHOLD
from securechat.server.tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY, fingerprint
from tests.support import ScriptedDevice, start_server


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    """The umask most shells have (022): files are 0644 unless created otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest_twisted.ensureDeferred
async def test_a_new_data_dir_and_its_database_are_private(tmp_path, loose_umask):
    """Under umask 022 the relay still creates its data dir 0700 and its SQLite database,
    -wal and -shm 0600 (the database used to be 0644)."""
    server = await start_server(tmp_path / "srv")
    try:
        device = ScriptedDevice("alice")
        await device.register(server)  # a write: the -wal and -shm files exist now
        await device.close()
        _assert_private(tmp_path / "srv")
    finally:
        await server.stop()


def _assert_private(data):
    database = data / "securechat.sqlite3"
    assert mode(data) == 0o700 and mode(data / "tls") == 0o700
    for path in (database, f"{database}-wal", f"{database}-shm",
                 data / SELF_SIGNED_CERT, data / SELF_SIGNED_KEY):
        assert mode(path) == 0o600, path


@pytest_twisted.ensureDeferred
async def test_loose_modes_are_tightened_at_start_with_a_warning(tmp_path):
    """A data dir left 0755 and files left 0644 are made 0700 and 0600 at the next start,
    with a warning naming each path it changed."""
    await (await start_server(tmp_path / "srv")).stop()
    data = tmp_path / "srv"
    loose = {data: 0o755, data / "securechat.sqlite3": 0o644, data / "tls": 0o755,
             data / SELF_SIGNED_KEY: 0o644, data / SELF_SIGNED_CERT: 0o644}
    for path, loose_mode in loose.items():
        os.chmod(path, loose_mode)
    with capturedLogs() as events:
        await (await start_server(tmp_path / "srv")).stop()
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    for path, loose_mode in loose.items():
        assert mode(path) == loose_mode & 0o700
        assert any(f"{path} was open to other users (mode {loose_mode:04o})" in w
                   for w in warnings), path


@pytest.fixture
def server(start_relay):
    return start_relay()


def test_the_generated_certificate_is_a_leaf_for_servers(server):
    """The first start's certificate says CA:FALSE, key usage digitalSignature (critical)
    and extended key usage serverAuth: it can vouch for this relay and for nothing else."""
    with open(server.cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(extended.value) == [ExtendedKeyUsageOID.SERVER_AUTH]


def _write_old_ca_certificate(tls_dir):
    """A certificate as the relay generated before: self-signed, CA:TRUE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securechat relay")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    os.makedirs(tls_dir, mode=0o700)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tls_dir / "server-cert.pem").write_bytes(cert_pem)
    (tls_dir / "server-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_pem


@pytest_twisted.ensureDeferred
async def test_an_older_ca_certificate_is_kept_with_a_warning(tmp_path):
    """A CA:TRUE certificate of an older relay is kept (clients pinned its fingerprint), and
    the start warns, saying how to get a leaf one."""
    cert_pem = _write_old_ca_certificate(tmp_path / "srv" / "tls")
    with capturedLogs() as events:
        server = await start_server(tmp_path / "srv")
    try:
        assert server.service.fingerprint == fingerprint(cert_pem)
        with open(server.cert_path, "rb") as f:
            assert f.read() == cert_pem
        text = "\n".join(formatEvent(e) for e in events if e["log_level"].name == "warn")
        assert "as a CA certificate (CA:TRUE); it is kept" in text and "delete it" in text
        alice = ScriptedDevice("alice")  # and clients still verify it
        await alice.register(server)
        await alice.close()
    finally:
        await server.stop()


def _tls12_client(cafile, suite):
    """A TLS 1.2 client context offering ``suite`` alone (even one OpenSSL would not offer)."""
    context = ssl.create_default_context(cafile=cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    # TLS 1.3's suites (named TLS_*) are configured apart and unused at TLS 1.2.
    assert [c["name"] for c in context.get_ciphers() if not c["name"].startswith("TLS_")] == [
        suite]
    return context


def _tls12_handshake(port, context):
    """Connect; the suite agreed (an SSLError if the relay refuses the handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.cipher()[0]


@pytest_twisted.ensureDeferred
async def test_tls12_accepts_only_ecdhe_with_aead_suites(tmp_path):
    """A TLS 1.2 client offering only CBC suites with SHA-1 or SHA-384 MACs is refused;
    one offering ECDHE with AES-GCM or ChaCha20-Poly1305 gets in."""
    server = await start_server(tmp_path / "srv")
    try:
        for suite in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"):
            client = _tls12_client(server.cert_path, suite)
            with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
                await threads.deferToThread(_tls12_handshake, server.port, client)
        for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                      "ECDHE-ECDSA-CHACHA20-POLY1305"):
            client = _tls12_client(server.cert_path, suite)
            assert await threads.deferToThread(_tls12_handshake, server.port, client) == suite
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_relay_in_process_leaves_the_garbage_collector_alone(tmp_path):
    """Starting a relay inside another program (the tests) neither freezes its objects nor
    changes its collection thresholds: only twistd's relay process tunes its GC."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    await (await start_server(tmp_path / "srv")).stop()
    assert gc.get_threshold() == threshold and gc.get_threshold()[0] != GC_YOUNG_THRESHOLD
    assert gc.get_freeze_count() == frozen
