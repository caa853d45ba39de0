"""A renewed certificate taken without a restart (SIGHUP, docs/operations.rst "Certificates").

The listening port asks ``ReloadableServerTLS`` for each new connection's TLS
object, made from whichever certificate and key are current: a reload swaps
them for the connections accepted from then on, while the connections already
open keep the session they negotiated.  A new pair that cannot be loaded (a
missing file, a key that does not match the certificate) is refused and the
current pair stays, so a botched renewal never takes the relay off the air.
"""

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from securechat.server.tls import server_context_factory


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """The relay's TLS server options, replaceable while it listens."""

    log = Logger()

    def __init__(self, options, fingerprint):
        self._options = options
        self.fingerprint = fingerprint

    def serverConnectionForTLS(self, tls_protocol):
        return SSL.Connection(self._options.getContext(), None)

    def reload(self, config):
        """Load ``[tls] certificate`` / ``private_key`` (or the generated pair) again; True
        once new connections get it, False (logged, the current pair kept) if it fails."""
        try:
            options, fingerprint = server_context_factory(config)
            options.getContext()  # builds the context: a key that does not fit fails here
        except (ValueError, SSL.Error) as e:
            self.log.error("TLS certificate reload refused, the current certificate stays "
                           "({fingerprint}): {reason}", fingerprint=self.fingerprint, reason=e)
            return False
        self._options, old = options, self.fingerprint
        self.fingerprint = fingerprint
        self.log.info("TLS certificate reloaded: new connections get {new} (was {old}); "
                      "open connections keep theirs", new=fingerprint, old=old)
        return True
