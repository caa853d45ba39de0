"""A client told its device was removed from its account, without sockets: the relay's
``device_removed`` event ends the connection for good (state ``removed``, no reconnect),
and the chat, a client of the daemon, ends with exit code 3 saying why."""

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from tests.test_chat_units import RecordedScreen
from tests.test_reconnect_unit import client  # noqa: F401 (a fixture)


def test_the_device_removed_event_ends_the_connection_for_good(client):  # noqa: F811
    """The relay's device_removed event becomes the state 'removed', saying which device of
    which account; the close that follows schedules no reconnect."""
    client.protocol.dataReceived(
        b'{"event":"device_removed","message":"this device was removed"}\n')
    client.protocol.connectionLost(Failure(ConnectionLost("closed by the relay")))
    assert client.state == "removed"
    assert client.states[-1] == ("removed", "this device (DEV1) was removed from alice's account")
    assert client.reactor.getDelayedCalls() == []


def test_the_chat_ends_with_exit_3_when_its_device_is_removed():
    """The daemon's state 'removed' is said in the chat, which then ends with exit code 3
    and keeps the reason for the terminal it returns to."""
    from securechat.client.chat import Chat

    chat = Chat(daemon=None, me="alice", view_factory=RecordedScreen)
    chat.state = "connected"
    reason = "this device (DEV1) was removed from alice's account"
    chat.notified("state", {"state": "removed", "detail": reason})
    assert chat.buffers.status.lines[-1].body == f"removed: {reason}"
    ended = []
    chat.done.addCallback(ended.append)
    assert ended == [3] and chat.removed == reason
