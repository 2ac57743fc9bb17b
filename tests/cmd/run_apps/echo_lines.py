"""
A raw line protocol for `ame run` tests: each line comes back prefixed
with the serving pid ("PID: line").  Prints "listening on PORT".

    echo_lines.py [PORT]
"""
import os
import sys

from twisted.internet import protocol, reactor
from twisted.protocols import basic


class Echo(basic.LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(b"%d: %s" % (os.getpid(), line))


class EchoFactory(protocol.ServerFactory):
    protocol = Echo
    noisy = False


port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
p = reactor.listenTCP(port, EchoFactory(), interface="127.0.0.1")
print("listening on %d" % p.getHost().port, flush=True)
reactor.run()
