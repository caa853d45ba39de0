"""``securechat-admin``'s lines for a person: times in UTC, one entry a line.

User and room names are ones the relay accepted as such; a device's name is text its
owner chose, so it reaches the terminal through the client's one rendering function.
"""

from securechat.client.render import safe
from securechat.timestamps import utc_date


def _when(ms):
    return utc_date(ms) if ms else "never"


def users(entries):
    if not entries:
        return ["no accounts"]
    return [f"{u['user']}  devices {u['devices']}  created {_when(u['created'])}  "
            f"last seen {_when(u['last_seen'])}  queued {u['queued']}"
            + ("  DISABLED" if u["disabled"] else "") for u in entries]


def user(found):
    lines = [f"{found['user']}  created {_when(found['created'])}"
             + ("  DISABLED" if found["disabled"] else "")]
    for d in found["devices"]:
        state = "online" if d.get("online") else f"last seen {_when(d['last_seen'])}"
        listed = "" if d["listed"] else "  (pending: being linked)"
        lines.append(f"  device {d['device']}  {safe(d['name']) if d['name'] else '(no name)'}  added "
                     f"{_when(d['created'])}  {state}  queued {d['queued']}{listed}")
    rooms = found["rooms"]
    lines.append("  rooms: " + (", ".join(f"{room} ({role})" for room, role in rooms.items())
                                if rooms else "none"))
    return lines


def rooms(entries):
    if not entries:
        return ["no rooms"]
    return [_room_line(r) for r in entries]


def _room_line(r):
    flags = "".join(("  invite-only" if r["invite_only"] else "",
                     "  password" if r["password"] else ""))
    return (f"{r['room']}  owner {r['owner']}  members {r['members']}  "
            f"messages kept {r['history']}  created {_when(r['created'])}{flags}")


def room(found):
    return [_room_line(found), f"  history: {found['history_bytes']} bytes of ciphertext",
            *(f"  {user} ({role})" for user, role in found["members"].items())]


def invite(entry):
    uses = entry.get("uses_left", entry.get("uses"))
    expires = _when(entry["expires_at"]) if entry["expires_at"] else "never"
    return f"  id {entry['id']}  uses left {uses}  expires {expires}"
