"""Encrypted files on the relay: ciphertext chunks into the store, and out again.

The relay never sees a file's name, key or plaintext: a client uploads
secretstream ciphertext in chunks of at most ``wire.FILE_CHUNK_MAX`` bytes
and names the file by the id the relay gave it.  The chunks live in the
store (so every node sharing a database serves them); this module applies
the operator's limits (``[files] max_size``, ``quota``, ``keep_days``) and
turns the store's refusals into wire errors.

Flow control: a connection has at most ``FILE_WINDOW`` chunk requests
(``file.chunk``, ``file.get``) in progress (``FileWindow``); at that many its
reading is held, so a fast uploader cannot make the relay buffer its chunks, and a
slow downloader gets no more than its window of answers (which the output
budget holds as it holds any answer).  What the relay holds of one
connection's files is therefore a few chunks, whatever the file's size.
"""

import hashlib

from twisted.logger import Logger

from securechat import wire
from securechat.store.errors import FileRefused
from securechat.wire import ProtocolError

FILE_WINDOW = 4
"""Chunk requests of one connection in progress at most; past them its reading is held."""

MAX_UNFINISHED_UPLOADS = 8
"""Unfinished uploads one account may have at once (each holds a row and its quota)."""

DAY_MS = 24 * 3600 * 1000


def _refused(failure):
    """A store refusal as the wire error with the same code."""
    failure.trap(FileRefused)
    error = failure.value
    raise ProtocolError(error.code, error.message, error.details)


class FileWindow:
    """Counts one connection's chunk requests in progress; holds its reading at
    ``FILE_WINDOW`` of them and releases it when one is answered.  (Their order needs
    nothing here: the store commits one upload's chunks in the order they came.)"""

    __slots__ = ("_connection", "_in_flight")

    def __init__(self, connection):
        self._connection = connection
        self._in_flight = 0

    def track(self, d):
        self._in_flight += 1
        if self._in_flight == FILE_WINDOW:
            self._connection.hold_reading("files")
        return d.addBoth(self._answered)

    def _answered(self, result):
        self._in_flight -= 1
        if self._in_flight == FILE_WINDOW - 1:
            self._connection.release_reading("files")
        return result


class Files:
    log = Logger()

    def __init__(self, config, store):
        self._store = store
        self.max_size = config.file_max_size
        self.quota = config.file_quota
        self.keep_ms = config.file_keep_days * DAY_MS

    def begin(self, user, device, size):
        """Start an upload of ``size`` bytes of ciphertext: a file of ``[files] max_size``
        bytes passes with its chunks' overhead."""
        if size > wire.file_cipher_size(self.max_size):
            raise ProtocolError("file_too_large", f"a file may have at most {self.max_size} "
                                                  f"bytes on this relay; this one has {size} "
                                                  "bytes encrypted",
                                {"max_size": self.max_size})
        file_id = wire.pasteable_token(16)
        d = self._store.begin_file(file_id, user, device, size, self.quota,
                                   MAX_UNFINISHED_UPLOADS, self.keep_ms)
        return d.addCallbacks(lambda result: {**result, "chunk_max": wire.FILE_CHUNK_MAX},
                              _refused)

    def put_chunk(self, user, fields):
        data = wire.b64decode(fields["data"])
        d = self._store.put_chunk(fields["file_id"], user, fields["index"], data,
                                  hashlib.sha256(data).hexdigest())
        return d.addCallbacks(lambda chunks: {"chunks": chunks}, _refused)

    def finish(self, user, fields):
        if (fields["to"] is None) == (fields["room"] is None):
            raise ProtocolError("bad_field", "a file.finish names its recipients: 'to' (users) "
                                             "or 'room', one of the two")
        d = self._store.finish_file(fields["file_id"], user, fields["size"], fields["hash"],
                                    fields["to"] or (), fields["room"], self.keep_ms)
        return d.addErrback(_refused)

    def info(self, user, device, file_id):
        return self._store.file_info(file_id, user, device).addErrback(_refused)

    def get(self, user, device, fields):
        d = self._store.get_chunk(fields["file_id"], user, device, fields["index"])
        return d.addCallbacks(
            lambda chunk: {"index": fields["index"], "data": wire.b64encode(chunk[0]),
                           "last": chunk[1]}, _refused)

    def done(self, user, device, file_id):
        d = self._store.file_done(file_id, user, device)
        return d.addCallbacks(lambda deleted: {"deleted": deleted}, _refused)

    def expire(self):
        """Delete files past ``keep_days`` (called by the service's pruning)."""
        d = self._store.expire_files()
        d.addCallback(self._expired)
        return d

    def _expired(self, count):
        if count:
            self.log.info("Deleted {count} expired files", count=count)
        return count

