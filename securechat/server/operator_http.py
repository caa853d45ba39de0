"""The operator's HTTP listener: ``/health``, ``/ready`` and ``/metrics`` (twisted.web).

Plain HTTP on ``[http] interface`` (127.0.0.1 by default) and ``port`` (9797): it
is for the machine's own monitoring (a Prometheus scraper, a load balancer's or an
orchestrator's health checks), never for users, and it serves nothing a user sent.
Anything that must reach it from elsewhere goes through a tunnel or a proxy the
operator sets up (docs/operations.rst, "Monitoring").
"""

import io

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

READY_TIMEOUT = 2.0
"""Seconds the store has to answer ``/ready``'s query before the relay counts as not ready."""

MAX_BODY_BYTES = 64 * 1024
"""The longest request body read: the admin API's bodies are a few hundred bytes of JSON,
so anything longer is refused (413) before it is stored, not buffered to memory or disk."""

IDLE_TIMEOUT = 60
"""Seconds an HTTP connection may sit idle before it is closed (twisted.web's default is
twelve hours: every connection it holds open is memory and a file descriptor)."""

_TOO_LARGE_TEXT = b"request body over %d bytes\n" % MAX_BODY_BYTES
TOO_LARGE = (b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
             % (len(_TOO_LARGE_TEXT), _TOO_LARGE_TEXT))


class BoundedRequest(server.Request):
    """A request whose body is read up to MAX_BODY_BYTES: a longer one (said by its
    Content-Length or found while chunks arrive) is answered 413, its connection closed at
    once, and it is never processed (an admin call must not run on a cut body)."""

    _body_bytes = 0
    _refused = False

    def gotLength(self, length):
        self.content = io.BytesIO()
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse_too_large()

    def handleContentChunk(self, data):
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY_BYTES:
            self._refuse_too_large()
        elif not self._refused:
            self.content.write(data)

    def _refuse_too_large(self):
        if not self._refused:
            self._refused = True
            self.channel.transport.write(TOO_LARGE)
            self.channel.transport.loseConnection()

    def process(self):
        if not self._refused:
            super().process()


class Health(resource.Resource):
    """200 while the process runs and its reactor turns (liveness)."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok\n"


class _Deferred(resource.Resource):
    """A leaf whose answer comes from a coroutine: ``answer(request)`` returns
    ``(status, content type, body bytes)``."""

    isLeaf = True
    log = Logger()

    def render_GET(self, request):
        d = defer.ensureDeferred(self.answer(request))
        d.addCallback(self._write, request)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    @staticmethod
    def _write(answer, request):
        status, content_type, body = answer
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.write(body)
        request.finish()

    def _failed(self, failure, request):
        self.log.failure("answering {path} failed", failure, path=request.path)
        self._write((500, b"text/plain; charset=utf-8", b"internal error\n"), request)


class Ready(_Deferred):
    """200 only while the TLS port listens and the store answers; 503 with the reason."""

    def __init__(self, relay_service, clock):
        super().__init__()
        self._relay = relay_service
        self._clock = clock

    async def answer(self, request):
        problem = await self._problem()
        if problem:
            return 503, b"text/plain; charset=utf-8", f"not ready: {problem}\n".encode()
        return 200, b"text/plain; charset=utf-8", b"ready\n"

    async def _problem(self):
        if not self._relay.listening:
            return "the TLS port is not listening"
        ping = self._relay.store.ping()
        ping.addTimeout(READY_TIMEOUT, self._clock)
        try:
            await ping
        except defer.TimeoutError:
            return f"the store did not answer within {READY_TIMEOUT:g} s"
        except Exception as e:  # whatever the database said: the reason, one line
            reason = getattr(e, "client_message", None) or type(e).__name__
            return f"the store does not answer ({reason})"
        return None


class Metrics(_Deferred):
    """The Prometheus text format of the relay's registry (``metrics.RelayMetrics``)."""

    def __init__(self, registry, refresh):
        super().__init__()
        self._registry = registry
        self._refresh = refresh  # a coroutine function reading what the store knows

    async def answer(self, request):
        await self._refresh()
        return 200, CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(self._registry)


def operator_site(relay_service, registry, refresh, clock, admin=None):
    """The listener's resources; ``admin`` (an ``admin_api.AdminAPI``) serves
    ``/admin/v1`` when the admin API is on."""
    root = resource.Resource()
    root.putChild(b"health", Health())
    root.putChild(b"ready", Ready(relay_service, clock))
    root.putChild(b"metrics", Metrics(registry, refresh))
    if admin is not None:
        versions = resource.Resource()
        versions.putChild(b"v1", admin)
        root.putChild(b"admin", versions)
    site = server.Site(root, requestFactory=BoundedRequest, timeout=IDLE_TIMEOUT)
    site.displayTracebacks = False
    site.noisy = False
    site.log = lambda request: None  # a scrape every few seconds is no news for the log
    return site
