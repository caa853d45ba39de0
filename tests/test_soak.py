"""A bounded soak: four normal users and one hostile one against a real ``twistd`` relay.

The hostile user never reads the large room history it keeps asking for (and
logs in again whenever the relay closes it for that), floods wrong-password
joins from a second device, and keeps a crowd of half-open sockets (TCP, never
TLS) open from another address.  Meanwhile the normal users message each other
one to one and in a room.  Afterwards every message they sent has arrived
exactly once, logins still go through, and the relay's memory stayed bounded
(DESIGN.md guarantee 7).

CI runs the short form: ``SECURECHAT_SOAK_SECONDS`` (default 20).  For a long
run by hand: ``SECURECHAT_SOAK_SECONDS=600 .venv/bin/python -m pytest -m soak``.
"""

import os

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import reactor, task, threads

from securechat import wire
from securechat.bench.procfs import ProcSampler
from tests.hostile import closed_by_peer, half_open, history_request, room_of_large_messages
from tests.hostile import tls_login
from tests.processes import RelayEndpoint, ServerProcess, free_port
from tests.support import ScriptedDevice, cleanup, new_envelope_id, poll_until, unicast
from tests.support import write_config

SOAK_SECONDS = float(os.environ.get("SECURECHAT_SOAK_SECONDS", "20"))
TICK_SECONDS = 0.1
BUDGET_BYTES = 2 * 1024 * 1024
STALL_SECONDS = 5
NORMAL_USERS = ("alice", "bob", "carol", "dave")
ARGON2_KIB = 2 * 64 * 1024
"""argon2id's working memory at the default ``argon2_concurrency`` (2 hashes of 64 MiB): the
join flood keeps both busy, so the relay holds it for as long as the flood lasts."""
HALF_OPEN = 100
"""Half-open sockets the attacker keeps open (the relay's per-address cap is lower)."""
JOINS_PER_TICK = 5
HISTORY_REQUESTS_PER_TICK = 1
ROOM_PASSWORD = wire.b64encode(b"the lobby's password")
WRONG_PASSWORD = wire.b64encode(b"a guess, and wrong")


class NeverReads:
    """Mallory's connection that asks for history and reads nothing; when the relay closes
    it (the output stall), mallory logs in again and carries on."""

    def __init__(self, endpoint, device):
        self._endpoint = endpoint
        self._device = device
        self._socket = None
        self._connecting = None
        self.logins = 0
        self.requests = 0

    def tick(self):
        if self._connecting is not None:
            return
        if self._socket is None:
            self._connecting = threads.deferToThread(
                tls_login, self._endpoint.port, self._endpoint.cert_path,
                self._device.user, self._device.device, self._device.password)
            self._connecting.addCallback(self._logged_in)
            return
        try:
            for _ in range(HISTORY_REQUESTS_PER_TICK):
                self._socket.send(history_request("big", self.requests))
                self.requests += 1
        except (OSError, SSL.Error):  # closed by the relay (or its buffer full): log in again
            self.close()

    def _logged_in(self, tls):
        self._socket, self._connecting = tls, None
        self._socket.setblocking(False)
        self.logins += 1

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class HalfOpenCrowd:
    """``HALF_OPEN`` TCP connections from 127.0.0.2 that never start TLS, reopened as the
    relay closes them."""

    def __init__(self, port):
        self._port = port
        self._sockets = []
        self.opened = 0

    def top_up(self):
        still = []
        for sock in self._sockets:
            if closed_by_peer(sock):
                sock.close()
            else:
                still.append(sock)
        while len(still) < HALF_OPEN:
            still.append(half_open(self._port, source="127.0.0.2"))
            self.opened += 1
        self._sockets = still

    def close(self):
        for sock in self._sockets:
            sock.close()
        self._sockets = []


def room_message(room, text):
    return {"room": room, "id": new_envelope_id(), "kind": "megolm", "sid": "c29haw",
            "ct": wire.b64encode(text)}


def ignore_refusal(failure):
    """The flood's joins are refused (wrong_password, rate_limited): that is the point."""
    return None


@pytest.mark.soak
@pytest_twisted.ensureDeferred
async def test_soak_normal_users_are_served_while_a_hostile_user_attacks(tmp_path):
    """For SOAK_SECONDS four users' messages all arrive exactly once, logins go through and
    the relay's RSS stays bounded while a fifth user never reads, floods joins and holds
    half-open sockets."""
    data_dir = str(tmp_path / "data")
    port = free_port()
    limits = (f"[limits]\noutput_budget_bytes = {BUDGET_BYTES}\n"
              f"output_stall_seconds = {STALL_SECONDS}\n")
    relay = ServerProcess(tmp_path, write_config(data_dir, port=port, extra=limits))
    relay.start()
    endpoint = RelayEndpoint(port, data_dir)
    crowd = HalfOpenCrowd(port)
    users = {name: ScriptedDevice(name) for name in NORMAL_USERS}
    mallory = ScriptedDevice("mallory")
    flooder = ScriptedDevice("mallory", device="DEV2", password=mallory.password,
                             identity=mallory.identity)
    never_reads = NeverReads(endpoint, mallory)
    devices = [*users.values(), flooder]
    try:
        await relay.wait_listening()
        for device in [*users.values(), mallory]:
            await device.register(endpoint)
        for device in devices:
            await device.login(endpoint)
        alice = users["alice"]
        await room_of_large_messages(alice, "big", count=20)
        await alice.request("room.create", room="lobby", password=ROOM_PASSWORD)
        for name in NORMAL_USERS[1:]:
            await users[name].request("room.join", room="lobby", password=ROOM_PASSWORD)
        await flooder.request("room.join", room="big")
        sampler = ProcSampler(relay.process.pid)
        idle_kib = sampler.rss_kib()
        peak_kib = idle_kib

        expected = {name: [] for name in NORMAL_USERS}
        turns = int(SOAK_SECONDS / TICK_SECONDS)
        for turn in range(turns):
            crowd.top_up()
            never_reads.tick()
            for _ in range(JOINS_PER_TICK):
                flooder.request("room.join", room="lobby",
                                password=WRONG_PASSWORD).addErrback(ignore_refusal)
            for i, name in enumerate(NORMAL_USERS):
                to = NORMAL_USERS[(i + 1 + turn % 3) % len(NORMAL_USERS)]
                envelope = unicast(to, "DEV1", b"turn %d from %s" % (turn, name.encode()))
                await users[name].request("send", envelopes=[envelope])
                expected[to].append(envelope["id"])
            if turn % 10 == 0:
                message = room_message("lobby", b"lobby turn %d" % turn)
                await alice.request("room.send", **message)
                for name in NORMAL_USERS[1:]:
                    expected[name].append(message["id"])
            peak_kib = max(peak_kib, sampler.rss_kib())
            await task.deferLater(reactor, TICK_SECONDS, lambda: None)

        late = ScriptedDevice("bob", device="LATE", password=users["bob"].password,
                              identity=users["bob"].identity)
        devices.append(late)
        await late.login(endpoint, upload_keys=False)  # logins still go through

        def delivered(name):
            return [e["envelope"]["id"] for e in users[name].envelopes()
                    if e["envelope"]["kind"] != "membership"]

        for name in NORMAL_USERS:
            await poll_until(lambda name=name: len(delivered(name)) >= len(expected[name]),
                             timeout=60)
        for name in NORMAL_USERS:
            assert sorted(delivered(name)) == sorted(expected[name]), name
            assert len(delivered(name)) == len(set(delivered(name))), f"{name} got one twice"

        connections = len(devices) + 1  # and mallory's reader
        bound_kib = 2 * idle_kib + BUDGET_BYTES // 1024 * connections + ARGON2_KIB
        print(f"soak {SOAK_SECONDS:.0f} s: idle {idle_kib} KiB, peak {peak_kib} KiB, "
              f"bound {bound_kib} KiB; history requests {never_reads.requests}, "
              f"mallory's logins {never_reads.logins}, half-open opened {crowd.opened}")
        assert peak_kib < bound_kib, (peak_kib, idle_kib, bound_kib)
        assert never_reads.requests > 0
        assert crowd.opened > HALF_OPEN  # the relay closed those over its cap
        assert "Unhandled Error" not in relay.new_log_text()
    finally:
        crowd.close()
        never_reads.close()
        await cleanup(*devices)
        relay.stop()
