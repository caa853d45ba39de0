"""Linking a second device to an account with real processes: a ``twistd`` relay and the
``securechat`` CLI, alice on two data directories (``devices link`` on the new one,
``devices approve CODE`` on the first), bob as her contact."""

import json
import re
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat.client.exit_codes import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNTRUSTED
from securechat.client.session import link_window_left
from tests.processes import InteractiveCli, run_cli, write_client_config
from tests.support import poll_until

CODE = re.compile(r"^link code: ([A-Z0-9]+)$", re.MULTILINE)


@pytest.fixture
def accounts(listening_relay, tmp_path):
    """alice (first device) and bob registered on a twistd relay; alice's second machine's
    ini (same user, its own data dir); the relay."""
    clients = str(tmp_path / "clients")
    alice = write_client_config(clients, "alice", listening_relay.port)
    bob = write_client_config(clients, "bob", listening_relay.port)
    laptop = write_client_config(str(tmp_path / "laptop"), "alice", listening_relay.port)
    for config in (alice, bob):
        result = pytest_twisted.blockon(defer.ensureDeferred(run_cli(config, "register")))
        assert result.code == 0, result
    return alice, laptop, bob, listening_relay


async def ok(config, *args, stdin=None):
    result = await run_cli(config, *args, stdin=stdin)
    assert result.code == 0, (args, result)
    return result


async def start_link(config):
    """``devices link`` running on ``config``'s machine, and the code it printed."""
    new = InteractiveCli(config, "devices", "link")
    await poll_until(lambda: CODE.search(new.text()) or new.ended.called, timeout=60)
    match = CODE.search(new.text())
    assert match, new.text()
    return new, match.group(1)


async def link(first, second, new_answer="y", approver_answer="y"):
    """Link ``second`` to ``first``'s account, each side answering as told; the exit codes
    ``(new, approver)`` and both processes' output."""
    new, code = await start_link(second)
    approver = InteractiveCli(first, "devices", "approve", code)
    for side, answer in ((new, new_answer), (approver, approver_answer)):
        await side.wait_for("Do they match?", timeout=90)
    approver.type(approver_answer)
    new.type(new_answer)
    codes = (await new.finish(90), await approver.finish(90))
    return codes, new.text(), approver.text(), code


def device_list(relay, user):
    """The relay's stored device list of ``user`` (its JSON) and signature."""
    database = sqlite3.connect(str(relay.data_dir / "securechat.sqlite3"))
    try:
        row = database.execute("SELECT device_list, signature FROM device_lists "
                               "WHERE user_id = ?", (user,)).fetchone()
    finally:
        database.close()
    return json.loads(row[0]), row[1]


async def texts(config):
    """``inbox --json``'s chat messages: ``{text: message}``."""
    lines = (await ok(config, "inbox", "--json")).json_lines()
    return {m["text"]: m for m in lines if m["type"] == "msg"}


@pytest_twisted.ensureDeferred
async def test_a_linked_device_receives_what_bob_sends_and_bob_is_not_asked_again(accounts):
    """bob verifies alice, then alice links a second device (y on both sides): both of
    alice's devices read bob's 1:1 and room messages, bob's send to alice works without a
    new verification, and what alice sends from the new device shows verified to bob."""
    alice, laptop, bob, relay = accounts
    await verify_each_other(alice, bob)
    (codes, new_out, approver_out, code) = await link(alice, laptop)
    assert codes == (0, 0), (new_out, approver_out)
    assert f"linked: this device ({code}) is now one of alice's devices" in new_out
    assert f"linked device {code} to alice's account" in approver_out
    listing, _ = device_list(relay, "alice")
    assert code in listing["devices"] and len(listing["devices"]) == 2
    assert all(isinstance(d["added"], int) for d in listing["devices"].values())
    await ok(alice, "rooms", "create", "ops")
    await ok(alice, "invite", "ops", "bob")
    await ok(bob, "send", "alice", "to both of you")
    await ok(bob, "say", "ops", "in the room")
    for device in (alice, laptop):
        shown = await texts(device)
        assert {"to both of you", "in the room"} <= set(shown), shown
        assert all(m["error"] is None for m in shown.values()), shown
    await ok(laptop, "send", "bob", "from the laptop")
    from_laptop = (await texts(bob))["from the laptop"]
    assert from_laptop["verified"] is True and from_laptop["from_device"] == code


async def verify_each_other(alice, bob):
    """bob and alice run ``verify`` and confirm the emoji (y on both sides)."""
    await ok(alice, "send", "bob", "hello")
    await ok(bob, "inbox")
    started = defer.ensureDeferred(run_cli(alice, "verify", "bob", stdin=b"y\n"))
    responder = await run_cli(bob, "verify", "alice", stdin=b"y\n")
    initiator = await started
    assert initiator.code == 0 and responder.code == 0, (initiator, responder)


@pytest.mark.parametrize("who", ["new device", "approver"])
@pytest_twisted.ensureDeferred
async def test_a_no_on_either_side_links_nothing(accounts, who):
    """When either person answers no, both commands fail with exit 7 (the other side is
    told it was cancelled) and the relay's device list of alice is unchanged."""
    alice, laptop, _, relay = accounts
    before = device_list(relay, "alice")
    answers = {"new_answer": "n"} if who == "new device" else {"approver_answer": "n"}
    (codes, new_out, approver_out, _) = await link(alice, laptop, **answers)
    assert codes == (EXIT_UNTRUSTED, EXIT_UNTRUSTED), (new_out, approver_out)
    said_no, told = (new_out, approver_out) if who == "new device" else (approver_out, new_out)
    assert "you said the emoji do not match: NOT linked" in said_no
    assert "cancelled: the emoji did not match" in told
    assert device_list(relay, "alice") == before


@pytest_twisted.ensureDeferred
async def test_a_wrong_code_is_not_found(accounts):
    """``devices approve`` with a code no device waits with exits 6 naming the code, and
    publishes nothing."""
    alice, _, _, relay = accounts
    before = device_list(relay, "alice")
    result = await run_cli(alice, "devices", "approve", "NOSUCHCODE")
    assert result.code == EXIT_NOT_FOUND, result
    assert "no device waiting to link with code NOSUCHCODE" in result.err
    assert device_list(relay, "alice") == before


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_on_the_new_device_exits_3_and_keeps_nothing(accounts, tmp_path):
    """``devices link`` with a wrong password is refused at the login (exit 3) and leaves no
    key store behind: the next try starts clean."""
    _, laptop, _, _ = accounts
    result = await run_cli(laptop, "devices", "link", password="not the password")
    assert result.code == EXIT_AUTH, result
    assert "wrong user name or password" in result.err
    assert not (tmp_path / "laptop" / "alice" / "keystore.sqlite3").exists()


@pytest_twisted.ensureDeferred
async def test_an_approval_times_out_naming_the_new_device_which_can_link_later(accounts,
                                                                                 tmp_path):
    """A new device that printed its code and went away: the approval waits verify_timeout
    for its answer, then fails with exit 7 naming it, the list unchanged; the half-made
    device runs no other command, and ``devices link`` run again goes on with the same
    code (the timed-out approval waiting for it is passed over) and links."""
    alice, laptop, _, relay = accounts
    new, code = await start_link(laptop)
    new.transport.signalProcess("KILL")
    await new.finish()
    before = device_list(relay, "alice")
    hasty = write_client_config(str(tmp_path / "hasty"), "alice", relay.port,
                                data_dir=str(tmp_path / "clients" / "alice"),
                                extra_lines=["verify_timeout = 2"])
    result = await run_cli(hasty, "devices", "approve", code)
    assert result.code == EXIT_UNTRUSTED, result
    assert f"the new device {code} did not answer the link request within 2 s" in result.out
    assert device_list(relay, "alice") == before
    refused = await run_cli(laptop, "inbox")
    assert refused.code == 1 and "is not linked to alice's account yet" in refused.err
    (codes, new_out, approver_out, again) = await link(alice, laptop)
    assert (codes, again) == ((0, 0), code), (new_out, approver_out)


@pytest.fixture
def short_window(start_relay):
    return start_relay(extra="[accounts]\nlink_window_minutes = 3\n")


@pytest_twisted.ensureDeferred
async def test_devices_link_waits_as_long_as_the_relay_keeps_the_device_pending(
        short_window, tmp_path):
    """A relay whose link window is 3 minutes: ``devices link`` says it waits 3 minutes
    (the relay's own window, from its ``ping``), not the default 10."""
    server = short_window
    alice = write_client_config(str(tmp_path / "clients"), "alice", server.port,
                                ca_file=server.cert_path)
    await ok(alice, "register")
    laptop = write_client_config(str(tmp_path / "laptop"), "alice", server.port,
                                 ca_file=server.cert_path)
    new, code = await start_link(laptop)
    try:
        await new.wait_for(f"securechat devices approve {code}   (waiting 3 minutes)")
    finally:
        new.transport.signalProcess("KILL")
        await new.finish()


def test_the_wait_is_what_is_left_of_the_relays_window():
    """From the keys' first upload; the default 600 s from a relay that does not say; from
    now when an earlier client kept no time; never below a second."""
    now = 1_800_000_000.0
    uploaded = str(int((now - 100) * 1000))
    assert link_window_left({"link_window_seconds": 180}, uploaded, now) == 80
    assert link_window_left({"pong": True}, uploaded, now) == 500
    assert link_window_left({"link_window_seconds": 180}, "1", now) == 180
    assert link_window_left({"link_window_seconds": 60}, uploaded, now) == 1


@pytest_twisted.ensureDeferred
async def test_approve_refuses_while_a_daemon_serves_the_device(accounts, tmp_path):
    """``devices approve`` refuses before asking anything while this device's daemon runs
    (the daemon holds its key store and connection), saying to stop it first."""
    from tests.processes import DaemonProcess

    alice, _, _, _ = accounts
    daemon = DaemonProcess(alice, tmp_path / "clients" / "alice")
    try:
        await daemon.ready()
        result = await run_cli(alice, "devices", "approve", "ANYCODE", password=None)
        assert result.code == 1, result
        assert "stop the daemon (or the chat) first, then approve the new device" in result.err
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_running_client_reads_a_device_linked_after_it_looked_up_alice(accounts,
                                                                               tmp_path):
    """bob's daemon looked up alice's devices (to send to her) before she linked a second
    one: the first message from the new device makes it ask for alice's keys again, and
    shows readable."""
    from tests.processes import DaemonProcess

    alice, laptop, bob, _ = accounts
    daemon = DaemonProcess(bob, tmp_path / "clients" / "bob")
    try:
        await daemon.ready()
        sent = await run_cli(bob, "send", "alice", "hi", password=None)
        assert sent.code == 0, sent
        (codes, new_out, approver_out, code) = await link(alice, laptop)
        assert codes == (0, 0), (new_out, approver_out)
        await ok(laptop, "send", "bob", "from my new laptop")
        shown = (await run_cli(bob, "inbox", "--json", "--wait", "30", password=None))
        (message,) = [m for m in shown.json_lines() if m["type"] == "msg"]
        assert message["text"] == "from my new laptop" and message["from_device"] == code
        assert message["error"] is None, message
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_registering_a_taken_name_points_to_linking(accounts):
    """The mistake a second machine's owner makes first: `register` of their own name.
    It exits 1 naming `devices link` (the way to add this machine), keeps no key store,
    and linking then works from the same data dir."""
    alice, laptop, _, _ = accounts
    taken = await run_cli(laptop, "register")
    assert taken.code == 1, taken
    assert "'alice' is taken" in taken.err and "securechat devices link" in taken.err, taken
    (new_code, approver_code), _, _, _ = await link(alice, laptop)
    assert (new_code, approver_code) == (0, 0)
