"""History pages cut short by their byte cap, read by the real ``securechat`` CLI."""

import json

import pytest
import pytest_twisted

from securechat.server import rooms
from tests.test_client_security import record_lines
from tests.test_rooms_e2e import People


@pytest.fixture
def server(start_relay):
    return start_relay()


@pytest_twisted.ensureDeferred
async def test_the_client_pages_through_history_cut_short_by_the_byte_cap(
        server, tmp_path, monkeypatch):
    """With the relay's history pages cut to one message by their byte cap, `securechat
    history` still shows every message once, oldest first, asking page after page."""
    monkeypatch.setattr(rooms, "HISTORY_PAGE_BYTES", 1)
    people = People(server, tmp_path)
    await people.register("alice", "bob")
    await people.ok("alice", "rooms", "create", "ops")
    await people.ok("bob", "join", "ops")
    for text in ("one", "two", "three"):
        await people.ok("alice", "say", "ops", text)
    received = record_lines(server)
    history = (await people.ok("bob", "history", "ops")).out.splitlines()
    assert [line.split(": ", 1)[1] for line in history] == ["one", "two", "three"]
    asked = [json.loads(line) for line in received if b'"room.history"' in line]
    assert [(a["limit"], a.get("before")) for a in asked] == [
        (100, None), (99, 3), (98, 2), (97, 1)]  # a message a page, then the empty end
