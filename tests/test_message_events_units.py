"""The per-message bookkeeping (securechat.client.events) on a real key store, without
sockets: who may change a message, what a receipt may say, how it is shown; and the key
store's step to schema 4."""

import types

from twisted.internet import defer, task

from securechat.client.events import MAX_REACTIONS, Events
from securechat.client.receipt_marks import status_text
from securechat.crypto.keystore import SCHEMA_VERSION, KeyStore

PASSWORD = "correct horse battery staple"


def events_of(tmp_path, me="alice", read_receipts=True):
    store = KeyStore.create(str(tmp_path / "keys"), PASSWORD, {"user": me})
    client = types.SimpleNamespace(
        store=store, user=me,
        settings=types.SimpleNamespace(send_read_receipts=read_receipts))
    return Events(client, task.Clock()), store


def change(kind, sender, target, room=None, **fields):
    return {"type": kind, "from": sender, "room": room,
            "inner": {"type": kind, "target": target, "ts": 1, **fields}}


def receipt(sender, kind, *mids):
    return {"type": "receipt", "from": sender, "room": None,
            "inner": {"type": "receipt", "kind": kind, "mids": list(mids), "ts": 1}}


def shown(events, mid, author, text="hello", room=None):
    return events.overlay({"type": "msg", "mid": mid, "from": author, "text": text,
                           "room": room})


MID, OTHER = "mid-of-bobs-message-1", "mid-of-alices-message"


def test_only_the_author_edits_or_deletes_and_a_reused_mid_changes_no_author(tmp_path):
    """bob's message: carol's edit and delete are refused (not applied), bob's edit is;
    a later message from carol with the same mid does not make her its author, and the
    overlay of her message does not take bob's edit; bob's delete removes its text from
    the stored history."""
    events, store = events_of(tmp_path)
    with store.transaction():
        store.add_message("envelope-of-bobs-1", {"type": "msg", "mid": MID, "from": "bob",
                                                 "room": None, "text": "lunch at 12?"})
        events.written(MID, "bob", "lunch at 12?", peer="bob",
                       envelope_id="envelope-of-bobs-1")
        assert not events.received(change("edit", "carol", MID, body="forged"))
        assert not events.received(change("delete", "carol", MID))
        events.written(MID, "carol", "me too", peer="carol")
        assert events.received(change("edit", "bob", MID, body="lunch at 1?"))
    assert shown(events, MID, "bob")["text"] == "lunch at 1?"
    assert shown(events, MID, "bob")["edited"] is True
    assert "edited" not in shown(events, MID, "carol", "me too")
    with store.transaction():
        assert events.received(change("delete", "bob", MID))
    assert shown(events, MID, "bob")["deleted"] is True and shown(events, MID, "bob")[
        "text"] is None
    assert [record["text"] for _, record in store.messages()] == [None]  # gone at rest too
    store.close()


def test_a_change_from_outside_the_conversation_or_of_an_unknown_message_is_ignored(tmp_path):
    """A reaction from carol to alice's 1:1 message with bob, one naming a room the
    message was not in, and one of a mid this device never stored are all ignored."""
    events, store = events_of(tmp_path)
    with store.transaction():
        events.written(OTHER, "alice", "hi", peer="bob")
        assert not events.received(change("reaction", "carol", OTHER, emoji="+1"))
        assert not events.received(change("reaction", "bob", OTHER, room="ops", emoji="+1"))
        assert not events.received(change("reaction", "bob", "never-stored-mid-0", emoji="+1"))
        assert events.received(change("reaction", "bob", OTHER, emoji="+1"))
    assert shown(events, OTHER, "alice")["reactions"] == {"+1": 1}
    store.close()


def test_reactions_count_each_reader_once_and_stay_bounded(tmp_path):
    """The same reaction twice counts once, a removal takes it back, and a message keeps
    at most MAX_REACTIONS different ones (more are ignored, not stored)."""
    events, store = events_of(tmp_path)
    with store.transaction():
        events.written(OTHER, "alice", "hi", room="ops", members=["bob", "carol"])
        for sender in ("bob", "bob", "carol"):
            events.received(change("reaction", sender, OTHER, room="ops", emoji="+1"))
        events.received(change("reaction", "carol", OTHER, room="ops", emoji="+1",
                               remove=True))
        for n in range(MAX_REACTIONS + 5):
            events.received(change("reaction", "bob", OTHER, room="ops", emoji=f"e{n}"))
    reactions = shown(events, OTHER, "alice", room="ops")["reactions"]
    assert reactions["+1"] == 1 and len(reactions) == MAX_REACTIONS
    store.close()


def test_receipts_count_per_reader_and_read_ones_are_ignored_when_off(tmp_path):
    """A room message's receipts say 'read by 1 of 2' once one member read it; a receipt
    from someone the message did not go to, or for someone else's message, is ignored;
    with send_read_receipts off a read receipt changes nothing."""
    events, store = events_of(tmp_path)
    heard = []
    events.listeners.append(lambda mid, fields: heard.append((mid, fields["status"])))
    with store.transaction():
        events.written(OTHER, "alice", "hi", room="ops", members=["bob", "carol"])
        events.written(MID, "bob", "yo", room="ops")
        for sender, kind in (("bob", "delivered"), ("carol", "delivered"), ("bob", "read"),
                             ("mallory", "read")):
            events.received(receipt(sender, kind, OTHER, MID))
    fields = shown(events, OTHER, "alice", room="ops")
    assert (fields["status"], fields["delivered_to"], fields["read_by"], fields["members"]) == (
        "delivered", 2, 1, 2)
    assert status_text(fields) == "✓✓ read by 1 of 2"
    assert "status" not in shown(events, MID, "bob", room="ops")
    assert heard == [(OTHER, "sent"), (OTHER, "delivered"), (OTHER, "delivered")]
    store.close()

    quiet, store = events_of(tmp_path / "quiet", read_receipts=False)
    with store.transaction():
        quiet.written(OTHER, "alice", "hi", peer="bob")
        quiet.received(receipt("bob", "read", OTHER))
    assert shown(quiet, OTHER, "alice")["status"] == "sent"
    store.close()


def test_receipts_are_owed_for_messages_only_batched_per_sender(tmp_path):
    """Owed receipts: one per sender after the delay, naming every message of theirs;
    none for own messages, changes, undecryptable ones or the everyone room, and no read
    receipts with send_read_receipts off."""
    events, store = events_of(tmp_path)
    added = []
    events._client.outbox = types.SimpleNamespace(
        add=lambda payload, to: added.append((to, payload["kind"], payload["mids"])) or "e")
    events._client.deliver = lambda entry: defer.succeed(1)
    records = [{"type": "msg", "mid": f"message-{n:04d}", "from": sender, "room": room,
                "error": error}
               for n, (sender, room, error) in enumerate([
                   ("bob", None, None), ("bob", "ops", None), ("carol", None, None),
                   ("alice", None, None), ("bob", "everyone", None), ("bob", None, "bad")])]
    events.owe("delivered", records + [{"type": "edit", "mid": "an-edit-0001", "from": "bob"}])
    events._clock.advance(1)
    assert sorted(added) == [("bob", "delivered", ["message-0000", "message-0001"]),
                             ("carol", "delivered", ["message-0002"])]
    store.close()
    quiet, store = events_of(tmp_path / "quiet", read_receipts=False)
    quiet.owe("read", records)
    assert quiet._owed == {}
    store.close()


def test_a_store_of_schema_2_opens_at_schema_4_with_the_events_table(tmp_path):
    """A key store written before schema 4 (no message_events table) opens, gains the
    table and says schema 4."""
    directory = str(tmp_path / "keys")
    store = KeyStore.create(directory, PASSWORD, {"user": "alice"})
    store._db.execute("DROP TABLE message_events")
    with store.transaction():
        store.set_meta("schema_version", "2")
    store.close()
    store = KeyStore.open(directory, PASSWORD)
    try:
        assert store.meta("schema_version") == str(SCHEMA_VERSION) == "4"
        with store.transaction():
            store.put_message_events(MID, {"author": "bob"})
        assert store.message_events(MID) == {"author": "bob"}
    finally:
        store.close()


def test_the_switches_default_to_yes_and_a_bad_value_is_named(tmp_path):
    """send_read_receipts and send_typing are on unless the ini says no; a value that is
    neither yes nor no stops loading with an error naming the file, key and value."""
    import pytest

    from securechat.client import settings as client_settings
    from securechat.config import ConfigError

    def load(*lines):
        path = tmp_path / "client.ini"
        path.write_text("\n".join(["[client]", "server = relay.example:6697",
                                   "username = alice", *lines]) + "\n")
        return client_settings.load(str(path))

    loaded = load()
    assert (loaded.send_read_receipts, loaded.send_typing) == (True, True)
    loaded = load("send_read_receipts = no", "send_typing = off")
    assert (loaded.send_read_receipts, loaded.send_typing) == (False, False)
    with pytest.raises(ConfigError) as refused:
        load("send_typing = sometimes")
    assert "[client] send_typing = 'sometimes': must be yes or no" in str(refused.value)


def test_changes_replies_and_marks_print_safely_in_the_terminal():
    """inbox's text lines: an edit, a delete and a reaction say what they changed; a reply
    shows its context; an edited message with reactions is marked, a deleted one shows
    neither its edit nor its reactions; every text from the
    network (an emoji, a quoted excerpt, a target id) is escaped (guarantee 8); receipt
    marks are the chat's only."""
    from securechat.client.render import format_message

    base = {"id": "e1", "from": "bob", "from_dev": "D", "room": None, "verified": True,
            "sent_at": "2026-12-07T06:00:00.000Z", "error": None, "warning": None}
    lines = [format_message({**base, **fields}) for fields in (
        {"type": "edit", "target": "m1", "text": "lunch at 1?"},
        {"type": "delete", "target": "m1"},
        {"type": "reaction", "target": "m1\x1b[2J", "emoji": "\x1b[31m", "remove": False},
        {"type": "msg", "text": "yes", "reply_to": "m1",
         "in_reply_to": {"from": "alice", "text": "lunch?\x07"}},
        {"type": "msg", "text": "see you", "edited": True, "reactions": {"+1": 2},
         "status": "read"},
        {"type": "msg", "text": None, "deleted": True, "edited": True,
         "reactions": {"+1": 1}})]
    head = "[2026-12-07T06:00:00.000Z] bob (verified)"
    assert lines == [
        f"{head} edited m1: lunch at 1?", f"{head} deleted m1",
        f"{head} reacted ^[[31m to m1^[[2J", f"{head}: (↪ alice: lunch?^G) yes",
        f"{head}: see you (edited) [+1 2]", f"{head}: (deleted)"]


def test_a_file_message_is_never_edited_and_its_delete_drops_its_key(tmp_path):
    """bob's file message: his own edit of it (crafted past the CLI) is refused and not
    applied; his delete drops the file from the stored history and its key from the
    received files; a reply quotes it as '[file] NAME'."""
    events, store = events_of(tmp_path)
    summary = {"id": "F" * 22, "name": "a.txt", "size": 3}
    with store.transaction():
        store.add_message("envelope-of-file", {"type": "file", "mid": MID, "from": "bob",
                                               "room": None, "text": None, "file": summary})
        store.put_received_file(summary["id"], {**summary, "key": "k"})
        events.written(MID, "bob", None, peer="bob", envelope_id="envelope-of-file",
                       file=summary)
        assert not events.received(change("edit", "bob", MID, body="a text now"))
    reply = events.overlay({"type": "msg", "mid": OTHER, "from": "alice", "reply_to": MID})
    assert reply["in_reply_to"] == {"from": "bob", "text": "[file] a.txt"}
    with store.transaction():
        assert events.received(change("delete", "bob", MID))
    (_, kept), = store.messages()
    assert "file" not in kept and store.received_files() == []
    assert events.overlay({**kept, "mid": MID})["deleted"] is True
    store.close()
