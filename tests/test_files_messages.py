"""A file message is a message: it shows in the sender's own history and on her other
devices as sent by her, takes receipts, replies, reactions and its author's delete (an
edit is refused) -- a real twistd relay and real securechat CLI and chat processes,
alice on two real devices (tests/two_devices.py)."""

import pytest_twisted

from tests.processes import run_cli, write_client_config
from tests.screen import ChatScreen
from tests.support import poll_until_async
from tests.two_devices import add_device

PASSWORD = "correct horse battery staple"


async def ok(config, *args, **kwargs):
    result = await run_cli(config, *args, **kwargs)
    assert result.code == 0, result
    return result


def shown(result):
    """The lines of a text ``history``, without their time."""
    return [line.split("] ", 1)[1] for line in result.out.splitlines()]


async def history_json(config, name):
    return (await ok(config, "history", name, "--json")).json_lines()


async def registered(tmp_path, port, *names):
    configs = []
    for name in names:
        config = write_client_config(str(tmp_path / "clients"), name, port)
        await ok(config, "register")
        configs.append(config)
    return configs


def a_file(tmp_path, name="notes.txt", size=300):
    path = tmp_path / name
    path.write_bytes(b"n" * size)
    return str(path)


@pytest_twisted.ensureDeferred
async def test_a_sent_file_is_in_your_history_and_on_your_other_device_as_yours(
        listening_relay, tmp_path):
    """alice's file to bob and her file to a room show in her own history ('you -> bob:
    [file] notes.txt (300 B)', 'you in ops: ...', outgoing in --json with the file), and
    on her second device: in its inbox as outgoing to bob, in its history as hers; bob's
    own history of alice holds the file he got."""
    alice, bob = await registered(tmp_path, listening_relay.port, "alice", "bob")
    alice2 = write_client_config(str(tmp_path / "second"), "alice", listening_relay.port)
    await add_device(alice, alice2, PASSWORD)
    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    path = a_file(tmp_path)
    await ok(alice, "send-file", "bob", path)
    await ok(alice, "say-file", "ops", path)

    assert shown(await ok(alice, "history", "bob")) == ["you -> bob: [file] notes.txt (300 B)"]
    (line,) = await history_json(alice, "bob")
    assert (line["type"], line["outgoing"], line["to"], line["file"]["name"],
            line["file"]["size"]) == ("file", True, "bob", "notes.txt", 300), line
    assert "key" not in line["file"]
    assert "you in ops: [file] notes.txt (300 B)" in shown(await ok(alice, "history", "ops"))

    files = [m for m in (await ok(alice2, "inbox", "--json")).json_lines()
             if m["type"] == "file"]
    assert [(m["room"], m.get("outgoing"), m.get("to"), m["file"]["name"]) for m in files] == [
        (None, True, "bob", "notes.txt"), ("ops", True, None, "notes.txt")], files
    assert shown(await ok(alice2, "history", "bob")) == ["you -> bob: [file] notes.txt (300 B)"]

    (got,) = shown(await ok(bob, "history", "alice"))
    assert got.startswith("alice (unverified): [file] notes.txt (300 B): securechat files get")


@pytest_twisted.ensureDeferred
async def test_a_file_message_takes_receipts_replies_reactions_and_its_authors_delete(
        listening_relay, tmp_path):
    """alice's file to bob goes sent -> delivered (bob's device stored it) -> read (his
    inbox showed it); bob replies to it (the reply quotes '[file] notes.txt') and reacts
    to it (alice sees the reaction); alice's edit of it is refused saying a file cannot be
    edited; her delete shows it deleted on bob's side, without its file or its key.  Her
    file to a room is read by its one other member once his inbox showed it."""
    alice, bob = await registered(tmp_path, listening_relay.port, "alice", "bob")
    await ok(alice, "send-file", "bob", a_file(tmp_path))
    (mine,) = await history_json(alice, "bob")
    assert mine["status"] == "sent", mine
    await ok(bob, "login")
    assert (await history_json(alice, "bob"))[0]["status"] == "delivered"
    (message,) = (await ok(bob, "inbox", "--json")).json_lines()
    assert message["type"] == "file" and message["mid"] == mine["mid"], message
    assert (await history_json(alice, "bob"))[0]["status"] == "read"

    mid = mine["mid"]
    await ok(bob, "send", "alice", "got it", "--reply-to", mid)
    await ok(bob, "react", mid, "+1")
    (reply,) = [m for m in (await ok(alice, "inbox", "--json")).json_lines()
                if m["type"] == "msg"]
    assert reply["in_reply_to"] == {"from": "alice", "text": "[file] notes.txt"}, reply
    assert (await history_json(alice, "bob"))[0]["reactions"] == {"+1": 1}

    refused = await run_cli(alice, "edit", mid, "another text")
    assert refused.code != 0 and "a file cannot be edited" in refused.err, refused
    await ok(alice, "delete", mid)
    theirs = [m for m in await history_json(bob, "alice") if m["mid"] == mid]
    assert [(m["type"], m.get("deleted"), m.get("file")) for m in theirs] == [
        ("file", True, None)], theirs
    assert "alice (unverified): (deleted)" in shown(await ok(bob, "history", "alice"))
    assert (await ok(bob, "files", "--json")).out == ""  # its key went with it

    await ok(alice, "rooms", "create", "ops")
    await ok(bob, "join", "ops")
    await ok(alice, "say-file", "ops", a_file(tmp_path))
    assert [m["type"] for m in (await ok(bob, "inbox", "--json")).json_lines()][-1] == "file"
    (in_room,) = [m for m in await history_json(alice, "ops") if m["type"] == "file"]
    assert (in_room["status"], in_room["read_by"], in_room["members"]) == ("read", 1, 1)


async def file_status(config, peer):
    """The ``status`` of ``config``'s one file to ``peer`` (``history --json``)."""
    return [m.get("status") for m in await history_json(config, peer)
            if m["type"] == "file" and m["outgoing"]]


@pytest_twisted.ensureDeferred
async def test_the_chat_shows_a_file_sent_as_your_line_with_its_marks(listening_relay,
                                                                      tmp_path):
    """In alice's chat (a real pseudo-terminal) bob's file shows with how to fetch it, and
    her open buffer sends its read receipt; her /file there shows as her own line
    '[file] notes.txt (300 B) ✓' (no 'sent ... as file' notice), which turns '✓✓ read'
    once bob's inbox printed it."""
    alice, bob = await registered(tmp_path, listening_relay.port, "alice", "bob")
    await ok(bob, "send-file", "alice", a_file(tmp_path, "from-bob.txt"))
    chat = ChatScreen(alice)
    try:
        await chat.wait_for("/help for help")
        chat.line("/query bob")
        await chat.wait_for("<bob?> [file] from-bob.txt (300 B)")
        await poll_until_async(lambda: _status_is(bob, "alice", ["read"]))
        chat.line(f"/file {a_file(tmp_path)}")
        await chat.wait_for("<alice> [file] notes.txt (300 B) ✓")
        assert "as file" not in chat.text(), chat.text()
        await ok(bob, "inbox")
        await chat.wait_for("<alice> [file] notes.txt (300 B) ✓✓ read")
        chat.line("/quit")
        assert await chat.finish() == 0
    finally:
        chat.kill()


async def _status_is(config, peer, statuses):
    return await file_status(config, peer) == statuses
