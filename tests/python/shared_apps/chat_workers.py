"""
tests/python/test_shared.py's helper: examples/python/chat.py on N worker
processes forked after the room is set up (as `ame run` forks them), each
on its own AMEReactor and listening port (so that a test can reach every
worker).  Prints "PORT PID" per worker once it receives, then runs until
SIGTERM.

    python3 chat_workers.py N
"""

import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "examples", "python"))

from ame import reactor as amereactor  # noqa: E402

amereactor.install()
from twisted.internet import reactor  # noqa: E402
from twisted.internet.error import ReactorNotRunning  # noqa: E402

import chat  # noqa: E402


def main():
    n = int(sys.argv[1])
    room = chat.Room("chat-%d" % os.getpid())
    room.start(reactor)
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
            port = reactor.listenTCP(0, chat.make_factory(room),
                                     interface="127.0.0.1")

            def started():
                # The room's subscription started before this.
                os.write(1, b"%d %d\n" % (port.getHost().port, os.getpid()))

            def stop(signum, frame):
                # From the parent and from the test's killpg: once.
                reactor.callFromThread(stop_once)

            def stop_once():
                try:
                    reactor.stop()
                except ReactorNotRunning:
                    pass

            signal.signal(signal.SIGTERM, stop)
            reactor.callWhenRunning(started)
            reactor.run(installSignalHandlers=False)
            os._exit(0)
        pids.append(pid)

    def stop(signum, frame):
        for pid in pids:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in pids:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue


main()
