"""New user and room names cannot hide a trailing or doubled separator ("alice." beside
"alice"); names that exist already keep working."""

import pytest
import pytest_twisted

from securechat import wire
from securechat.client.protocol import RemoteError
from tests.support import ScriptedDevice, cleanup

LOOK_ALIKES = ("alice.", "alice-", "alice_", "al..ice", "al._ice", "al-_ice", "a__", "-alice")


@pytest.fixture
def server(start_relay):
    return start_relay()


@pytest_twisted.ensureDeferred
async def test_a_name_ending_in_or_doubling_a_separator_cannot_be_registered(server):
    """`alice` registers; `alice.`, `alice_`, `al..ice` and their kin are refused with a
    bad_field error saying the rule; `al.ice` (one separator between letters) is fine."""
    alice = ScriptedDevice("alice")
    await alice.register(server)
    for name in LOOK_ALIKES:
        device = ScriptedDevice(name)
        with pytest.raises(RemoteError) as refused:
            await device.register(server)
        assert refused.value.code == "bad_field", name
        assert "no two of . _ - in a row" in str(refused.value), name
        await device.close()
    dotted = ScriptedDevice("al.ice")
    await dotted.register(server)
    await cleanup(alice, dotted)


@pytest_twisted.ensureDeferred
async def test_an_account_named_before_the_rule_still_logs_in(server):
    """An account whose name the new rule refuses (registered before it) still logs in,
    publishes keys and can be written to: only registration applies the rule."""
    old = ScriptedDevice("old.")
    await server.service.store.create_account(
        "old.", old.password_key(), wire.b64encode(bytes(old.identity.verify_key)))
    assert (await old.login(server))["user"] == "old."
    bob = ScriptedDevice("bob")
    await bob.register(server)
    await bob.login(server, upload_keys=False)
    answer = await bob.request("keys.query", users=["old."])
    assert "old." in answer["users"]
    await cleanup(old, bob)


@pytest_twisted.ensureDeferred
async def test_a_new_room_name_follows_the_same_rule(server):
    """`team.` cannot be created beside `team`; joining an existing room is not affected."""
    owner = ScriptedDevice("owner")
    await owner.register(server)
    await owner.login(server)
    await owner.request("room.create", room="team")
    for name in ("team.", "team--a", "team_"):
        with pytest.raises(RemoteError) as refused:
            await owner.request("room.create", room=name)
        assert refused.value.code == "bad_field", name
    await owner.request("room.create", room="team.a")
    await cleanup(owner)
