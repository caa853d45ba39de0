"""``securechat daemon`` with real processes: a twistd relay, the daemon, the ``securechat`` CLI."""

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.processes import DaemonProcess, executable, run_cli, write_client_config
from tests.support import poll_until

PASSWORD = "correct horse battery staple"


@pytest.fixture
def relay(listening_relay):
    return listening_relay.port


@pytest.fixture
def daemons():
    """Daemons started by a test, stopped (SIGTERM) after it."""
    started = []

    def start(config, data_dir, **kwargs):
        daemon = DaemonProcess(config, data_dir, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        pytest_twisted.blockon(defer.ensureDeferred(daemon.stop()))


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def registered(tmp_path, port, user, **config):
    path = write_client_config(str(tmp_path / "clients"), user, port, **config)
    await ok(path, "register")
    return path


@pytest_twisted.ensureDeferred
async def test_twenty_one_shot_commands_succeed_through_the_daemon_without_a_password(
        relay, tmp_path, daemons):
    """With alice's daemon running, 20 one-shot commands with no password anywhere all succeed."""
    alice = await registered(tmp_path, relay, "alice")
    bob = await registered(tmp_path, relay, "bob")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    commands = [("rooms", "create", "ops"), ("join", "ops"), ("say", "ops", "room hello"),
                ("rooms", "list"), ("members", "ops"), ("invite", "ops", "bob"),
                ("history", "ops"), ("fingerprint",), ("fingerprint", "bob"), ("login",),
                ("rooms", "mode", "ops", "invite-only"), ("rooms", "bans", "ops")]
    commands += [("send", "bob", f"message {i}") for i in range(6)]
    commands += [("inbox",), ("inbox", "--json")]
    outputs = {}
    for command in commands:
        result = await run_cli(alice, *command, password=None)
        assert result.code == 0, (command, result)
        outputs[command] = result.out
    assert len(commands) == 20
    assert outputs[("rooms", "list")].split() == ["ops"]
    assert outputs[("members", "ops")].startswith("alice (owner, you): ")
    assert "you in ops: room hello" in outputs[("history", "ops")]
    assert "message(s) waiting" in outputs[("login",)]
    assert "safety number: " in outputs[("fingerprint", "bob")]
    assert outputs[("rooms", "bans", "ops")] == "nobody is banned from ops\n"
    received = (await ok(bob, "inbox", "--json")).json_lines()
    assert [m["text"] for m in received if m["room"] is None] == [
        f"message {i}" for i in range(6)]


@pytest_twisted.ensureDeferred
async def test_the_daemon_path_prints_and_exits_as_the_standalone_path(relay, tmp_path, daemons):
    """The same commands, through the daemon and alone, print the same and exit the same."""
    alice = await registered(tmp_path, relay, "alice")
    await registered(tmp_path, relay, "bob")
    await ok(alice, "rooms", "create", "lobby")
    commands = [("rooms", "list"), ("members", "lobby"), ("send", "nobody", "hi"),
                ("send", "alice", "a note"), ("leave", "no-such-room"), ("trust", "bob"),
                ("rooms", "bans", "lobby")]
    alone = [await run_cli(alice, *command) for command in commands]
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    served = [await run_cli(alice, *command, password=None) for command in commands]
    for command, one, other in zip(commands, alone, served):
        assert (one.code, one.out, one.err) == (other.code, other.out, other.err), command
    assert [r.code for r in served] == [0, 0, 6, 0, 6, 0, 0]  # leave no-such-room: not found
    assert "no user named nobody" in served[2].err
    assert "sent to no device" in served[3].out


@pytest_twisted.ensureDeferred
async def test_the_daemon_path_imports_neither_twisted_nor_the_crypto(relay, tmp_path, daemons):
    """A command handed to the daemon runs without importing Twisted, the crypto or vodozemac."""
    alice = await registered(tmp_path, relay, "alice")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    probe = ("import json, sys\n"
             "from securechat.client import cli\n"
             "try:\n"
             f"    cli.main(['--config', {str(alice)!r}, 'login'])\n"
             "except SystemExit as e:\n"
             "    print('exit', e.code)\n"
             "heavy = [m for m in sys.modules if m.split('.')[0] in "
             "('twisted', 'vodozemac', 'nacl', 'OpenSSL', 'cryptography') "
             "or m.startswith('securechat.crypto')]\n"
             "print(json.dumps(heavy))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("logged in as alice"), done
    assert json.loads(lines[-1]) == [], done


def connect_as(uid, gid, path):
    """Connect to ``path`` from a child process running as ``uid``; what it read first."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the other user, connect, report, exit
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(path)
                try:
                    sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "rooms.list"}\n')
                except BrokenPipeError:
                    pass  # refused at once: the answer is already waiting to be read
                answer = sock.makefile("rb").readline()
            os.write(writer, answer)
        except BaseException as e:
            os.write(writer, f"child failed: {e!r}".encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return data


@pytest_twisted.ensureDeferred
async def test_the_daemon_socket_is_0600_and_refuses_another_user(relay, tmp_path, daemons):
    """The socket is created 0600; even opened to all, a connection from another uid is refused."""
    data_dir = tempfile.mkdtemp(prefix="securechat-daemon-")
    try:
        alice = await registered(tmp_path, relay, "alice", data_dir=data_dir)
        daemon = daemons(alice, data_dir)
        await daemon.ready()
        assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
        os.chmod(data_dir, 0o711)  # what a careless user might do: now only the uid check stands
        os.chmod(daemon.socket_path, 0o666)
        nobody = pwd.getpwnam("nobody")
        answer = connect_as(nobody.pw_uid, nobody.pw_gid, daemon.socket_path)
        error = json.loads(answer)["error"]
        assert error["code"] == -32001, answer
        assert f"uid {nobody.pw_uid} is not the daemon's owner" in error["message"]
        await daemon.wait_for(f"refused a connection to the daemon socket from uid {nobody.pw_uid}")
        served = await run_cli(alice, "login", password=None)
        assert served.code == 0 and "logged in as alice" in served.out, served
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_second_daemon_is_refused_and_a_crashed_ones_socket_replaced(
        relay, tmp_path, daemons):
    """A second daemon on a served data dir exits 1 saying so; after a SIGKILL the next one starts."""
    alice = await registered(tmp_path, relay, "alice")
    data_dir = tmp_path / "clients" / "alice"
    first = daemons(alice, data_dir)
    await first.ready()
    second = await run_cli(alice, "daemon", password=None)
    assert second.code == 1, second
    assert "already serves" in second.err and str(data_dir) in second.err
    first.transport.signalProcess("KILL")
    await first.finish()
    assert os.path.exists(first.socket_path)  # left behind: nobody listens on it
    alone = await run_cli(alice, "login")  # no daemon answers: runs standalone
    assert alone.code == 0 and "logged in as alice" in alone.out, alone
    third = daemons(alice, data_dir)
    await third.ready()
    served = await run_cli(alice, "login", password=None)
    assert served.code == 0 and "logged in as alice" in served.out, served


@pytest_twisted.ensureDeferred
async def test_unlock_with_a_password_file_or_a_password_command(relay, tmp_path):
    """SECURECHAT_PASSWORD_FILE (0600 only) and password_command unlock; failures say why (exit 2)."""
    alice = await registered(tmp_path, relay, "alice")
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    from_file = await run_cli(alice, "login", password=None,
                              extra_env={"SECURECHAT_PASSWORD_FILE": str(secret)})
    assert from_file.code == 0 and "logged in as alice" in from_file.out, from_file
    secret.chmod(0o644)
    loose = await run_cli(alice, "login", password=None,
                          extra_env={"SECURECHAT_PASSWORD_FILE": str(secret)})
    assert loose.code == 2 and "may be read by other users (mode 0644)" in loose.err, loose
    data_dir = str(tmp_path / "clients" / "alice")
    command = write_client_config(str(tmp_path / "by-command"), "alice", relay, data_dir=data_dir,
                                  extra_lines=[f"password_command = echo {PASSWORD}"])
    by_command = await run_cli(command, "login", password=None)
    assert by_command.code == 0 and "logged in as alice" in by_command.out, by_command
    failing = write_client_config(str(tmp_path / "failing"), "alice", relay, data_dir=data_dir,
                                  extra_lines=["password_command = false"])
    refused = await run_cli(failing, "login", password=None)
    assert refused.code == 2, refused
    assert "password_command 'false'" in refused.err and "exit status 1" in refused.err
    nothing = await run_cli(alice, "login", password=None)
    assert nothing.code == 2 and "SECURECHAT_PASSWORD_FILE" in nothing.err, nothing


def test_the_room_modes_of_the_light_parser_match_the_clients():
    """commands.py repeats the room modes of rooms.py (which imports Twisted): they agree."""
    from securechat.client.commands import ROOM_MODE_NAMES
    from securechat.client.rooms import ROOM_MODES

    assert sorted(ROOM_MODE_NAMES) == sorted(ROOM_MODES)


def raw_connection(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # blocking: waits for room in the listen queue, as the CLI does
    sock.settimeout(30)
    return sock, sock.makefile("rb")


@pytest_twisted.ensureDeferred
async def test_the_daemon_bounds_request_lines_and_requests_in_flight(relay, tmp_path, daemons):
    """A 17th request in flight is refused at once (exit 8); an over-long line closes the
    connection with an error; other connections are served throughout."""
    from securechat.client import daemon as daemon_module

    alice = await registered(tmp_path, relay, "alice")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    sock, lines = raw_connection(daemon.socket_path)
    waits = b"".join(
        json.dumps({"jsonrpc": "2.0", "id": i, "method": "inbox", "params": {"wait": 60}}
                   ).encode() + b"\n" for i in range(daemon_module.MAX_IN_FLIGHT + 1))
    sock.sendall(waits)
    refused = json.loads(lines.readline())
    assert refused["id"] == daemon_module.MAX_IN_FLIGHT and refused["error"]["code"] == -32002
    assert refused["error"]["data"]["exit_code"] == 8
    other = await run_cli(alice, "login", password=None)
    assert other.code == 0, other
    long_sock, long_lines = raw_connection(daemon.socket_path)
    long_sock.sendall(b"x" * (daemon_module.MAX_REQUEST_BYTES + 1) + b"\n")
    error = json.loads(long_lines.readline())["error"]
    assert error["code"] == -32002 and "longer than" in error["message"]
    assert long_lines.readline() == b""  # closed
    for stream in (lines, sock, long_lines, long_sock):
        stream.close()
    still = await run_cli(alice, "login", password=None)
    assert still.code == 0, still


@pytest_twisted.ensureDeferred
async def test_the_daemon_serves_a_bounded_number_of_connections(relay, tmp_path, daemons):
    """Past MAX_CONNECTIONS a connection gets an error line and is closed; once one ends,
    a new one is served again."""
    from securechat.client import daemon as daemon_module

    alice = await registered(tmp_path, relay, "alice")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    held = []
    for _ in range(daemon_module.MAX_CONNECTIONS):  # each one answered, so each one counted
        sock, lines = raw_connection(daemon.socket_path)
        sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
        assert json.loads(lines.readline())["result"]["user"] == "alice"
        held.append((sock, lines))
    extra, extra_lines = raw_connection(daemon.socket_path)
    error = json.loads(extra_lines.readline())["error"]
    assert error["code"] == -32002 and "connections at most" in error["message"]
    assert extra_lines.readline() == b""
    extra.close()
    sock, lines = held.pop()
    lines.close()  # the file holds the socket open: both are closed
    sock.close()
    await poll_until(lambda: run_cli_ok_sync(alice), timeout=60)
    for sock, lines in held:
        lines.close()
        sock.close()


def run_cli_ok_sync(config):
    """``securechat login`` through the daemon (no password) succeeds, run blocking."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    return subprocess.run([executable("securechat"), "--config", config, "login"], env=env,
                          capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL).returncode == 0


def test_a_subscriber_that_does_not_read_is_dropped_past_its_backlog():
    """Notifications to a paused (not reading) connection are dropped past MAX_BACKLOG_BYTES;
    one that reads again starts from zero."""
    from twisted.internet.testing import StringTransport

    from securechat.client.daemon import MAX_BACKLOG_BYTES, RpcConnection

    connection = RpcConnection(daemon=None)
    connection.transport = StringTransport()
    text = "x" * 1000
    connection.pauseProducing()
    for _ in range(MAX_BACKLOG_BYTES // 2000):
        connection.notify("message", {"text": text})
    connection.resumeProducing()
    connection.pauseProducing()
    for _ in range(MAX_BACKLOG_BYTES // 2000):
        connection.notify("message", {"text": text})
    assert not connection.transport.disconnecting
    for _ in range(MAX_BACKLOG_BYTES // 1000):
        connection.notify("message", {"text": text})
    assert connection.transport.disconnected  # aborted, not left to drain
    assert len(connection.transport.value()) < 2 * MAX_BACKLOG_BYTES


@pytest_twisted.ensureDeferred
async def test_verify_through_the_daemon_asks_here_and_confirms_there(relay, tmp_path, daemons):
    """alice's `verify bob` goes to her daemon (no password): same emoji as bob's, both verified."""
    alice = await registered(tmp_path, relay, "alice")
    bob = await registered(tmp_path, relay, "bob")
    await ok(alice, "send", "bob", "hello")
    await ok(bob, "inbox")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    started = defer.ensureDeferred(run_cli(alice, "verify", "bob", password=None, stdin=b"y\n"))
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)
    assert "bob is verified" in initiator.out and "alice is verified" in responder.out
    compare = [[line for line in r.out.splitlines() if "Compare with" in line or "numbers" in line]
               for r in (initiator, responder)]
    assert compare[0][1:] == compare[1][1:] and compare[0][1].strip().startswith("or the numbers")
    await ok(alice, "send", "bob", "now verified", password=None)
    (message,) = (await ok(bob, "inbox", "--json")).json_lines()
    assert message["verified"] is True


def bot_example():
    """The bot of docs/usage.rst, as printed there."""
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "usage.rst"),
              encoding="utf-8") as f:
        text = f.read()
    block = text.split("A bot that answers every one-to-one message", 1)[1].split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


@pytest_twisted.ensureDeferred
async def test_the_bot_example_of_the_usage_docs_answers_a_message(relay, tmp_path, daemons):
    """The documented ~20-line bot, run against a daemon, echoes what bob sends it."""
    echobot = await registered(tmp_path, relay, "echobot")
    bob = await registered(tmp_path, relay, "bob")
    data_dir = tmp_path / "clients" / "echobot"
    daemon = daemons(echobot, data_dir)
    await daemon.ready()
    code = bot_example().replace('os.path.expanduser("~/.securechat/echobot/daemon.sock")',
                                 repr(daemon.socket_path))
    assert repr(daemon.socket_path) in code and len(code.splitlines()) <= 25
    bot = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    try:
        await ok(bob, "send", "echobot", "ping")
        answers = []
        for _ in range(3):
            answers += (await ok(bob, "inbox", "--json", "--wait", "20")).json_lines()
            if answers:
                break
        assert [(m["from"], m["text"]) for m in answers] == [("echobot", "echo: ping")]
    finally:
        bot.kill()
        bot.wait()


def test_the_send_wall_benchmark_reports_both_cases():
    """python -m securechat.bench.send_wall runs (2 sends each) and reports both cases' figures."""
    done = subprocess.run([sys.executable, "-m", "securechat.bench.send_wall", "--runs", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[0])
    for case in ("without_daemon", "with_daemon"):
        assert set(report[case]) == {"median_ms", "p90_ms", "min_ms", "max_ms"}
        assert report[case]["min_ms"] > 0
    assert report["runs"] == 2


@pytest_twisted.ensureDeferred
async def test_a_subscriber_hears_messages_and_the_relay_connection_state(
        listening_relay, tmp_path, daemons):
    """After subscribe: a received message arrives as a notification (still unread for inbox),
    and the relay going away as a state notification."""
    proc, port = listening_relay, listening_relay.port
    alice = await registered(tmp_path, port, "alice")
    bob = await registered(tmp_path, port, "bob")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    sock, lines = raw_connection(daemon.socket_path)
    sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "subscribe"}\n')
    assert json.loads(lines.readline())["result"] == {"subscribed": True, "state": "connected"}
    await ok(bob, "send", "alice", "pushed to a subscriber")
    notification = await threads.deferToThread(lines.readline)
    assert json.loads(notification) == {"jsonrpc": "2.0", "method": "message", "params": {
        **json.loads(notification)["params"], "from": "bob", "text": "pushed to a subscriber",
        "room": None, "type": "msg"}}
    unread = (await ok(alice, "inbox", "--json", password=None)).json_lines()
    assert [m["text"] for m in unread] == ["pushed to a subscriber"]
    proc.stop()
    states = []
    while "disconnected" not in states:
        message = json.loads(await threads.deferToThread(lines.readline))
        assert message["method"] == "state", message
        states.append(message["params"]["state"])
    lines.close()
    sock.close()


@pytest_twisted.ensureDeferred
async def test_on_a_terminal_an_unlocking_line_shows_while_the_store_opens(relay, tmp_path):
    """`login` with stderr on a terminal writes 'unlocking the key store', then erases it."""
    import pty

    alice = await registered(tmp_path, relay, "alice")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    done = await threads.deferToThread(
        subprocess.run, [executable("securechat"), "--config", alice, "login"],
        env={**env, "SECURECHAT_PASSWORD": PASSWORD}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=slave, timeout=120)
    os.close(slave)
    terminal = os.read(master, 4096).decode()
    os.close(master)
    assert done.returncode == 0 and b"logged in as alice" in done.stdout, done
    shown, _, after = terminal.partition("unlocking the key store")
    assert shown == "securechat: " and after.split("\r")[1].strip() == "", terminal


@pytest_twisted.ensureDeferred
async def test_a_daemon_given_a_wrong_password_exits_3_and_serves_nothing(relay, tmp_path):
    """`securechat daemon` with a wrong password exits 3 saying so, and leaves no socket."""
    alice = await registered(tmp_path, relay, "alice")
    wrong = await run_cli(alice, "daemon", password="not the password")
    assert wrong.code == 3 and "wrong password" in wrong.err, wrong
    assert not os.path.exists(tmp_path / "clients" / "alice" / "daemon.sock")


@pytest_twisted.ensureDeferred
async def test_the_daemon_reconnects_after_a_relay_restart_and_sends_what_it_kept(
        listening_relay, tmp_path, daemons):
    """Relay SIGTERMed: a send through the daemon exits 4 (kept); once the relay is back the
    daemon reconnects by itself, sends it, and bob gets it once."""
    proc, port = listening_relay, listening_relay.port
    alice = await registered(tmp_path, port, "alice")
    bob = await registered(tmp_path, port, "bob")
    await ok(alice, "send", "bob", "before")
    daemon = daemons(alice, tmp_path / "clients" / "alice")
    await daemon.ready()
    connected = daemon.text().count("connection to the relay: connected")
    proc.stop()
    await daemon.wait_for("connection to the relay: disconnected")
    kept = await run_cli(alice, "send", "bob", "during the outage", password=None)
    assert kept.code == 4 and "kept in the outbox" in kept.err, kept
    listed = await run_cli(alice, "outbox", password=None)
    assert listed.code == 0 and '"during the outage"' in listed.out, listed
    proc.start()
    await proc.wait_listening()
    await poll_until(
        lambda: daemon.text().count("connection to the relay: connected") > connected, timeout=60)
    after = await run_cli(alice, "send", "bob", "after", password=None)
    assert after.code == 0, after
    texts = []
    for _ in range(3):
        texts += [m["text"] for m in (await ok(bob, "inbox", "--json", "--wait", "10")
                                      ).json_lines()]
        if len(texts) >= 3:
            break
    assert texts == ["before", "during the outage", "after"]
    empty = await run_cli(alice, "outbox", password=None)
    assert empty.code == 0 and empty.out == "", empty


def test_a_daemon_that_stops_answering_fails_the_command_instead_of_hanging_it(tmp_path):
    """A socket that accepts the command but never answers (a suspended daemon) ends the
    call with exit code 4 once its patience is spent."""
    from securechat.client import rpc
    from securechat.client.exit_codes import EXIT_UNREACHABLE

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(rpc.socket_path(str(tmp_path)))
    listener.listen(1)
    try:
        connection = rpc.DaemonConnection.find(str(tmp_path))
        try:
            with pytest.raises(rpc.CommandFailed, match="did not answer in time") as failed:
                connection.call("status", patience=0.2)
            assert failed.value.exit_code == EXIT_UNREACHABLE
        finally:
            connection.close()
    finally:
        listener.close()
