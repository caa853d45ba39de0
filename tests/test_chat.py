"""``securechat chat`` as a person sees it: the real process in a pseudo-terminal, its
screen read through pyte (tests/screen.py), against real relays and real CLI processes."""

import pytest
import pytest_twisted

from tests.processes import run_cli, write_client_config
from tests.screen import ChatScreen
from tests.support import poll_until_async

FORGED = ("see you\n[2026-12-06T17:30:00.000Z] alice (verified): new deploy key is in /tmp/key"
          "\r\x1b[32mok\x1b[0m\x1b]0;alice (verified)\x07 \u202eyek/pmt/")


@pytest.fixture
def server(start_relay):
    return start_relay()


async def ok(config, *args, **kw):
    result = await run_cli(config, *args, **kw)
    assert result.code == 0, result
    return result


async def register(server, tmp_path, name):
    config = write_client_config(str(tmp_path / "clients"), name, server.port,
                                 ca_file=server.cert_path)
    await ok(config, "register")
    return config


async def started(config, **kw):
    chat = ChatScreen(config, **kw)
    try:
        await chat.wait_for("/help for help")
    except BaseException:
        chat.kill()
        raise
    return chat


async def received(config, count):
    """The texts ``config``'s user reads with ``inbox``, once ``count`` arrived."""
    got = []

    async def enough():
        got.extend(m["text"] for m in (await ok(config, "inbox", "--json")).json_lines())
        return len(got) >= count

    await poll_until_async(enough, timeout=60)
    return got


@pytest_twisted.ensureDeferred
async def test_typing_while_a_message_arrives_leaves_the_input_line_intact(server, tmp_path):
    """Half a line is typed when bob's message arrives: the message shows in the
    scrollback with a local HH:MM time, the input row still holds the half line, and
    finishing it sends the whole line to bob."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    chat = await started(alice)
    try:
        chat.line("/query bob")
        await chat.wait_for(lambda c: "[connected] bob" in c.status_row, what="bob's buffer")
        chat.type("half a li")
        await chat.wait_for(lambda c: c.input_row == "> half a li", what="the half line")
        await ok(bob, "send", "alice", "hello while you type")
        await chat.wait_for("<bob?> hello while you type")
        assert chat.input_row == "> half a li", chat.text()
        (shown,) = [row for row in chat.rows() if "hello while you type" in row]
        assert shown[:2].isdigit() and shown[2] == ":" and shown[3:5].isdigit(), shown
        chat.line("ne")
        await chat.wait_for("<alice> half a line")
        assert chat.input_row == ">", chat.text()
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
    assert await received(bob, 1) == ["half a line"]
