"""Makes ``twistd securechat`` find the relay (this directory has no __init__.py on purpose)."""

from twisted.application.service import ServiceMaker

securechat = ServiceMaker(
    "securechat relay",
    "securechat.server.tap",
    "Self-hosted end-to-end encrypted messenger relay (TLS)",
    "securechat",
)
