"""The relay's file requests over real TLS (bad input gets its own code, an unfinished file is
never served), and the per-connection window that bounds what a transfer makes it hold."""

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import wire
from securechat.server.files import FILE_WINDOW, FileWindow
from securechat.store.transactions.files import chunks_hash
from tests.support import ScriptedDevice, cleanup, expect_error
from tests.test_store_contract import raw_sql


def b64(data):
    return wire.b64encode(data)


@pytest.fixture
def server(start_relay):
    return start_relay(extra="[files]\nmax_size = 200000\n")


@pytest_twisted.ensureDeferred
async def test_file_requests_refuse_bad_input_and_serve_only_finished_files(server):
    """Over TLS: a begin over [files] max_size (encrypted) is file_too_large (with max_size),
    a chunk
    out of order chunk_out_of_order (with next), an oversized chunk bad_field, finishes
    of the wrong size or hash size_mismatch / hash_mismatch; until the right finish the
    file is file_incomplete to its owner and unknown_file to others; then its recipient
    reads it byte-equal and a stranger still gets unknown_file."""
    alice, bob, eve = ScriptedDevice("alice"), ScriptedDevice("bob"), ScriptedDevice("eve")
    try:
        for person in (alice, bob, eve):
            await person.register(server)
            await person.login(server)
        largest = wire.file_cipher_size(200000)  # a file of max_size bytes, encrypted
        error = await expect_error("file_too_large", alice.request("file.begin",
                                                                   size=largest + 1))
        assert error.details["max_size"] == 200000
        data = b"\x01ciphertext" * 10
        file_id = (await alice.request("file.begin", size=len(data)))["file_id"]
        error = await expect_error("chunk_out_of_order", alice.request(
            "file.chunk", file_id=file_id, index=1, data=b64(data)))
        assert error.details["next"] == 0
        await expect_error("bad_field", alice.request(
            "file.chunk", file_id=file_id, index=0, data=b64(b"x" * (wire.FILE_CHUNK_MAX + 1))))
        assert await alice.request("file.chunk", file_id=file_id, index=0,
                                   data=b64(data)) == {"chunks": 1}
        await expect_error("file_incomplete", alice.request("file.get", file_id=file_id, index=0))
        await expect_error("unknown_file", bob.request("file.get", file_id=file_id, index=0))
        right = chunks_hash([hashlib.sha256(data).hexdigest()])
        await expect_error("size_mismatch", alice.request(
            "file.finish", file_id=file_id, size=len(data) - 1, hash=right, to=["bob"]))
        await expect_error("hash_mismatch", alice.request(
            "file.finish", file_id=file_id, size=len(data), hash="0" * 64, to=["bob"]))
        assert (await alice.request("file.info", file_id=file_id))["complete"] is False
        await alice.request("file.finish", file_id=file_id, size=len(data), hash=right,
                            to=["bob"])
        got = await bob.request("file.get", file_id=file_id, index=0)
        assert (wire.b64decode(got["data"]), got["last"]) == (data, True)
        await expect_error("unknown_file", eve.request("file.get", file_id=file_id, index=0))
    finally:
        await cleanup(alice, bob, eve)


@pytest_twisted.ensureDeferred
async def test_the_relays_pruning_deletes_files_past_keep_days(server):
    """The relay's periodic pruning deletes a file whose keep time has passed (here made
    to have passed in its database), and a file still kept stays."""
    alice = ScriptedDevice("alice")
    try:
        await alice.register(server)
        await alice.login(server)
        old, kept = [(await alice.request("file.begin", size=10))["file_id"] for _ in range(2)]
        raw_sql(server.service.config.database, "UPDATE files SET expires = 0 WHERE file_id = ?",
                (old,))
        await server.service._prune()
        await expect_error("unknown_file", alice.request("file.info", file_id=old))
        assert (await alice.request("file.info", file_id=kept))["stored"] == 0
    finally:
        await cleanup(alice)


class Connection:
    """What FileWindow acts on: reading held and released, by reason."""

    def __init__(self):
        self.holds = []

    def hold_reading(self, reason):
        self.holds.append(("hold", reason))

    def release_reading(self, reason):
        self.holds.append(("release", reason))


def test_the_window_holds_reading_at_its_size_and_releases_it_on_an_answer():
    """The FILE_WINDOW-th chunk request in progress holds the connection's reading (not
    one before), the first answer after it releases it, a failed answer too; every
    answer reaches its own caller unchanged."""
    connection = Connection()
    window = FileWindow(connection)
    stores = [defer.Deferred() for _ in range(FILE_WINDOW + 1)]
    answers = [window.track(d) for d in stores[:FILE_WINDOW - 1]]
    assert connection.holds == []
    answers.append(window.track(stores[FILE_WINDOW - 1]))
    assert connection.holds == [("hold", "files")]
    stores[0].callback("stored")
    assert connection.holds == [("hold", "files"), ("release", "files")]
    answers.append(window.track(stores[FILE_WINDOW]))
    assert connection.holds[-1] == ("hold", "files")
    stores[1].errback(ValueError("refused"))
    assert connection.holds[-1] == ("release", "files")
    results = []
    answers[0].addCallback(results.append)
    answers[1].addErrback(lambda failure: results.append(str(failure.value)))
    assert results == ["stored", "refused"]
    for d in stores[2:]:
        d.callback(None)
