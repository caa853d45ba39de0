"""What reaches the terminal (securechat.client.render): escapes and marked continuation lines."""

import json
import sys
import unicodedata

from securechat.client.render import CONTINUATION, format_message, message_json, safe

FORGED = ("see you\n[2026-12-06T17:30:00.000Z] alice (verified): "
          "new deploy key is in /tmp/key")


def message(text, sender="mallory", verified=False, **extra):
    return {"id": "e1", "type": "msg", "from": sender, "from_dev": "DEV", "room": None,
            "sent_at": "2026-12-06T17:29:00.000Z", "text": text, "verified": verified,
            "warning": None, "error": None, **extra}


def headers(output):
    return [line for line in output.split("\n") if line.startswith("[")]


def test_the_forged_verified_line_stays_a_marked_part_of_its_message():
    """The issue's forged line shows as a continuation of mallory's unverified message,
    not as a line of its own from a verified alice."""
    shown = format_message(message(FORGED))
    assert headers(shown) == ["[2026-12-06T17:29:00.000Z] mallory (unverified): see you"]
    assert shown.split("\n")[1] == (
        "  | [2026-12-06T17:30:00.000Z] alice (verified): new deploy key is in /tmp/key")


def test_every_line_after_the_first_is_marked_whatever_breaks_it():
    """LF and CR LF start marked lines; nothing else (VT, FF, NEL, U+2028/9) breaks a line."""
    shown = safe("a\nb\r\nc\x0bd\x0ce\x85f\u2028g\u2029h", lines=True)
    assert shown == "a" + CONTINUATION + "b" + CONTINUATION + \
        "c^Kd^Le<U+0085>f<U+2028>g<U+2029>h"


def test_ansi_colour_is_shown_not_obeyed():
    """An SGR colour sequence reaches the terminal as visible text without its ESC."""
    shown = format_message(message("\x1b[31mred alert\x1b[0m"))
    assert "\x1b" not in shown and "^[[31mred alert^[[0m" in shown


def test_an_osc_window_title_is_shown_not_obeyed():
    """An OSC sequence (window title, hyperlink) loses its ESC and BEL/ST terminators."""
    assert safe("\x1b]0;you are root\x07x", lines=True) == "^[]0;you are root^Gx"
    assert safe("\x1b]8;;https://evil\x1b\\click\x1b]8;;\x1b\\", lines=True) == \
        "^[]8;;https://evil^[\\click^[]8;;^[\\"


def test_bidi_controls_are_escaped_visibly():
    """U+202E (right-to-left override) and every other bidi control show as <U+XXXX>."""
    assert safe("invoice_\u202efdp.exe", lines=True) == "invoice_<U+202E>fdp.exe"
    bidi = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
    for code in bidi:
        assert safe(f"a{chr(code)}b", lines=True) == f"a<U+{code:04X}>b"
        assert safe(f"a{chr(code)}b") == f"a<U+{code:04X}>b"


def test_a_lone_carriage_return_cannot_overwrite_the_line():
    """A lone CR (which would return to the start of the line and overwrite the header)
    is shown as ^M, in a message and in a name."""
    shown = format_message(message("ok\r[2026-12-06T17:30:00.000Z] alice (verified): hi"))
    assert "\r" not in shown and "ok^M[2026" in shown and len(headers(shown)) == 1
    assert safe("alice\r") == "alice^M"


def test_every_c0_and_c1_control_and_del_is_escaped():
    """No C0 control (but the line feed that starts a marked line), DEL or C1 control
    reaches the output: C0 and DEL in caret notation, C1 as <U+XXXX>."""
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        if code in (0x09, 0x0A):
            continue
        expected = {0x7F: "^?"}.get(code, f"^{chr(code + 0x40)}" if code < 0x20
                                    else f"<U+{code:04X}>")
        assert safe(chr(code), lines=True) == expected, hex(code)
        assert safe(chr(code)) == expected, hex(code)
    assert safe("\x1b\x07\x08\x00") == "^[^G^H^@"


def test_nothing_hidden_survives_in_any_text():
    """Over every code point of the BMP and the tag block: a name comes out printable on one
    line, and message text keeps no control, format or separator character but the
    joiners (ZWJ, ZWNJ), and no line break but a marked one."""
    everything = "".join(chr(c) for c in [*range(0xD800), *range(0xE000, 0x10000),
                                          *range(0xE0000, 0xE0080)])
    assert safe(everything).isprintable()
    text = safe(everything, lines=True)
    lines = text.split(CONTINUATION)
    assert len(lines) == 2  # the one line feed
    left = {c for c in "".join(lines)
            if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")}
    assert left == {"\u200c", "\u200d"}


def test_ordinary_text_emoji_and_other_scripts_are_unchanged():
    """Text people write (emoji with joiners, skin tones and flags, scripts that need ZWJ
    and ZWNJ, CJK and its wide space, combining marks, no-break spaces) is shown as is."""
    samples = [
        "meet at noon, ok? (room 4) 50% #ops @bob ~/notes [draft] <tag> a|b ^_^",
        "family 👨\u200d👩\u200d👧\u200d👦, thumbs 👍🏽, heart ❤\ufe0f, flags 🇫🇷🇯🇵 🏴\U000E0067"
        "\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F",
        "Привет, мир", "Γειά σου κόσμε", "שלום עולם", "مرحبا بالعالم",
        "می\u200cخواهم",  # Persian with ZWNJ
        "क्\u200dष नमस्ते दुनिया", "こんにちは\u3000世界", "안녕하세요 세계", "你好，世界",
        "สวัสดีชาวโลก", "Ꭳ ᏣᎳᎩ", "zalgo ȩ̸͔", "prix\u00a0: 10\u202f€",
    ]
    for text in samples:
        assert safe(text, lines=True) == text, text
        assert format_message(message(text)).endswith(": " + text)


def test_a_tab_in_a_message_is_spaces_and_in_a_name_escaped():
    """A tab moves to the next tab stop as spaces in message text; in a name it is ^I."""
    assert safe("a\tb", lines=True) == "a" + " " * 7 + "b"
    assert safe("alice\t(verified)") == "alice^I(verified)"


def test_names_and_reasons_stay_on_one_line_with_nothing_hidden():
    """A name or a relay reason cannot break the line or hide characters (ZWJ, no-break
    space and zero-width space included, which could make a name pass for another)."""
    assert safe("alice\n[x] bob (verified): hi") == "alice^J[x] bob (verified): hi"
    assert safe("ali\u200dce\u00a0\u200b") == "ali<U+200D>ce<U+00A0><U+200B>"
    shown = format_message(message("hi", sender="bob\n[t] alice", room="ops\x1b[2J",
                                   warning="!! changed\rkey"))
    assert shown.split("\n") == [
        "!! changed^Mkey", "[2026-12-06T17:29:00.000Z] bob^J[t] alice in ops^[[2J (unverified): hi"]


def test_a_lone_surrogate_is_escaped_and_the_output_encodes():
    """A lone surrogate (JSON allows it, UTF-8 does not) is escaped instead of crashing
    the print; --json writes its \\u escape so the text reads back exactly."""
    assert safe("a\ud800b", lines=True) == "a<U+D800>b"
    format_message(message("a\udfffb", sender="x\ud800")).encode("utf-8")
    record = message("a\ud800b \x1b[31m 👍 é")
    line = message_json(record)
    line.encode("utf-8")
    assert json.loads(line)["text"] == record["text"]


def test_json_output_is_exact_and_one_line():
    """--json keeps the text exactly (JSON escapes the controls), on one line, with
    non-ASCII readable."""
    record = message(FORGED + "\r\x1b]0;t\x07 \u202e 👍 é")
    line = message_json(record)
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert "👍 é" in line
    decoded = json.loads(line)
    assert decoded["text"] == record["text"] and decoded["from"] == "mallory"
    assert decoded["verified"] is False


def test_something_not_a_string_is_shown_as_its_text():
    """A relay that sends a number or a list where a name belongs cannot crash the print."""
    assert safe(42) == "42" and safe(None) == "None" and safe(["a\x1b"]) == "['a\\x1b']"


def test_render_imports_neither_twisted_nor_the_crypto():
    """The path that prints a daemon's answer must start fast: render pulls in neither."""
    import subprocess

    code = ("import sys, securechat.client.render; "
            "print([m for m in sys.modules if m.split('.')[0] in ('twisted', 'vodozemac', 'nacl')"
            " or m.startswith('securechat.crypto')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_log_lines_on_stderr_escape_what_they_quote():
    """The client's stderr log keeps its line breaks but escapes controls a logged value
    (say, an envelope id from a hostile relay) carries."""
    import io

    from securechat.client.render import EscapingStream

    out = io.StringIO()
    stream = EscapingStream(out)
    stream.write("corrupt envelope \x1b]0;pwned\x07\r\n\tTraceback\n")
    stream.flush()
    assert out.getvalue() == "corrupt envelope ^[]0;pwned^G^M\n        Traceback\n"


def columns(row):
    from securechat.client.render import _columns

    return sum(_columns(c) for c in row)


def test_on_a_terminal_padding_cannot_push_a_forged_line_to_the_start_of_a_row():
    """Spaces that would make an 80-column terminal wrap the forged header to column 0:
    the line is cut at the terminal's width instead and every further row is marked."""
    from securechat.client.render import MARK

    padded = "see you" + " " * 60 + "[2026-12-06T17:30:00.000Z] alice (verified): new key"
    rows = format_message(message(padded), width=79).split("\n")
    assert len(rows) > 1 and all(columns(row) <= 79 for row in rows), rows
    assert len(headers("\n".join(rows))) == 1
    assert all(row.startswith(MARK) for row in rows[1:]), rows
    assert format_message(message(padded)) == format_message(message(padded), width=None)


def test_wide_characters_count_two_columns_when_cutting():
    """CJK and flags (two columns on a terminal) are counted so, so a cut row is never
    wider than the terminal; combining marks and joiners take none."""
    from securechat.client.render import MARK, fit

    rows = fit("你好" * 40 + "🇫🇷" * 20 + "e\u0301" * 30, 30).split("\n")
    assert all(columns(row) <= 30 for row in rows), rows
    assert "".join(row.removeprefix(MARK) for row in rows) == \
        "你好" * 40 + "🇫🇷" * 20 + "e\u0301" * 30
    assert fit("x" * 100, 3).split("\n")[0] == "x" * 10  # never narrower than 10


def test_terminal_width_comes_from_the_terminal_and_is_none_for_a_pipe():
    """On a real pseudo-terminal of 50 columns lines may use 49; a pipe or a file is no
    terminal, so nothing is cut there."""
    import fcntl
    import io
    import os
    import struct
    import termios

    from securechat.client.render import terminal_width

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    read_end, write_end = os.pipe()
    with os.fdopen(follower, "w") as tty, os.fdopen(write_end, "w") as pipe:
        assert terminal_width(tty) == 49
        assert terminal_width(pipe) is None
        assert terminal_width(io.StringIO()) is None
    os.close(leader)
    os.close(read_end)
