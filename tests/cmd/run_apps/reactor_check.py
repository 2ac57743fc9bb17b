"""
Prints what `ame run` set up, then stops: the reactor class, sys.argv,
sys.path[0], __name__, and the worker id (AME_WORKER).
"""
import os
import sys

from twisted.internet import reactor

print("reactor %s.%s" % (type(reactor).__module__, type(reactor).__name__))
print("argv %r" % (sys.argv,))
print("path0 %s" % (sys.path[0],))
print("name %s" % (__name__,))
print("executable %s" % (sys.executable,))
reactor.callWhenRunning(
    lambda: print("worker %s running" % os.environ.get("AME_WORKER", "-"),
                  flush=True))
reactor.callLater(0.2, reactor.stop)
reactor.run()
print("after run", flush=True)
