"""The marks that show how far an own message got (light: ``render`` imports it, and the
daemon path of the CLI must start without Twisted)."""


def status_text(fields):
    """The mark the chat shows after an own line: ``✓`` sent, ``✓✓`` delivered, ``✓✓ read``;
    a room message ``✓✓ read by 3 of 5``."""
    status = fields.get("status")
    mark = {"sent": "✓", "delivered": "✓✓", "read": "✓✓ read"}.get(status, "")
    if fields.get("members") is not None or fields.get("read_by"):
        total = fields.get("members")
        if fields.get("read_by"):
            mark = f"✓✓ read by {fields['read_by']}" + (f" of {total}" if total else "")
        elif status == "sent" and fields.get("delivered_to"):
            mark = f"✓ delivered to {fields['delivered_to']}" + (f" of {total}" if total else "")
    return mark
