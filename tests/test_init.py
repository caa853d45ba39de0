"""First run: ``securechat init`` (fingerprint confirmed or compared, the XDG ini written
whole or not at all), the XDG defaults, no silent pinning, and the registration password
rules -- with a real ``twistd`` relay and the real ``securechat`` in a pseudo-terminal."""

import os
import shutil
import stat
import subprocess

import pexpect
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from securechat.client import settings as client_settings
from securechat.client.session import Client
from securechat.client.settings import ClientSettings
from securechat.crypto.keystore import STORE_FILE
from tests.processes import executable, relay_fingerprint, write_client_config

PASSWORD = "correct horse battery staple"
WRONG = ":".join(["AB"] * 32)


@pytest.fixture
def relay(twistd_relay):
    pytest_twisted.blockon(defer.ensureDeferred(twistd_relay.wait_listening()))
    twistd_relay.server = f"127.0.0.1:{twistd_relay.port}"
    return twistd_relay


@pytest.fixture
def home(tmp_path):
    """A person's directories: HOME, XDG_CONFIG_HOME and XDG_DATA_HOME apart, so a test sees
    which one each file went to; the environment the CLI runs with."""
    dirs = {name: tmp_path / name for name in ("home", "config", "data")}
    for path in dirs.values():
        path.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SECURECHAT_", "XDG_"))}
    env.update(HOME=str(dirs["home"]), XDG_CONFIG_HOME=str(dirs["config"]),
               XDG_DATA_HOME=str(dirs["data"]))
    dirs["env"] = env
    dirs["ini"] = dirs["config"] / "securechat" / "client.ini"
    return dirs


def cli(env, *args, password=None):
    """The CLI run to its end without a terminal; the CompletedProcess."""
    env = dict(env, **({"SECURECHAT_PASSWORD": password} if password is not None else {}))
    return subprocess.run([executable("securechat"), *args], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


def terminal(env, *args):
    """The CLI in a pseudo-terminal (its controlling terminal: getpass reads it)."""
    return pexpect.spawn(executable("securechat"), list(args), env=env, encoding="utf-8",
                         timeout=120, dimensions=(24, 200))


def ended(child):
    """Wait for the end; (exit status, everything shown)."""
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def choose_password(child, password=PASSWORD, again=None):
    """Answer registration's two password questions."""
    child.expect("New password")
    child.sendline(password)
    child.expect("Password again: ")
    child.sendline(password if again is None else again)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_init_answered_anything_but_yes_writes_nothing(relay, home):
    """init shows the relay's real fingerprint; an answer of "y" (not "yes" in full) or "no"
    refuses (exit 5) and leaves the config and data directories empty."""
    for reply in ("y", "no"):
        child = terminal(home["env"], "init", "--server", relay.server, "--user", "alice")
        child.expect("SHA-256 fingerprint")
        child.expect('Type "yes" to trust it: ')
        assert relay_fingerprint(relay.port) in child.before
        child.sendline(reply)
        code, shown = ended(child)
        assert code == 5 and "not confirmed: nothing written" in shown, shown
        assert "Traceback" not in shown
    assert files_under(home["config"]) == [] and files_under(home["data"]) == []


def test_init_confirmed_writes_the_xdg_config_and_registers(relay, home):
    """Asked everything (a capitalised name is lowercased with a note), "yes" to the
    fingerprint and Enter to the registration: the ini is written at
    $XDG_CONFIG_HOME/securechat/client.ini (0600, directory 0700) with the pin and a
    data_dir under $XDG_DATA_HOME; the account is registered; later commands find that
    ini without --config."""
    child = terminal(home["env"], "init")
    child.expect_exact("Relay (host:port): ")
    child.sendline(relay.server)
    child.expect_exact("Your user name: ")
    child.sendline("Alice")
    child.expect("user names are lowercase; using alice")
    child.expect('Type "yes" to trust it: ')
    child.sendline("yes")
    child.expect_exact(f"Register alice on {relay.server} now? [Y/n] ")
    child.sendline("")
    choose_password(child)
    code, shown = ended(child)
    assert code == 0 and "registered alice, device" in shown, shown
    ini = home["ini"]
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(ini.parent.stat().st_mode) == 0o700
    settings = client_settings.load(str(ini))
    assert (settings.server, settings.username) == (relay.server, "alice")
    assert settings.server_fingerprint == relay_fingerprint(relay.port)
    assert settings.data_dir == str(home["data"] / "securechat" / "alice")
    assert os.path.exists(os.path.join(settings.data_dir, STORE_FILE))
    assert files_under(home["home"]) == []
    login = cli(home["env"], "login", password=PASSWORD)
    assert login.returncode == 0 and "logged in as alice" in login.stdout, login


def test_init_with_a_wrong_fingerprint_refuses_with_both(relay, home):
    """--fingerprint with another value than the relay's: exit 5, the message names both
    fingerprints, nothing is written; the right one with --yes writes and registers
    without asking (a script)."""
    wrong = cli(home["env"], "init", "--server", relay.server, "--user", "alice",
                "--fingerprint", WRONG, "--yes", password=PASSWORD)
    assert wrong.returncode == 5, wrong
    assert WRONG in wrong.stderr and relay_fingerprint(relay.port) in wrong.stderr, wrong
    assert len(wrong.stderr.splitlines()) == 1
    assert files_under(home["config"]) == [] and files_under(home["data"]) == []
    right = cli(home["env"], "init", "--server", relay.server, "--user", "alice",
                "--fingerprint", relay_fingerprint(relay.port).replace(":", "").lower(),
                "--yes", password=PASSWORD)
    assert right.returncode == 0 and "registered alice" in right.stdout, right
    assert client_settings.load(str(home["ini"])).server_fingerprint == relay_fingerprint(
        relay.port)


def test_yes_without_fingerprint_is_a_usage_error(home):
    """--yes without --fingerprint: exit 2 with argparse's usage and the reason; nothing
    written, no connection attempted (no relay runs)."""
    result = cli(home["env"], "init", "--server", "127.0.0.1:1", "--user", "alice", "--yes")
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: securechat init")
    assert "error: --yes needs --fingerprint" in result.stderr
    assert files_under(home["config"]) == []


def test_init_refuses_an_existing_config_without_force(relay, home):
    """An ini already there: init says where it is and to pass --force (exit 1), and leaves
    it as it was, before asking anything."""
    home["ini"].parent.mkdir()
    home["ini"].write_text("[client]\n# mine\n")
    result = cli(home["env"], "init", "--server", relay.server, "--user", "alice",
                 "--fingerprint", relay_fingerprint(relay.port), "--no-register")
    assert result.returncode == 1, result
    assert str(home["ini"]) in result.stderr and "--force" in result.stderr
    assert home["ini"].read_text() == "[client]\n# mine\n"
    forced = cli(home["env"], "init", "--server", relay.server, "--user", "alice",
                 "--fingerprint", relay_fingerprint(relay.port), "--no-register", "--force")
    assert forced.returncode == 0 and "securechat register" in forced.stdout, forced
    assert client_settings.load(str(home["ini"])).username == "alice"
    # That ini names alice and no device was made yet (init stopped before registering,
    # here by --no-register): init again says how to go on rather than only --force.
    again = cli(home["env"], "init", "--server", relay.server, "--user", "alice",
                "--fingerprint", relay_fingerprint(relay.port), "--no-register")
    assert again.returncode == 1, again
    assert (f"(for alice on {relay.server}, with no device yet: 'securechat register' "
            "registers it") in again.stderr, again


def test_init_with_an_unreachable_relay_exits_4_and_writes_nothing(home):
    """Nothing listens at the relay's address: one line, exit 4, nothing written."""
    from tests.processes import free_port

    result = cli(home["env"], "init", "--server", f"127.0.0.1:{free_port()}", "--user",
                 "alice", "--no-register")
    assert result.returncode == 4, result
    assert result.stderr.startswith("securechat: cannot reach the relay at 127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert files_under(home["config"]) == []


def test_ctrl_c_at_the_fingerprint_question_exits_130_and_writes_nothing(relay, home):
    """Ctrl-C while init waits for "yes": exit 130, no traceback, no file (not even a
    temporary one)."""
    child = terminal(home["env"], "init", "--server", relay.server, "--user", "alice")
    child.expect('Type "yes" to trust it: ')
    child.sendintr()
    code, shown = ended(child)
    assert code == 130 and "Traceback" not in shown, shown
    assert files_under(home["config"]) == [] and files_under(home["data"]) == []


def test_a_command_with_no_config_names_securechat_init(home):
    """No ini at the default place ($XDG_CONFIG_HOME) nor at --config: exit 2 and one line
    naming the path and 'securechat init'."""
    missing = home["ini"]
    result = cli(home["env"], "register", password=PASSWORD)
    assert result.returncode == 2, result
    assert result.stderr == (f"securechat: no configuration at {missing}: run "
                             "'securechat init' (or pass --config)\n")
    elsewhere = home["home"] / "other.ini"
    result = cli(home["env"], "--config", str(elsewhere), "inbox", password=PASSWORD)
    assert result.returncode == 2 and f"no configuration at {elsewhere}" in result.stderr


def test_a_first_connection_without_a_pin_refuses_and_shows_the_fingerprint(relay, home):
    """An ini with neither server_fingerprint nor ca_file: register is refused (exit 5)
    with the relay's fingerprint and how to pin it; no key store is left; with the pin it
    registers."""
    ini = home["config"] / "client.ini"
    ini.write_text(f"[client]\nserver = {relay.server}\nusername = alice\n")
    result = cli(home["env"], "--config", str(ini), "register", password=PASSWORD)
    seen = relay_fingerprint(relay.port)
    assert result.returncode == 5, result
    assert f"server_fingerprint = {seen}" in result.stderr and "securechat init" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (home["data"] / "securechat" / "alice" / STORE_FILE).exists()
    ini.write_text(ini.read_text() + f"server_fingerprint = {seen}\n")
    again = cli(home["env"], "--config", str(ini), "register", password=PASSWORD)
    assert again.returncode == 0, again


@pytest_twisted.ensureDeferred
async def test_the_key_store_keeps_the_pin_it_registered_with(relay, home):
    """A device registered with the ini's pin, that line then removed: a relay presenting
    another certificate is refused as a mismatch (exit 5, naming both), not pinned anew;
    back with its own certificate, the device logs in (its key store learnt that pin)."""
    ini = write_client_config(str(home["config"]), "alice", relay.port)
    assert cli(home["env"], "--config", ini, "register", password=PASSWORD).returncode == 0
    with open(ini) as f:
        kept = [line for line in f if not line.startswith("server_fingerprint")]
    with open(ini, "w") as f:
        f.writelines(kept)
    own = relay_fingerprint(relay.port)
    tls, aside = relay.data_dir / "tls", relay.data_dir / "tls-aside"

    async def start_again():
        relay.start()
        await relay.wait_listening()

    relay.stop()
    shutil.move(tls, aside)  # the relay makes itself another certificate
    await start_again()
    refused = cli(home["env"], "--config", ini, "login", password=PASSWORD)
    assert refused.returncode == 5 and "REFUSED" in refused.stderr, refused
    assert own in refused.stderr and relay_fingerprint(relay.port) in refused.stderr
    relay.stop()
    shutil.rmtree(tls)
    shutil.move(aside, tls)
    await start_again()
    login = cli(home["env"], "--config", ini, "login", password=PASSWORD)
    assert login.returncode == 0 and "logged in as alice" in login.stdout, login


def register_on_terminal(relay, home):
    ini = write_client_config(str(home["config"]), "alice", relay.port)
    return terminal(home["env"], "--config", ini, "register"), ini


def test_a_short_password_is_refused_and_asked_again(relay, home):
    """At register, an empty and a 9-character password are each refused with "password
    too short (at least 10 characters)" and asked again; a long one then registers."""
    child, _ = register_on_terminal(relay, home)
    for short in ("", "123456789"):
        child.expect("New password")
        child.sendline(short)
        child.expect_exact("password too short (at least 10 characters)")
    choose_password(child)
    code, shown = ended(child)
    assert code == 0 and "registered alice" in shown, shown


def test_a_mismatched_confirmation_asks_again(relay, home):
    """At register, a confirmation that differs says "passwords do not match; try again"
    and asks for both again (it does not abort); the account gets the second password."""
    child, ini = register_on_terminal(relay, home)
    choose_password(child, "first password typed", "first password typo'd")
    child.expect_exact("passwords do not match; try again")
    choose_password(child)
    code, shown = ended(child)
    assert code == 0 and "registered alice" in shown, shown
    assert cli(home["env"], "--config", ini, "login", password=PASSWORD).returncode == 0


def test_ctrl_c_at_a_password_prompt_exits_130_without_a_traceback(relay, home):
    """Ctrl-C at register's and at login's password prompt: exit 130, no traceback, and
    no key store left behind."""
    ini = write_client_config(str(home["config"]), "alice", relay.port)
    for command, prompt in (("register", "New password"), ("login", "Password: ")):
        child = terminal(home["env"], "--config", ini, command)
        child.expect(prompt)
        child.sendintr()
        code, shown = ended(child)
        assert code == 130 and "Traceback" not in shown, (command, shown)
    assert not (home["config"] / "alice" / STORE_FILE).exists()


@pytest_twisted.ensureDeferred
async def test_a_short_password_from_the_environment_is_refused_at_register_only(relay, home):
    """SECURECHAT_PASSWORD of 9 characters: register exits 2 with one line and creates
    nothing; an account that already has such a password (made before the rule) still
    logs in with it."""
    ini = write_client_config(str(home["config"]), "alice", relay.port)
    short = cli(home["env"], "--config", ini, "register", password="123456789")
    assert short.returncode == 2, short
    assert short.stderr == ("securechat: SECURECHAT_PASSWORD: password too short "
                            "(at least 10 characters)\n")
    assert not (home["config"] / "alice").exists()
    old = ClientSettings("127.0.0.1", relay.port, "bob", str(home["data"] / "bob"), "",
                         relay_fingerprint(relay.port), "test")
    client = Client(reactor, old, "short")
    await client.register()
    await client.disconnect()
    bob = write_client_config(str(home["config"]), "bob", relay.port,
                              data_dir=str(home["data"] / "bob"))
    login = cli(home["env"], "--config", bob, "login", password="short")
    assert login.returncode == 0 and "logged in as bob" in login.stdout, login


def test_defaults_follow_xdg_and_keep_an_old_data_directory(monkeypatch, tmp_path):
    """The ini defaults to $SECURECHAT_CONFIG, else $XDG_CONFIG_HOME/securechat/client.ini,
    else ~/.config/...; data to $XDG_DATA_HOME/securechat/USER, else ~/.local/share/...,
    except where ~/.securechat/USER already holds a device."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("SECURECHAT_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert client_settings.default_config_path() == str(
        tmp_path / ".config" / "securechat" / "client.ini")
    assert client_settings.default_data_dir("alice") == str(
        tmp_path / ".local" / "share" / "securechat" / "alice")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    assert client_settings.default_config_path() == str(
        tmp_path / "c" / "securechat" / "client.ini")
    assert client_settings.default_data_dir("alice") == str(
        tmp_path / "d" / "securechat" / "alice")
    (tmp_path / ".securechat" / "alice").mkdir(parents=True)
    assert client_settings.default_data_dir("alice") == str(tmp_path / ".securechat" / "alice")
    monkeypatch.setenv("SECURECHAT_CONFIG", str(tmp_path / "mine.ini"))
    assert client_settings.default_config_path() == str(tmp_path / "mine.ini")
    ini = tmp_path / "no-data-dir.ini"
    ini.write_text("[client]\nserver = relay.example:6697\nusername = bob\n")
    assert client_settings.load(str(ini)).data_dir == str(tmp_path / "d" / "securechat" / "bob")


def test_a_server_without_a_port_means_the_relays_default_port():
    """``chat.example.org`` and ``[::1]`` are taken with port 6697, as people type them;
    a port out of range or a missing host is still refused."""
    assert client_settings.parse_server("chat.example.org") == ("chat.example.org", 6697)
    assert client_settings.parse_server("[::1]") == ("::1", 6697)
    assert client_settings.parse_server("[::1]:7000") == ("::1", 7000)
    for wrong in ("", ":6697", "host:70000", "host:port"):
        with pytest.raises(ValueError):
            client_settings.parse_server(wrong)
