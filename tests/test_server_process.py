"""End-to-end tests with real ``twistd -n securechat`` processes (the installed plugin)."""

import os
import socket
import ssl
import subprocess

import pytest
import pytest_twisted

from tests.processes import RelayEndpoint, ServerProcess, executable, free_port, run_twistd
from tests.support import ScriptedDevice, poll_until, unicast, write_config


def test_twistd_lists_the_plugin(tmp_path):
    """After installation `twistd --help` lists securechat (run outside the source tree, and
    without the checkout on PYTHONPATH: the installed plugin is found)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([executable("twistd"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "securechat" in out.stdout


def test_bad_config_stops_startup_with_a_clear_message(tmp_path):
    """A bad value makes twistd exit non-zero naming the file, section and key."""
    path = tmp_path / "bad.ini"
    path.write_text("[server]\nport = seventy\n")
    out = subprocess.run([executable("twistd"), "-n", "--pidfile=", "securechat", "--config",
                          str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"{path}: [server] port = 'seventy'" in out.stdout + out.stderr


@pytest.fixture
def server_process(tmp_path, request):
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("fresh_postgres_dsn")
    port = free_port()
    config = write_config(str(tmp_path / "data"), port=port, database=database)
    proc = ServerProcess(tmp_path, config)
    proc.start()
    yield proc, port
    proc.stop()


@pytest.mark.parametrize("server_process", ["sqlite", "postgres"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_first_start_certificate_and_real_tls_client(server_process, tmp_path):
    """The first start generates a certificate, logs its fingerprint, and a stdlib TLS client verifies it."""
    proc, port = server_process
    await proc.wait_listening()
    cert = tmp_path / "data" / "tls" / "server-cert.pem"
    assert cert.exists() and (os.stat(cert.with_name("server-key.pem")).st_mode & 0o777) == 0o600
    assert proc.fingerprint()
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b'{"op":"ping","rid":1}\n')
            assert tls.recv(4096).startswith(b'{"rid":1,"result":{"pong":true,"relay":')


@pytest.mark.parametrize("server_process", ["sqlite", "postgres"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_sigkill_after_accepted_loses_nothing(server_process, tmp_path):
    """Killing the server with SIGKILL right after "accepted" loses no envelope: bob gets it after a restart."""
    proc, port = server_process
    await proc.wait_listening()
    endpoint = RelayEndpoint(port, tmp_path / "data")
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    for dev in (alice, bob):
        await dev.register(endpoint)
        await dev.login(endpoint)
    await bob.close()
    envelopes = [unicast("bob", "DEV1", b"kill me %d" % i) for i in range(20)]
    for env in envelopes[:-1]:
        await alice.request("send", envelopes=[env])
    result = await alice.request("send", envelopes=[envelopes[-1]])
    assert result["accepted"] == [envelopes[-1]["id"]]
    proc.kill()
    await alice.protocol.closed_d
    proc.start()
    await proc.wait_listening()
    bob = bob.again()
    assert (await bob.login(endpoint, upload_keys=False))["queued"] == 20
    await poll_until(lambda: len(bob.envelopes()) == 20)
    assert [e["envelope"]["id"] for e in bob.envelopes()] == [e["id"] for e in envelopes]
    await bob.close()


def test_no_options_means_the_default_data_dir(tmp_path):
    """`twistd -n securechat` alone keeps its data in ./securechat-data (shown here by a file
    in its way, so the test never listens on the default port 6697, which the README's
    relay may hold; test_config proves the defaults themselves)."""
    (tmp_path / "securechat-data").write_text("not a directory")
    out = run_twistd(tmp_path, "-n", "--pidfile=", "--logfile", "twistd.log", "securechat")
    assert out.returncode == 1
    assert out.stderr == ("securechat relay failed to start: the data directory "
                          f"{tmp_path / 'securechat-data'} is not a directory\n")
