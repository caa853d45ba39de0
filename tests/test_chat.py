"""``securechat chat`` as a person sees it: the real process in a pseudo-terminal, its
screen read through pyte (tests/screen.py), against real relays and real CLI processes."""

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.processes import DaemonProcess, RelayEndpoint, run_cli, write_client_config
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
    """The 1:1 texts ``config``'s user reads with ``inbox``, once ``count`` arrived."""
    got = []

    async def enough():
        got.extend(m["text"] for m in (await ok(config, "inbox", "--json")).json_lines()
                   if m["type"] != "membership" and not m["room"])
        return len(got) >= count

    await poll_until_async(enough, timeout=60)
    return got


@pytest_twisted.ensureDeferred
async def test_typing_while_a_message_arrives_leaves_the_input_line_intact(server, tmp_path):
    """Half a line is typed when bob's message arrives: the message shows in the
    scrollback with a local HH:MM time, the input row still holds the half line, and
    finishing it sends the whole line to bob (shown as alice's line, with no "sent to"
    notice under every line typed)."""
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
        assert "sent to bob" not in chat.text(), chat.text()
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
    assert await received(bob, 1) == ["half a line"]


@pytest_twisted.ensureDeferred
async def test_conversation_switching_with_query_join_and_alt_keys_counts_unread(server, tmp_path):
    """/join #ops and /join dev open and switch to room buffers, Alt-2 goes back to #ops,
    messages to the other buffers show as unread counts in the status line, switching
    (Alt-3, /buffer 4, /query #ops) clears them; /msg sends without switching; /me shows
    "* alice ..."; /names lists members; /part closes the buffer."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await ok(bob, "rooms", "create", "ops")
    await ok(bob, "rooms", "create", "dev")
    chat = await started(alice)
    try:
        chat.line("/join #ops")
        await chat.wait_for(lambda c: c.status_row == "[connected] #ops", what="#ops current")
        chat.line("/join dev")
        await chat.wait_for(lambda c: c.status_row == "[connected] #dev", what="#dev current")
        assert "1:(status) 2:#ops 3:#dev" in chat.rows()[0], chat.text()
        chat.press("\x1b2")  # Alt-2
        await chat.wait_for(lambda c: c.status_row == "[connected] #ops", what="Alt-2")
        await ok(bob, "say", "dev", "first in dev")
        await ok(bob, "say", "dev", "second in dev")
        await ok(bob, "send", "alice", "direct")
        await chat.wait_for(lambda c: c.status_row == "[connected] #ops | #dev(2) bob(1)",
                            what="unread counts")
        assert "4:bob" in chat.rows()[0], chat.text()
        chat.press("\x1b3")  # Alt-3
        await chat.wait_for(lambda c: c.status_row == "[connected] #dev | bob(1)", what="Alt-3")
        assert "<bob?> first in dev" in chat.text() and "<bob?> second in dev" in chat.text()
        chat.line("/buffer 4")
        await chat.wait_for(lambda c: c.status_row == "[connected] bob", what="/buffer 4")
        assert "<bob?> direct" in chat.text()
        chat.line("/query #ops")
        await chat.wait_for(lambda c: c.status_row == "[connected] #ops", what="/query #ops")
        chat.line("/msg bob sent from ops")
        chat.line("/me waves")
        await chat.wait_for("* alice waves")
        assert chat.status_row == "[connected] #ops", chat.text()
        chat.line("/history ops")
        await chat.wait_for("you in ops: /me waves")
        chat.line("/names")
        await chat.wait_for("bob (owner, unverified): ", what="bob marked owner in /names")
        chat.line("/part")
        await chat.wait_for("left ops")
        await chat.wait_for(lambda c: "#ops" not in c.rows()[0], what="#ops closed")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
    assert await received(bob, 1) == ["sent from ops"]
    history = (await ok(bob, "history", "ops")).out
    assert "alice in ops (unverified): /me waves" in history, history


@pytest_twisted.ensureDeferred
async def test_chat_commands_go_through_the_cli_command_layer(server, tmp_path):
    """Slash commands that are CLI commands answer in the CLI's words (/fingerprint prints
    what `securechat fingerprint` prints, /create says "created lobby"), a usage error is
    shown on the screen and the chat goes on, an unknown command or an unclosed quote is
    named, /help lists the commands, and a note to yourself from your only device says it
    went nowhere."""
    from securechat.client.session import NO_OTHER_DEVICE

    alice = await register(server, tmp_path, "alice")
    chat = await started(alice)
    try:
        chat.line("/help")
        await chat.wait_for("/query USER")
        chat.line("/fingerprint")
        cli = (await ok(alice, "fingerprint", password=None)).out.strip()  # via the chat's daemon
        await chat.wait_for(cli)
        chat.line("/create lobby")
        await chat.wait_for("created lobby")
        chat.line("/invite lobby")
        await chat.wait_for("usage: securechat invite")
        await chat.wait_for("the following arguments are required: USER")
        chat.line("/nonsense")
        await chat.wait_for("unknown command /nonsense")
        chat.line('/invite lobby "bob')
        await chat.wait_for("cannot read the command: No closing quotation")
        chat.line("/msg alice a note")
        await chat.wait_for(NO_OTHER_DEVICE[:60])
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_chat_serves_the_other_commands_while_it_runs(server, tmp_path):
    """With no daemon, `chat` starts one: scripts work beside it without a password, what
    they send and receive meanwhile shows in the chat (so `inbox` has nothing left); the
    daemon ends with the chat."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    chat = await started(alice)
    try:
        chat.line("/create lobby")
        await chat.wait_for("created lobby")
        assert "2:#lobby" in chat.rows()[0] and "#lobby" in chat.status_row  # opened
        listed = await run_cli(alice, "rooms", "list", password=None)
        assert listed.code == 0 and listed.out.split() == ["lobby"], listed
        await ok(alice, "send", "bob", "from a script beside the chat", password=None)
        await ok(bob, "send", "alice", "to the chat")
        await chat.wait_for(lambda c: "3:bob(1)" in c.rows()[0] or "bob(1)" in c.status_row,
                            what="bob's message")
        empty = await run_cli(alice, "inbox", password=None)
        assert empty.code == 0 and empty.out == "", empty
        chat.press("\x1b3")
        await chat.wait_for("<bob?> to the chat")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
    after = await run_cli(alice, "rooms", "list", password=None)  # no daemon now
    assert after.code == 2 and "no password" in after.err, after
    assert await received(bob, 1) == ["from a script beside the chat"]


@pytest_twisted.ensureDeferred
async def test_a_password_room_is_joined_from_inside_the_chat(server, tmp_path):
    """/join of a room with a password asks for it in the input line, masked (the password
    never shows on the screen), then joins and opens the room's buffer; Esc at the prompt
    (/join ROOM --password) cancels; Ctrl-C ends the chat (exit 130)."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await ok(bob, "rooms", "create", "secret", "--password",
             extra_env={"SECURECHAT_ROOM_PASSWORD": "swordfish-42"})
    chat = await started(alice)
    try:
        chat.line("/join #secret")
        await chat.wait_for(lambda c: c.input_row.startswith("password for secret:"),
                            what="the password prompt")
        chat.type("swordfish-42")
        await chat.wait_for(lambda c: c.input_row == "password for secret: " + "*" * 12,
                            what="the masked password")
        chat.press("enter")
        await chat.wait_for(lambda c: c.status_row == "[connected] #secret", what="joined")
        await chat.wait_for("joined secret")
        assert "swordfish" not in chat.text()
        chat.line("/join secret --password")
        await chat.wait_for(lambda c: c.input_row.startswith("password for secret:"),
                            what="the prompt of --password")
        chat.type("nope")
        chat.press("esc")
        await chat.wait_for("cancelled")
        assert chat.input_row == ">", chat.text()
        chat.press("ctrl c")
        assert await chat.finish() == 130
    finally:
        chat.kill()
    members = (await ok(bob, "members", "secret")).out
    assert "alice (unverified): " in members, members


@pytest_twisted.ensureDeferred
async def test_a_hostile_message_shows_escaped_on_the_screen(server, tmp_path):
    """mallory's message with a CR, ANSI colour, an OSC title, BEL and U+202E arrives as
    visible escapes; its second line is marked and stays in the message column, so no row
    of it starts like a message of its own."""
    mallory = await register(server, tmp_path, "mallory")
    bob = await register(server, tmp_path, "bob")
    chat = await started(bob)
    try:
        await ok(mallory, "send", "bob", FORGED)
        await chat.wait_for("2:mallory")  # the buffer the message opens, before going there
        chat.press("\x1b2")
        await chat.wait_for("<U+202E>yek/pmt/")
        rows = chat.rows()
        assert len([row for row in rows if "<mallory?> see you" in row]) == 1, rows
        forged = [row for row in rows if "alice (verified)" in row]
        assert forged and all(row.startswith("      ") for row in forged), rows
        assert "| [2026-12-06T17:30:00.000Z] alice (verified)" in forged[0], rows
        assert "^M^[[32mok^[[0m^[]0;alice (verified)^G <U+202E>yek/pmt/" in "".join(
            row.strip() for row in rows), rows
        assert all(cell.fg != "green" for cell in chat.cells() if cell.data in "ok"), rows
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_no_color_gives_a_screen_without_colour_attributes(server, tmp_path):
    """With NO_COLOR set, no cell of the screen has a colour (pyte's fg and bg stay
    "default"), bars and all; without it the same screen has coloured cells."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await ok(bob, "send", "alice", "colourful")
    for no_color, coloured in (("1", False), ("", True)):
        chat = await started(alice, extra_env={"NO_COLOR": no_color})
        try:
            chat.line("/query bob")
            chat.line("/nonsense")
            await chat.wait_for("unknown command /nonsense")
            if no_color:
                await chat.wait_for("<bob?> colourful")
            colours = {(cell.fg, cell.bg) for cell in chat.cells()}
            assert (colours != {("default", "default")}) == coloured, (no_color, colours)
            chat.line("/quit")
            assert await chat.finish() == 0
        finally:
            chat.kill()


@pytest_twisted.ensureDeferred
async def test_a_relay_restart_shows_notices_and_a_line_typed_meanwhile_is_delivered_once(
        twistd_relay, tmp_path):
    """The relay is stopped (SIGTERM) and started again: the chat shows a notice and
    "[disconnected]" in the status line, accepts a line typed meanwhile (shown "queued"),
    then shows "[connected]" and a notice; bob reads that line exactly once."""
    await twistd_relay.wait_listening()
    endpoint = RelayEndpoint(twistd_relay.port, twistd_relay.data_dir)
    alice, bob = (write_client_config(str(tmp_path / "clients"), name, endpoint.port,
                                      ca_file=endpoint.cert_path) for name in ("alice", "bob"))
    for config in (alice, bob):
        await ok(config, "register")
    await ok(alice, "send", "bob", "hello")  # sessions and keys exist before the outage
    assert await received(bob, 1) == ["hello"]
    chat = await started(alice)
    try:
        chat.line("/query bob")
        await chat.wait_for(lambda c: c.status_row == "[connected] bob", what="bob's buffer")
        twistd_relay.stop()
        await chat.wait_for(lambda c: c.status_row == "[disconnected] bob", what="disconnected")
        await chat.wait_for("!! disconnected: ")
        chat.line("typed during the outage")
        await chat.wait_for("<alice> typed during the outage (queued")
        twistd_relay.start()
        await twistd_relay.wait_listening()
        await chat.wait_for(lambda c: c.status_row == "[connected] bob", what="connected again")
        await chat.wait_for("-!- connected: ")
        assert await received(bob, 1) == ["typed during the outage"]
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
    assert (await ok(bob, "inbox", "--json")).json_lines() == []


@pytest_twisted.ensureDeferred
async def test_the_chat_ends_with_exit_code_4_when_its_daemon_goes_away(server, tmp_path):
    """A chat on a running `securechat daemon` (no password asked) says so and exits 4
    when that daemon is stopped."""
    alice = await register(server, tmp_path, "alice")
    daemon = DaemonProcess(alice, tmp_path / "clients" / "alice")
    try:
        await daemon.ready()
        chat = await started(alice, password=None)
        try:
            assert await daemon.stop() == 0
            assert await chat.finish() == 4
            assert "the daemon stopped" in chat.text(), chat.text()
        finally:
            chat.kill()
    finally:
        if not daemon.ended.called:
            daemon.transport.signalProcess("KILL")


@pytest_twisted.ensureDeferred
async def test_verify_in_the_chat_asks_in_the_input_line_and_marks_the_sender_verified(
        server, tmp_path):
    """/verify bob shows the emoji and asks "Do they match?" in the input line; after y
    (bob runs `securechat verify alice` and answers y too) bob is verified, and his next
    message shows without the "?" mark."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await ok(alice, "send", "bob", "hello")
    await ok(bob, "inbox")
    chat = await started(alice)
    try:
        chat.line("/verify bob")

        async def asked():
            return sum([await server.service.store.queue_length("bob", d["device"])
                        for d in await server.service.store.get_devices("bob")])

        await poll_until_async(asked, timeout=60)
        responder = defer.ensureDeferred(run_cli(bob, "verify", "alice", stdin=b"y\n"))
        await chat.wait_for(lambda c: c.input_row.startswith("Do they match? [y/N]"),
                            what="the question")
        assert "Compare with" in chat.text(), chat.text()
        chat.line("y")
        await chat.wait_for("bob is verified")
        assert (await responder).code == 0
        await ok(bob, "send", "alice", "verified now")
        chat.line("/query bob")
        await chat.wait_for("<bob> verified now")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_the_chat_without_a_terminal_says_it_needs_one(server, tmp_path):
    """`securechat chat` with a pipe for stdin and stdout exits 2 naming what to use
    instead, before it asks for a password or starts a daemon."""
    alice = await register(server, tmp_path, "alice")
    result = await run_cli(alice, "chat", password=None)
    assert result.code == 2 and "securechat chat needs a terminal" in result.err, result


@pytest_twisted.ensureDeferred
async def test_opening_a_conversation_shows_its_recent_history_with_own_lines(server, tmp_path):
    """/query bob shows what alice and bob wrote before (read already, from alice's local
    store): bob's line as his, alice's own line as hers, oldest first."""
    alice = await register(server, tmp_path, "alice")
    bob = await register(server, tmp_path, "bob")
    await ok(alice, "send", "bob", "earlier from alice")
    await ok(bob, "send", "alice", "earlier from bob")
    await ok(alice, "inbox")
    chat = await started(alice)
    try:
        chat.line("/query bob")
        await chat.wait_for("<bob?> earlier from bob")
        rows = chat.text()
        assert rows.index("<alice> earlier from alice") < rows.index("<bob?> earlier from bob")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()
