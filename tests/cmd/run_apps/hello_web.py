"""
A twisted.web server for `ame run` tests (tests/cmd/test_run.py).

    hello_web.py [PORT]        (0 or nothing: the kernel picks; printed)

Setup (before reactor.run()) opens one listening port on 127.0.0.1 and
prints "listening on PORT".  Paths:

    /        "hello\\n"
    /close   "hello\\n", then the server closes the connection
    /big     256 KiB of b"x" (truncation shows)
    /slow    "slow\\n" 1 s later (a request in flight for a while)
    /raise   the resource raises ZeroDivisionError (twisted.web: a 500)
    /later   "later\\n" now; a callLater callback raises
             ZeroDivisionError just after (logged; the reactor goes on)

Every response carries X-Worker-Pid (the serving process), X-Worker
(AME_WORKER, "-" in one process), X-Io (the ame reactor's I/O mode,
"thread" or "inline") and X-Cpus (ame._ame.cpu_count()).  With
HELLO_SIGNALS=1 the program handles SIGHUP and SIGUSR1 by counting them,
and responses carry X-Signals: "hup=N usr1=M" (this process's counts).  At shutdown the process prints
"served N requests on M connections" (per worker: each has its own
counters).  With HELLO_LOG=1 in the environment it logs Twisted's events
(access lines included) to stderr.
"""
import os
import sys

from ame import _ame
from twisted.internet import reactor, task
from twisted.web import resource, server

BIG = 256 * 1024
SLOW_S = 1.0

served = [0]
signals_seen = {"hup": 0, "usr1": 0}
connections = [0]


class CountingSite(server.Site):
    def buildProtocol(self, addr):
        connections[0] += 1
        return server.Site.buildProtocol(self, addr)


class Root(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        served[0] += 1
        request.setHeader(b"x-worker-pid", str(os.getpid()).encode())
        request.setHeader(b"x-worker",
                          os.environ.get("AME_WORKER", "-").encode())
        request.setHeader(b"x-io", reactor._core.io.encode())
        request.setHeader(b"x-cpus", str(_ame.cpu_count()).encode())
        request.setHeader(b"x-signals", ("hup=%(hup)d usr1=%(usr1)d"
                                         % signals_seen).encode())
        if request.path == b"/close":
            # One request per connection: what twisted.web does for a
            # request with "Connection: close".
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            request.channel.persistent = False
            return b"hello\n"
        if request.path == b"/raise":
            1 // 0
        if request.path == b"/later":
            reactor.callLater(0, lambda: 1 // 0)
            return b"later\n"
        if request.path == b"/big":
            return b"x" * BIG
        if request.path == b"/slow":
            def later():
                request.write(b"slow\n")
                request.finish()
            task.deferLater(reactor, SLOW_S, later)
            return server.NOT_DONE_YET
        return b"hello\n"


def bye():
    print("served %d requests on %d connections"
          % (served[0], connections[0]), flush=True)


if os.environ.get("HELLO_LOG") == "1":
    from twisted.logger import globalLogBeginner, textFileLogObserver
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)

if os.environ.get("HELLO_SIGNALS") == "1":
    import signal

    def count(signo, frame):
        signals_seen["hup" if signo == signal.SIGHUP else "usr1"] += 1

    signal.signal(signal.SIGHUP, count)
    signal.signal(signal.SIGUSR1, count)

port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
site = CountingSite(Root())
site.noisy = False
p = reactor.listenTCP(port, site, interface="127.0.0.1")
print("listening on %d" % p.getHost().port, flush=True)
reactor.addSystemEventTrigger("after", "shutdown", bye)
reactor.run()
