"""End to end with real processes: ``twistd -n securechat`` and the ``securechat`` CLI."""

import pytest
import pytest_twisted

from tests.processes import ServerProcess, free_port, run_cli, write_client_config
from tests.support import write_config


@pytest.fixture
def relay(tmp_path):
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(str(tmp_path / "data"), port=port))
    proc.start()
    yield proc, port
    proc.stop()


async def ok(config, *args, **kw):
    result = await run_cli(config, *args, **kw)
    assert result.code == 0, result
    return result


@pytest_twisted.ensureDeferred
async def test_offline_message_survives_sigkill_and_arrives_once(relay, tmp_path):
    """alice sends to offline bob; the server is SIGKILLed and restarted; bob's inbox has it exactly once."""
    proc, port = relay
    await proc.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    bob = write_client_config(str(tmp_path / "clients"), "bob", port)
    await ok(alice, "register")
    await ok(bob, "register")
    await ok(alice, "send", "bob", "meet", "at", "noon")
    proc.kill()
    proc.start()
    await proc.wait_listening()
    first = await ok(bob, "inbox", "--json")
    messages = first.json_lines()
    assert [(m["from"], m["text"], m["room"], m["verified"]) for m in messages] == [
        ("alice", "meet at noon", None, False)]
    assert messages[0]["sent_at"].endswith("Z") and messages[0]["id"]
    again = await ok(bob, "inbox", "--json")
    assert again.json_lines() == []
    await ok(bob, "send", "alice", "see you")
    reply = await ok(alice, "inbox", "--json", "--wait", "10")
    assert [m["text"] for m in reply.json_lines()] == ["see you"]


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_exit_codes(relay, tmp_path):
    """A wrong password exits 3, an unknown recipient 6, an unreachable server 4, each with a message."""
    proc, port = relay
    await proc.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    await ok(alice, "register")
    wrong = await run_cli(alice, "login", password="not the password")
    assert wrong.code == 3 and "wrong password" in wrong.err
    unknown = await run_cli(alice, "send", "nobody", "hi")
    assert unknown.code == 6 and "no user named nobody" in unknown.err
    proc.stop()
    down = await run_cli(alice, "login")
    assert down.code == 4 and "cannot reach" in down.err


@pytest_twisted.ensureDeferred
async def test_wrong_pinned_fingerprint_is_refused(relay, tmp_path):
    """A configured fingerprint that does not match the server's certificate refuses to connect (exit 5)."""
    proc, port = relay
    await proc.wait_listening()
    mallory = write_client_config(str(tmp_path / "clients"), "mallory", port,
                                  fingerprint=":".join(["AB"] * 32))
    result = await run_cli(mallory, "register")
    assert result.code == 5 and "REFUSED" in result.err and proc.fingerprint() in result.err
    honest = write_client_config(str(tmp_path / "clients"), "honest", port,
                                 fingerprint=proc.fingerprint())
    await ok(honest, "register")
