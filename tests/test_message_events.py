"""Receipts, replies, reactions, edits and deletes end to end: a real twistd relay, real
securechat CLI and chat processes, bob on two real devices (tests/two_devices.py)."""

import pytest_twisted
from twisted.internet import reactor

from securechat.client import settings as client_settings
from securechat.client.session import Client

from tests.processes import run_cli, write_client_config
from tests.screen import ChatScreen
from tests.support import poll_until_async
from tests.two_devices import add_device

PASSWORD = "correct horse battery staple"


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


async def users(tmp_path, port, *names, alice_lines=(), bob_lines=()):
    """A registered config per name (alice and bob with their extra ini lines)."""
    extra = {"alice": list(alice_lines), "bob": list(bob_lines)}
    configs = []
    for name in names:
        config = write_client_config(str(tmp_path / "clients"), name, port,
                                     extra_lines=extra.get(name, []))
        await ok(config, "register")
        configs.append(config)
    return configs


async def inbox(config):
    return (await ok(config, "inbox", "--json")).json_lines()


async def sent_status(config, peer):
    """``{text: status}`` of ``config``'s own messages to ``peer`` (``history --json``)."""
    lines = (await ok(config, "history", peer, "--json")).json_lines()
    return {m["text"]: m.get("status") for m in lines if m["outgoing"]}


@pytest_twisted.ensureDeferred
async def test_receipts_move_a_message_from_sent_to_delivered_to_read(listening_relay, tmp_path):
    """alice's message is 'sent' once the relay took it, 'delivered' once bob's device stored
    it (a command that only logs in), 'read' once bob's inbox printed it; the receipts are
    not in alice's inbox, and bob's inbox shows the message's mid."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob")
    sent = await ok(alice, "send", "bob", "are you there?")
    assert sent.out == ""  # a script's send stays silent
    assert await sent_status(alice, "bob") == {"are you there?": "sent"}

    await ok(bob, "login")  # stores and acknowledges it: not shown yet
    assert await sent_status(alice, "bob") == {"are you there?": "delivered"}

    (message,) = await inbox(bob)
    assert message["text"] == "are you there?" and message["mid"]
    assert await sent_status(alice, "bob") == {"are you there?": "read"}
    assert await inbox(alice) == []  # receipts are no messages


@pytest_twisted.ensureDeferred
async def test_no_read_receipts_either_way_when_send_read_receipts_is_off(listening_relay,
                                                                          tmp_path):
    """bob with send_read_receipts = no: alice's message to him stops at 'delivered' after
    he read it; his message to alice, read by her, shows 'delivered' to him, not 'read'."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob",
                             bob_lines=["send_read_receipts = no"])
    await ok(alice, "send", "bob", "to bob")
    await ok(bob, "send", "alice", "to alice")
    assert [m["text"] for m in await inbox(bob)] == ["to bob"]
    assert [m["text"] for m in await inbox(alice)] == ["to alice"]
    await ok(bob, "login")  # takes alice's receipts
    await ok(alice, "login")  # takes bob's
    assert await sent_status(alice, "bob") == {"to bob": "delivered"}
    assert await sent_status(bob, "alice") == {"to alice": "delivered"}


@pytest_twisted.ensureDeferred
async def test_an_edit_and_a_delete_reach_every_device_of_the_recipient(listening_relay,
                                                                       tmp_path):
    """alice edits one message and deletes another by their mids: bob's two devices each get
    the edit and the delete as their own types in `inbox --json` (the messages shown as
    they are now), and their history shows
    the new text marked edited and the other message deleted; alice's own history too."""
    port = listening_relay.port
    alice, bob = await users(tmp_path, port, "alice", "bob")
    bob2 = write_client_config(str(tmp_path / "second"), "bob", port)
    await add_device(bob, bob2, PASSWORD)
    first = (await ok(alice, "send", "bob", "lunch at 12?")).out
    await ok(alice, "send", "bob", "oops, wrong chat")
    assert first == ""
    originals = {m["text"]: m["mid"] for m in (await ok(alice, "history", "bob", "--json"))
                 .json_lines()}
    await ok(alice, "edit", originals["lunch at 12?"], "lunch at 1pm?")
    await ok(alice, "delete", originals["oops, wrong chat"])

    for device in (bob, bob2):
        got = await inbox(device)
        # The messages as they are now, then the changes as their own records.
        assert [(m["type"], m.get("target"), m["text"], m.get("edited"), m.get("deleted"))
                for m in got] == [
            ("msg", None, "lunch at 1pm?", True, None), ("msg", None, None, None, True),
            ("edit", originals["lunch at 12?"], "lunch at 1pm?", None, None),
            ("delete", originals["oops, wrong chat"], None, None, None)], got
        history = (await ok(device, "history", "alice", "--json")).json_lines()
        assert [(m["text"], m.get("edited"), m.get("deleted")) for m in history] == [
            ("lunch at 1pm?", True, None), (None, None, True)], history
        shown = (await ok(device, "history", "alice")).out
        assert "lunch at 1pm? (edited)" in shown and "(deleted)" in shown, shown
    mine = (await ok(alice, "history", "bob", "--json")).json_lines()
    assert [(m["text"], m.get("edited"), m.get("deleted")) for m in mine] == [
        ("lunch at 1pm?", True, None), (None, None, True)], mine


@pytest_twisted.ensureDeferred
async def test_someone_elses_edit_or_delete_is_refused(listening_relay, tmp_path):
    """bob cannot edit or delete alice's message: his CLI refuses (exit 1, saying only the
    author can), and an edit he crafts anyway (sent as his own event naming her mid) is
    refused by alice's client: said in her log, not applied, not in her inbox."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob")
    await ok(alice, "send", "bob", "the original")
    (message,) = await inbox(bob)
    mid = message["mid"]
    for args in (("edit", mid, "forged"), ("delete", mid)):
        refused = await run_cli(bob, *args)
        assert refused.code == 1 and "only its author can" in refused.err, refused

    client = Client(reactor, client_settings.load(bob), PASSWORD)  # past the CLI's check
    await client.open()
    try:
        await client.send_event("alice", {"type": "edit", "target": mid, "body": "forged"})
    finally:
        await client.disconnect()
    logged = await run_cli(alice, "login")
    assert "REFUSED: bob tried to edit a message alice wrote" in logged.err, logged
    assert await inbox(alice) == []
    history = (await ok(alice, "history", "bob", "--json")).json_lines()
    assert [(m["text"], m.get("edited")) for m in history] == [("the original", None)]


async def mid_of(config, peer, text, **kwargs):
    """The mid of the message ``text`` in ``config``'s conversation with ``peer``."""
    lines = (await ok(config, "history", peer, "--json", **kwargs)).json_lines()
    (mid,) = [m["mid"] for m in lines if m["text"] == text]
    return mid


@pytest_twisted.ensureDeferred
async def test_the_chat_shows_receipts_replies_reactions_edits_and_deletes(listening_relay,
                                                                          tmp_path):
    """In alice's chat (a real pseudo-terminal): her line to bob goes ✓, ✓✓ once bob's
    device stored it, ✓✓ read once his inbox printed it, then shows his reaction [+1 1];
    bob's line shows his edit with (edited), then (deleted); her /reply to it shows the
    context and reaches bob with reply_to; bob's message, shown in alice's open buffer,
    is 'read' for him."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob")
    await ok(bob, "send", "alice", "lunch at 12?")
    chat = ChatScreen(alice)
    try:
        await chat.wait_for("/help for help")
        chat.line("/query bob")
        await chat.wait_for("<bob?> lunch at 12?")
        await poll_until_async(lambda: _status_is(bob, "alice", "lunch at 12?", "read"))
        chat.line("yes, see you")
        await chat.wait_for("<alice> yes, see you ✓")
        await ok(bob, "login")
        await chat.wait_for("<alice> yes, see you ✓✓")
        assert "yes, see you" in [m["text"] for m in await inbox(bob)]
        await chat.wait_for("<alice> yes, see you ✓✓ read")
        await ok(bob, "react", await mid_of(bob, "alice", "yes, see you"), "+1")
        await chat.wait_for("yes, see you [+1 1] ✓✓ read")
        lunch = await mid_of(bob, "alice", "lunch at 12?")
        await ok(bob, "edit", lunch, "lunch at 1?")
        await chat.wait_for("<bob?> lunch at 1? (edited)")
        chat.line(f"/reply {lunch} fine")
        await chat.wait_for("fine ✓")
        (reply,) = [m for m in await inbox(bob) if m["text"] == "fine"]
        assert reply["reply_to"] == lunch and reply["in_reply_to"] == {
            "from": "bob", "text": "lunch at 1?"}, reply
        await ok(bob, "delete", lunch)
        await chat.wait_for("<bob?> (deleted)")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_receipts_arriving_while_scrolled_back_leave_the_screen_where_it_was(
        listening_relay, tmp_path):
    """alice sends 30 lines from her chat and scrolls back (PgUp); the receipts bob's
    device then sends redraw those lines in place ('read' on the ones she is looking at)
    and the screen stays scrolled back, instead of jumping to the last line."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob")
    chat = ChatScreen(alice)
    try:
        await chat.wait_for("/help for help")
        chat.line("/query bob")
        for n in range(1, 31):
            chat.line(f"line {n:02}")
        await chat.wait_for("<alice> line 30 ✓")
        chat.press("page up")
        await chat.wait_for(lambda screen: "line 30" not in screen.text(), what="scrolled back")
        seen = [row for row in chat.rows() if "<alice> line " in row]
        assert seen, chat.text()
        first = seen[0].split("<alice> ", 1)[1].split()[0:2]
        await ok(bob, "inbox")
        await chat.wait_for(f"<alice> {' '.join(first)} ✓✓ read")
        assert "line 30" not in chat.text(), chat.text()
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_an_edit_reaction_or_delete_typed_in_the_chat_shows_on_its_line_at_once(
        listening_relay, tmp_path):
    """alice's /edit, /react and /delete of her own line, typed in her chat, redraw that
    line on her screen at once (not only when something else arrives)."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob")
    chat = ChatScreen(alice)
    try:
        await chat.wait_for("/help for help")
        chat.line("/query bob")
        chat.line("lunch at 12?")
        await chat.wait_for("<alice> lunch at 12? ✓")
        mid = await mid_of(alice, "bob", "lunch at 12?", password=None)  # via the chat's daemon
        chat.line(f"/edit {mid} lunch at 1?")
        await chat.wait_for("<alice> lunch at 1? (edited)")
        chat.line(f"/react {mid} +1")
        await chat.wait_for("lunch at 1? (edited) [+1 1]")
        chat.line(f"/delete {mid}")
        await chat.wait_for("<alice> (deleted)")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


@pytest_twisted.ensureDeferred
async def test_the_plain_inbox_prints_a_change_once(listening_relay, tmp_path):
    """alice edits her message before bob's inbox runs: his inbox prints the message as it
    is now, and not the edit again as a line of its own (--json still has both).  Her
    reaction after that inbox is a line of its own in the next one."""
    alice, bob = await users(tmp_path, listening_relay.port, "alice", "bob")
    await ok(alice, "send", "bob", "lunch at 12?")
    mid = await mid_of(alice, "bob", "lunch at 12?")
    await ok(alice, "edit", mid, "lunch at 1?")
    first = (await ok(bob, "inbox")).out.splitlines()
    assert len(first) == 1 and first[0].endswith("alice (unverified): lunch at 1? (edited)"), first
    await ok(alice, "react", mid, "+1")
    second = (await ok(bob, "inbox")).out.splitlines()
    assert len(second) == 1 and second[0].endswith(f"reacted +1 to {mid}"), second


async def _status_is(config, peer, text, status):
    return (await sent_status(config, peer)).get(text) == status


@pytest_twisted.ensureDeferred
async def test_a_room_message_is_read_by_each_member_and_its_edit_reaches_them(
        listening_relay, tmp_path):
    """alice's room message to bob and carol: after bob read it, her room history says
    read by 1 of 2 (status 'sent': carol's device does not have it yet); after carol read
    it too, 'read' by 2 of 2.  Her edit reaches bob as an edit of that mid in the room, and bob's reaction
    shows in her room history."""
    alice, bob, carol = await users(tmp_path, listening_relay.port, "alice", "bob", "carol")
    await ok(alice, "rooms", "create", "ops")
    for member in (bob, carol):
        await ok(member, "join", "ops")
    await ok(alice, "say", "ops", "standup in 5")
    await inbox(bob)

    async def mine():
        (line,) = [m for m in (await ok(alice, "history", "ops", "--json")).json_lines()
                   if m["type"] == "msg" and m["from"] == "alice"]
        return line

    line = await mine()
    assert (line["read_by"], line["members"], line["status"]) == (1, 2, "sent"), line
    await inbox(carol)
    line = await mine()
    assert (line["read_by"], line["delivered_to"], line["status"]) == (2, 2, "read"), line

    await ok(alice, "edit", line["mid"], "standup in 10")
    (edit,) = [m for m in await inbox(bob) if m["type"] == "edit"]
    assert (edit["room"], edit["target"], edit["text"]) == ("ops", line["mid"], "standup in 10")
    await ok(bob, "react", line["mid"], "👍")
    line = await mine()
    assert (line["text"], line["edited"], line["reactions"]) == (
        "standup in 10", True, {"👍": 1}), line
