"""
Listeners the kernel gives ports to, for the supervisor tests
(tests/cmd/test_supervisor.py, case 'ephemeral').

    ephemeral.py STATE_DIR

Setup reads STATE_DIR/version, listens with listenTCP(0) on 127.0.0.1
six times (listener K answers every connection with "LK VERSION\\n", then
closes it) and prints "ports P0,P1,...,P5" (stdout, before the workers
exist): a reload must give each listener its own port back.
"""
import os
import sys

from twisted.internet import protocol, reactor

with open(os.path.join(sys.argv[1], "version")) as f:
    version = f.read().strip()


class Tell(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(("%s %s\n" % (self.factory.tag, version))
                             .encode())
        self.transport.loseConnection()


ports = []
for k in range(6):
    f = protocol.Factory.forProtocol(Tell)
    f.noisy = False
    f.tag = "L%d" % k
    ports.append(reactor.listenTCP(0, f, interface="127.0.0.1"))
print("ports %s" % ",".join(str(p.getHost().port) for p in ports),
      flush=True)
reactor.run()
