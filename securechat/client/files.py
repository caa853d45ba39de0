"""Encrypted files: send one to a user or a room, and fetch one received.

Sending: the file is encrypted with a fresh key (``crypto.filecrypt``) and
its ciphertext uploaded to the relay in chunks, several in flight; once the
relay has checked the whole upload (``file.finish``: size and chunk hash),
a ``file`` message carrying the file's relay id, name, size, key and hashes
goes the way any message goes (the outbox; Olm 1:1, Megolm in a room).  The
upload's key and relay id are kept in the key store from its first chunk
on, under a keyed hash of (recipient, path, size, modification time): the
same command run again after a dropped connection or a killed process
asks the relay how far it got (``file.info``) and goes on from there.
Handing the message to the outbox drops that record in the same
transaction, so a file is never announced twice; the record of an upload
abandoned goes after a week, as the relay's copy does (``prune_uploads``).

Fetching: the ciphertext is appended to ``files/FILE_ID.part`` in the data
directory (a dropped download goes on from the chunks that file holds),
checked against the sealed chunk hash, decrypted into a temporary file
beside the target, checked against the sealed plaintext SHA-256 and only
then renamed into place: a tampered or cut file leaves nothing at the
target.  The relay is then told the device has it (``file.done``) and
deletes the file once every recipient device has.

A name from the network is shown through ``render.safe`` and never used as
a path as it came: ``safe_file_name`` keeps its last component, without
control characters or a leading dot.
"""

import os
import tempfile
import time

from twisted.internet import defer

from securechat import wire
from securechat.client.exit_codes import (
    EXIT_FILE_CORRUPT, EXIT_FILE_TOO_LARGE, EXIT_NOT_FOUND, EXIT_QUOTA, EXIT_UNREACHABLE,
    EXIT_USAGE)
from securechat.client.file_messages import file_summary, prune_uploads, safe_file_name
from securechat.client.messaging import new_id
from securechat.client.protocol import ConnectionClosed, RemoteError
from securechat.client.session import ClientError, refusal
from securechat.crypto.filecrypt import (
    CHUNK_CIPHER, FileDecryptError, Hashes, chunk_count, cipher_size, decrypt_file,
    encrypt_chunks, new_key)

WINDOW = 4
"""Chunk requests in flight: enough to hide the round trip, and the relay's own window
(it stops reading a connection with more in progress)."""

FILE_REFUSALS = {"file_too_large": EXIT_FILE_TOO_LARGE, "quota_exceeded": EXIT_QUOTA,
                 "too_many_uploads": EXIT_QUOTA, "unknown_file": EXIT_NOT_FOUND}
"""Relay refusals of a file request with an exit code of their own."""


def file_refusal(error, doing):
    """A relay's refusal of a file request as the ClientError the CLI reports."""
    exit_code = FILE_REFUSALS.get(error.code)
    if exit_code is None:
        return refusal(error, f"the relay refused {doing}")
    return ClientError(f"the relay refused {doing}: {error.message}", exit_code)


class FileTransfers:
    def __init__(self, client):
        self._client = client

    @property
    def _store(self):
        return self._client.store

    async def _request(self, doing, op, **fields):
        try:
            return await self._client.request(op, **fields)
        except RemoteError as e:
            raise file_refusal(e, doing) from None

    # -- sending ------------------------------------------------------------------------

    async def send(self, path, user=None, room=None, progress=None):
        """Upload ``path`` for ``user`` or ``room`` and send the file message; fire with
        ``{"id" (the message's), "file": {"id", "name", "size"}}``."""
        try:
            source = open(path, "rb")
        except OSError as e:
            raise ClientError(f"cannot read {path}: {e.strerror}") from None
        with source:
            stat = os.fstat(source.fileno())
            if not os.path.isfile(path):
                raise ClientError(f"{path} is not a regular file")
            target = f"room {room}" if room is not None else f"user {user}"
            tag = self._store.upload_tag(
                f"{target}\0{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}")
            upload = await self._resumable(tag, path, stat.st_size)
            hashes = Hashes()
            try:
                await self._upload(source, upload, hashes, progress)
            except ConnectionClosed:
                raise ClientError(
                    f"the upload of {path} stopped: the connection to the relay closed; run "
                    "the same command again and it goes on from where it stopped",
                    EXIT_UNREACHABLE) from None
        doing = f"the file {upload['file_id']}"
        await self._request(doing, "file.finish", file_id=upload["file_id"],
                            size=cipher_size(upload["size"]), hash=hashes.chunks,
                            to=[user] if room is None else None, room=room)
        summary = file_summary({**upload, "id": upload["file_id"]})
        described = {**summary, "key": upload["key"], "header": upload["header"],
                     "hash": hashes.chunks, "sha256": hashes.plain}
        payload = {"type": "file", "mid": new_id(), "room": room, "ts": int(time.time() * 1000),
                   "file": described}
        client = self._client
        if room is None:
            payload["peer"] = user
        else:
            payload.update({"from": client.user, "from_dev": client.device})
        with self._store.transaction():
            entry = client.outbox.add(payload, to=user if room is None else None, room=room)
            self._store.drop_file_upload(tag)
        await client.deliver(entry)
        return {"id": payload["mid"], "file": summary}

    async def _resumable(self, tag, path, size):
        """The upload of this file to this recipient: the one begun before when the relay
        still has it, else a new one (a fresh key, a new relay id)."""
        upload = self._store.file_upload(tag)
        if upload is not None:
            try:
                info = await self._client.request("file.info", file_id=upload["file_id"])
            except RemoteError as e:
                if e.code != "unknown_file":  # expired meanwhile: begin again
                    raise file_refusal(e, "the upload") from None
            else:
                return {**upload, "stored": info["chunks"]}
        key, header = new_key()
        begun = await self._request("the upload", "file.begin", size=cipher_size(size))
        now = int(time.time() * 1000)
        upload = {"file_id": begun["file_id"], "key": wire.b64encode(key),
                  "header": wire.b64encode(header), "size": size,
                  "name": safe_file_name(os.path.basename(path), "file"), "begun": now}
        with self._store.transaction():
            prune_uploads(self._store, now)
            self._store.put_file_upload(tag, upload)
        return {**upload, "stored": 0}

    async def _upload(self, source, upload, hashes, progress):
        """Encrypt the whole file (the chunks the relay holds are encrypted again only for
        the hashes) and send the chunks it lacks, ``WINDOW`` at a time."""
        file_id, size, stored = upload["file_id"], upload["size"], upload["stored"]
        key, header = wire.b64decode(upload["key"]), wire.b64decode(upload["header"])
        total = cipher_size(size)
        meter = Meter(progress, total, done=min(stored * CHUNK_CIPHER, total))
        in_flight = []
        try:
            for index, cipher in encrypt_chunks(source, size, key, header, file_id, hashes):
                if index < stored:
                    continue
                d = defer.ensureDeferred(self._request(  # started now: WINDOW in flight
                    f"chunk {index} of the file", "file.chunk", file_id=file_id, index=index,
                    data=wire.b64encode(cipher)))
                in_flight.append((d, len(cipher)))
                if len(in_flight) >= WINDOW:
                    await self._sent(in_flight.pop(0), meter)
            while in_flight:
                await self._sent(in_flight.pop(0), meter)
        except BaseException:
            for d, _ in in_flight:  # their failures are this one's: not reported again
                d.addErrback(lambda failure: None)
            raise
        finally:
            meter.finish()

    @staticmethod
    async def _sent(sending, meter):
        d, length = sending
        await d
        meter.advance(length)

    # -- fetching -------------------------------------------------------------------------

    def received(self, file_id):
        described = self._store.received_file(file_id)
        if described is None:
            raise ClientError(f"no file {file_id} was received on this device "
                              "(see 'securechat files list')", EXIT_NOT_FOUND)
        return described

    def list(self):
        """The files received, oldest first: id, name, size, from, room, received, saved."""
        return [{k: described.get(k) for k in
                 ("id", "name", "size", "from", "room", "received_at", "saved_to")}
                for described in self._store.received_files()]

    async def get(self, file_id, out=None, directory=None, progress=None):
        """Fetch, check and decrypt a received file to ``out`` (else a file named after it
        in ``directory``); fire with ``{"file": {"id", "name", "size"}, "path", "sha256"}``."""
        described = self.received(file_id)
        saved = described.get("saved_to")
        if saved and out is None and os.path.isfile(saved):
            # Fetched and saved before: the relay let it go then (each device fetches a
            # file once), so the answer is where it is, not a refusal from the relay.
            return {"file": {k: described[k] for k in ("id", "name", "size")}, "path": saved,
                    "sha256": described["sha256"], "already_saved": True}
        target = self._target(described, out, directory)
        folder = os.path.dirname(os.path.abspath(target))
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
            raise ClientError(f"cannot save the file to {target}: {folder} is not a directory "
                              "you can write to (nothing was fetched)", EXIT_USAGE)
        part = self._part_path(file_id)
        try:
            await self._download(described, part, progress)
        except ClientError as e:
            if saved and e.exit_code == EXIT_NOT_FOUND:
                gone = "" if os.path.isfile(saved) else ", and it is no longer there"
                raise ClientError(
                    f"the file {file_id} was saved to {saved} before{gone}; the relay keeps a "
                    "file only until each of its recipient devices has fetched it, so it "
                    "cannot be fetched again", EXIT_NOT_FOUND) from None
            raise
        except ConnectionClosed:
            raise ClientError(
                f"the download of {file_id} stopped: the connection to the relay closed; run "
                "the same command again and it goes on from where it stopped",
                EXIT_UNREACHABLE) from None
        try:
            self._check_and_decrypt(described, part, target)
        except FileDecryptError as e:
            os.unlink(part)  # what the relay served is wrong: never resumed from
            raise ClientError(f"the file {file_id} was refused: {e}; nothing was written",
                              EXIT_FILE_CORRUPT) from None
        os.unlink(part)
        with self._store.transaction():
            self._store.put_received_file(file_id, {**described, "saved_to": target})
        try:
            await self._client.request("file.done", file_id=file_id)
        except RemoteError:  # fetched before by another run: it is ours all the same
            pass
        return {"file": {k: described[k] for k in ("id", "name", "size")}, "path": target,
                "sha256": described["sha256"]}

    def _part_path(self, file_id):
        directory = os.path.join(self._client.settings.data_dir, "files")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, file_id + ".part")

    @staticmethod
    def _target(described, out, directory):
        """Where the file goes: ``out`` as given (into it when it is a directory), else a
        name not taken yet in ``directory`` made from the sender's (``safe_file_name``)."""
        name = safe_file_name(described["name"], described["id"])
        if out is not None:
            return os.path.join(out, name) if os.path.isdir(out) else out
        stem, ext = os.path.splitext(name)
        candidate, n = os.path.join(directory, name), 1
        while os.path.lexists(candidate):
            candidate = os.path.join(directory, f"{stem} ({n}){ext}")
            n += 1
        return candidate

    async def _download(self, described, part, progress):
        """Append the chunks ``part`` lacks, ``WINDOW`` requests at a time."""
        file_id = described["id"]
        total = cipher_size(described["size"])
        count = chunk_count(described["size"])
        with open(part, "ab") as sink:
            have = min(sink.tell() // CHUNK_CIPHER, count)
            sink.truncate(have * CHUNK_CIPHER)
            sink.seek(have * CHUNK_CIPHER)
            meter = Meter(progress, total, done=have * CHUNK_CIPHER)
            in_flight = []
            try:
                for index in range(have, count):
                    in_flight.append(defer.ensureDeferred(self._request(  # started now
                        f"the file {file_id}", "file.get", file_id=file_id, index=index)))
                    if len(in_flight) >= WINDOW:
                        self._write(sink, await in_flight.pop(0), meter)
                while in_flight:
                    self._write(sink, await in_flight.pop(0), meter)
            except BaseException:
                for d in in_flight:
                    d.addErrback(lambda failure: None)
                raise
            finally:
                sink.flush()
                os.fsync(sink.fileno())
                meter.finish()

    @staticmethod
    def _write(sink, answer, meter):
        data = wire.b64decode(answer["data"])
        sink.write(data)
        meter.advance(len(data))

    @staticmethod
    def _check_and_decrypt(described, part, target):
        """Check the chunk hash, decrypt beside ``target``, check the plaintext hash, and
        only then rename it into place; FileDecryptError, with nothing left, otherwise."""
        hashes = Hashes()
        with open(part, "rb") as source:
            for cipher in iter(lambda: source.read(CHUNK_CIPHER), b""):
                hashes.add(None, cipher)
        if hashes.chunks != described["hash"]:
            raise FileDecryptError("its chunks are not the ones sent (the relay's copy was "
                                   "changed)")
        directory = os.path.dirname(os.path.abspath(target))
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".securechat-", suffix=".part")
        try:
            with open(part, "rb") as source, os.fdopen(fd, "wb") as sink:
                key, header = wire.b64decode(described["key"]), wire.b64decode(described["header"])
                plain = decrypt_file(source, sink, key, header, described["id"])
                if plain != described["sha256"]:
                    raise FileDecryptError("its content is not the one sent")
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise


class Meter:
    """Tells ``progress(done, total)`` (bytes) as a transfer advances; nothing without one."""

    def __init__(self, progress, total, done=0):
        self._progress = progress
        self.total, self.done = total, done
        if progress is not None:
            progress(done, total)

    def advance(self, length):
        self.done += length
        if self._progress is not None:
            self._progress(self.done, self.total)

    def finish(self):
        if self._progress is not None:
            self._progress(None, self.total)
