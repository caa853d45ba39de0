"""The hints relay nodes on one PostgreSQL database send each other: their format, in one place.

A hint says *where to look*, never what is there: which devices, rooms or
caches another node's commit touched.  The store writes the delivery hint of
each write group inside that group's transaction (PostgreSQL sends a NOTIFY
only when its transaction commits); ``securechat.server.nodebus`` sends the
others and reads them all.  Every hint is compact JSON carrying the sending
node's id (``"n"``) and its kind (``"k"``).  PostgreSQL refuses a payload of
8000 bytes or more, so one above ``MAX_PAYLOAD`` becomes ``{"n", "k": "all"}``
(plus the write group's numbers, ``"t"``, when it has them): every node then
re-reads every cursor and forgets every cache, which is correct, only slower.
"""

import json

CHANNEL = "securechat"
"""The one PostgreSQL channel every node of a database LISTENs on."""

MAX_PAYLOAD = 7900
"""Bytes of a hint's JSON, at most (PostgreSQL's NOTIFY limit is 8000, with the channel)."""

KINDS = ("q", "all", "devices", "room", "user", "login", "typing")


def encode(hint):
    """The JSON text of ``hint`` (a dict with ``"n"``, first, and ``"k"``), or its ``"all"``
    stand-in when too long."""
    text = json.dumps(hint, separators=(",", ":"))
    if len(text.encode("utf-8")) <= MAX_PAYLOAD:
        return text
    short = {"n": hint["n"], "k": "all"}
    if "t" in hint:
        short["t"] = hint["t"]
    return json.dumps(short, separators=(",", ":"))


def typing(node, sender, sender_device, envelopes):
    """The hints that carry typing notices to the other nodes: ``{"k": "typing", "f":
    sender, "fd": device, "e": [envelope, ...]}``, as many envelopes in each as fit (a
    notice is never stored, so it travels in the hint itself; one that would not fit
    alone is left out, as a notice that cannot be pushed is dropped)."""
    texts, batch = [], []
    for envelope in envelopes:
        text = _typing_text(node, sender, sender_device, batch + [envelope])
        if len(text.encode("utf-8")) <= MAX_PAYLOAD:
            batch.append(envelope)
            continue
        if batch:
            texts.append(_typing_text(node, sender, sender_device, batch))
        alone = _typing_text(node, sender, sender_device, [envelope])
        batch = [envelope] if len(alone.encode("utf-8")) <= MAX_PAYLOAD else []
    if batch:
        texts.append(_typing_text(node, sender, sender_device, batch))
    return texts


def _typing_text(node, sender, sender_device, envelopes):
    return json.dumps({"n": node, "k": "typing", "f": sender, "fd": sender_device,
                       "e": envelopes}, separators=(",", ":"))


def delivery(node, items, outcomes):
    """The delivery hint of one write group (``SqlStore._writes``): its ``items`` (``("enqueue",
    envelopes)`` and ``("ack", ...)``) and their ``outcomes`` (``[(seq, pos), ...]`` per
    envelope, or the error of a call that stored nothing); None when it stored nothing.

    ``"t"``: the group's first and last numbers (they are consecutive: a group
    takes them at once, under the counter's row lock, until it commits);
    ``"d"``: ``[user, device, seq]`` of each recipient device, its last seq in
    the group; ``"r"``: ``[room, seq]`` of each room; ``"b"``: the seq of the
    group's last broadcast, or null.
    """
    devices, rooms, broadcast, first, last = {}, {}, None, None, None
    for (kind, envelopes), outcome in zip(items, outcomes):
        if kind != "enqueue" or isinstance(outcome, Exception):
            continue
        for envelope, (seq, _) in zip(envelopes, outcome):
            if first is None:
                first = seq
            last = seq
            room = envelope.get("history")
            if room is None:
                for recipient in envelope["recipients"]:
                    devices[tuple(recipient)] = seq
            elif envelope.get("members", ()) is None:
                broadcast = seq
            else:
                rooms[room] = seq
    if first is None:
        return None
    return encode({"n": node, "k": "q", "t": [first, last],
                   "d": [[user, device, seq] for (user, device), seq in devices.items()],
                   "r": [[room, seq] for room, seq in rooms.items()], "b": broadcast})


def parse(text):
    """The hint ``text`` holds, as a dict; ValueError naming what is wrong with it."""
    hint = json.loads(text)
    if not isinstance(hint, dict) or not isinstance(hint.get("n"), str):
        raise ValueError("a node hint must be a JSON object with the sending node's id (n)")
    if hint.get("k") not in KINDS:
        raise ValueError(f"unknown node hint kind {hint.get('k')!r}")
    numbers = hint.get("t")
    if numbers is not None and not (
            isinstance(numbers, list) and len(numbers) == 2
            and all(isinstance(n, int) for n in numbers) and numbers[0] <= numbers[1]):
        raise ValueError(f"a node hint's numbers (t) must be [first, last], not {numbers!r}")
    return hint
