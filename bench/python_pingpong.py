#!/usr/bin/python3
"""
TCP ping-pong over loopback on AMEReactor and EPollReactor, one reactor per
child process: C connections each bounce a small message N times.  It
measures the per-event cost of the reactor (readiness to Python and back),
which is where the binding adds a hop today (docs/twisted.md).  Not a test:
timings never decide anything.

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 bench/python_pingpong.py [-c 1] [-n 20000]
        [--json]
"""

import argparse
import json
import os
import sys
import time

from benchlib import run_json


def child(which, conns, n):
    if which == "ame":
        from ame import reactor as m
    else:
        from twisted.internet import epollreactor as m
    m.install()
    from twisted.internet import protocol, reactor

    left = [conns]

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    class Ping(protocol.Protocol):
        def connectionMade(self):
            self.count = 0
            self.transport.write(b"ping")

        def dataReceived(self, data):
            self.count += 1
            if self.count < n:
                self.transport.write(data)
            else:
                self.transport.loseConnection()

        def connectionLost(self, reason):
            left[0] -= 1
            if left[0] == 0:
                reactor.stop()

    port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Echo),
                             interface="127.0.0.1")
    start = []

    def go():
        start.append(time.perf_counter())
        for _ in range(conns):
            reactor.connectTCP("127.0.0.1", port.getHost().port,
                               protocol.ClientFactory.forProtocol(Ping))

    reactor.callWhenRunning(go)
    reactor.run()
    secs = time.perf_counter() - start[0]
    print(json.dumps({"reactor": which, "seconds": secs,
                      "round_trips_per_s": conns * n / secs}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--connections", type=int, default=1)
    ap.add_argument("-n", "--round-trips", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.connections, a.round_trips)
    rows = {}
    for which in ("epoll", "ame"):
        res, err = run_json(
            [sys.executable, os.path.abspath(__file__), "--child", which,
             "-c", str(a.connections), "-n", str(a.round_trips)], 600)
        if err is not None:
            sys.exit("python_pingpong: the %s child failed: %s" % (which, err))
        rows[which] = res
    if a.json:
        print(json.dumps(rows))
        return 0
    base = rows["epoll"]["round_trips_per_s"]
    print("%d connection(s) x %d round trips" % (a.connections,
                                                 a.round_trips))
    print("%-8s %14s %8s" % ("reactor", "round trips/s", "ratio"))
    for which in ("epoll", "ame"):
        r = rows[which]["round_trips_per_s"]
        print("%-8s %14.0f %8.2f" % (which, r, r / base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
