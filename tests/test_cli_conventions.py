"""Issue 18, the shell's conventions: --config anywhere, --version, every command's help with
an example, completion and a man page generated from the parser, one exit code table,
one-line errors (Ctrl-C, internal errors, a message too long), ``send``'s confirmation on
a terminal, lowercase user names, ``rooms`` listing by default.  Real ``securechat``
processes (in a real pseudo-terminal where a terminal matters) against a real
``twistd -n securechat`` where the behaviour needs a relay."""

import argparse
import fcntl
import importlib.metadata
import os
import pty
import re
import select
import shutil
import subprocess
import termios
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from securechat import wire
from securechat.client import cli, commands, exit_codes, rpc, session, shell_help
from securechat.client.message_size import MAX_MESSAGE_BYTES, SEND_FITS_DEVICES, text_bytes
from tests.processes import cli_environment, executable, run_cli, write_client_config

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "correct horse battery staple"


def securechat(*args, timeout=60):
    """Run the installed ``securechat`` to its end, no terminal; the CompletedProcess."""
    return subprocess.run([executable("securechat"), *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_environment(None, None))


def in_terminal(args, password=PASSWORD, keys_after=None, keys=b"", timeout=60):
    """Run ``securechat ARGS`` with a pseudo-terminal as its controlling terminal (stdin,
    stdout and stderr); once ``keys_after`` shows, type ``keys``.  ``(exit code, screen
    text)``; the exit code is None if it had not ended within ``timeout`` (then killed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [executable("securechat"), *args], stdin=slave, stdout=slave, stderr=slave,
        env=cli_environment(password, None),
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    typed = keys_after is None
    try:
        while time.monotonic() < deadline:
            if not typed and keys_after.encode() in screen:
                os.write(master, keys)
                typed = True
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process of the terminal closed it
                    chunk = b""
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        try:
            code = proc.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, screen.decode("utf-8", "replace").replace("\r\n", "\n")


# -- 1. --config anywhere, --version ------------------------------------------------------

def test_config_is_taken_before_the_command_after_it_and_after_its_arguments():
    """--config works in every position, the last one given wins, and without it the
    default (SECURECHAT_CONFIG or the built-in path) stays."""
    parser = commands.build_parser()
    for argv in (["--config", "x.ini", "send", "bob", "hi"],
                 ["send", "--config", "x.ini", "bob", "hi"],
                 ["send", "bob", "hi", "--config", "x.ini"],
                 ["rooms", "create", "ops", "--config", "x.ini"],
                 ["--config", "other.ini", "inbox", "--config", "x.ini"]):
        assert parser.parse_args(argv).config == "x.ini", argv
    assert parser.parse_args(["login"]).config == parser.get_default("config")
    without = [" ".join(path) for path, sub, _ in commands.subcommands(parser)
               if "--config" not in sub._option_string_actions]
    assert without == [], "declared after build_parser's _conventions(parser)?"


def test_config_after_the_arguments_is_the_file_a_real_command_reads(tmp_path):
    """``securechat send bob hi --config FILE`` reads FILE (its error names it), exit 2 for
    a missing one -- not "unrecognized arguments"."""
    missing = str(tmp_path / "nowhere.ini")
    done = securechat("send", "bob", "hi", "--config", missing)
    assert "unrecognized arguments" not in done.stderr, done
    assert f"no configuration at {missing}" in done.stderr, done
    assert done.stderr.count("\n") == 1, done


def test_version_prints_the_installed_package_version():
    """``securechat --version`` prints "securechat X.Y.Z" from the package metadata, exit 0."""
    done = securechat("--version")
    assert done.returncode == 0, done
    assert done.stdout == f"securechat {importlib.metadata.version('securechat')}\n"


# -- 2. help: a description and an example for every command ------------------------------

def commands_without_help(parser):
    """Every subcommand (rooms' actions too) lacking its list help, its description or an
    ``example:`` epilog, by path."""
    return [" ".join(path) for path, sub, help in commands.subcommands(parser)
            if not help or not sub.description
            or not (sub.epilog or "").startswith("example:")]


def test_every_command_and_rooms_action_has_a_description_and_an_example():
    """Walking the whole parser finds no subcommand without help, description or example."""
    parser = commands.build_parser()
    paths = [" ".join(path) for path, _, _ in commands.subcommands(parser)]
    assert {"send", "rooms", "rooms create", "rooms mode", "completion", "manpage"} <= set(paths)
    assert commands_without_help(parser) == []


def test_the_help_check_catches_a_command_added_without_description_or_example():
    """A subcommand added the bare way (as another branch might) is reported by name."""
    parser = commands.build_parser()
    subparsers = next(action for action in parser._actions
                      if isinstance(action, argparse._SubParsersAction))
    subparsers.add_parser("bare", help="something")
    commands.add_command(subparsers, "fine", "something", "Does something.", "securechat fine")
    rooms = subparsers.choices["rooms"]
    rooms_actions = next(action for action in rooms._actions
                         if isinstance(action, argparse._SubParsersAction))
    rooms_actions.add_parser("bare-action", help="an action", description="Does it.")
    assert commands_without_help(parser) == ["rooms bare-action", "bare"]


def test_a_commands_help_shows_what_it_does_and_an_example():
    """``securechat send --help`` prints the description line and the example as written."""
    done = securechat("send", "--help")
    assert done.returncode == 0, done
    assert "Encrypt a message for every device of USER" in done.stdout
    assert 'example:\n  securechat send bob "meet at noon"\n' in done.stdout
    assert "--config CONFIG" in done.stdout


# -- 3. completion and man page, generated ----------------------------------------------------

def top_level_commands():
    return [path[0] for path, _, _ in commands.subcommands(commands.build_parser())
            if len(path) == 1]


def bash_complete(script, *words):
    """What the generated function offers for ``words`` (the last being completed), run in
    a real bash with COMP_WORDS/COMP_CWORD as bash's completion sets them."""
    quoted = " ".join("'" + word.replace("'", "'\\''") + "'" for word in words)
    program = (f"{script}\ncomplete -p securechat\nCOMP_WORDS=({quoted})\n"
               "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n_securechat\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and not done.stderr, done
    registration, *offered = done.stdout.splitlines()
    assert registration == "complete -o default -F _securechat securechat"
    return offered


def test_the_bash_completion_completes_commands_actions_and_options_in_bash():
    """``securechat completion bash``, sourced in bash, completes ``se`` to send and
    send-file, every
    command from nothing, rooms' actions, a command's options and a choice."""
    assert shutil.which("bash"), "bash is not installed"
    done = securechat("completion", "bash")
    assert done.returncode == 0, done
    script = done.stdout
    assert bash_complete(script, "securechat", "se") == ["send", "send-file"]
    assert set(top_level_commands()) <= set(bash_complete(script, "securechat", ""))
    assert bash_complete(script, "securechat", "--config", "x.ini", "rooms", "m") == ["mode"]
    assert bash_complete(script, "securechat", "rooms", "mode", "ops", "i") == ["invite-only"]
    assert bash_complete(script, "securechat", "send", "bob", "hi", "--w") == ["--wait"]
    assert bash_complete(script, "securechat", "inbox", "--") == [
        "--config", "--help", "--json", "--wait"]


def zsh_completes(script_path, typed, expected):
    """Whether a real interactive zsh (compinit, the generated script) in a pseudo-terminal
    turns ``typed`` + TAB into ``expected`` on its line."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["zsh", "-f", "-i"], stdin=slave, stdout=slave, stderr=slave,
                            env={"PATH": os.environ["PATH"], "HOME": os.path.dirname(script_path),
                                 "TERM": "dumb", "PS1": "> "},
                            start_new_session=True)
    os.close(slave)

    screen = bytearray()

    def read_until(needle, start=0, timeout=20):
        """Read until ``needle`` shows after ``start``; where it ends (-1: it never did)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = screen.replace(b"\a", b"").find(needle, start)  # zsh rings the bell
            if found >= 0:
                return found + len(needle)
            if select.select([master], [], [], 0.1)[0]:
                screen.extend(os.read(master, 65536))
        return -1

    try:
        os.write(master, f"autoload -U compinit && compinit -u && source {script_path} "
                         "&& echo RE''ADY\n".encode())  # its echo holds no READY
        ready = read_until(b"READY\r\n")
        read_until(b"> ", ready)  # the prompt: zle reads the keys from here on
        os.write(master, typed.encode() + b"\t")
        return read_until(expected.encode(), ready, 10) >= 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_the_zsh_completion_completes_commands_and_actions_in_zsh(tmp_path):
    """``securechat completion zsh`` parses (zsh -n) and, loaded by compinit in a real
    interactive zsh, completes ``securechat tr`` and ``securechat rooms cr``."""
    assert shutil.which("zsh"), "zsh is not installed (README.rst: what the tests need)"
    done = securechat("completion", "zsh")
    assert done.returncode == 0, done
    script = tmp_path / "_securechat"
    script.write_text(done.stdout)
    checked = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked
    assert zsh_completes(str(script), "securechat tr", "securechat trust ")
    assert zsh_completes(str(script), "securechat rooms cr", "securechat rooms create ")


def rendered_man_page(source):
    """The man page as ``man -l`` (or groff) renders it, as plain text."""
    assert shutil.which("groff"), "groff is not installed (README.rst: what the tests need)"
    argv = ["groff", "-man", "-Tutf8", "-ww", "-P-cbou"]
    done = subprocess.run(argv, input=source, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "0"})
    assert done.returncode == 0 and not done.stderr.strip(), done
    return re.sub(r".\x08", "", done.stdout)


def test_the_man_page_renders_with_every_command_exit_code_and_variable():
    """``securechat manpage`` renders without a warning and holds NAME, SYNOPSIS, each
    command with its example, each exit code, ENVIRONMENT and FILES."""
    done = securechat("manpage")
    assert done.returncode == 0, done
    page = rendered_man_page(done.stdout)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES"):
        assert f"\n{section}\n" in page, section
    for path, sub, _ in commands.subcommands(commands.build_parser()):
        assert f"securechat {' '.join(path)}" in page, path
        example = sub.epilog.split("example:", 1)[1].strip().splitlines()[0]  # one line
        assert example in page, path  # or the first of several (add_command's form)
    exit_status = page.split("\nEXIT STATUS\n")[1].split("\nENVIRONMENT\n")[0]
    assert [int(code) for code in re.findall(r"^ +(\d+) ", exit_status, re.M)] == [
        code for code, _ in exit_codes.TABLE]
    for name, _ in shell_help.ENVIRONMENT:
        assert name in page


# -- 4. exit codes: one table -------------------------------------------------------------

def test_the_exit_code_table_is_the_one_the_client_and_the_docs_use():
    """No client module defines a code of its own (session.py and rpc.py, which use the
    most, take theirs from exit_codes); docs/usage.rst's table lists every code of TABLE,
    in order."""
    for module in (session, rpc):
        for name in [name for name in vars(module) if name.startswith("EXIT_")]:
            assert getattr(module, name) == getattr(exit_codes, name), (module, name)
    with open(os.path.join(SOURCE_TREE, "docs", "usage.rst"), encoding="utf-8") as f:
        docs = f.read()
    table = docs.split("\nExit codes\n==========\n")[1].split("\n\n", 2)[1]
    assert [int(code) for code in re.findall(r"^(\d+) ", table, re.M)] == [
        code for code, _ in exit_codes.TABLE]


async def registered(relay, tmp_path, *users):
    """Register ``users`` on ``relay`` with the CLI; their config files, by name."""
    await relay.wait_listening()
    configs = {}
    for user in users:
        configs[user] = write_client_config(str(tmp_path / "clients"), user, relay.port)
        done = await run_cli(configs[user], "register")
        assert done.code == 0, done
    return configs


@pytest_twisted.ensureDeferred
async def test_a_room_that_does_not_exist_or_you_are_not_in_exits_6(twistd_relay, tmp_path):
    """join of a missing room, members of a room one is not in: exit 6 (not found), one
    line naming the room; before, both exited 1 like any error."""
    configs = await registered(twistd_relay, tmp_path, "alice", "bob")
    missing = await run_cli(configs["alice"], "join", "nosuchroom")
    assert missing.code == 6, missing
    assert "nosuchroom" in missing.err and missing.err.count("\n") == 1, missing
    assert (await run_cli(configs["bob"], "rooms", "create", "ops")).code == 0
    outside = await run_cli(configs["alice"], "members", "ops")
    assert outside.code == 6 and "not a member" in outside.err, outside


@pytest_twisted.ensureDeferred
async def test_wrong_room_passwords_exit_3_then_8_once_rate_limited(tmp_path):
    """A wrong room password is a wrong password (exit 3, not 1); past the relay's limit of
    guesses the same command exits 8 with the wait, not 3."""
    from tests.processes import ServerProcess, free_port
    from tests.support import write_config

    port = free_port()
    relay = ServerProcess(tmp_path, write_config(
        str(tmp_path / "relay"), port=port,
        extra="[limits]\nroom_password_failures_per_room = 2\n"))
    relay.port = port
    relay.start()
    try:
        configs = await registered(relay, tmp_path, "alice", "bob")
        created = await run_cli(configs["alice"], "rooms", "create", "ops", "--password",
                                extra_env={"SECURECHAT_ROOM_PASSWORD": "the real one"})
        assert created.code == 0, created
        guesses = [await run_cli(configs["bob"], "join", "ops", "--password",
                                 extra_env={"SECURECHAT_ROOM_PASSWORD": f"guess {n}"})
                   for n in range(3)]
    finally:
        relay.stop()
    assert [guess.code for guess in guesses] == [3, 3, 8], guesses
    assert "wrong password for room 'ops'" in guesses[0].err, guesses[0]
    assert "rate limited" in guesses[2].err and "try again in" in guesses[2].err, guesses[2]


# -- 5. one-line errors -------------------------------------------------------------------

def test_ctrl_c_at_the_password_prompt_exits_130_in_one_line(tmp_path):
    """Ctrl-C typed at a real terminal's password prompt ends the command at once with
    exit 130 and "securechat: interrupted", no traceback (before: it hung until Enter)."""
    config = write_client_config(str(tmp_path), "alice", 1, fingerprint=":".join(["AB"] * 32))
    code, screen = in_terminal(["--config", config, "login"], password=None,
                               keys_after="Password: ", keys=b"\x03", timeout=30)
    assert code == 130, screen
    assert screen.endswith("securechat: interrupted\n"), screen
    assert "Traceback" not in screen


def test_an_unexpected_error_is_one_line_with_exit_1_and_a_traceback_on_request(
        monkeypatch, capsys):
    """A bug inside a command prints one line naming it and SECURECHAT_DEBUG=1 (exit 1);
    with SECURECHAT_DEBUG=1 the traceback is shown instead."""
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "run", broken)
    monkeypatch.delenv("SECURECHAT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ended:
        cli.main(["login"])
    assert ended.value.code == 1
    assert capsys.readouterr().err == (
        "securechat: internal error: ZeroDivisionError: division by zero "
        "(run with SECURECHAT_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("SECURECHAT_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["login"])


def big_text_words():
    """About 800 KB of text as eight arguments (one argument may hold 128 KiB on Linux)."""
    return [chr(ord("a") + n) * 100_000 for n in range(8)]


@pytest_twisted.ensureDeferred
async def test_an_800_kb_message_is_refused_before_unlocking_with_exit_2(twistd_relay, tmp_path):
    """send, say and broadcast of ~800 KB: one line "message too long: N bytes (limit 32000
    bytes)", exit 2, decided before the password is even asked for; the outbox stays empty
    and a message at the limit still goes through."""
    configs = await registered(twistd_relay, tmp_path, "alice", "bob")
    words = big_text_words()
    size = text_bytes(" ".join(words))
    for args in (["send", "bob", *words], ["say", "ops", *words], ["broadcast", *words]):
        refused = await run_cli(configs["alice"], *args, password=None)  # no password at all
        assert refused.code == 2, (args[0], refused)
        assert refused.err == (f"securechat: message too long: {size} bytes "
                               f"(limit {MAX_MESSAGE_BYTES} bytes)\n"), refused
    outbox = await run_cli(configs["alice"], "outbox")
    assert outbox.code == 0 and outbox.out == "", outbox
    at_limit = "é" * (MAX_MESSAGE_BYTES // 2)
    assert (await run_cli(configs["alice"], "send", "bob", at_limit)).code == 0
    inbox = await run_cli(configs["bob"], "inbox", "--json")
    assert [m["text"] for m in inbox.json_lines()] == [at_limit], inbox


def test_a_message_at_the_limit_fits_the_relays_line_for_twenty_devices(tmp_path):
    """A MAX_MESSAGE_BYTES text, padded and Olm-encrypted as the client sends it (pre-key
    messages, the largest), for SEND_FITS_DEVICES devices: each ciphertext is within the
    relay's limit and the whole ``send`` line within wire.MAX_LINE_BYTES."""
    from securechat.client.messaging import new_id, padded
    from securechat.crypto.device import DeviceCrypto
    from securechat.crypto.keystore import KeyStore

    stores = [KeyStore.create(str(tmp_path / name), "pw", {"user": name}) for name in "ab"]
    try:
        alice, bob = (DeviceCrypto.create(store) for store in stores)
        keys = list(bob.one_time_keys("bob", "B", SEND_FITS_DEVICES).values())
        # escaped as \u0001: 6 bytes each, topped up to the limit
        text = "\x01" * (MAX_MESSAGE_BYTES // 6) + "a" * (MAX_MESSAGE_BYTES % 6)
        assert text_bytes(text) == MAX_MESSAGE_BYTES
        inner = {"type": "msg", "mid": new_id(), "room": None, "ts": 1 << 42, "body": text,
                 "from": "a" * 32, "from_dev": "D" * 32, "from_ed25519": alice.ed25519,
                 "to": "b" * 32, "to_dev": "E" * 32, "to_ed25519": bob.ed25519}
        envelopes = []
        for n, key in enumerate(keys):
            sid, otype, ct = alice.encrypt("bob", f"B{n}", bob.curve25519, padded(inner),
                                           key["key"])
            assert otype == 0 and len(ct) <= wire.MAX_CIPHERTEXT_CHARS
            envelopes.append({"id": new_id(), "to": "b" * 32, "to_dev": "E" * 32,
                              "kind": "olm", "sid": sid, "otype": otype, "ct": ct})
        line = wire.encode({"op": "send", "rid": 2**31, "envelopes": envelopes})
        assert len(line) <= wire.MAX_LINE_BYTES, len(line)
    finally:
        for store in stores:
            store.close()


# -- 6. send's confirmation, user names, rooms ----------------------------------------------

@pytest_twisted.ensureDeferred
async def test_send_says_where_it_went_on_a_terminal_and_nothing_when_piped(
        twistd_relay, tmp_path):
    """On a terminal ``send`` prints "sent to bob (1 device)" and ``say`` "sent to ops";
    piped, both print nothing (scripts)."""
    configs = await registered(twistd_relay, tmp_path, "alice", "bob")
    assert (await run_cli(configs["alice"], "rooms", "create", "ops")).code == 0
    code, screen = await threads.deferToThread(
        in_terminal, ["--config", configs["alice"], "send", "bob", "hi"])
    assert code == 0 and screen.endswith("sent to bob (1 device)\n"), screen
    code, screen = await threads.deferToThread(
        in_terminal, ["--config", configs["alice"], "say", "ops", "hi"])
    assert code == 0 and screen.endswith("sent to ops\n"), screen
    piped = await run_cli(configs["alice"], "send", "bob", "again")
    assert piped.code == 0 and piped.out == "", piped


@pytest_twisted.ensureDeferred
async def test_a_capitalised_user_name_is_lowercased_with_a_note(twistd_relay, tmp_path):
    """``send Bob`` sends to bob with "user names are lowercase: using bob" on stderr (it
    was a protocol error); a name that is no user name is a usage error naming it."""
    configs = await registered(twistd_relay, tmp_path, "alice", "bob")
    sent = await run_cli(configs["alice"], "send", "Bob", "hello")
    assert sent.code == 0, sent
    assert sent.err == "securechat: user names are lowercase: using bob\n", sent
    inbox = await run_cli(configs["bob"], "inbox", "--json")
    assert [m["text"] for m in inbox.json_lines()] == ["hello"], inbox
    bad = await run_cli(configs["alice"], "fingerprint", "b@d")
    assert bad.code == 2 and "'b@d' is not a user name" in bad.err, bad


def test_every_command_that_takes_a_user_lowercases_it():
    """send, fingerprint, verify, trust, invite, kick, unban all take ``Bob`` as bob."""
    parser = commands.build_parser()
    for argv in (["send", "Bob", "hi"], ["fingerprint", "Bob"], ["verify", "Bob"],
                 ["trust", "Bob"], ["invite", "ops", "Bob"], ["kick", "ops", "Bob"],
                 ["unban", "ops", "Bob"]):
        assert parser.parse_args(argv).user == "bob", argv


@pytest_twisted.ensureDeferred
async def test_rooms_without_an_action_lists_the_rooms(twistd_relay, tmp_path):
    """``securechat rooms`` prints the rooms one is in, as ``rooms list`` does (it was a
    usage error)."""
    configs = await registered(twistd_relay, tmp_path, "alice")
    assert (await run_cli(configs["alice"], "rooms", "create", "ops")).code == 0
    listed = await run_cli(configs["alice"], "rooms")
    assert listed.code == 0 and "ops" in listed.out.split(), listed
    assert listed.out == (await run_cli(configs["alice"], "rooms", "list")).out


@pytest_twisted.ensureDeferred
async def test_commands_through_a_connected_daemon_exit_9_while_the_database_is_down(
        tmp_path, postgres_dsn, fresh_postgres_dsn):
    """With the daemon logged in before the outage, ``send`` and ``rooms`` during a
    PostgreSQL outage exit 9 naming the database (not 3, not 1), and ``send`` works
    again once it is back."""
    from tests.processes import DaemonProcess, ServerProcess, free_port
    from tests.support import write_config
    from tests.test_login_limits_e2e import set_connections_allowed

    port = free_port()
    relay = ServerProcess(tmp_path, write_config(str(tmp_path / "relay"), port=port,
                                                 database=fresh_postgres_dsn))
    relay.port = port
    relay.start()
    daemon = None
    try:
        configs = await registered(relay, tmp_path, "alice", "bob")
        daemon = DaemonProcess(configs["alice"], tmp_path / "clients" / "alice")
        await daemon.ready()
        assert (await run_cli(configs["alice"], "send", "bob", "before")).code == 0
        set_connections_allowed(postgres_dsn, fresh_postgres_dsn, False)
        try:
            during = [await run_cli(configs["alice"], "send", "bob", "during"),
                      await run_cli(configs["alice"], "rooms")]
        finally:
            set_connections_allowed(postgres_dsn, fresh_postgres_dsn, True)
        for result in during:
            assert result.code == 9, result
            assert "the server is unavailable (its database)" in result.err, result
        for _ in range(20):  # bounded: the relay reconnects to its database within 10 s
            after = await run_cli(configs["alice"], "send", "bob", "after")
            if after.code == 0:
                break
            assert after.code == 9, after
        assert after.code == 0, after
    finally:
        if daemon is not None:
            await daemon.stop()
        relay.stop()


@pytest_twisted.ensureDeferred
async def test_the_daemon_refuses_a_message_too_long_from_any_caller(twistd_relay, tmp_path):
    """A script or the chat calling a running daemon's ``send``/``say`` with a text over
    the limit gets the same one-line error with exit code 2, and nothing is queued."""
    from tests.processes import DaemonProcess

    configs = await registered(twistd_relay, tmp_path, "alice", "bob")
    data_dir = tmp_path / "clients" / "alice"
    daemon = DaemonProcess(configs["alice"], data_dir)
    try:
        await daemon.ready()

        def call(method, params):
            connection = rpc.DaemonConnection.find(str(data_dir))
            try:
                return connection.call(method, params)
            except rpc.CommandFailed as e:
                return e
            finally:
                connection.close()

        text = "x" * (MAX_MESSAGE_BYTES + 1)
        for method, params in (("send", {"user": "bob", "text": text}),
                               ("say", {"room": "ops", "text": text}),
                               ("broadcast", {"text": text})):
            refused = await threads.deferToThread(call, method, params)
            assert isinstance(refused, rpc.CommandFailed), (method, refused)
            assert refused.exit_code == 2 and str(refused) == (
                f"message too long: {MAX_MESSAGE_BYTES + 1} bytes "
                f"(limit {MAX_MESSAGE_BYTES} bytes)"), refused
        assert (await threads.deferToThread(call, "outbox", {}))["entries"] == []
    finally:
        await daemon.stop()


def test_the_chats_daemon_client_refuses_a_message_too_long_without_writing_it():
    """daemon_client.DaemonClient (the chat's side) fails send/say/broadcast of a text over
    the limit at once, writing nothing to the daemon (whose request lines are bounded)."""
    from twisted.internet.testing import StringTransport

    from securechat.client.daemon_client import DaemonClient

    client = DaemonClient(lambda method, params: None)
    transport = StringTransport()
    client.makeConnection(transport)
    for method, params in (("send", {"user": "bob"}), ("say", {"room": "ops"}),
                           ("broadcast", {})):
        failed = client.call(method, text="y" * 800_000, **params)
        failure = []
        failed.addErrback(failure.append)
        assert failure and failure[0].value.exit_code == 2, method
        assert "message too long: 800000 bytes" in str(failure[0].value)
    assert transport.value() == b""


def test_send_says_how_many_devices_were_the_recipients_and_how_many_yours():
    """``sent to bob (1 device)`` from an only device; with devices of your own, their
    copies are counted apart: ``sent to bob (2 devices; a copy to 1 other device of
    yours)``, so nobody reads a copy as a second device of bob's."""
    args = argparse.Namespace(command="send", user="bob")
    assert commands.sent_to(args, {"devices": 1, "own_devices": 0}) == "sent to bob (1 device)"
    assert commands.sent_to(args, {"devices": 3, "own_devices": 1}) == (
        "sent to bob (2 devices; a copy to 1 other device of yours)")
    assert commands.sent_to(args, {"devices": 4, "own_devices": 2}) == (
        "sent to bob (2 devices; a copy to 2 other devices of yours)")
