"""
Behaviours of ame.reactor.AMEReactor, run as a mixin over AMEReactor and
Twisted's EPollReactor (the uvloop way: one suite, two backends, so a
difference is a bug of ours unless said otherwise).

Run with Debian's python and the extension built::

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 -m twisted.trial tests/python/test_reactor.py
"""

import gc
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from zope.interface import implementer

from twisted.internet import error, protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python import log
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ame.reactor import AMEReactor


# Under ThreadSanitizer's runtime, which make check's TSan pass preloads
# into python.
_TSAN = "libtsan" in os.environ.get("LD_PRELOAD", "")


class _Boom(Exception):
    pass


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Client(protocol.Protocol):
    def __init__(self, payload, done):
        self.payload = payload
        self.done = done
        self.received = b""

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= len(self.payload):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(self.received)


class _PairReader(FileDescriptor):
    """Reads one end of a socketpair; records what arrives."""

    def __init__(self, reactor, sock):
        FileDescriptor.__init__(self, reactor)
        self.sock = sock
        self.got = b""

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            return self.CONNECTION_DONE if hasattr(
                self, "CONNECTION_DONE") else None
        self.got += data


def _rawPeer(reactor, proto):
    """
    Listen on a free local port with proto's server factory; return a
    plain socket connected to it.
    """
    port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(proto),
                             interface="127.0.0.1")
    return socket.create_connection(("127.0.0.1", port.getHost().port))


def _writeStr(transport, errors):
    """
    Write a str, and a sequence with a str in it, to transport; append to
    errors "TypeError" for each refused, "accepted" for each not.
    """
    for bad in (lambda: transport.write("text"),
                lambda: transport.writeSequence([b"a", "b"])):
        try:
            bad()
        except TypeError:
            errors.append("TypeError")
        else:
            errors.append("accepted")


class ReactorBehaviourMixin:
    """
    The behaviours; subclasses set C{reactorFactory}.
    """

    reactorFactory = None
    timeout = 10

    def buildReactor(self):
        # Build it after creating the fds a test closes in a cleanup:
        # cleanups run last-in first-out, and a reactor must stop watching
        # an fd before the fd is closed.
        reactor = self.reactorFactory()
        self.addCleanup(self._unbuild, reactor)
        return reactor

    def _unbuild(self, reactor):
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        reactor._internalReaders.clear()
        reactor.disconnectAll()
        for c in reactor.getDelayedCalls():
            c.cancel()

    def runReactor(self, reactor, timeout=None, signals=False):
        timedOut = []

        def stop():
            timedOut.append(True)
            reactor.stop()

        call = reactor.callLater(timeout or self.timeout, stop)
        reactor.run(installSignalHandlers=signals)
        if timedOut:
            self.fail("reactor still running after %s s" % (self.timeout,))
        call.cancel()

    def test_callLaterOrder(self):
        """
        Delayed calls run in deadline order, ties in the order scheduled.
        """
        reactor = self.buildReactor()
        order = []
        reactor.callLater(0.03, order.append, "c")
        reactor.callLater(0.01, order.append, "a1")
        reactor.callLater(0.01, order.append, "a2")
        reactor.callLater(0.02, order.append, "b")
        reactor.callLater(0, order.append, "now")
        reactor.callLater(0.05, reactor.stop)
        self.runReactor(reactor)
        self.assertEqual(order, ["now", "a1", "a2", "b", "c"])

    def test_callLaterDelay(self):
        """
        A delayed call does not run early, and not much late.
        """
        reactor = self.buildReactor()
        ran = []
        start = time.monotonic()
        reactor.callLater(0.05, lambda: (ran.append(time.monotonic()),
                                         reactor.stop()))
        self.runReactor(reactor)
        self.assertGreaterEqual(ran[0] - start, 0.049)
        self.assertLess(ran[0] - start, 0.5)

    def test_tcpEchoRoundTrip(self):
        """
        Bytes written by a TCP client come back from an echo server.
        """
        reactor = self.buildReactor()
        factory = protocol.ServerFactory.forProtocol(_Echo)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        payload = b"x" * 200000 + b"end"
        done = Deferred()
        results = []
        done.addCallback(results.append)
        done.addBoth(lambda _: port.stopListening())
        done.addBoth(lambda _: reactor.stop())
        cf = protocol.ClientFactory.forProtocol(lambda: _Client(payload, done))
        reactor.connectTCP("127.0.0.1", port.getHost().port, cf)
        self.runReactor(reactor)
        self.assertEqual(results, [payload])

    def _pair(self, reactor, serverProto, clientProto):
        """
        Connect clientProto() to serverProto() over TCP on reactor; return
        the listening port.
        """
        port = reactor.listenTCP(
            0, protocol.ServerFactory.forProtocol(serverProto),
            interface="127.0.0.1")
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           protocol.ClientFactory.forProtocol(clientProto))
        return port

    def test_echoManyConnectionsInOrder(self):
        """
        Twenty connections echo distinct random payloads of different
        sizes at once; each gets exactly its own bytes back, in order.
        """
        reactor = self.buildReactor()
        payloads = [os.urandom(n) for n in
                    (1, 10, 100, 1000, 4096, 65535, 65536, 65537, 100000,
                     300000) * 2]
        self._echoAll(reactor, _Echo, payloads)

    def _echoAll(self, reactor, serverProtocol, payloads):
        """
        Connect one client per payload to a serverProtocol server at once;
        each client sends its payload; assert each got exactly it back.
        """
        port = reactor.listenTCP(
            0, protocol.ServerFactory.forProtocol(serverProtocol),
            interface="127.0.0.1")
        results = {}

        def finished(i, data):
            results[i] = data
            if len(results) == len(payloads):
                port.stopListening()
                reactor.stop()

        for i, payload in enumerate(payloads):
            done = Deferred()
            done.addCallback(lambda data, i=i: finished(i, data))
            reactor.connectTCP(
                "127.0.0.1", port.getHost().port,
                protocol.ClientFactory.forProtocol(
                    lambda p=payload, d=done: _Client(p, d)))
        self.runReactor(reactor)
        self.assertEqual(sorted(results), list(range(len(payloads))))
        for i, payload in enumerate(payloads):
            self.assertEqual(results[i], payload, "connection %d" % (i,))

    def test_largeWriteThenLoseConnection(self):
        """
        loseConnection() right after a large write() sends every byte first;
        the peer sees a clean close after all of them.
        """
        reactor = self.buildReactor()
        payload = os.urandom(4 << 20)
        got = []
        why = []

        class Sender(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(payload)
                self.transport.loseConnection()

        class Receiver(protocol.Protocol):
            def connectionMade(self):
                self.chunks = []

            def dataReceived(self, data):
                self.chunks.append(data)

            def connectionLost(self, reason):
                got.append(b"".join(self.chunks))
                why.append(reason)
                reactor.stop()

        self._pair(reactor, Sender, Receiver)
        self.runReactor(reactor)
        self.assertEqual(len(got[0]), len(payload))
        self.assertEqual(got[0], payload)
        from twisted.internet.error import ConnectionDone
        self.assertTrue(why[0].check(ConnectionDone))

    def test_streamingProducerPausedThenResumed(self):
        """
        With a streaming producer registered, writing more than bufferSize
        pauses it; once everything is sent, it is resumed.
        """
        reactor = self.buildReactor()
        events = []

        class Producing(protocol.Protocol):
            def connectionMade(self):
                self.transport.registerProducer(self, True)
                for _ in range(8):
                    self.transport.write(b"p" * 32768)
                events.append("written")

            def pauseProducing(self):
                if "paused" not in events:
                    events.append("paused")

            def resumeProducing(self):
                events.append("resumed")
                self.transport.unregisterProducer()
                self.transport.loseConnection()

            def stopProducing(self):
                events.append("stopped")

        class Sink(protocol.Protocol):
            n = 0

            def dataReceived(self, data):
                Sink.n += len(data)

            def connectionLost(self, reason):
                reactor.stop()

        self._pair(reactor, Sink, Producing)
        self.runReactor(reactor)
        self.assertEqual(events[:3], ["paused", "written", "resumed"])
        self.assertEqual(Sink.n, 8 * 32768)

    def test_pauseReadingHoldsData(self):
        """
        Between stopReading() and startReading() no dataReceived happens;
        then everything sent meanwhile arrives, in order.
        """
        reactor = self.buildReactor()
        log_ = []

        class Paused(protocol.Protocol):
            def connectionMade(self):
                self.transport.stopReading()
                self.got = b""
                reactor.callLater(0.2, self.resume)

            def resume(self):
                log_.append(("resume", len(self.got)))
                self.transport.startReading()

            def dataReceived(self, data):
                self.got += data
                if len(self.got) == 300000:
                    log_.append(("all", self.got == expected))
                    self.transport.loseConnection()
                    reactor.stop()

        expected = (bytes(range(256)) * 1172)[:300000]
        assert len(expected) == 300000

        class Writer(protocol.Protocol):
            def connectionMade(self):
                for i in range(0, len(expected), 1000):
                    self.transport.write(expected[i:i + 1000])

        self._pair(reactor, Paused, Writer)
        self.runReactor(reactor)
        self.assertEqual(log_, [("resume", 0), ("all", True)])

    def test_writeFailsAfterHalfClose(self):
        """
        A half-closeable server writes on after the peer's half-close; when
        the peer then resets, a write fails and the connection is lost
        with ConnectionLost, though nothing reads it any more.
        """
        reactor = self.buildReactor()
        lost = []

        @implementer(IHalfCloseableProtocol)
        class Writing(protocol.Protocol):
            call = None

            def readConnectionLost(self):
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
                peer.close()
                self.tick()

            def tick(self):
                self.transport.write(b"x" * 1000)
                self.call = reactor.callLater(0.01, self.tick)

            def writeConnectionLost(self):
                pass

            def connectionLost(self, reason):
                lost.append(reason.type)
                if self.call is not None and self.call.active():
                    self.call.cancel()
                reactor.stop()

        peer = _rawPeer(reactor, Writing)
        peer.shutdown(socket.SHUT_WR)
        self.runReactor(reactor, timeout=5)
        self.assertEqual(lost, [error.ConnectionLost])

    def test_dataReceivedLogContext(self):
        """
        What dataReceived logs carries the transport's logPrefix() as its
        system, as under Twisted's reactors.
        """
        reactor = self.buildReactor()
        seen = []

        def observer(event):
            if event.get("message") == ("ping",):
                seen.append(event.get("system"))

        log.addObserver(observer)
        self.addCleanup(log.removeObserver, observer)

        class Logging(protocol.Protocol):
            def logPrefix(self):
                return "Logging Protocol"

            def dataReceived(self, data):
                log.msg("ping")
                self.transport.loseConnection()
                reactor.stop()

        class Hello(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"hi")

        self._pair(reactor, Logging, Hello)
        self.runReactor(reactor)
        self.assertEqual(len(seen), 1)
        self.assertIn("Logging Protocol", seen[0])

    def test_iterateInsideDataReceived(self):
        """
        A dataReceived that runs the reactor again (reactor.iterate(0)),
        with many connections delivering at once: every connection still
        gets exactly its own bytes back.
        """
        reactor = self.buildReactor()

        class Reentrant(protocol.Protocol):
            def dataReceived(self, data):
                reactor.iterate(0)
                self.transport.write(data)

        self._echoAll(reactor, Reentrant,
                      [os.urandom(2000 + i) for i in range(40)])

    def _resolve(self, reactor, name, port=0, types=None):
        """
        Resolve name with reactor.nameResolver; return (addresses, whether
        resolutionComplete was called).
        """
        from zope.interface import implementer
        from twisted.internet.interfaces import IResolutionReceiver
        got = []
        complete = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution):
                got.append(("began", resolution.name))

            def addressResolved(self, address):
                got.append(address)

            def resolutionComplete(self):
                complete.append(True)
                reactor.stop()

        reactor.nameResolver.resolveHostName(Receiver(), name, port, types)
        self.runReactor(reactor)
        self.assertEqual(got[0], ("began", name))
        return got[1:], complete

    def test_resolveLocalhost(self):
        """
        The name resolver finds 127.0.0.1 for localhost (with the port
        asked for), and tells when it is done.
        """
        from twisted.internet.address import IPv4Address
        reactor = self.buildReactor()
        addrs, complete = self._resolve(reactor, "localhost", 8080,
                                        [IPv4Address])
        self.assertEqual(complete, [True])
        self.assertIn(IPv4Address("TCP", "127.0.0.1", 8080), addrs)

    def test_resolveFailure(self):
        """
        A name that does not resolve gives no address, and completes.
        """
        reactor = self.buildReactor()
        addrs, complete = self._resolve(reactor, "no-such-host.invalid")
        self.assertEqual((addrs, complete), ([], [True]))

    def test_resolveNoName(self):
        """
        A host name of None is getaddrinfo's: the loopback address, with the
        port asked for (as GAIResolver, which passes it on).
        """
        from twisted.internet.address import IPv4Address
        reactor = self.buildReactor()
        addrs, complete = self._resolve(reactor, None, 8080, [IPv4Address])
        self.assertEqual(complete, [True])
        self.assertIn(IPv4Address("TCP", "127.0.0.1", 8080), addrs)

    def _spawnSeq(self, reactor, n):
        """
        Run `seq 1 n` (stdout) and `echo err >&2`; return (stdout, stderr,
        exit code, the process).
        """
        if _TSAN:
            # Twisted's child runs Python between fork() and exec(), where
            # the TSan runtime of a threaded parent crashes it (signal 11,
            # on EPollReactor too).
            raise SkipTest("a child forked under the TSan runtime dies "
                           "before exec")
        out = []

        class P(protocol.ProcessProtocol):
            def connectionMade(self):
                self.data = {1: [], 2: []}

            def childDataReceived(self, fd, data):
                self.data[fd].append(data)

            def processEnded(self, reason):
                out.append((b"".join(self.data[1]), b"".join(self.data[2]),
                            reason.value.exitCode))
                reactor.stop()

        proc = reactor.spawnProcess(
            P(), "/bin/sh", ["sh", "-c", "seq 1 %d; echo err >&2" % (n,)],
            env=None)
        # The child's exit is seen through SIGCHLD: install the handlers
        # (and put the previous ones back after).
        handlers = {sig: signal.getsignal(sig)
                    for sig in (signal.SIGINT, signal.SIGTERM,
                                signal.SIGCHLD)}
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup)
        try:
            self.runReactor(reactor, signals=True)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            signal.set_wakeup_fd(wakeup)
        return out[0] + (proc,)

    def test_processOutput(self):
        """
        A child's stdout and stderr arrive whole and apart, then its exit.
        """
        reactor = self.buildReactor()
        stdout, stderr, code, _ = self._spawnSeq(reactor, 100000)
        expected = "".join("%d\n" % i for i in range(1, 100001)).encode()
        self.assertEqual((len(stdout), stdout == expected), (len(expected),
                                                             True))
        self.assertEqual((stderr, code), (b"err\n", 0))

    def test_writeTypeErrors(self):
        """
        write() of a str, and writeSequence() with a str in it, raise
        TypeError, as Twisted's transports do; the connection goes on.
        """
        reactor = self.buildReactor()
        errors = []

        class Checking(protocol.Protocol):
            def connectionMade(self):
                _writeStr(self.transport, errors)
                self.transport.writeSequence([b"o", b"k"])
                self.transport.loseConnection()

        class Reading(protocol.Protocol):
            got = b""

            def dataReceived(self, data):
                Reading.got += data

            def connectionLost(self, reason):
                reactor.stop()

        self._pair(reactor, Checking, Reading)
        self.runReactor(reactor)
        self.assertEqual(errors, ["TypeError", "TypeError"])
        self.assertEqual(Reading.got, b"ok")

    def test_writeTypeErrorsAfterWriteSideClosed(self):
        """
        Once the write side is closed (loseWriteConnection), write() of a
        str and writeSequence() with a str in it still raise TypeError, as
        Twisted's transports check the type before anything else.
        """
        reactor = self.buildReactor()
        errors = []

        @implementer(IHalfCloseableProtocol)
        class Checking(protocol.Protocol):
            def connectionMade(self):
                self.transport.loseWriteConnection()

            def readConnectionLost(self):
                pass

            def writeConnectionLost(self):
                _writeStr(self.transport, errors)
                self.transport.loseConnection()

            def connectionLost(self, reason):
                reactor.stop()

        self._pair(reactor, Checking, protocol.Protocol)
        self.runReactor(reactor)
        self.assertEqual(errors, ["TypeError", "TypeError"])

    def test_callFromThread(self):
        """
        Calls made from another thread run on the reactor thread, in order,
        and wake a reactor that is waiting with nothing else to do.
        """
        reactor = self.buildReactor()
        seen = []
        main = threading.get_ident()

        def record(i):
            seen.append((i, threading.get_ident() == main))
            if i == 99:
                reactor.stop()

        def other():
            time.sleep(0.05)  # let the reactor block in its wait
            for i in range(100):
                reactor.callFromThread(record, i)

        reactor.callWhenRunning(threading.Thread(target=other).start)
        self.runReactor(reactor)
        self.assertEqual(seen, [(i, True) for i in range(100)])

    def test_exceptionInCallbackLogged(self):
        """
        An exception in a callback is logged and the reactor goes on to run
        the next ones.
        """
        reactor = self.buildReactor()
        ran = []

        def boom():
            raise _Boom("in a callback")

        reactor.callLater(0, boom)
        reactor.callLater(0.01, ran.append, "after")
        reactor.callLater(0.02, reactor.stop)
        self.runReactor(reactor)
        self.assertEqual(ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(_Boom)), 1)

    def test_dataReceivedRaisesConnectionDone(self):
        """
        A dataReceived that raises ConnectionDone is an exception like any
        other, not the end of the input: the connection is lost (with that
        reason), and readConnectionLost is not called, even for a
        half-closeable protocol.
        """
        reactor = self.buildReactor()
        events = []

        @implementer(IHalfCloseableProtocol)
        class Raising(protocol.Protocol):
            def dataReceived(self, data):
                raise error.ConnectionDone("enough")

            def readConnectionLost(self):
                events.append("readConnectionLost")

            def writeConnectionLost(self):
                events.append("writeConnectionLost")

            def connectionLost(self, reason):
                events.append(reason.type)
                reactor.stop()

        peer = _rawPeer(reactor, Raising)
        self.addCleanup(peer.close)
        peer.sendall(b"data")
        self.runReactor(reactor, timeout=5)
        self.assertEqual(events, [error.ConnectionDone])
        self.assertEqual(len(self.flushLoggedErrors(error.ConnectionDone)), 1)

    def test_exceptionInDoReadLogged(self):
        """
        An exception in doRead is logged, the descriptor is disconnected,
        and the reactor keeps running.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        reactor = self.buildReactor()
        lost = []

        class Bad(FileDescriptor):
            def fileno(self):
                return a.fileno()

            def doRead(self):
                raise _Boom("in doRead")

            def connectionLost(self, reason):
                lost.append(reason)
                reactor.callLater(0.01, reactor.stop)

        reactor.addReader(Bad(reactor))
        b.send(b"x")
        self.runReactor(reactor)
        self.assertEqual(len(lost), 1)
        self.assertEqual(len(self.flushLoggedErrors(_Boom)), 1)

    def test_iterateZeroReturnsAtOnce(self):
        """
        iterate(0) returns at once even with a reader and a far timer.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        reactor = self.buildReactor()
        reactor.addReader(_PairReader(reactor, a))
        reactor.callLater(100, lambda: None)
        start = time.monotonic()
        for _ in range(100):
            reactor.iterate(0)
        self.assertLess(time.monotonic() - start, 0.5)

    def _waitReported(self, fd):
        """
        Block until the kernel reports a hang-up or readiness on fd (what
        the reactor's own poll would see).
        """
        import select
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLRDHUP | select.POLLHUP)
        self.assertTrue(p.poll(5000), "the kernel never reported fd %d" % fd)

    def _closeSeenInOneIteration(self, reactor, transport, lost, peer,
                                 reset):
        if reset:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()
        self._waitReported(transport.fileno())
        reactor.iterate(0)
        self.assertEqual(len(lost), 1)
        self.assertNotIn(transport, reactor.getReaders())
        self.assertNotIn(transport, reactor.getWriters())

    def test_peerCloseSeenInOneIteration(self):
        """
        A connection whose close or reset the kernel has reported is gone
        (connectionLost called, no longer a reader or writer) after one
        iterate(0), as under epoll: what was reported before an iteration
        began is delivered in it (trial's cleanup relies on it).  Each
        side, both ways, a few times over.
        """
        reactor = self.buildReactor()
        lost = []
        made = []

        class P(protocol.Protocol):
            def connectionMade(self):
                made.append(self)

            def connectionLost(self, reason):
                lost.append(reason)

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(P),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        plain = socket.socket()
        self.addCleanup(plain.close)
        plain.bind(("127.0.0.1", 0))
        plain.listen(5)
        for i in range(8):
            reset = bool(i & 1)
            del lost[:], made[:]
            # The server side: a plain client closes.
            peer = socket.create_connection(
                ("127.0.0.1", port.getHost().port))
            deadline = time.monotonic() + 5
            while not made and time.monotonic() < deadline:
                reactor.iterate(0.01)
            self.assertEqual(len(made), 1)
            self._closeSeenInOneIteration(reactor, made[0].transport, lost,
                                          peer, reset)
            # The client side: a plain server closes.
            del lost[:], made[:]
            reactor.connectTCP("127.0.0.1", plain.getsockname()[1],
                               protocol.ClientFactory.forProtocol(P))
            deadline = time.monotonic() + 5
            while not made and time.monotonic() < deadline:
                reactor.iterate(0.01)
            self.assertEqual(len(made), 1)
            peer, _ = plain.accept()  # connected: in the backlog
            self._closeSeenInOneIteration(reactor, made[0].transport, lost,
                                          peer, reset)

    def test_readerGetsData(self):
        """
        A reader added with addReader gets what the peer sends, every time,
        and nothing after removeReader.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        reactor = self.buildReactor()
        r = _PairReader(reactor, a)
        reactor.addReader(r)
        chunks = [b"one", b"two", b"three"]

        def send():
            if chunks:
                b.send(chunks.pop(0))
                reactor.callLater(0.01, send)
            else:
                reactor.callLater(0.05, reactor.stop)

        reactor.callWhenRunning(send)
        self.runReactor(reactor)
        self.assertEqual(r.got, b"onetwothree")
        reactor.removeReader(r)
        b.send(b"more")
        for _ in range(5):
            reactor.iterate(0.01)
        self.assertEqual(r.got, b"onetwothree")

    def _waitAcceptable(self, reactor, port, n):
        """
        Block, without iterating reactor, until the n-th connection to
        port is there for its next iteration to accept.
        """
        self._waitReported(port.fileno())

    def _waitReadable(self, reactor, transport, n):
        """
        Block, without iterating reactor, until the data sent to
        transport's peer (n bytes in all, to every connection) is there
        for its next iteration to read.
        """
        self._waitReported(transport.fileno())

    def test_portStoppedMidIterationAcceptsNothing(self):
        """
        A listening port whose reading a callback stops accepts no
        connection after, not even one that was there for the same
        iteration as the data that callback got (ame run's worker stops
        its ports at --max-requests and must take no connection after);
        the connection waits, and the port accepts it once it reads
        again.
        """
        reactor = self.buildReactor()
        made = []  # per connection made: had the port stopped reading?
        servers = []

        class P(protocol.Protocol):
            def connectionMade(self):
                made.append(port not in reactor.getReaders())
                servers.append(self.transport)

            def dataReceived(self, data):
                port.stopReading()

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(P),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        addr = ("127.0.0.1", port.getHost().port)
        first = socket.create_connection(addr)
        self.addCleanup(first.close)
        deadline = time.monotonic() + 5
        while not made and time.monotonic() < deadline:
            reactor.iterate(0.01)
        self.assertEqual(made, [False])
        reactor.iterate(0)  # ame: the C worker reads the connection now
        # The second connection, then the first's data: both there for
        # the next iteration (in that order on ame's ready list).
        second = socket.create_connection(addr)
        self.addCleanup(second.close)
        self._waitAcceptable(reactor, port, 2)
        first.sendall(b"stop")
        self._waitReadable(reactor, servers[0], 4)
        reactor.iterate(0)
        self.assertNotIn(port, reactor.getReaders())
        self.assertNotIn(True, made)
        port.startReading()
        deadline = time.monotonic() + 5
        while len(made) < 2 and time.monotonic() < deadline:
            reactor.iterate(0.01)
        self.assertEqual(made, [False, False])

    def closeAndAbortMany(self, n=40):
        """
        Serve n connections one after another, from a peer on a thread;
        the server answers C{bye} and closes the odd ones with
        loseConnection, the even ones with abortConnection.  Return
        (reactor, what each peer saw: C{("eof", data)} or
        C{("reset", data)}, the sockets open before the connections that
        were still open once the reactor let go of them, up to 5 s later).
        """
        reactor = self.buildReactor()

        class Closer(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.write(b"bye")
                if data == b"abort":
                    self.transport.abortConnection()
                else:
                    self.transport.loseConnection()

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Closer),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        def fds():  # the process's sockets (their inodes)
            out = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink("/proc/self/fd/" + fd)
                except OSError:  # the listing's own
                    continue
                if link.startswith("socket:"):
                    out.add(link)
            return out

        before = fds()
        seen = []

        def peer():
            try:
                for i in range(n):
                    s = socket.create_connection(
                        ("127.0.0.1", port.getHost().port), timeout=10)
                    s.sendall(b"abort" if i % 2 == 0 else b"close")
                    data = b""
                    try:
                        while True:
                            b = s.recv(100)
                            if not b:
                                seen.append(("eof", data))
                                break
                            data += b
                    except ConnectionResetError:
                        seen.append(("reset", data))
                    s.close()
            finally:
                reactor.callFromThread(reactor.stop)

        reactor.callWhenRunning(
            threading.Thread(target=peer, daemon=True).start)
        self.runReactor(reactor)
        deadline = time.monotonic() + 5
        while fds() - before and time.monotonic() < deadline:
            reactor.iterate(0.01)
        return reactor, seen, fds() - before

    def test_closeAndAbortMany(self):
        """
        loseConnection: the peer reads what was written, then end of file;
        abortConnection: the peer gets a reset.  No descriptor of theirs
        stays open.
        """
        reactor, seen, left = self.closeAndAbortMany()
        self.assertEqual(seen[1::2], [("eof", b"bye")] * 20)
        self.assertEqual([o for o, _ in seen[0::2]], ["reset"] * 20)
        self.assertEqual(left, set())

    def test_removeThenCloseMany(self):
        """
        Watching, unwatching and closing fds in quick succession (the way
        Twisted closes connections) neither loses events nor crashes; fd
        numbers are reused at once.
        """
        reactor = self.buildReactor()
        total = []
        for i in range(300):
            a, b = socket.socketpair()
            r = _PairReader(reactor, a)
            reactor.addReader(r)
            reactor.addWriter(r) if i % 3 == 0 else None
            r.doWrite = lambda: reactor.removeWriter(r) or None
            b.send(b"%d;" % i)
            deadline = time.monotonic() + 5
            while not r.got and time.monotonic() < deadline:
                reactor.iterate(0.01)
            total.append(r.got)
            reactor.removeReader(r)
            reactor.removeWriter(r)
            a.close()
            b.close()
        self.assertEqual(total, [b"%d;" % i for i in range(300)])

    def test_nestedIterateLeavesOuterCatchUp(self):
        """
        An iterate(0) whose callback runs an iterate(0) of its own still
        delivers what became readable before its wait (the kernel's
        report, as epoll's poll sees it).
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        reactor = self.buildReactor()
        reader = _PairReader(reactor, a)
        reactor.addReader(reader)
        reactor.iterate(0)

        def nested(i):
            reactor.iterate(0)
            b.send(b"%d;" % (i,))

        for i in range(3):
            reactor.callLater(0, nested, i)
            reactor.iterate(0)
            self.assertEqual(reader.got, b"".join(
                b"%d;" % (j,) for j in range(i + 1)))
        reactor.removeReader(reader)

    def test_signalStopsInsideRolledBackAtomic(self):
        """
        Twisted's SIGTERM and SIGINT handlers stop the reactor even when
        the signal interrupts an ame.atomic block that is then rolled
        back: the handler is not part of the transaction.
        """
        import ame
        for handler in ("sigTerm", "sigInt"):
            reactor = self.buildReactor()

            def inBlock():
                # What the handler does when the signal comes in here.
                getattr(reactor, handler)(signal.SIGTERM)
                raise _Boom("rolled back")

            def go():
                self.assertRaises(_Boom, ame.atomic, inBlock)

            reactor.callWhenRunning(go)
            self.runReactor(reactor, timeout=2)

    def test_negativeDescriptorRefused(self):
        """
        addReader and addWriter of a selectable whose fileno() is negative
        raise ValueError (as epoll's register does) and watch nothing.
        """
        reactor = self.buildReactor()

        class Closed(FileDescriptor):
            def fileno(self):
                return -1

        closed = Closed(reactor)
        self.assertRaises(ValueError, reactor.addReader, closed)
        self.assertRaises(ValueError, reactor.addWriter, closed)
        self.assertNotIn(closed, reactor.getReaders())
        self.assertNotIn(closed, reactor.getWriters())

    def test_regularFile(self):
        """
        A regular file (which epoll refuses) can still be watched: it is
        polled continuously, as by EPollReactor.
        """
        f = tempfile.TemporaryFile()
        self.addCleanup(f.close)
        reactor = self.buildReactor()
        f.write(b"data")
        f.seek(0)
        got = []

        class FileReader(FileDescriptor):
            def fileno(self):
                return f.fileno()

            def doRead(self):
                got.append(os.read(f.fileno(), 100))
                reactor.removeReader(self)
                reactor.stop()

        reader = FileReader(reactor)
        reactor.addReader(reader)
        self.assertIn(reader, reactor.getReaders())
        self.runReactor(reactor)
        self.assertEqual(got, [b"data"])

    def test_signalWakesReactor(self):
        """
        A signal that arrives while the reactor waits with no timeout runs
        its Python handler, which can stop the reactor.
        """
        reactor = self.buildReactor()
        main = threading.main_thread().ident
        if threading.get_ident() != main:
            raise self.skipTest("needs the main thread")
        old = signal.signal(signal.SIGUSR1,
                            lambda *a: reactor.callFromThread(reactor.stop))
        self.addCleanup(signal.signal, signal.SIGUSR1, old)

        def kill():
            time.sleep(0.1)
            signal.pthread_kill(main, signal.SIGUSR1)

        reactor.callWhenRunning(threading.Thread(target=kill).start)
        self.runReactor(reactor)


    def test_oneDescriptorPerConnection(self):
        """
        A listening port takes one descriptor, and each TCP connection one
        per end (here both ends, Twisted's client and server, are in this
        process): nothing duplicates them.
        """
        reactor = self.buildReactor()
        reactor.iterate(0)  # an inline core attaches at its first wait
        before = len(os.listdir("/proc/self/fd"))
        servers, clients = [], []

        class Server(protocol.Protocol):
            def connectionMade(self):
                servers.append(self)

        class Client(protocol.Protocol):
            def connectionMade(self):
                clients.append(self)

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Server),
                                 interface="127.0.0.1")
        self.assertEqual(len(os.listdir("/proc/self/fd")), before + 1)
        n = 16
        for _ in range(n):
            reactor.connectTCP("127.0.0.1", port.getHost().port,
                               protocol.ClientFactory.forProtocol(Client))
        deadline = time.monotonic() + 10
        while len(servers) < n or len(clients) < n:
            self.assertLess(time.monotonic(), deadline, "connections made")
            reactor.iterate(0.01)
        self.assertEqual(len(os.listdir("/proc/self/fd")),
                         before + 1 + 2 * n)
        for p in servers + clients:
            p.transport.loseConnection()
        port.stopListening()
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/self/fd")) > before:
            self.assertLess(time.monotonic(), deadline, "descriptors closed")
            reactor.iterate(0.01)
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)


class EPollReactorTests(ReactorBehaviourMixin, SynchronousTestCase):
    reactorFactory = EPollReactor


class AMEReactorTests(ReactorBehaviourMixin, SynchronousTestCase):
    reactorFactory = staticmethod(lambda: AMEReactor(io="thread"))

    def _iterateUntil(self, reactor, cond, what, timeout=10):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                self.fail("not within %s s: %s" % (timeout, what))
            reactor.iterate(0.01)

    def test_closeWithoutWaiting(self):
        """
        Closing a connection does not wait for the worker (which closes
        the descriptor once it let go of it): no barrier per connection.
        """
        reactor, seen, left = self.closeAndAbortMany()
        self.assertEqual(len(seen), 40)
        self.assertEqual(left, set())
        self.assertLess(reactor.ameStats()["watch_barriers"], 10)

    def test_removeLetsGoOfDisarmedPoll(self):
        """
        removeReader returns once the worker holds no poll for the fd, so
        that the program may close it, also where the poll is disarmed
        because the worker has just delivered its event (a connection
        ending in its own doRead): libuv's close of a poll handle takes its
        fd's number out of epoll, and once the program has closed the fd
        that number is the next descriptor's.
        """
        reactor = self.buildReactor()
        a, b = socket.socketpair()
        self.addCleanup(b.close)
        held = []

        class Reader(_PairReader):
            def doRead(self):
                _PairReader.doRead(self)
                if self.got and not held:
                    reactor.removeReader(self)
                    held.append(reactor.ameStats()["watch_polls"])
                    self.sock.close()

        reactor.addReader(Reader(reactor, a))
        # Nothing to read yet: the worker starts a poll for the fd.
        self._iterateUntil(reactor,
                           lambda: reactor.ameStats()["watch_polls"] == 1,
                           "a poll for the fd")
        b.send(b"x")
        self._iterateUntil(reactor, lambda: held, "the event")
        self.assertEqual(held, [0])
        self.assertEqual(reactor.ameStats()["watch_polls"], 0)

    def _waitStat(self, reactor, name, n):
        deadline = time.monotonic() + 5
        while reactor.ameStats()[name] < n:
            self.assertLess(time.monotonic(), deadline,
                            "ameStats()[%r] reaches %d" % (name, n))
            time.sleep(0.005)

    def _waitAcceptable(self, reactor, port, n):
        # The C worker accepts (the kernel then reports nothing more on
        # the listening socket): wait until it has taken the n-th.
        self._waitStat(reactor, "stream_accepted", n)

    def _waitReadable(self, reactor, transport, n):
        self._waitStat(reactor, "bytes_received", n)

    def test_fullDescriptorTableServedInC(self):
        """
        A connection accepted into the descriptor table's last free slot
        is served by the C side all the same: it works on that one
        descriptor (ameStats()["python_path"], connections left on
        Twisted's own Python I/O, stays 0).
        """
        reactor = self.buildReactor()
        served = []

        class Echo(_Echo):
            def connectionMade(self):
                served.append(self.transport)

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Echo),
                                 interface="127.0.0.1")
        reactor.iterate(0)  # an inline core attaches at its first wait
        self.assertEqual(reactor.ameStats()["python_path"], 0)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        top = max(int(n) for n in os.listdir("/proc/self/fd"))
        fillers = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 16, hard))
        try:
            while True:
                try:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            # Two free descriptors: the client's socket and the server's
            # accept() get them, and nothing else is needed.
            os.close(fillers.pop())
            os.close(fillers.pop())
            client = socket.create_connection(
                ("127.0.0.1", port.getHost().port), 5)
            self.addCleanup(client.close)
            self._iterateUntil(reactor, lambda: served,
                               "the connection accepted")
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.setblocking(False)
        client.sendall(b"served in C")
        got = []

        def received():
            try:
                got.append(client.recv(100))
            except BlockingIOError:
                pass
            return b"".join(got) == b"served in C"

        self._iterateUntil(reactor, received, "the echo")
        self.assertEqual(reactor.ameStats()["python_path"], 0)
        self.assertTrue(served[0]._ameFast)
        port.stopListening()

    _ioMode = "thread"

    def _capacity(self, kind):
        """
        How many TCP connections a child process running reactor kind
        ("epoll", or "ame" in this class's I/O mode) serves under
        RLIMIT_NOFILE 256: connect one at a time until one is not greeted.
        """
        code = (
            "import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
            "from twisted.internet import protocol\n"
            "if sys.argv[1] == 'epoll':\n"
            "    from twisted.internet.epollreactor import EPollReactor\n"
            "    reactor = EPollReactor()\n"
            "else:\n"
            "    from ame.reactor import AMEReactor\n"
            "    reactor = AMEReactor(io=sys.argv[2])\n"
            "class Hello(protocol.Protocol):\n"
            "    def connectionMade(self):\n"
            "        self.transport.write(b'x')\n"
            "port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol("
            "Hello), interface='127.0.0.1', backlog=1024)\n"
            "reactor.callWhenRunning(lambda: print(port.getHost().port, "
            "flush=True))\n"
            "reactor.run(installSignalHandlers=False)\n")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1024 <= hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE,
                            (soft, hard))
        child = subprocess.Popen(
            [sys.executable, "-c", code, kind, self._ioMode],
            stdout=subprocess.PIPE, env=dict(os.environ))
        socks = []
        try:
            portno = int(child.stdout.readline())
            while len(socks) < 400:
                s = socket.create_connection(("127.0.0.1", portno), 5)
                socks.append(s)
                s.settimeout(2)
                try:
                    if s.recv(1) != b"x":
                        break
                except socket.timeout:
                    break
            return len(socks) - 1
        finally:
            for s in socks:
                s.close()
            child.kill()
            child.wait()
            child.stdout.close()

    def test_lowDescriptorLimit(self):
        """
        Under the same low RLIMIT_NOFILE, AMEReactor serves as many
        connections as EPollReactor: one descriptor each (its core's own
        few fds aside).
        """
        epoll = self._capacity("epoll")
        ame = self._capacity("ame")
        self.assertGreater(epoll, 200)
        self.assertGreaterEqual(ame, epoll - 8)

    def test_loopCallsDueDoNotWaitForTheWorker(self):
        """
        The loop's own iterations with calls due (a callLater(0) loop) do
        not catch up with the worker (ameStats()["catchups"], thread
        mode's), which would make each wait for two of its passes while a
        connection keeps it busy.  (iterate(0) still does, as it must:
        test_peerCloseSeenInOneIteration.)
        """
        if self._ioMode != "thread":
            raise SkipTest("the catch-up is thread mode's")
        reactor = self.buildReactor()
        pings = [0]

        class Pinger(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"x")

            def dataReceived(self, data):
                pings[0] += 1
                self.transport.write(b"x")

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(_Echo),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           protocol.ClientFactory.forProtocol(Pinger))
        self._iterateUntil(reactor, lambda: pings[0] > 10, "ping-pong")
        ticks = [0]
        before = []
        start = pings[0]

        def spin():
            # At least 3,000 turns, and on until the ping-pong has gone on
            # beside them (it must: the loop does not starve the I/O).
            if not before:
                before.append(reactor.ameStats()["catchups"])
            ticks[0] += 1
            if ticks[0] < 3000 or pings[0] < start + 50:
                reactor.callLater(0, spin)
            else:
                reactor.stop()

        reactor.callLater(0, spin)
        self.runReactor(reactor)
        self.assertGreaterEqual(pings[0], start + 50)
        self.assertEqual(reactor.ameStats()["catchups"], before[0])

    def test_ameStats(self):
        """
        ameStats() returns the C reactor's counters; fd events count.
        """
        reactor = self.buildReactor()
        s = reactor.ameStats()
        for k in ("callbacks", "failures", "stolen", "accepted",
                  "accept_errors", "streams_open", "per_worker_callbacks",
                  "workers", "fd_events", "direct_events", "watch_flushes",
                  "watch_barriers", "stream_accepted", "stream_open",
                  "bytes_received", "bytes_sent"):
            self.assertIn(k, s)
        self.assertEqual(s["workers"], 1)
        self.test_tcpEchoRoundTrip()
        s2 = reactor.ameStats()
        self.assertEqual(s2["failures"], 0)
        s3 = self._lastReactor.ameStats()
        self.assertGreater(s3["fd_events"] + s3["direct_events"], 0)
        self.assertGreater(s3["callbacks"], 0)
        # The echo's connection went through the fast TCP streams: accepted
        # there, closed by now, its bytes counted both ways.
        self.assertEqual(s3["stream_accepted"], 1)
        self.assertEqual(s3["stream_open"], 0)
        self.assertGreater(s3["bytes_received"], 0)
        self.assertGreater(s3["bytes_sent"], 0)

    def buildReactor(self):
        self._lastReactor = ReactorBehaviourMixin.buildReactor(self)
        return self._lastReactor

    def _echoOnce(self, reactor, data):
        """
        Run reactor until one TCP client has had data echoed by a server of
        its own; return what the client got back.
        """
        factory = protocol.ServerFactory.forProtocol(_Echo)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        done = Deferred()
        got = []
        done.addCallback(got.append)
        done.addBoth(lambda _: port.stopListening())
        done.addBoth(lambda _: reactor.stop())
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           protocol.ClientFactory.forProtocol(
                               lambda: _Client(data, done)))
        self.runReactor(reactor)
        return got

    def test_responseLeavesWhole(self):
        """
        What one dataReceived writes in several write() calls leaves in one
        send(), even when the worker runs in the middle of it (a watch
        removed inside the callback makes it apply at once): a response
        sent in pieces waits, with Nagle, for the peer's delayed ACK.
        """
        reactor = self.buildReactor()
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        reader = _PairReader(reactor, a)
        reactor.addReader(reader)
        reactor.iterate(0)  # the pipe's watch is armed on the worker
        sends = []

        class Piecewise(protocol.Protocol):
            def dataReceived(self, data):
                sends.append(reactor.ameStats()["stream_sends"])
                self.transport.write(b"head-")
                reactor.removeReader(reader)  # the worker applies now
                self.transport.write(b"body")

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(
            Piecewise), interface="127.0.0.1")
        done = Deferred()

        class Asker(protocol.Protocol):
            got = b""

            def connectionMade(self):
                self.transport.write(b"?")

            def dataReceived(self, data):
                self.got += data
                if self.got == b"head-body":
                    sends.append(reactor.ameStats()["stream_sends"])
                    self.transport.loseConnection()

            def connectionLost(self, reason):
                done.callback(self.got)

        got = []
        done.addCallback(got.append)
        done.addBoth(lambda _: port.stopListening())
        done.addBoth(lambda _: reactor.stop())
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           protocol.ClientFactory.forProtocol(Asker))
        self.runReactor(reactor)
        self.assertEqual(got, [b"head-body"])
        self.assertEqual(sends[1] - sends[0], 1)

    def test_ameReport(self):
        """
        ameReport() gives the C reactor's counters and the STM conflict
        report as text; after TCP traffic it counts the worker's callbacks
        and committed transactions.
        """
        reactor = self.buildReactor()
        self.assertEqual(self._echoOnce(reactor, b"report"), [b"report"])
        text = reactor.ameReport()
        self.assertIn("ame reactor: 1 workers", text)
        self.assertIn("ame STM report", text)
        self.assertIn("aborts by cause", text)
        stats = reactor.ameStats()
        self.assertGreater(stats["callbacks"], 0)
        self.assertGreater(stats["stm_commits"], 0)
        self.assertGreater(stats["stream_reads"], 0)
        self.assertGreater(stats["stream_sends"], 0)
        self.assertNotIn(" 0 callbacks", text.splitlines()[0])

    def test_processPipesAreTheWorkers(self):
        """
        On AMEReactor a child's output pipes are read by the C worker.
        """
        from ame.reactor import _ProcessReader
        reactor = self.buildReactor()
        before = reactor.ameStats()["stream_reads"]
        stdout, _, code, proc = self._spawnSeq(reactor, 20000)
        self.assertEqual(code, 0)
        self.assertTrue(stdout.endswith(b"20000\n"))
        self.assertGreater(reactor.ameStats()["stream_reads"], before)
        self.assertIsInstance(proc.processReaderFactory, type)
        self.assertTrue(issubclass(proc.processReaderFactory, _ProcessReader))

    def test_resolverIsTheCores(self):
        """
        The name resolver is ame's (getaddrinfo on the C reactor), and
        reactor.resolve() goes through it.
        """
        from ame.reactor import _AMEResolver
        reactor = self.buildReactor()
        self.assertIsInstance(reactor.nameResolver, _AMEResolver)
        got = []
        d = reactor.resolve("localhost")
        d.addBoth(got.append)
        d.addBoth(lambda _: reactor.stop())
        self.runReactor(reactor)
        self.assertEqual(got, ["127.0.0.1"])

    def test_coreCloses(self):
        """
        A reactor that is collected stops its C reactor and thread.
        """
        gc.collect()
        before = threading.active_count(), len(os.listdir("/proc/self/task"))
        for _ in range(20):
            r = AMEReactor()
            r.iterate(0)
            r._core.close()
            self.assertTrue(r._core.closed)
            del r
        for _ in range(20):
            r = AMEReactor()
            r.iterate(0)
            del r
        gc.collect()
        after = threading.active_count(), len(os.listdir("/proc/self/task"))
        self.assertEqual(before, after)

    def test_forkedChild(self):
        """
        A forked child cannot use its parent's core (its worker thread is
        not there): it gets RuntimeError rather than a hang; the parent's
        reactor goes on.
        """
        reactor = self.buildReactor()
        reactor.iterate(0)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                reactor.iterate(0)
            except RuntimeError:
                code = 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        reactor.iterate(0)

    def test_daemonizeHooks(self):
        """
        IReactorDaemonize: after beforeDaemonize() and afterDaemonize() in a
        forked child (what twistd does), the child's reactor serves the
        listening port made before, with a new core; the parent's goes on.
        """
        from twisted.internet.interfaces import IReactorDaemonize
        reactor = self.buildReactor()
        self.assertTrue(IReactorDaemonize.providedBy(reactor))
        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(_Echo),
                                 interface="127.0.0.1")
        # The parent stops accepting (its C worker would otherwise accept
        # the child's connection while the parent waits for the child).
        port.stopReading()
        reactor.iterate(0)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                reactor.beforeDaemonize()
                reactor.afterDaemonize()
                port.startReading()
                done = Deferred()
                got = []
                done.addCallback(got.append)
                # crash(), not stop(): stopping would shut the listening
                # socket down, which the parent shares.
                done.addBoth(lambda _: reactor.crash())
                reactor.connectTCP(
                    "127.0.0.1", port.getHost().port,
                    protocol.ClientFactory.forProtocol(
                        lambda: _Client(b"daemon", done)))
                reactor.callLater(5, reactor.crash)
                reactor.run(installSignalHandlers=False)
                code = 0 if got == [b"daemon"] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        reactor.iterate(0)

    def test_closedCoreRaises(self):
        """
        A closed core refuses to watch or wait (rather than crash).
        """
        r = AMEReactor()
        r._core.close()
        self.assertRaises(RuntimeError, r._core.wait, 0)
        self.assertRaises(RuntimeError, r._core.watch, 0, 1)
        r._core.wake()  # harmless


class AMEInlineReactorTests(AMEReactorTests):
    """
    The same behaviours with C{io="inline"}: no C thread, C{doPoll} steps
    the C reactor on the Python thread (what C{ame run} workers use when
    they fill every core).
    """

    reactorFactory = staticmethod(lambda: AMEReactor(io="inline"))
    _ioMode = "inline"

    # No C thread: what the kernel has waits there for doPoll.
    _waitAcceptable = ReactorBehaviourMixin._waitAcceptable
    _waitReadable = ReactorBehaviourMixin._waitReadable

    def test_noThread(self):
        """
        An inline reactor starts no thread, and serves TCP all the same.
        """
        before = len(os.listdir("/proc/self/task"))
        reactor = self.buildReactor()
        self.assertEqual(reactor._core.io, "inline")
        self.assertEqual(len(os.listdir("/proc/self/task")), before)
        self.assertEqual(self._echoOnce(reactor, b"inline"), [b"inline"])
        self.assertEqual(len(os.listdir("/proc/self/task")), before)

    def test_signalInterruptsWait(self):
        """
        A signal ends an inline wait at once and its Python handler runs
        (here it raises, out of wait()), with no Twisted waker installed.
        """
        reactor = self.buildReactor()
        old = signal.signal(signal.SIGALRM, self._raiseBoom)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            self.assertRaises(_Boom, reactor._core.wait, 60)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    @staticmethod
    def _raiseBoom(signum, frame):
        raise _Boom()

    def test_otherThread(self):
        """
        Once a thread has waited on an inline core, only that thread may
        wait or watch on it; wake() from another thread ends its wait.
        """
        reactor = self.buildReactor()
        reactor._core.wait(0)  # this thread runs it from now on
        errors = []

        def other():
            for f, a in ((reactor._core.wait, (0,)),
                         (reactor._core.watch, (0, 0))):
                try:
                    f(*a)
                except RuntimeError as e:
                    errors.append(str(e))
            reactor._core.wake()

        t = threading.Thread(target=other)
        t.start()
        self.assertEqual(reactor._core.wait(60), [])
        t.join()
        self.assertEqual(len(errors), 2)
        self.assertIn("another thread", errors[0])

    def test_runInAnotherThread(self):
        """
        An inline reactor set up in one thread (a listening port) can be
        run in another, as programs that run Twisted in a background
        thread do: the first wait() makes that thread the loop's.
        """
        reactor = self.buildReactor()
        factory = protocol.ServerFactory.forProtocol(_Echo)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        got, errors = [], []

        def run():
            try:
                done = Deferred()
                done.addCallback(got.append)
                done.addBoth(lambda _: port.stopListening())
                done.addBoth(lambda _: reactor.stop())
                reactor.connectTCP("127.0.0.1", port.getHost().port,
                                   protocol.ClientFactory.forProtocol(
                                       lambda: _Client(b"elsewhere", done)))
                reactor.callLater(30, reactor.stop)
                reactor.run(installSignalHandlers=False)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        t.join(60)
        self.assertFalse(t.is_alive())
        self.assertEqual(errors, [])
        self.assertEqual(got, [b"elsewhere"])
        # This thread did not run it: it may not wait on it now.
        self.assertRaises(RuntimeError, reactor._core.wait, 0)

    def test_badIO(self):
        """
        io must be "thread" or "inline".
        """
        self.assertRaises(ValueError, AMEReactor, io="fibres")


class AMEAutoIOTests(SynchronousTestCase):
    """
    AMEReactor's default I/O mode: $AME_IO, else auto (inline when the
    process may use one CPU only, by its affinity or its cgroup's CPU
    quota, else thread).  Each case runs in a
    child, whose affinity and environment can be changed.
    """

    def _io(self, cpus, env):
        code = ("import os, sys\n"
                "cpus = %r\n"
                "if cpus: os.sched_setaffinity(0, cpus)\n"
                "from ame.reactor import AMEReactor\n"
                "r = AMEReactor()\n"
                "print(r._core.io)\n" % (cpus,))
        full = dict(os.environ)
        full.pop("AME_IO", None)
        full.update(env)
        # The child finds ame where this process did (trial runs in a
        # directory of its own; site made these paths absolute).
        full["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        out = subprocess.run([sys.executable, "-c", code], env=full,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.strip()

    def test_autoOneCPU(self):
        cpu = min(os.sched_getaffinity(0))
        self.assertEqual(self._io({cpu}, {}), "inline")
        self.assertEqual(self._io({cpu}, {"AME_IO": "thread"}), "thread")

    def test_autoManyCPUs(self):
        from ame import _ame
        if _ame.cpu_count() < 2:
            raise SkipTest("one CPU here (affinity or cgroup quota)")
        self.assertEqual(self._io(None, {}), "thread")
        self.assertEqual(self._io(None, {"AME_IO": "inline"}), "inline")
