"""The chat's parts without a terminal or a socket: its lines, its buffers, its input line,
and the command layer's parser that never exits."""

import os
import time

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from securechat.client import chat_buffers
from securechat.client.chat_buffers import Buffers
from securechat.client.chat_lines import local_time, message_lines, notice, own_line
from securechat.client.chat_view import InputLine
from securechat.client.commands import ParseStopped, QuietParser, build_parser, request_for
from securechat.client.daemon_client import DaemonError
from securechat.client.rpc import INVALID_PARAMS, METHOD_NOT_FOUND


@pytest.fixture
def utc_plus_two():
    """This process's local time zone is two hours east of UTC for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-2"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def record(text, sender="bob", verified=False, **extra):
    return {"id": extra.pop("id", text), "type": "msg", "from": sender, "from_device": "D",
            "room": None, "text": text, "sent_at": "2026-12-06T23:30:00.000Z",
            "verified": verified, "error": None, "warning": None, **extra}


def test_times_are_local_hh_mm_and_a_new_day_gets_a_separator(utc_plus_two):
    """23:30 UTC shows as 01:30 the next day two hours east, and the buffer puts the
    full date before the first line and where the day changes, nowhere else."""
    assert f"{local_time('2026-12-06T23:30:00.000Z'):%H:%M}" == "01:30"
    buffer = Buffers().status
    for sent_at in ("2026-12-06T21:00:00.000Z", "2026-12-06T21:30:00.000Z",
                    "2026-12-06T23:30:00.000Z"):
        buffer.add(message_lines(record(sent_at, sent_at=sent_at), "alice")[0])
    assert [buffer.day_before(i) for i in range(3)] == [
        "--- Sunday 6 December 2026 ---", None, "--- Monday 7 December 2026 ---"]


def test_lines_mark_unverified_senders_actions_and_escape_network_text():
    """An unverified sender has a "?", /me is an action, own lines are "own", and control
    characters in a name or a text are visible escapes; a command's output too."""
    (line,) = message_lines(record("hi\x1b[31m\u202e\nsecond"), "alice")
    assert (line.mark, line.mark_style) == ("<bob?>", "unverified")
    assert line.body == "hi^[[31m<U+202E>\n  | second"
    (action,) = message_lines(record("/me waves", verified=True), "alice")
    assert (action.mark, action.body, action.mark_style) == ("* bob", "waves", "verified")
    assert own_line("alice", "x", queued=True).body == "x (queued: sent after the reconnect)"
    assert own_line("alice", "x").mark_style == "own"
    assert notice("members:\nbob\x07: D").body == "members:\nbob^G: D"
    warned = message_lines(record("t", warning="bob's key changed\x1b"), "alice")
    assert [(l.mark, l.body) for l in warned] == [("!!", "bob's key changed^["), ("<bob?>", "t")]


def test_a_verification_request_from_the_inbox_reads_as_an_invitation_to_verify():
    """A request the daemon could not announce live (no chat was open) shows as a warning
    naming the command, not as an empty message from its sender."""
    asked = {**record(""), "type": "verify_request", "from": "bob\x1b"}
    del asked["text"]
    (line,) = message_lines(asked, "alice")
    assert (line.style, line.body) == ("warning", "bob^[ asks you to verify: /verify bob^[")


def test_status_line_shows_state_current_buffer_and_unread_counts():
    """``[connected] #ops | bob(2) #dev(5)``; switching to a buffer clears its count."""
    buffers = Buffers()
    ops, _ = buffers.open("room", "ops")
    bob, _ = buffers.open("user", "bob")
    dev, _ = buffers.open("room", "dev")
    buffers.select(ops)
    for buffer, count in ((bob, 2), (dev, 5), (ops, 3)):
        for _ in range(count):
            buffers.added(buffer, counts=True)
    buffers.added(dev, counts=False)  # a notice is not unread
    assert buffers.status_line("connected") == "[connected] #ops | bob(2) #dev(5)"
    buffers.select(buffers.number(3))
    assert buffers.status_line("disconnected") == "[disconnected] bob | #dev(5)"
    assert buffers.title_line("alice") == "securechat alice | 1:(status) 2:#ops 3:bob 4:#dev"


def test_a_buffer_keeps_a_message_once_puts_history_first_and_stays_bounded(monkeypatch):
    """The same message from history and live shows once, history goes before the lines
    shown, and a buffer never holds more than MAX_LINES plus one batch."""
    monkeypatch.setattr(chat_buffers, "MAX_LINES", 10)
    monkeypatch.setattr(chat_buffers, "TRIM_BATCH", 5)
    buffer = Buffers().status
    assert buffer.add(message_lines(record("live"), "alice")[0])
    assert not buffer.add(message_lines(record("live"), "alice")[0])
    assert buffer.add_history([message_lines(record(t), "alice")[0] for t in ("old", "live")])
    assert [line.body for line in buffer.lines] == ["old", "live"]
    for n in range(100):
        buffer.add(message_lines(record(f"m{n}"), "alice")[0])
        assert len(buffer.lines) <= 15
    assert buffer.lines[-1].body == "m99"


def keys(widget, *pressed):
    for key in pressed:
        widget.keypress((60,), key)


def test_the_input_line_edits_like_a_shell_and_recalls_typed_lines():
    """Ctrl-A/E/U/W, Home/End and Backspace edit; Enter hands the line over; Up/Down go
    through the typed lines and back to the draft; ask() borrows the line (masked) and
    gives the half-typed line back."""
    entered = []
    line = InputLine(entered.append)
    keys(line, *"hello big world")
    keys(line, "ctrl w")
    assert line.edit_text == "hello big "
    keys(line, "ctrl a", "x", "ctrl e", "y", "home", "backspace", "end", "backspace")
    assert line.edit_text == "xhello big "
    keys(line, "left", "left", "ctrl u")
    assert line.edit_text == "g "
    keys(line, "ctrl e", "ctrl u", *"first", "enter", *"second", "enter", *"draft")
    assert entered == ["first", "second"] and line.edit_text == "draft"
    keys(line, "up")
    assert line.edit_text == "second"
    keys(line, "up", "up")
    assert line.edit_text == "first"
    keys(line, "down", "down")
    assert line.edit_text == "draft"
    answers = []
    line.ask("password: ", masked=True).addCallback(answers.append)
    keys(line, *"s3cret")
    assert line.get_text()[0] == "password: ******"
    keys(line, "enter")
    assert answers == ["s3cret"] and line.edit_text == "draft" and entered == ["first", "second"]
    keys(line, "up")
    assert line.edit_text == "second"  # the password is not among the typed lines


def test_the_quiet_parser_raises_what_argparse_would_print_and_exit_with():
    """A usage error and --help come back as ParseStopped (never SystemExit), and a room
    password comes from the caller instead of a prompt."""
    parser = build_parser(QuietParser)
    with pytest.raises(ParseStopped) as error:
        parser.parse_args(["invite", "ops"])
    assert error.value.status == 2 and "required: USER" in str(error.value)
    with pytest.raises(ParseStopped) as shown:
        parser.parse_args(["join", "--help"])
    assert shown.value.status == 0 and "usage: securechat join" in str(shown.value)
    args = parser.parse_args(["join", "ops", "--password"])
    assert request_for(args, lambda wanted: "pw" if wanted else None) == (
        "join", {"room": "ops", "password": "pw"})
    assert parser.parse_args(["send", "bob", "--", "-1 degrees"]).text == ["-1 degrees"]


def test_the_chat_imports_the_command_layer_and_never_the_cli():
    """No chat module imports cli.py (the chat is not a second CLI: both use commands.py
    and render.py), and neither the CLI nor the command layer imports the chat at load."""
    from tests.test_layers import ROOT, imported_names

    client = ROOT / "securechat" / "client"
    for path in client.glob("chat*.py"):
        assert "securechat.client.cli" not in set(imported_names(path)), path
    assert "securechat.client.commands" in set(imported_names(client / "chat.py"))
    for name in ("cli.py", "commands.py"):
        assert not any(n.startswith("securechat.client.chat")
                       for n in imported_names(client / name)), name


class RecordedScreen:
    """What the chat asks its screen to do, kept (the real one is in the screen tests)."""

    def __init__(self, on_enter, on_key):
        self.status = None

    def bars(self, title, status):
        self.status = status

    def show(self, buffer):
        pass

    def append(self, buffer, count):
        pass

    def redraw(self, buffer, indexes):
        pass


def test_the_chat_says_each_state_change_once_and_shows_verification_requests():
    """Reconnect attempts (``connecting``, ``disconnected`` with a new delay) add no line;
    each change of state adds one notice and sets the status line; a verification
    request from bob tells how to answer it."""
    from securechat.client.chat import Chat

    chat = Chat(daemon=None, me="alice", view_factory=RecordedScreen)
    chat.state = "connected"
    for state, detail in (("disconnected", "lost; next attempt in 0.5 s"),
                          ("connecting", "relay:6697"),
                          ("disconnected", "refused; next attempt in 1.0 s"),
                          ("connecting", "relay:6697"), ("connected", "relay:6697")):
        chat.notified("state", {"state": state, "detail": detail})
    assert [line.body for line in chat.buffers.status.lines] == [
        "disconnected: lost; next attempt in 0.5 s", "connected: relay:6697"]
    assert chat.view.status == "[connected] (status)"
    chat.notified("verify.request", {"user": "bob", "device": "DEV\x1b"})
    assert chat.buffers.status.lines[-1].body == (
        "bob (device DEV^[) asks you to verify: /verify bob")


def fired(coroutine):
    """The result of a coroutine that awaits only fired Deferreds (no reactor needed)."""
    outcome = []
    defer.ensureDeferred(coroutine).addBoth(outcome.append)
    (result,) = outcome
    if isinstance(result, Failure):
        result.raiseException()
    return result


class AnsweringDaemon:
    """A daemon connection that answers each method with a fixed result or error."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def call(self, method, **params):
        self.calls.append((method, params))
        answer = self.answers[method]
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)


def test_a_conversation_opens_with_its_recent_history_own_lines_included():
    """/query bob asks the daemon for bob's last 50 messages ("history" {"user", "last"})
    and shows them, the ones this person sent as own lines."""
    from securechat.client.chat import Chat

    mine = {**record("mine", sender="alice"), "outgoing": True}
    daemon = AnsweringDaemon({"history": {"messages": [record("old"), mine], "more": False}})
    chat = Chat(daemon=daemon, me="alice", view_factory=RecordedScreen)
    buffer = fired(chat.open("Bob", switch=True))
    assert daemon.calls == [("history", {"user": "bob", "last": 50})]
    assert [(l.mark, l.mark_style, l.body) for l in buffer.lines] == [
        ("<bob?>", "unverified", "old"), ("<alice>", "own", "mine")]
    assert chat.view.status == "[connecting] bob"


@pytest.mark.parametrize("code", [METHOD_NOT_FOUND, INVALID_PARAMS])
def test_a_daemon_without_one_to_one_history_opens_an_empty_conversation(code):
    """A daemon that has no 1:1 "history" (unknown method, or room-only params) gives an
    empty buffer and no error line."""
    from securechat.client.chat import Chat

    daemon = AnsweringDaemon({"history": DaemonError("no such method", 2, code)})
    chat = Chat(daemon=daemon, me="alice", view_factory=RecordedScreen)
    buffer = fired(chat.open("bob", switch=True))
    assert buffer.lines == [] and chat.buffers.status.lines == []


def test_slash_file_sends_to_the_current_buffers_person_or_room():
    """/file PATH in bob's buffer is send-file to bob, in #ops say-file to ops (the path
    made absolute for the daemon); in the status buffer it says how to use it."""
    from securechat.client.chat import Chat

    sent = {"id": "m", "file": {"id": "F" * 22, "name": "a.txt", "size": 3}}
    daemon = AnsweringDaemon({"send-file": sent, "say-file": sent})
    chat = Chat(daemon=daemon, me="alice", view_factory=RecordedScreen)
    fired(chat._slash.run("/file a.txt"))
    assert daemon.calls == [] and "usage: /file PATH" in chat.buffers.status.lines[-1].body
    chat._opened("user", "bob", switch=True)
    fired(chat._slash.run("/file a.txt"))
    chat._opened("room", "ops", switch=True)
    fired(chat._slash.run("/file 'my notes.txt'"))
    here = os.getcwd()
    assert daemon.calls == [
        ("send-file", {"path": os.path.join(here, "a.txt"), "wait": 0, "user": "bob"}),
        ("say-file", {"path": os.path.join(here, "my notes.txt"), "wait": 0, "room": "ops"})]


def test_a_received_file_shows_its_escaped_name_size_and_how_to_fetch_it():
    """A file message's line: [file], its name through render.safe (an escape sequence in
    it shown, not run), its size and the command that fetches it."""
    line, = message_lines(record(None, type="file", file={
        "id": "F" * 22, "name": "evil\x1b[2J.txt", "size": 1536}), "alice")
    assert line.body == f"[file] evil^[[2J.txt (1.5 KiB): securechat files get {'F' * 22}"


class PendingDaemon(AnsweringDaemon):
    """Answers as AnsweringDaemon, but ``send-file`` only when the test fires ``sending``."""

    def __init__(self, answers):
        super().__init__(answers)
        self.sending = defer.Deferred()

    def call(self, method, **params):
        if method == "send-file":
            self.calls.append((method, params))
            return self.sending
        return super().call(method, **params)


def test_slash_file_shows_its_progress_then_its_own_line_whose_marks_follow_receipts():
    """While /file uploads, the status line shows how far it got (the daemon's
    files.progress); once sent, the status line is clear, the file's own line shows
    '[file] a.txt (3 B) ✓' (no 'sent ... as file' notice besides), and a read receipt of
    its mid turns the mark to '✓✓ read'."""
    from securechat.client.chat import Chat

    daemon = PendingDaemon({})
    chat = Chat(daemon=daemon, me="alice", view_factory=RecordedScreen)
    buffer, _ = chat._opened("user", "bob", switch=True)
    sending = defer.ensureDeferred(chat._slash.run("/file a.txt"))
    chat.notified("files.progress", {"done": 5 * 1024 * 1024, "total": 20 * 1024 * 1024})
    assert chat.view.status == "[connecting] bob | file 25% 5.0/20.0 MiB"
    chat.notified("files.progress", {"done": None, "total": 20 * 1024 * 1024})
    assert chat.view.status == "[connecting] bob"
    daemon.sending.callback({"id": "mid-of-file", "file": {"id": "F" * 22, "name": "a.txt",
                                                           "size": 3}})
    assert sending.called
    assert [(l.mark, l.body) for l in buffer.lines] == [("<alice>", "[file] a.txt (3 B) ✓")]
    chat.notified("receipt", {"mid": "mid-of-file", "status": "read"})
    assert buffer.lines[-1].body == "[file] a.txt (3 B) ✓✓ read"


def test_a_deleted_file_shows_deleted_not_how_to_fetch_it():
    """A file message its author deleted reads '(deleted)' in the chat and in a history
    line: never its name, its 'files get' or the reactions it had."""
    from securechat.client.render import format_message

    deleted = record(None, type="file", deleted=True, reactions={"+1": 1},
                     file={"id": "F" * 22, "name": "a.txt", "size": 3})
    (line,) = message_lines(deleted, "alice")
    assert line.body == "(deleted)"
    assert format_message({**deleted, "from_dev": "D"}).endswith("bob (unverified): (deleted)")
