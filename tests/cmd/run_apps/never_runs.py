"""An `ame run` bad-input case: listens, then returns without run()."""
from twisted.internet import protocol, reactor

reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
