#!/usr/bin/python3
"""bench/counter_web.py -- examples/python/web.py with a shared hit counter:
the twisted.web app that shared_bench.py serves under `ame run --workers N`
with and without the counter, to measure what one ame.shared update per
request costs the serving path.

    ame run --workers 2 bench/counter_web.py --port 8080 [--counter]

GET / answers b"Hello, world!"; with --counter it first adds 1 to the
shared counter "counter_web.hits" (one transaction per request, whichever
worker serves it).  GET /count answers the counter's value (and adds
nothing), so that the runner can check that every request served was
counted.  In a build tree, ame needs PYTHONPATH=BUILDDIR/bindings:bindings.
"""

import argparse


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--interface", default="127.0.0.1")
    ap.add_argument("--counter", action="store_true",
                    help="count every GET / in a shared counter")
    args = ap.parse_args()

    import ame.shared
    from twisted.internet import reactor
    from twisted.web import resource, server

    hits = ame.shared.counter("counter_web.hits")
    counting = args.counter

    class Hello(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"Content-Type", b"text/plain")
            if request.path == b"/count":
                return b"%d" % hits.value
            if counting:
                hits.add(1)
            return b"Hello, world!"

    port = reactor.listenTCP(args.port, server.Site(Hello()),
                             interface=args.interface)
    print("counter_web.py: listening on http://%s:%d/ (counter %s)" % (
        args.interface, port.getHost().port, "on" if counting else "off"),
        flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
