#!/usr/bin/python3
"""
reactor.callLater and DelayedCall.reset/cancel on AMEReactor (C:
bindings/ame/timers.c) and EPollReactor (Twisted's Python, which
AMEReactor used before), in one process, with timeit.  The cases are what
twisted.web does per request (TimeoutMixin: setTimeout, resetTimeout on
data, cancel at the end).  Not a test: timings never decide anything.

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 bench/python_timers.py [-n 100000] [--json]
"""

import argparse
import json
import timeit

from twisted.internet.epollreactor import EPollReactor

from ame.reactor import AMEReactor


def _noop():
    pass


def cases(reactor):
    new = reactor._newTimedCalls
    callLater = reactor.callLater

    def call_cancel():
        callLater(60, _noop).cancel()
        new.clear()

    def call_reset_cancel():
        dc = callLater(60, _noop)
        dc.reset(60)
        dc.cancel()
        new.clear()

    def web_request():
        # setTimeout, resetTimeout three times, setTimeout(None).
        dc = callLater(60, _noop)
        dc.reset(60)
        dc.reset(60)
        dc.reset(60)
        dc.cancel()
        new.clear()

    def call_only():
        callLater(60, _noop)
        new.clear()

    dc = callLater(3600, _noop)

    def reset_only():
        dc.reset(3600)

    return [
        ("callLater", call_only),
        ("callLater+cancel", call_cancel),
        ("callLater+reset+cancel", call_reset_cancel),
        ("callLater+3 resets+cancel", web_request),
        ("reset (later)", reset_only),
    ]


def measure(factory, n):
    reactor = factory()
    out = {}
    for name, fn in cases(reactor):
        best = min(timeit.repeat(fn, number=n, repeat=3))
        out[name] = best / n * 1e9
    # Keep what the cases leave from growing between runs.
    reactor._cancellations = 0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100000, help="calls per timing")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = {"epoll": measure(EPollReactor, a.n),
            "ame": measure(AMEReactor, a.n)}
    if a.json:
        print(json.dumps(rows))
        return
    print("%-28s %10s %10s %7s" % ("ns per operation", "epoll", "ame",
                                   "ratio"))
    for name in rows["epoll"]:
        e, m = rows["epoll"][name], rows["ame"][name]
        print("%-28s %10.0f %10.0f %6.2fx" % (name, e, m, e / m))


if __name__ == "__main__":
    main()
