"""
A twisted.web server whose state lives in ame.shared, for `ame run`
tests of shared state across workers (tests/cmd/test_run.py, case
shared).

    shared_web.py [PORT]        (0 or nothing: the kernel picks; printed)

Paths:

    /          increments the shared counter "hits" and answers its new
               value (an ame.atomic block: add, then read)
    /count     the counter's value, without changing it
    /transfer  moves 1 between two entries of the shared dict "bank"
               (ame.atomic), answers their sum (always 1000)
    /sum       the sum of the bank's entries

Every response carries X-Worker-Pid.  Setup (before reactor.run())
creates the objects, so that every worker sees them from the start.
"""
import os
import random
import sys

import ame
import ame.shared
from twisted.internet import reactor
from twisted.web import resource, server

hits = ame.shared.counter("hits")
bank = ame.shared.dict("bank")
if len(bank) == 0:
    bank.update({"a": 500, "b": 500})


def hit():
    hits.add(1)
    return hits.value


def transfer():
    src, dst = random.choice((("a", "b"), ("b", "a")))
    if bank[src] > 0:
        bank[src] -= 1
        bank[dst] += 1
    return bank["a"] + bank["b"]


class Root(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"x-worker-pid", str(os.getpid()).encode())
        if request.path == b"/count":
            value = hits.value
        elif request.path == b"/transfer":
            value = ame.atomic(transfer)
        elif request.path == b"/sum":
            value = ame.atomic(lambda: bank["a"] + bank["b"])
        else:
            value = ame.atomic(hit)
        return b"%d\n" % value


port = reactor.listenTCP(int(sys.argv[1]) if len(sys.argv) > 1 else 0,
                         server.Site(Root()), interface="127.0.0.1")
print("listening on %d" % port.getHost().port, flush=True)
reactor.run()
