#!/usr/bin/python3
"""raw_http.py -- a plain Twisted Protocol that answers every HTTP/1.1
request with one fixed response, on keep-alive connections.

No HTTP parsing beyond finding where requests end: a request is a head
ended by b"\\r\\n\\r\\n" (no bodies).  Pipelined requests and heads split
over several reads are handled: the answers to every request completed by
one read go out in one write, and an incomplete head is kept for the next
read.  This is the Python twin of bench/plain_libuv_http.c (the same 79
bytes per answer), so that the reactor, not the application, is what a
benchmark of it measures.

    /usr/bin/python3 examples/python/raw_http.py [--port 8080]
        [--interface 127.0.0.1] [--reactor ame|epoll|default]

--reactor picks the Twisted reactor before twisted.internet.reactor is
imported: ame (ame.reactor.install()), epoll
(twisted.internet.epollreactor.install()) or default (install nothing:
Twisted's default, EPollReactor on Linux).  Where a reactor is installed
already (the program runs under `ame run`, or twistd), it is used as is.
In a build tree, ame needs PYTHONPATH=BUILDDIR/bindings:bindings.
"""

import argparse
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: 14\r\n"
            b"\r\n"
            b"Hello, world!\n")
END = b"\r\n\r\n"
MAX_HEAD = 65536  # an unfinished head longer than this is refused

TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
             b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def install_reactor(name):
    """Install the reactor called name (ame, epoll or default) unless one
    is installed already; return a note for the startup line."""
    if "twisted.internet.reactor" in sys.modules:
        return "installed already"
    if name == "ame":
        import ame.reactor
        ame.reactor.install()
    elif name == "epoll":
        from twisted.internet import epollreactor
        epollreactor.install()
    return None


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8080,
                    help="TCP port (default 8080; 0 picks a free one)")
    ap.add_argument("--interface", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; '' for "
                         "every interface)")
    ap.add_argument("--reactor", choices=("ame", "epoll", "default"),
                    default="default",
                    help="Twisted reactor to install (default: none, "
                         "Twisted's default or the one installed already)")
    args = ap.parse_args()
    install_reactor(args.reactor)

    from twisted.internet import protocol, reactor

    class RawHTTP(protocol.Protocol):
        """Answer each complete request head with RESPONSE."""

        buf = b""

        def dataReceived(self, data):
            buf = self.buf + data if self.buf else data
            n = buf.count(END)
            if n:
                self.buf = buf[buf.rfind(END) + 4:]
                self.transport.write(RESPONSE * n)
            else:
                self.buf = buf
            if len(self.buf) > MAX_HEAD:
                self.buf = b""
                self.transport.write(TOO_LARGE)
                self.transport.loseConnection()

    factory = protocol.Factory.forProtocol(RawHTTP)
    port = reactor.listenTCP(args.port, factory, interface=args.interface)
    print("raw_http.py: listening on http://%s:%d/ (%s)" % (
        args.interface or "0.0.0.0", port.getHost().port,
        type(reactor).__name__), flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
