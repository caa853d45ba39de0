"""Presence and routing: who is online, where an envelope goes, and in what order.

The store is the source of truth: an envelope is first committed for every
recipient device, then the sender hears "accepted", then online devices get
it pushed.  Each online device has a ``DeliveryCursor`` that pushes what the
store holds for it strictly in ``seq`` order; when the cursor is caught up a
new envelope is pushed straight from memory, otherwise the cursor reads the
missing part from the store.  Write groups commit one at a time and are
announced in commit order, so a caught-up cursor sees ``seq`` only grow.
"""

from twisted.internet import defer
from twisted.logger import Logger

from securechat import wire
from securechat.server.accounts import no_such_user
from securechat.server.metrics import RelayMetrics
from securechat.server.nodebus import LoneNode
from securechat.store import errors as store_errors
from securechat.wire import BROADCAST_ROOM, ProtocolError

FETCH_PAGE = 500

LIVE_OVERFLOW_BYTES = 256 * 1024
"""What live pushes may add to a connection's send buffer past the transport's high-water
mark: a reader behind for a moment keeps getting envelopes from memory; one further
behind gets the rest from the store once it has caught up with its buffer."""

READ_RETRY_SECONDS = 1.0
"""How soon a cursor reads its device's envelopes again after the store was unavailable
(a database restart): what was stored meanwhile reaches an online device without it
having to reconnect or wait for a new envelope."""

REMEMBERED_ROOM_ENTRIES = 4096
"""Room entries a cursor remembers between pushing and their ack, so the store need not
look them up by id.  Bounded, since a client decides when (or whether) it acknowledges;
an ack of one forgotten costs only that lookup."""


_BODY = ('{"v":1,"id":"%s","from":"%s","from_dev":"%s","to":%s,"to_dev":%s,"room":%s,'
         '"kind":"%s","sid":"%s","otype":%s,"ct":"%s","ts":%d}')


def envelope_body(sender, sender_device, fields, to, to_dev, room, now_ms):
    """The JSON text stored and delivered for one envelope (``ct`` passes through untouched).

    Written by splicing, not by ``json.dumps`` (a tenth of the cost, on every
    message): every value was checked by ``securechat.wire``'s schema to be
    a name, an id, base64 or an integer, none of which holds a character
    JSON would escape.
    """
    return _BODY % (
        fields["id"], sender, sender_device, _json_text(to), _json_text(to_dev),
        _json_text(room), fields["kind"], fields["sid"],
        "null" if fields.get("otype") is None else int(fields["otype"]), fields["ct"], now_ms)


def _json_text(value):
    return "null" if value is None else '"' + value + '"'


def delivery_line(number, body):
    """The pushed frame: built by splicing the body's UTF-8 bytes, so it is never parsed
    again (and a room message is encoded once for all its recipients)."""
    return b'{"event":"envelope","seq":%d,"envelope":%s}' % (number, body)


class DeliveryCursor:
    """Pushes one online device's envelopes in order, each once per connection.

    The store's ``seq`` is shared by all devices (it orders a device's queue
    and its rooms' entries together), so a device would learn from it how
    much everybody sends; frames number the pushes of the connection instead
    (1, 2, 3 ...).  It remembers where the room entries it pushed sit in their
    rooms (``acknowledged``): an ack of one then moves the device's
    position without a lookup by id, the bulk of what acknowledging a room
    message costs the store.
    """

    log = Logger()

    def __init__(self, store, user, device, push_line, gate, unavailable=None, metrics=None):
        self._store = store
        self._metrics = metrics if metrics is not None else RelayMetrics()
        self._unavailable = unavailable  # called (cursor, error) when the store is down
        self._user = user
        self._device = device
        self._push_line = push_line
        self._gate = gate  # open while the connection's send buffer has room
        self._sent_seq = 0
        self._pushed = 0
        self._caught_up = False
        self._pumping = False
        self._dirty = False
        self._room_entries = {}  # envelope id -> (room, pos), oldest first
        self._held = False  # nothing goes out until another node let the device go
        self.closed = False

    def notify(self, seq, body, envelope_id=None, room_entry=None):
        """A new envelope was committed for this device (``body``: its UTF-8 bytes; a
        room message's id and ``(room, pos)`` too)."""
        if self.closed:
            return
        if self._caught_up and not self._pumping and self._room_for(len(body)):
            if seq > self._sent_seq:
                self._sent_seq = seq
                self._push_envelope(body, room_entry and room_entry[0])
                if room_entry is not None:
                    self._remember(envelope_id, room_entry)
        else:
            # Behind, or a reader too slow for what arrives: the store keeps the
            # envelope, and the cursor reads it from there once the send buffer
            # has room, so the relay holds at most a buffer, its overflow and a
            # page per connection, however busy its rooms.
            self._caught_up = False
            self.pump()

    def read_past(self, seq):
        """Another node committed an envelope for this device, numbered ``seq`` (None: maybe
        some): read the store unless it was already pushed."""
        if not self.closed and (seq is None or seq > self._sent_seq):
            self.pump()

    def fall_behind(self):
        """An envelope may not go out from memory (another node's earlier one may still be
        on its way): the next ``notify`` reads the store instead."""
        self._caught_up = False

    def _room_for(self, size):
        """Whether a live push of ``size`` bytes may go out now (see LIVE_OVERFLOW_BYTES)."""
        gate = self._gate
        if gate.open:
            return True
        if gate.overflow + size > LIVE_OVERFLOW_BYTES:
            return False
        gate.overflow += size
        return True

    @property
    def caught_up(self):
        """Whether new envelopes go out from memory as they are committed (else the cursor
        is reading them from the store: it is behind, or its reader is)."""
        return self._caught_up and not self._pumping

    def acknowledged(self, ids):
        """Split acknowledged ``ids`` into those to look up by id and ``{room: [pos, ...]}``
        of the room entries among them that this cursor pushed (each is forgotten then:
        an entry is acknowledged once)."""
        entries = self._room_entries
        unknown, positions = [], {}
        for envelope_id in ids:
            entry = entries.pop(envelope_id, None)
            if entry is None:
                unknown.append(envelope_id)
            elif entry[0] in positions:
                positions[entry[0]].append(entry[1])
            else:
                positions[entry[0]] = [entry[1]]
        return unknown, positions

    def _remember(self, envelope_id, room_entry):
        entries = self._room_entries
        entries[envelope_id] = room_entry
        if len(entries) > REMEMBERED_ROOM_ENTRIES:
            del entries[next(iter(entries))]

    def _push_envelope(self, body, room):
        """Push one envelope (``room``: the history it is from, None for a queue row)."""
        self._pushed += 1
        kind = "unicast" if room is None else "broadcast" if room == BROADCAST_ROOM else "room"
        self._metrics.delivered[kind] += 1
        self._push_line(delivery_line(self._pushed, body))

    def hold_until(self, released):
        """Push nothing until the Deferred ``released`` fires (the device's older connection,
        on another node, is closed), then everything owed."""
        self._held = True
        released.addCallback(self._resume)

    def _resume(self, _):
        self._held = False
        if not self.closed:
            self.pump()

    def pump(self):
        """Read and push everything after the last pushed seq (one reader at a time)."""
        if self._held:
            return defer.succeed(None)
        if self._pumping:
            self._dirty = True
            return defer.succeed(None)
        self._pumping = True
        d = defer.ensureDeferred(self._drain())
        d.addErrback(self._read_failed)
        return d

    def _read_failed(self, failure):
        if failure.check(store_errors.StoreUnavailable) and self._unavailable is not None:
            self._unavailable(self, failure.value)
            return
        self.log.failure("delivery to {user}/{device} failed", failure,
                         user=self._user, device=self._device)

    async def _drain(self):
        try:
            while not self.closed:
                await self._gate.wait()
                self._dirty = False
                rows = await self._store.fetch_queue(
                    self._user, self._device, self._sent_seq, FETCH_PAGE
                )
                for row in rows:
                    if self.closed:
                        return
                    if not self._room_for(len(row["body"])):
                        break  # the reader fell behind: the rest is read again once it drains
                    self._push_row(row)
                else:
                    if len(rows) < FETCH_PAGE and not self._dirty:
                        self._caught_up = True
                        return
        finally:
            self._pumping = False

    def _push_row(self, row):
        self._sent_seq = row["seq"]
        if row["intact"]:
            self._push_envelope(row["body"].encode("utf-8"), row["room"])
            if row["room"] is not None:
                self._remember(row["id"], (row["room"], row["pos"]))
            return
        self.log.error(
            "Stored envelope {id} for {user}/{device} (seq {seq}) fails its digest check",
            id=row["id"], user=self._user, device=self._device, seq=row["seq"],
        )
        self._pushed += 1
        self._push_line(_corrupt_line(self._pushed, row["id"]))


def _corrupt_line(number, envelope_id):
    return b'{"event":"corrupt","seq":%d,"id":"%s"}' % (number, envelope_id.encode("ascii"))


class Relay:
    """Routes envelopes (unicast, room multicast, broadcast) to stored queues and online devices."""

    log = Logger()

    def __init__(self, store, directory, clock, outage, metrics=None, bus=None):
        self._store = store
        self.bus = bus if bus is not None else LoneNode()  # what the other nodes are told
        self.heard = None  # nodebus.Heard with other nodes on the database (the bus sets it)
        self._metrics = metrics if metrics is not None else RelayMetrics()
        self._directory = directory
        self._clock = clock
        self._outage = outage  # the log of refusals while the store is unavailable
        self._online = {}
        self._online_devices_of = {}  # user -> {device: cursor} of current devices: room pushes
        self._pending_online = {}  # user -> {device: cursor} of pending devices (no rooms)

    # -- presence ---------------------------------------------------------

    def attach(self, user, device, session, current=True):
        """A device logged in; a previous connection of the same device is replaced.  Only
        a ``current`` device (in its account's signed list) gets room pushes; a pending
        one (being linked) gets only what is addressed to it (``devices_changed``)."""
        previous = self._online.get((user, device))
        if previous is not None:
            self._forget_online(user, device)
        cursor = DeliveryCursor(self._store, user, device, session.push_line, session.gate,
                                self._read_later, self._metrics)
        self._online[(user, device)] = (session, cursor)
        known = self._directory.cached(user)  # fresher than the login's read, if cached
        if known is not None:
            current = device in known
        followers = self._online_devices_of if current else self._pending_online
        followers.setdefault(user, {})[device] = cursor
        if previous is not None:
            previous[1].closed = True
            previous[0].replaced()
        claimed = self.bus.claim(user, device)
        if not claimed.called:  # its older connection is on another node, not closed yet
            cursor.hold_until(claimed)
        self.bus.logged_in(user, device)
        return cursor

    def online_devices(self):
        """``(user, device)`` of every device connected here."""
        return list(self._online)

    def logged_in_elsewhere(self, user, device):
        """``device`` logged in on another node: its connection here ends (``replaced``, as
        for a second login on one node: the newest wins), its cursor closed first."""
        entry = self._online.get((user, device))
        if entry is not None:
            entry[1].closed = True
            self._forget_online(user, device)
            self.bus.release(user, device)
            entry[0].replaced()

    def _forget_online(self, user, device):
        """Take ``device`` out of the tables of online devices (whichever holds it)."""
        del self._online[(user, device)]
        for followers in (self._online_devices_of, self._pending_online):
            devices = followers.get(user)
            if devices is not None and devices.pop(device, None) is not None:
                if not devices:
                    del followers[user]

    def _read_later(self, cursor, error):
        """A cursor could not read the store (it is unavailable): logged as the outage it
        is, not as a failure, and read again shortly (until its device goes offline)."""
        self._outage.refused(error)
        self._clock.callLater(READ_RETRY_SECONDS, cursor.pump)

    def detach(self, user, device, session):
        current = self._online.get((user, device))
        if current is not None and current[0] is session:
            current[1].closed = True
            self._forget_online(user, device)
            self.bus.release(user, device)
            self._store.mark_seen(user, device).addErrback(self._not_marked_seen, user, device)

    def _not_marked_seen(self, failure, user, device):
        """A last-seen time is a courtesy to the owner: losing one (a store outage, a
        device removed meanwhile) is logged, never raised."""
        self.log.warn("Could not record when {user}/{device} was last seen: {error}",
                      user=user, device=device, error=failure.getErrorMessage())

    def cursor(self, user, device):
        entry = self._online.get((user, device))
        return entry[1] if entry else None

    def online(self, user, device):
        return (user, device) in self._online

    def end_sessions_of(self, user, devices):
        """Close the connections of ``user``'s ``devices`` (its account was deleted), each
        told why; the one that asked for it is closed by its own session."""
        self._end(user, devices, lambda session: session.account_deleted())

    def devices_changed(self, user, changes):
        """``user``'s devices changed (``{"added", "removed", "dropped"}``, as the store's
        ``set_device_list`` answers): devices that became current get room pushes from now
        on; removed and dropped ones that are connected are told so and closed at once."""
        pending = self._pending_online.get(user, {})
        for device in changes.get("added", ()):
            cursor = pending.pop(device, None)
            if cursor is not None:
                self._online_devices_of.setdefault(user, {})[device] = cursor
        if not pending:
            self._pending_online.pop(user, None)
        removed = wire.encode({"event": "device_removed", "message": (
            f"this device was removed from {user}'s account")})
        self._end(user, changes.get("removed", ()),
                  lambda session: session.device_removed(removed))
        dropped = wire.encode({"event": "device_not_linked", "message": (
            "this device was not linked to the account in time and was dropped")})
        self._end(user, changes.get("dropped", ()),
                  lambda session: session.device_removed(dropped))

    def end_all_sessions_of(self, user):
        """Close every connection of ``user``'s devices, current or pending, each told its
        account was disabled."""
        event = wire.encode({"event": "account_disabled",
                             "message": f"the relay's operator disabled the account {user}"})
        self._end(user, self.devices_here(user), lambda session: session.device_removed(event))

    def devices_here(self, user):
        """``user``'s devices connected to this node, current or pending."""
        return [*self._online_devices_of.get(user, ()), *self._pending_online.get(user, ())]

    def _end(self, user, devices, end):
        for device in devices:
            entry = self._online.get((user, device))
            if entry is not None:
                entry[1].closed = True
                end(entry[0])

    def committed_elsewhere(self, devices, members, everyone):
        """Another node committed envelopes for ``devices`` (``(user, device, seq)``), for
        rooms of ``members`` (``{user: seq}``) and for everyone (the broadcast's seq, or
        None): the cursors here of those devices read them from the store."""
        online = self._online
        for user, device, seq in devices:
            entry = online.get((user, device))
            if entry is not None:
                entry[1].read_past(seq)
        followers = self._online_devices_of
        for member, seq in members.items():
            for cursor in followers.get(member, {}).values():
                cursor.read_past(seq)
        if everyone is not None:
            for cursors in followers.values():
                for cursor in cursors.values():
                    cursor.read_past(everyone)

    def read_everything(self):
        """Every cursor here reads its device's envelopes from the store (hints were lost)."""
        for _, cursor in self._online.values():
            cursor.read_past(None)

    def push_event(self, user, device, line):
        """Push an event line to a device if it is online here (an event is not stored)."""
        entry = self._online.get((user, device))
        if entry is not None:
            entry[0].push_line(line)

    def push_typing(self, sender, sender_device, envelopes):
        """Push each typing notice to its device if it is connected here, and hand those
        for devices that are not to the other nodes (``bus.typing``)."""
        elsewhere = self.push_typing_here(sender, sender_device, envelopes)
        if elsewhere:
            self.bus.typing(sender, sender_device, elsewhere)

    def push_typing_here(self, sender, sender_device, envelopes):
        """Push each typing notice to its device if it is connected here and its send
        buffer has room, else drop it; the notices for devices not connected here.  Nothing
        is stored: a notice that would only arrive later is worth nothing."""
        elsewhere = []
        for env in envelopes:
            entry = self._online.get((env["to"], env["to_dev"]))
            if entry is None:
                elsewhere.append(env)
            elif entry[0].gate.open:
                entry[0].push_line(wire.encode({"event": "typing", "envelope": {
                    **env, "from": sender, "from_dev": sender_device}}))
        return elsewhere

    # -- routing ----------------------------------------------------------

    def send_unicast(self, sender, sender_device, envelopes):
        """One ciphertext per recipient device; the set must be exactly the current devices.

        A plain function returning a Deferred, not a coroutine: this is the
        hot path, and with the devices already in the directory's memory it
        goes straight to the store without any intermediate Deferred.
        """
        if not envelopes:  # for nobody: refused here, before it could join a write group
            raise ProtocolError(
                "bad_request", "a send needs at least one envelope (one per recipient device)")
        covered = _covered_devices(envelopes)
        users = {to for to, _ in covered}
        if len(users) == 1 and sender in users:  # a note to its own devices: no coverage rule
            d = self._store.get_devices(sender)
            return d.addCallback(self._accept_own, sender, sender_device, envelopes, covered)
        users.add(sender)
        known = {user: self._directory.cached(user) for user in users}
        if None not in known.values():
            return self._accept_unicast(sender, sender_device, envelopes, covered, known)
        d = defer.ensureDeferred(self._load_devices(users))
        d.addCallback(
            lambda loaded: self._accept_unicast(sender, sender_device, envelopes, covered, loaded))
        return d

    async def _load_devices(self, users):
        """``{user: device ids}`` read through the directory; unknown_user for a missing one."""
        loaded = {}
        for user in sorted(users):
            loaded[user] = await self._directory.devices(user)
            if loaded[user] is None:
                raise await no_such_user(self._store, user)
        return loaded

    def _accept_unicast(self, sender, sender_device, envelopes, covered, devices_of):
        required = {(user, device) for user, devices in devices_of.items() for device in devices}
        required.discard((sender, sender_device))
        if required != covered:
            missing, extra = required - covered, covered - required
            raise ProtocolError(
                "devices_mismatch",
                "the envelopes must cover exactly the recipients' current devices"
                " and your other devices",
                {"missing": _as_map(missing), "extra": _as_map(extra)},
            )
        return self._store_unicast(sender, sender_device, envelopes)

    def _accept_own(self, rows, sender, sender_device, envelopes, covered):
        """A send to the sender's own devices only may address any of them that have keys,
        current or pending (the link exchange talks to a device in no list yet)."""
        extra = covered - {(sender, row["device"]) for row in rows
                           if row["device"] != sender_device}
        if extra:
            raise ProtocolError(
                "devices_mismatch", "a note to your own devices must address devices of your "
                                    "account that have published keys, not this one",
                {"missing": {}, "extra": _as_map(extra)})
        return self._store_unicast(sender, sender_device, envelopes)

    def _store_unicast(self, sender, sender_device, envelopes):
        now = self._store.now_ms()
        batch = [
            {
                "id": env["id"],
                "sender": sender,
                "sender_device": sender_device,
                "recipients": [(env["to"], env["to_dev"])],
                "body": envelope_body(sender, sender_device, env, env["to"], env["to_dev"], None, now),
            }
            for env in envelopes
        ]
        return self._commit_and_deliver(batch, {"accepted": [env["id"] for env in envelopes]})

    def send_to_room(self, sender, sender_device, fields, room, members, recipients):
        """One ciphertext for a room, kept once in its history; every device following the
        room reads it from there.  It is pushed to the online devices of ``members`` (every
        online device when None: the broadcast room) but the sender's, found after the
        commit so that a device logging in meanwhile is not missed.  The answer reports
        ``recipients``, the number of devices it is for."""
        batch = [
            {
                "id": fields["id"],
                "sender": sender,
                "sender_device": sender_device,
                "recipients": (),
                "members": members,
                "body": envelope_body(sender, sender_device, fields, None, None, room,
                                      self._store.now_ms()),
                "history": room,
            }
        ]
        return self._commit_and_deliver(
            batch, {"accepted": [fields["id"]], "recipients": recipients})

    def deliver_server_envelope(self, envelope_id, body, recipients):
        """An envelope the server itself writes (membership events), queued like any other."""
        return self._commit_and_deliver([{"id": envelope_id, "sender": "", "sender_device": "",
                                          "recipients": recipients, "body": body}])

    def _commit_and_deliver(self, batch, answer=None):
        """Store ``batch`` durably, then push it to the recipients online; a Deferred firing
        with ``answer`` (one callback for both: this runs for every message)."""
        if len({item["id"] for item in batch}) != len(batch):
            raise ProtocolError("duplicate_envelope", "two envelopes in one request share an id")
        d = self._store.enqueue(batch)
        d.addCallbacks(self._deliver, _refuse_duplicate, callbackArgs=(batch, answer))
        return d

    def _deliver(self, places, batch, answer):
        accepted = self._metrics.accepted
        heard = self.heard  # None: this is the database's only node, its commits all in order
        in_order = heard is None or not places or heard.own(places[0][0], places[-1][0])
        for item, (seq, pos) in zip(batch, places):
            body = item["body"].encode("utf-8")
            if "history" in item:
                accepted["room" if item["members"] is not None else "broadcast"] += 1
                entry = (item["history"], pos)
                for cursor in self._online_followers(item):
                    if not in_order:
                        cursor.fall_behind()
                    cursor.notify(seq, body, item["id"], entry)
                continue
            if item["sender"]:  # not a membership event the relay wrote
                accepted["unicast"] += 1
            for user, device in item["recipients"]:
                cursor = self.cursor(user, device)
                if cursor is not None:
                    if not in_order:
                        cursor.fall_behind()
                    cursor.notify(seq, body)
        return answer

    def _online_followers(self, item):
        """The cursors of the online devices a room message is pushed to."""
        members = item["members"]
        if members is None:
            cursors = [cursor for devices in self._online_devices_of.values()
                       for cursor in devices.values()]
        else:
            cursors, online = [], self._online_devices_of
            for member in members:
                devices = online.get(member)
                if devices:
                    cursors.extend(devices.values())
        sender = self.cursor(item["sender"], item["sender_device"])
        return [cursor for cursor in cursors if cursor is not sender]


def _covered_devices(envelopes):
    """The (user, device) each envelope is for; a device may be named once."""
    covered = set()
    for env in envelopes:
        target = (env["to"], env["to_dev"])
        if target in covered:
            raise ProtocolError(
                "bad_field", f"two envelopes for device {env['to']}/{env['to_dev']}"
            )
        covered.add(target)
    return covered


def _refuse_duplicate(failure):
    failure.trap(store_errors.DuplicateEnvelope)
    raise ProtocolError(
        "duplicate_envelope", f"envelope id {failure.value.envelope_id} was already used")


def _as_map(pairs):
    result = {}
    for user, device in sorted(pairs):
        result.setdefault(user, []).append(device)
    return result
