"""The TLS listener, with sockets that send at once when nothing is waiting to be sent.

Twisted's TCP transport never writes in ``write()``: it buffers, asks epoll
to report the socket writable (one ``epoll_ctl``), sends on the next poll and
then stops asking (a second ``epoll_ctl``).  A relay pushes one small frame to
each of many connections -- fifty for a message to a fifty-device room -- so
that round costs two system calls and a pass through the reactor per push.

``WriteThroughServer.write`` sends straight away when its buffer is empty,
which is the common case for a reader that keeps up; whatever the kernel does
not take is buffered exactly as before, so back-pressure, producers and
``loseConnection`` behave as in Twisted.  The TLS layer above still gathers
the small writes of one reactor turn into one record, so this adds no
system calls.
"""

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOFactory


class WriteThroughServer(tcp.Server):
    """A server-side TCP connection whose writes try the socket before the buffer."""

    def write(self, data):
        if (self.connected and not self._writeDisconnected and not self.dataBuffer
                and not self._tempDataBuffer and data):
            try:
                sent = self.socket.send(data)
            except OSError:
                # Full (EAGAIN), interrupted or broken: the buffered path and
                # doWrite deal with all of these as they always have.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


class WriteThroughPort(tcp.Port):
    transport = WriteThroughServer


def listen_tls(reactor, port, context, factory, interface):
    """Listen on ``interface:port`` for TLS connections to ``factory``; the listening port.

    What ``reactor.listenSSL`` does (TLS over a TCP port), with the
    write-through transport.
    """
    listening = WriteThroughPort(port, TLSMemoryBIOFactory(context, False, factory),
                                 interface=interface, reactor=reactor)
    listening.startListening()
    return listening
