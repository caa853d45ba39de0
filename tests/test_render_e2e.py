"""What a hostile sender can make ``securechat inbox`` print, with real processes:
``twistd -n securechat`` and the ``securechat`` CLI."""

import fcntl
import json
import os
import re
import struct
import subprocess
import termios

import pytest_twisted
from twisted.internet import protocol, reactor, ssl, threads
from twisted.protocols.basic import LineReceiver

from securechat.server.tls import ensure_self_signed
from tests.processes import executable, run_cli, write_client_config
from tests.test_client_e2e import ok, relay  # noqa: F401  (relay: the twistd fixture)

FORGED = ("see you\n[2026-12-06T17:30:00.000Z] alice (verified): new deploy key is in /tmp/key"
          "\r[2026-12-06T17:31:00.000Z] alice (verified): \x1b[32mok\x1b[0m"
          "\x1b]0;alice (verified)\x07 \u202eyek/pmt/")
HEADER = re.compile(r"\[\d{4}-\d\d-\d\dT")


async def mallory_and_bob(relay, tmp_path):
    """Two registered users on the running relay: their client configs."""
    proc, port = relay
    await proc.wait_listening()
    configs = [write_client_config(str(tmp_path / "clients"), name, port)
               for name in ("mallory", "bob")]
    for config in configs:
        await ok(config, "register")
    return configs


def header_lines(output):
    return [line for line in output.splitlines() if HEADER.match(line)]


def assert_nothing_raw(output):
    for raw in ("\x1b", "\r", "\x07", "\u202e"):
        assert raw not in output, (raw, output)


@pytest_twisted.ensureDeferred
async def test_a_forged_verified_line_shows_as_part_of_the_unverified_message(relay, tmp_path):
    """An unverified mallory sends the issue's forged "alice (verified)" line (with a CR,
    ANSI colour, an OSC title and U+202E): bob's inbox prints exactly one line that starts
    like a message header, mallory's and unverified, the rest marked and escaped, no raw
    ESC, CR, BEL or U+202E; the same in a room; ``--json`` keeps the exact text."""
    mallory, bob = await mallory_and_bob(relay, tmp_path)
    await ok(mallory, "send", "bob", FORGED)
    shown = (await ok(bob, "inbox")).out
    assert len(header_lines(shown)) == 1, shown
    assert header_lines(shown)[0].endswith("] mallory (unverified): see you"), shown
    assert_nothing_raw(shown)
    assert shown.splitlines()[1:] == [
        "  | [2026-12-06T17:30:00.000Z] alice (verified): new deploy key is in /tmp/key"
        "^M[2026-12-06T17:31:00.000Z] alice (verified): ^[[32mok^[[0m"
        "^[]0;alice (verified)^G <U+202E>yek/pmt/"], shown

    await ok(mallory, "send", "bob", FORGED)
    (exact,) = (await ok(bob, "inbox", "--json")).json_lines()
    assert exact["text"] == FORGED and exact["verified"] is False

    await ok(mallory, "rooms", "create", "ops")
    await ok(mallory, "invite", "ops", "bob")
    await ok(mallory, "say", "ops", FORGED)
    shown = (await ok(bob, "inbox")).out
    assert [line.split("] ", 1)[1] for line in header_lines(shown)] == [
        "* bob was invited to ops by mallory", "mallory in ops (unverified): see you"], shown
    assert_nothing_raw(shown)


def run_on_terminal(config, *args, columns):
    """Run the CLI with a pseudo-terminal of ``columns`` as its stdout; what it showed."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    env["SECURECHAT_PASSWORD"] = "correct horse battery staple"
    try:
        done = subprocess.run([executable("securechat"), "--config", str(config), *args],
                              stdin=subprocess.DEVNULL, stdout=follower,
                              stderr=subprocess.PIPE, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        os.close(follower)
        follower = None
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: everything written was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)
    return shown.decode("utf-8").replace("\r\n", "\n")


@pytest_twisted.ensureDeferred
async def test_on_a_terminal_padding_cannot_push_a_forged_line_to_column_0(relay, tmp_path):
    """mallory pads the forged line with spaces so that a 60-column terminal would wrap it
    to the start of a row: bob's inbox on such a terminal cuts the line itself, every row
    fits in 59 columns, every row after the header is marked."""
    mallory, bob = await mallory_and_bob(relay, tmp_path)
    header = "[2026-12-06T17:30:00.000Z] alice (verified): new deploy key"
    await ok(mallory, "send", "bob", "see you" + " " * 70 + header)
    shown = await threads.deferToThread(run_on_terminal, bob, "inbox", columns=60)
    rows = shown.rstrip("\n").split("\n")
    assert all(len(row) <= 59 for row in rows), rows
    assert len(header_lines(shown)) == 1 and "mallory (unverified)" in rows[0], rows
    assert len(rows) > 1 and all(row.startswith("  | ") for row in rows[1:]), rows


HOSTILE_REASON = ("no\n[2026-12-06T17:30:00.000Z] alice (verified): hi"
                  "\x1b]0;pwned\x07\r\u202e")


class LyingRelay(LineReceiver):
    """A relay that answers ``ping`` and refuses everything else with a hostile reason."""

    delimiter = b"\n"

    def lineReceived(self, line):
        frame = json.loads(line)
        answer = ({"result": {"pong": True, "relay": "a-lying-relay-id"}}
                  if frame.get("op") == "ping" else
                  {"error": {"code": "bad_request", "message": HOSTILE_REASON}})
        self.sendLine(json.dumps({"rid": frame.get("rid"), **answer}).encode("utf-8"))


@pytest_twisted.ensureDeferred
async def test_a_relays_reason_is_escaped_on_the_error_line(tmp_path):
    """A relay's refusal with a line feed, an OSC sequence, a CR and U+202E in its reason:
    the CLI's ``securechat: ...`` error line stays one line with all of it escaped."""
    cert_path, key_path, _ = ensure_self_signed(str(tmp_path / "liar"))
    with open(cert_path) as cert, open(key_path) as key:
        options = ssl.PrivateCertificate.loadPEM(cert.read() + key.read()).options()
    port = reactor.listenSSL(0, protocol.Factory.forProtocol(LyingRelay), options,
                             interface="127.0.0.1")
    try:
        config = write_client_config(str(tmp_path / "clients"), "bob", port.getHost().port,
                                     ca_file=cert_path)
        result = await run_cli(config, "register")
    finally:
        await port.stopListening()
    assert result.code == 1, result
    assert result.err == ("securechat: the server refused: no^J[2026-12-06T17:30:00.000Z] "
                          "alice (verified): hi^[]0;pwned^G^M<U+202E>\n"), result
