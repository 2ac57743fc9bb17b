"""
For the `ame run` back-off test: each worker dies (exit status 7) just
after its reactor started (in the first iteration after the start-up
triggers, so after its first heartbeat: a worker that dies before that, in
the first start, ends the service) until it has done so CRASHES times
(counted with files in the directory CRASH_DIR, per worker id), then
serves a port.

    crash_loop.py CRASH_DIR CRASHES
"""
import os
import sys

from twisted.internet import protocol, reactor

crash_dir, crashes = sys.argv[1], int(sys.argv[2])


def maybe_crash():
    wid = os.environ.get("AME_WORKER", "-")
    done = [f for f in os.listdir(crash_dir) if f.startswith("w%s-" % wid)]
    if len(done) < crashes:
        open(os.path.join(crash_dir, "w%s-%d" % (wid, len(done))), "w").close()
        os._exit(7)
    print("worker %s serving" % wid, flush=True)


p = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
reactor.callWhenRunning(reactor.callLater, 0, maybe_crash)
reactor.run()
