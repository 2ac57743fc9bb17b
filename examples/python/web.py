#!/usr/bin/python3
"""web.py -- an ordinary twisted.web application: a Site whose one
Resource answers every GET with b"Hello, world!".

    /usr/bin/python3 examples/python/web.py [--port 8080]
        [--interface 127.0.0.1] [--reactor ame|epoll|default]
        [--tls PEMFILE]
    ame run [--workers N|auto] examples/python/web.py [--port 8080]

--reactor picks the Twisted reactor before twisted.internet.reactor is
imported: ame (ame.reactor.install()), epoll
(twisted.internet.epollreactor.install()) or default (install nothing:
Twisted's default, EPollReactor on Linux).  Where a reactor is installed
already -- under `ame run`, which installs ame's before the program starts,
or under twistd -- it is used as is, so the program runs unchanged there.
In a build tree, ame needs PYTHONPATH=BUILDDIR/bindings:bindings.

--tls PEMFILE serves HTTPS instead: PEMFILE holds the private key and the
certificate (PEM, one after the other), and the Site listens with
reactor.listenSSL and Twisted's default TLS settings
(PrivateCertificate.loadPEM(...).options(): a CertificateOptions, ECDHE key
exchange).  The TLS layer is whatever the reactor's listenSSL provides.
"""

import argparse
import sys


def install_reactor(name):
    """Install the reactor called name (ame, epoll or default) unless one
    is installed already."""
    if "twisted.internet.reactor" in sys.modules:
        return
    if name == "ame":
        import ame.reactor
        ame.reactor.install()
    elif name == "epoll":
        from twisted.internet import epollreactor
        epollreactor.install()


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
    ap.add_argument("--tls", metavar="PEMFILE",
                    help="serve HTTPS with the private key and certificate "
                         "in PEMFILE (default: plain HTTP)")
    args = ap.parse_args()
    install_reactor(args.reactor)

    from twisted.internet import reactor
    from twisted.web import resource, server

    class Hello(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"Content-Type", b"text/plain")
            return b"Hello, world!"

    site = server.Site(Hello())
    if args.tls:
        from twisted.internet import ssl
        with open(args.tls, "rb") as f:
            options = ssl.PrivateCertificate.loadPEM(f.read()).options()
        port = reactor.listenSSL(args.port, site, options,
                                 interface=args.interface)
    else:
        port = reactor.listenTCP(args.port, site, interface=args.interface)
    print("web.py: listening on %s://%s:%d/ (%s)" % (
        "https" if args.tls else "http", args.interface or "0.0.0.0",
        port.getHost().port, type(reactor).__name__), flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
