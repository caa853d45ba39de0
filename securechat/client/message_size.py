"""The longest message text, checked before a message is encrypted or even before the
key store is unlocked, so a text the relay could never take gets one clear line
(``message too long: 812345 bytes (limit 32000 bytes)``, exit 2) instead of a refused
frame, a dropped connection or an outbox entry that can never leave.

Why 32000 bytes: a 1:1 message is one Olm envelope per device in ONE ``send`` line,
which the relay takes up to ``wire.MAX_LINE_BYTES`` (1 MiB), each ciphertext up to
``wire.MAX_CIPHERTEXT_CHARS``.  Encryption and base64 make the text about 4/3 larger
(plus the padded header, some hundred bytes), so a 32000-byte text is about 44 KB a
device: twenty devices fit in one line, which is the recipient's and the sender's
other ones when both accounts have the most devices a relay allows (``[accounts]
max_devices``, at most 10).  A room message (one Megolm ciphertext) fits easily.
tests/test_cli_conventions.py encrypts a text of this size for twenty devices and
checks that the line fits.

Standard library only: the daemon path (commands.py) imports it.
"""

import json

from securechat.client.exit_codes import EXIT_USAGE
from securechat.client.rpc import CommandFailed

MAX_MESSAGE_BYTES = 32000
SEND_FITS_DEVICES = 20
"""Devices whose envelopes of a ``MAX_MESSAGE_BYTES`` text fit in one relay line."""


def text_bytes(text):
    """The size of ``text`` as it is encrypted: its UTF-8 bytes inside the message's
    JSON, where a quote, a backslash or a control character takes its escape's bytes."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2


def check_message_size(text):
    """CommandFailed (exit 2) naming the size and the limit when ``text`` is too long."""
    size = text_bytes(text)
    if size > MAX_MESSAGE_BYTES:
        raise CommandFailed(f"message too long: {size} bytes (limit {MAX_MESSAGE_BYTES} bytes)",
                            EXIT_USAGE)
