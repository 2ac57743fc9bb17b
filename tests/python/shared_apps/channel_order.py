"""
tests/python/test_shared.py's helper: N worker processes (forked after the
first use of the heap, as `ame run` forks them) each subscribe to one
channel on their own AMEReactor, wait until all N receive, then publish M
messages each, as fast as they can, and collect every message until they
have N * M.  Each writes what it received, in order, as one JSON line to
stdout.

    python3 channel_order.py N M
"""

import json
import os
import sys

from ame import reactor as amereactor

amereactor.install()
from twisted.internet import reactor  # noqa: E402

import ame.shared  # noqa: E402


def main():
    n, m = int(sys.argv[1]), int(sys.argv[2])
    tag = "order-%d" % os.getpid()
    channel = ame.shared.channel(tag)
    ready = ame.shared.counter(tag + ".ready")
    got = []

    def received(value):
        got.append(value)
        if len(got) == n * m:
            reactor.stop()

    channel.subscribe(received)
    sys.stdout.flush()
    # As `ame run` does: no C reactor thread across fork (the child could
    # inherit a lock it held); each worker starts its own core.
    reactor._core.close()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            reactor._reinitAfterFork()
            reactor.waker._core = reactor._core

            def begin():
                # subscribe's start ran before this (startup order).
                ready.add(1)
                wait_all()

            def wait_all():
                if ready.value < n:
                    reactor.callLater(0.001, wait_all)
                    return
                for k in range(m):
                    channel.publish([i, k])

            reactor.callWhenRunning(begin)
            reactor.callLater(60, reactor.stop)
            reactor.run()
            os.write(1, (json.dumps({"worker": i, "got": got}) + "\n").encode())
            os._exit(0)
        pids.append(pid)
    status = 0
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        status |= st
    sys.exit(1 if status else 0)


main()
