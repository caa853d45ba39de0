"""The operator's HTTP endpoints of a real relay: ``/health``, ``/ready`` (with a real
PostgreSQL stopped and started again) and ``/metrics`` in the Prometheus text format,
whose counters move as clients use the relay and whose labels name nobody."""

import socket
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, threads

from securechat import config as server_config
from tests.pgserver import create_database
from tests.processes import RelayEndpoint, ServerProcess, free_port
from tests.support import ScriptedDevice, cleanup, new_envelope_id, poll_until_async, unicast
from tests.support import write_config
from tests.test_postgres_restart import postgres  # noqa: F401 (the fixture)
from tests.test_startup import FAILED, _listening_socket, _start_in_foreground


def _listening_socket_on(port):
    """A socket listening on ``port`` of 127.0.0.1 (fails if something still holds it)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    return taken


def get(port, path):
    """A Deferred ``(status, body text)`` of a GET of ``path`` on 127.0.0.1:``port`` (a
    plain HTTP client in a thread, as a monitoring probe would send it)."""

    def fetch():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8")
    return threads.deferToThread(fetch)


def samples(text):
    """``{(metric sample name, labels as a sorted tuple): value}`` of a /metrics answer,
    read with prometheus_client's own parser (it raises on anything malformed)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def relay_process(tmp_path):
    """A twistd relay with its operator port on a free port: ``.port``, ``.http_port``."""
    data_dir, port, http_port = tmp_path / "relay", free_port(), free_port()
    proc = ServerProcess(tmp_path, write_config(
        str(data_dir), port=port, extra=f"[http]\nport = {http_port}\n"))
    proc.data_dir, proc.port, proc.http_port = data_dir, port, http_port
    proc.start()
    pytest_twisted.blockon(defer.ensureDeferred(proc.wait_listening()))
    yield proc
    proc.stop()


@pytest_twisted.ensureDeferred
async def test_health_and_ready_answer_200_on_a_running_relay(relay_process):
    """/health says the process runs; /ready that it listens and its store answers."""
    assert await get(relay_process.http_port, "/health") == (200, "ok\n")
    assert await get(relay_process.http_port, "/ready") == (200, "ready\n")
    status, _ = await get(relay_process.http_port, "/nothing-here")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_metrics_parse_and_move_after_logins_and_a_send(relay_process):
    """/metrics parses with prometheus_client's parser; after two registrations, two
    logins and one 1:1 envelope delivered and acknowledged, the counters say so, the
    open connections are counted, and no label holds a user or device name."""
    before = samples((await get(relay_process.http_port, "/metrics"))[1])
    assert before[("securechat_envelopes_accepted_total", (("kind", "unicast"),))] == 0
    endpoint = RelayEndpoint(relay_process.port, relay_process.data_dir)
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    try:
        for device in (alice, bob):
            await device.register(endpoint)
            await device.login(endpoint)
        envelope = unicast("bob", "DEV1")
        await alice.request("send", envelopes=[envelope])
        await poll_until_async(lambda: defer.succeed(bool(bob.envelopes())))
        await bob.request("ack", ids=[envelope["id"]])
        text = (await get(relay_process.http_port, "/metrics"))[1]
        after = samples(text)
        assert after[("securechat_registrations_total", ())] == 2
        assert after[("securechat_logins_total", (("outcome", "ok"),))] == 2
        assert after[("securechat_envelopes_accepted_total", (("kind", "unicast"),))] == 1
        assert after[("securechat_envelopes_delivered_total", (("kind", "unicast"),))] == 1
        assert after[("securechat_envelopes_acknowledged_total", (("kind", "unicast"),))] == 1
        assert after[("securechat_connections_open", ())] == 2
        assert after[("securechat_envelopes_queued", (("store", "sqlite"),))] == 0
        assert after[("securechat_store_commit_seconds_count", ())] >= 1
        assert ("process_resident_memory_bytes", ()) in after
        assert ("process_open_fds", ()) in after
        for name in ("alice", "bob", "DEV1"):
            assert name not in text
    finally:
        await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_room_message_is_counted_as_room_when_delivered_and_acknowledged(
        relay_process):
    """A room message pushed to a member and acknowledged moves the ``room`` series of
    delivered and acknowledged by one each, and not the ``unicast`` acknowledgements."""
    endpoint = RelayEndpoint(relay_process.port, relay_process.data_dir)
    alice, bob = ScriptedDevice("alice"), ScriptedDevice("bob")
    room_kind, unicast_kind = (("kind", "room"),), (("kind", "unicast"),)
    try:
        for device in (alice, bob):
            await device.register(endpoint)
            await device.login(endpoint)
        await alice.request("room.create", room="ops")
        await bob.request("room.join", room="ops")
        before = samples((await get(relay_process.http_port, "/metrics"))[1])
        envelope_id = new_envelope_id()
        await alice.request("room.send", room="ops", id=envelope_id, kind="megolm",
                            sid="c2lk", ct="b3BhcXVl")
        await poll_until_async(lambda: defer.succeed(bool(bob.envelopes())))
        await bob.request("ack", ids=[envelope_id])
        after = samples((await get(relay_process.http_port, "/metrics"))[1])
        for series in ("securechat_envelopes_delivered_total",
                       "securechat_envelopes_acknowledged_total"):
            assert after[(series, room_kind)] == before[(series, room_kind)] + 1, series
        acked = "securechat_envelopes_acknowledged_total"
        assert after[(acked, unicast_kind)] == before[(acked, unicast_kind)]
        assert "ops" not in "".join(str(key) for key in after)
    finally:
        await cleanup(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_failed_login_is_counted_by_its_reason(relay_process):
    """A wrong password proof shows as a failed login labelled auth_failed."""
    endpoint = RelayEndpoint(relay_process.port, relay_process.data_dir)
    alice, intruder = ScriptedDevice("alice"), ScriptedDevice("alice", device="EVIL")
    try:
        await alice.register(endpoint)
        await intruder.connect(endpoint)
        with pytest.raises(Exception):
            await intruder.password_login()  # its own random password key: wrong
        after = samples((await get(relay_process.http_port, "/metrics"))[1])
        assert after[("securechat_logins_total", (("outcome", "auth_failed"),))] == 1
    finally:
        await cleanup(alice, intruder)


@pytest.fixture
def pg_relay(postgres, start_relay):  # noqa: F811
    return start_relay(database=create_database(postgres.dsn(), "relay"))


@pytest_twisted.ensureDeferred
async def test_ready_is_503_while_postgresql_is_stopped_and_200_once_it_is_back(
        postgres, pg_relay):  # noqa: F811
    """With its PostgreSQL stopped, /ready answers 503 with a one-line reason while
    /health stays 200; once PostgreSQL runs again, /ready is 200 again."""
    relay = pg_relay
    http_port = relay.service.http_port.getHost().port
    assert await get(http_port, "/ready") == (200, "ready\n")
    postgres.halt("fast")
    status, body = await get(http_port, "/ready")
    assert status == 503, body
    assert body.startswith("not ready: the store") and body.count("\n") == 1, body
    assert await get(http_port, "/health") == (200, "ok\n")
    metrics = samples((await get(http_port, "/metrics"))[1])  # still served, less the count
    assert not [key for key in metrics if key[0] == "securechat_envelopes_queued"]
    postgres.resume()

    async def ready():
        return (await get(http_port, "/ready"))[0] == 200
    await poll_until_async(ready, timeout=30)


def test_a_taken_operator_port_stops_start_up_naming_http(tmp_path):
    """A relay whose operator port is taken exits 1 with one line naming the address,
    [http] and what to change, and does not keep its TLS port."""
    with _listening_socket() as taken:
        http_port = taken.getsockname()[1]
        port = free_port()
        config = write_config(str(tmp_path / "data"), port=port,
                              extra=f"[http]\nport = {http_port}\n")
        out = _start_in_foreground(tmp_path, config)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(f"{FAILED}cannot listen on 127.0.0.1:{http_port} ([http]")
    assert out.stderr.endswith(": address already in use\n") and out.stderr.count("\n") == 1
    with _listening_socket_on(port):  # the TLS port was given back
        pass


@pytest.mark.parametrize("text, accepted", [
    ("enabled = no", False), ("enabled = yes", True), ("enabled = maybe", None)])
def test_http_enabled_is_yes_or_no(tmp_path, text, accepted):
    """[http] enabled takes yes or no; anything else names the key and what it must be."""
    path = write_config(str(tmp_path), port=7000, extra=f"[http]\n{text}\n")
    if accepted is None:
        with pytest.raises(server_config.ConfigError, match=r"\[http\] enabled .* yes or no"):
            server_config.load(path)
    else:
        assert server_config.load(path).http_enabled is accepted
