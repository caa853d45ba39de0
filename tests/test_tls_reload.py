"""A renewed certificate taken by a running ``twistd`` relay on SIGHUP: new connections
get it, an open connection keeps working on its old one, and a bad new pair is refused
with a log line while the current certificate stays."""

import os
import shutil
import signal
import socket
import ssl
from types import SimpleNamespace

import pytest_twisted
from twisted.internet import threads

from securechat.server.tls import ensure_self_signed, fingerprint
from tests.processes import ServerProcess, free_port
from tests.support import ScriptedDevice, cleanup, poll_until, write_config


def make_pair(directory):
    """A fresh self-signed certificate and key in ``directory``: (cert, key) paths."""
    cert, key, _ = ensure_self_signed(str(directory))
    return cert, key


def served_fingerprint(port):
    """The fingerprint of the certificate a new TLS connection to ``port`` is shown (read
    without verifying: what is checked here is which certificate the relay serves)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        der = s.getpeercert(binary_form=True)
    return fingerprint(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))


def install(pair, cert_path, key_path):
    """Copy ``pair`` over the files the relay's [tls] names, as a renewal's deploy does."""
    shutil.copyfile(pair[0], cert_path)
    shutil.copyfile(pair[1], key_path)


@pytest_twisted.ensureDeferred
async def test_sighup_serves_a_renewed_certificate_and_keeps_open_connections(tmp_path):
    """After the files are replaced and SIGHUP sent, a new connection is shown the new
    certificate; the connection opened before keeps answering on its old session; a
    mismatched pair then is refused (logged) and the renewed certificate stays."""
    old, new = make_pair(tmp_path / "old"), make_pair(tmp_path / "new")
    data_dir = tmp_path / "data"
    os.makedirs(data_dir)
    cert_path, key_path = str(data_dir / "relay.pem"), str(data_dir / "relay.key")
    install(old, cert_path, key_path)
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(
        str(data_dir), port=port, extra="[tls]\ncertificate = relay.pem\nprivate_key = relay.key\n"))
    proc.start()
    device = ScriptedDevice("alice")
    try:
        await proc.wait_listening()
        old_fp, new_fp = (fingerprint(open(p[0], "rb").read()) for p in (old, new))
        assert await threads.deferToThread(served_fingerprint, port) == old_fp
        before = tmp_path / "before.pem"
        shutil.copyfile(old[0], before)
        await device.connect(SimpleNamespace(port=port, cert_path=str(before)))
        install(new, cert_path, key_path)
        proc.process.send_signal(signal.SIGHUP)
        await poll_until(lambda: "TLS certificate reloaded" in proc.new_log_text())
        assert await threads.deferToThread(served_fingerprint, port) == new_fp
        assert (await device.request("ping"))["pong"] is True  # the old session goes on
        shutil.copyfile(old[1], key_path)  # the renewed certificate with the old key
        proc.process.send_signal(signal.SIGHUP)
        await poll_until(lambda: "TLS certificate reload refused" in proc.new_log_text())
        assert await threads.deferToThread(served_fingerprint, port) == new_fp
        assert proc.process.poll() is None
        assert "Traceback" not in proc.new_log_text()
    finally:
        await cleanup(device)
        proc.stop()
