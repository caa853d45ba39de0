"""A reader that stops reading (``securechat inbox | head -1``): real ``securechat``
processes whose standard output is a pipe closed at its other end end quietly with 141
(128 + SIGPIPE), not with an "internal error"; what they were printing is not lost."""

import os
import subprocess

import pytest_twisted
from twisted.internet import threads

from securechat.client.exit_codes import EXIT_OUTPUT_CLOSED
from tests.processes import cli_environment, executable, write_client_config
from tests.test_client_e2e import relay  # noqa: F401 (the fixture: a twistd relay, its port)
from tests.test_reconnect_e2e import ok

PASSWORD = "correct horse battery staple"


def into_closed_pipe(*command, password=None):
    """Run ``command`` to its end with its standard output a pipe nobody reads (the read
    end closed first); the CompletedProcess (stderr captured)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120, env=cli_environment(password, None))
    finally:
        os.close(write_end)


def test_a_long_output_into_a_closed_pipe_ends_quietly_with_141():
    """``securechat manpage`` (longer than one write) into a closed pipe: 141, no stderr."""
    result = into_closed_pipe(executable("securechat"), "manpage")
    assert (result.returncode, result.stderr) == (EXIT_OUTPUT_CLOSED, "")


@pytest_twisted.ensureDeferred
async def test_inbox_into_a_closed_pipe_ends_quietly_and_loses_no_message(relay, tmp_path):
    """bob's ``inbox`` printing into a closed pipe exits 141 with nothing on stderr, and
    the messages it could not show are still there for the next ``inbox`` or ``history``."""
    proc, port = relay
    await proc.wait_listening()
    alice = write_client_config(str(tmp_path / "clients"), "alice", port)
    bob = write_client_config(str(tmp_path / "clients"), "bob", port)
    await ok(alice, "register")
    await ok(bob, "register")
    for n in range(3):
        await ok(alice, "send", "bob", f"message {n}")
    result = await threads.deferToThread(
        into_closed_pipe, executable("securechat"), "--config", bob, "inbox",
        password=PASSWORD)
    assert (result.returncode, result.stderr) == (EXIT_OUTPUT_CLOSED, ""), result
    shown = (await ok(bob, "inbox", "--json")).json_lines()
    shown += (await ok(bob, "history", "alice", "--json")).json_lines()
    assert {f"message {n}" for n in range(3)} <= {m["text"] for m in shown}
