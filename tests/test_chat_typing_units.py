"""The chat's typing notices without a screen or a socket (task.Clock): when it tells the
other side, and how long it says someone types."""

from twisted.internet import task

from securechat.client.chat_typing import (
    IDLE_AFTER, SHOWN_FOR, TYPING_EVERY, TypingSent, TypingShown)


def test_typing_sends_start_at_most_every_few_seconds_and_stop_when_idle_or_emptied():
    """Keys typed in a buffer send 'start' once, again after TYPING_EVERY seconds of more
    typing, 'stop' after IDLE_AFTER seconds without a key; emptying the line stops at
    once; a slash command being typed sends nothing; another buffer stops the first."""
    clock, sent = task.Clock(), []
    current = ["bob"]
    typing = TypingSent(clock, lambda state, buffer: sent.append((state, buffer)),
                        lambda: current[0])
    for text in ("h", "he", "hel"):
        typing.edited(text)
        clock.advance(1)
    assert sent == [("start", "bob")]
    clock.advance(TYPING_EVERY)
    typing.edited("hell")
    assert sent == [("start", "bob")] * 2
    clock.advance(IDLE_AFTER)
    assert sent[-1] == ("stop", "bob")
    typing.edited("again")
    typing.edited("")
    assert sent[-2:] == [("start", "bob"), ("stop", "bob")]
    typing.edited("/join ops")
    assert len(sent) == 5
    typing.edited("x")
    current[0] = "#ops"
    typing.edited("xy")
    assert sent[-3:] == [("start", "bob"), ("stop", "bob"), ("start", "#ops")]


def test_who_types_shows_until_stop_or_for_a_few_seconds():
    """'bob is typing…' shows in bob's conversation until his stop, or SHOWN_FOR seconds
    after his last notice; two members of a room typing show together; names are made
    safe for the terminal."""
    clock, redrawn = task.Clock(), []
    shown = TypingShown(clock, lambda: redrawn.append(True))
    shown.notice("bob", None, "start")
    assert shown.text("user", "bob") == "bob is typing…"
    shown.notice("bob", None, "stop")
    assert shown.text("user", "bob") == ""
    shown.notice("carol", "ops", "start")
    shown.notice("bob\x1b", "ops", "start")
    assert shown.text("room", "ops") == "bob^[, carol are typing…"
    clock.advance(SHOWN_FOR)
    assert shown.text("room", "ops") == "" and len(redrawn) == 6
