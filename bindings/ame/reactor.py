"""
A Twisted reactor on ame's C reactor.

To install it (before anything imports C{twisted.internet.reactor})::

    from ame import reactor
    reactor.install()

or run C{twistd --reactor=ame ...} / C{trial --reactor=ame ...} (the plugin
in C{twisted/plugins/ame_reactor.py}).

The C reactor runs on a thread of its own.  TCP connections are its own:
the worker reads and sends (bindings/ame/transport.c), and the thread that
called C{reactor.run()} gets the data and calls C{dataReceived} from C.
Other file descriptors are watched by the worker and their readiness comes
back to that thread.  It runs every Python callback, one at a time, under
the GIL: Python code never aborts and never touches the STM; each callback
is, in AME terms, an irrevocable transaction.  TLS over these transports
(listenSSL, connectSSL) runs on the worker too where the program's context
allows it (L{ame._tls}).  What Twisted layers on top (TCP connection
set-up, UDP, Unix sockets, processes, threads, the TLS that stays Python)
is Twisted's own posix code, as for L{EPollReactor}; see
C{docs/twisted.md} for what is in C and what is Python.
"""

import builtins
import errno
import os
import socket
import threading

from zope.interface import implementer

from twisted.internet import (
    _newtls,
    _resolver,
    error,
    main,
    posixbase,
    process,
    tcp,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorDaemonize,
    IReactorFDSet,
)
from twisted.python import deprecate, failure, log, versions

from ame import _ame, _tls

__all__ = ["AMEReactor", "install"]

# ame.atomic's deferral of reactor calls (see _ameAtomicHooks).
_inAtomic = _ame._shared_in_atomic
_afterCommit = _ame.after_commit
_onRollback = _ame._shared_on_rollback
_READABLE = _ame.READABLE


class _AMEWaker:
    """
    Wakes the reactor's C{wait} from another thread (or a signal handler):
    one write to the core's eventfd, no pipe, no file descriptor to watch.
    """

    disconnected = 0

    def __init__(self, reactor):
        self._core = reactor._core

    def wakeUp(self):
        self._core.wake()

    def doRead(self):
        pass

    def connectionLost(self, reason):
        pass


class _FastStream:
    """
    What a TCP transport whose I/O is the C worker's (L{_ame.Stream}) does
    differently from Twisted's L{tcp.Connection}: C{doRead} takes what the
    worker read, C{doWrite} runs when the worker has sent everything.
    Until the stream is attached (a client still connecting) and after it
    detached, Twisted's own methods apply.
    """

    def doRead(self):
        if not self._ameFast:
            return tcp.Connection.doRead(self)
        r = self._ameRead()
        if r is None:
            return None
        if r.__class__ is int:
            return main.CONNECTION_LOST
        if not r:
            tls = self._ameTLSInfo()[2]
            if tls is not None:
                # TLS in C: the input ended with the peer's close_notify.
                tls._ameCloseNotify()
                return None
        return self._dataReceived(r)

    def doWrite(self):
        if not self._ameFast:
            return tcp.Connection.doWrite(self)
        err, queued = self._ameWriteState()
        if err:
            return main.CONNECTION_LOST
        if queued:
            return None
        # Everything is sent: what FileDescriptor.doWrite does then.
        self.stopWriting()
        if self.producer is not None and (
            (not self.streamingProducer) or self.producerPaused
        ):
            self.producerPaused = False
            self.producer.resumeProducing()
        elif self.disconnecting:
            return self._postLoseConnection()
        elif self._writeDisconnecting:
            self._writeDisconnected = True
            return self._closeWriteConnection()
        return None

    def _ameMoveBuffers(self):
        """
        Hand what Twisted's FileDescriptor.write buffered in Python (TLS
        records, writes while a producer is registered) to the worker.
        """
        if self.dataBuffer:
            data = self.dataBuffer
            if self.offset:
                data = data[self.offset :]
            self.dataBuffer = b""
            self.offset = 0
            self._ameSend(data)
        if self._tempDataBuffer:
            for data in self._tempDataBuffer:
                self._ameSend(data)
            self._tempDataBuffer = []
            self._tempDataLen = 0

    def registerProducer(self, producer, streaming):
        _newtls.ConnectionMixin.registerProducer(self, producer, streaming)
        self._ameWatchDrain()

    def _ameWatchDrain(self):
        # Twisted resumes producers from doWrite once the buffer drains: if
        # write() queued data in C before, ask to be told when it is sent.
        if self.producer is not None and self._ameFast and self._ameQueued():
            self.startWriting()

    def _ameBufferFull(self):
        # write() in C, with a streaming producer, queued over bufferSize.
        self._maybePauseProducer()
        self.startWriting()

    def _isSendBufferFull(self):
        return (
            self._ameQueued() + len(self.dataBuffer) + self._tempDataLen
            > self.bufferSize
        )

    # The C write() hands these cases back: TLS, producers, bad types.
    def _ameSlowWrite(self, data):
        _newtls.ConnectionMixin.write(self, data)

    def _ameSlowWriteSequence(self, iovec):
        _newtls.ConnectionMixin.writeSequence(self, iovec)

    def startTLS(self, ctx, normal=True):
        if not self._ameFast:
            # Twisted's TLS over Twisted's I/O: counted.
            _tls.count(self.reactor, False)
            return tcp.Connection.startTLS(self, ctx, normal)
        # In C where the context allows (counted by the TLS layer).
        return _tls.startTLS(self, ctx, normal)

    def loseConnection(self, *args, **kwargs):
        # Inside ame.atomic: once it commits (as write()).
        if _inAtomic():
            return _afterCommit(self.loseConnection, *args, **kwargs)
        return super().loseConnection(*args, **kwargs)

    def abortConnection(self):
        if _inAtomic():
            return _afterCommit(self.abortConnection)
        # Twisted drops what is still buffered: so do we, for what the
        # worker has not taken yet.
        if not self.disconnected and not getattr(self, "_aborting", False):
            self._ameDiscard()
        tcp.Connection.abortConnection(self)

    def _closeSocket(self, orderly):
        if self._ameFast:
            # The fd goes to C, which shuts it down (or resets it) and
            # closes it as Twisted would, once the worker let go of it:
            # no wait for the worker here.
            fd = self.socket.detach()
            try:
                self._ameDetachClose(orderly, self._shouldShutdown)
            except RuntimeError:
                os.close(fd)
            return
        tcp.Connection._closeSocket(self, orderly)


def _attach(transport, reactor, fd, listener=False):
    """
    Hand a connection's (or a listening socket's) I/O to the C worker, if
    the reactor has one.  The worker uses the fd itself (no second
    descriptor); should attaching fail, the connection stays on Twisted's
    own Python path.
    """
    core = getattr(reactor, "_core", None)
    if core is None:
        return
    try:
        transport._ameAttach(core, fd, listener)
    except OSError:
        reactor._amePythonPath = getattr(reactor, "_amePythonPath", 0) + 1


class Server(_ame.Stream, _FastStream, tcp.Server):
    """
    A server-side TCP connection whose reading and writing are in C.
    """

    def __init__(self, sock, protocol, client, server, sessionno, reactor):
        _attach(self, reactor, sock.fileno())
        tcp.Server.__init__(
            self, sock, protocol, client, server, sessionno, reactor
        )


    def getHost(self):
        # A connected socket's own address does not change: ask the kernel
        # once (twisted.web asks for every request).
        host = self.__dict__.get("_ameHost")
        if host is None:
            host = self._ameHost = tcp.Server.getHost(self)
        return host


class Client(_ame.Stream, _FastStream, tcp.Client):
    """
    A client-side TCP connection whose reading and writing are in C once
    connected (connecting is Twisted's code, on fd readiness).
    """

    def _connectDone(self):
        _attach(self, self.reactor, self.socket.fileno())
        tcp.Client._connectDone(self)


class _Accepted:
    """
    The listening socket as Twisted's accept loop (L{tcp._accept}) sees it
    while L{Port.doRead} runs: C{accept()} hands out what the worker has
    accepted; when that is used up it says "none left", unless the worker
    met an error, which the real C{accept()} then meets again, so that
    Twisted's own handling (EMFILE recovery, logging) applies.
    """

    def __init__(self, port, real):
        self._port = port
        self._real = real
        self._failed = False

    def accept(self):
        if self._failed:
            return self._real.accept()
        r = self._port._ameAcceptOne()
        if r is None:
            raise BlockingIOError(errno.EAGAIN, "no connection left")
        if r.__class__ is int:
            # The worker met an error: from here on, this doRead calls
            # accept() itself (the worker waits until it is over).
            self._failed = True
            return self._real.accept()
        fd, addr = r
        real = self._real
        return socket.socket(real.family, real.type, real.proto, fd), addr

    def __getattr__(self, name):
        return getattr(self._real, name)


class Port(_ame.Stream, tcp.Port):
    """
    A TCP port whose connections are L{Server}s, accepted by the C worker.
    """

    transport = Server

    def startListening(self):
        tcp.Port.startListening(self)
        # From now on the worker accepts (nothing is armed yet: cheap).
        self.stopReading()
        _attach(self, self.reactor, self.fileno(), listener=True)
        self.startReading()

    def doRead(self):
        if not self._ameFast:
            return tcp.Port.doRead(self)
        # Twisted's own accept loop, over what the worker accepted.
        real = self.socket
        self.socket = _Accepted(self, real)
        try:
            return tcp.Port.doRead(self)
        finally:
            if self.socket.__class__ is _Accepted:
                self.socket = real
            self._ameRequeue()

    def _closeSocket(self, orderly):
        self._ameDetach()
        tcp.Port._closeSocket(self, orderly)


class Connector(tcp.Connector):
    """
    A TCP connector whose connections are L{Client}s.
    """

    def _makeTransport(self):
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


class _ProcessReader(_ame.Stream, process.ProcessReader):
    """
    A child process's output pipe whose reading is the C worker's: it
    read()s without the GIL and the Python thread gets the data (calling
    this reader's C{dataReceived}, hence C{childDataReceived}), as for
    the TCP streams.  Until attached, and if attaching fails, Twisted's own
    C{doRead} applies.
    """

    def __init__(self, reactor, proc, name, fileno):
        # ProcessReader's class attribute, hidden by Stream's field.
        self.connected = True
        # What the C dispatch calls dataReceived on.
        self.protocol = self
        core = getattr(reactor, "_core", None)
        if core is not None:
            try:
                self._ameAttach(core, fileno, False, True)
            except OSError:
                pass
        process.ProcessReader.__init__(self, reactor, proc, name, fileno)

    def doRead(self):
        if not self._ameFast:
            return process.ProcessReader.doRead(self)
        # What fdesc.readFromFD does, on what the worker read.
        r = self._ameRead()
        if r is None:
            return None
        if r.__class__ is int:
            return main.CONNECTION_LOST
        if not r:
            return main.CONNECTION_DONE
        self.dataReceived(r)

    def connectionLost(self, reason):
        self._ameDetach()
        process.ProcessReader.connectionLost(self, reason)


class _Process(process.Process):
    """
    A child process whose output pipes are L{_ProcessReader}s (unless
    C{process.Process.processReaderFactory} was replaced, as Twisted's
    tests do: then that).
    """

    def __init__(self, *args, **kwargs):
        factory = process.Process.processReaderFactory
        if factory is process.ProcessReader:
            factory = _ProcessReader
        self.processReaderFactory = factory
        process.Process.__init__(self, *args, **kwargs)


class _AMEResolver(_resolver.GAIResolver):
    """
    Twisted's L{GAIResolver} with C{getaddrinfo} on the C reactor (libuv's
    resolver threads) rather than on a thread of the reactor's Python
    thread pool; the answer is delivered by the reactor's loop.  A failed
    lookup resolves to no address, as with L{GAIResolver}.
    """

    def __init__(self, reactor):
        _resolver.GAIResolver.__init__(self, reactor)

    def resolveHostName(
        self,
        resolutionReceiver,
        hostName,
        portNumber=0,
        addressTypes=None,
        transportSemantics="TCP",
    ):
        addressFamily = _resolver._typesToAF[
            _resolver._any if addressTypes is None else frozenset(addressTypes)
        ]
        socketType = _resolver._transportToSocket[transportSemantics]
        resolution = _resolver.HostResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)

        def deliver(result):
            try:
                if result.__class__ is list:
                    for family, socktype, proto, canon, sockaddr in result:
                        addrType = _resolver._afToType[family]
                        resolutionReceiver.addressResolved(
                            addrType(
                                _resolver._socktypeToType.get(socktype, "TCP"),
                                *sockaddr
                            )
                        )
                resolutionReceiver.resolutionComplete()
            except BaseException:
                log.err(None, "Error delivering the resolution of %r"
                        % (hostName,))

        host = hostName
        try:
            # None is getaddrinfo's (the loopback addresses), as
            # GAIResolver passes it on.
            if isinstance(host, bytes):
                host = host.decode("ascii")
            try:
                if host is not None:
                    host.encode("ascii")
            except UnicodeEncodeError:
                host = host.encode("idna").decode("ascii")
            self._reactor._core.getaddrinfo(
                host, portNumber, addressFamily, socketType, deliver
            )
        except (OSError, ValueError, UnicodeError, TypeError):
            # socket.getaddrinfo would fail: no addresses, later.
            self._reactor.callLater(0, deliver, None)
        return resolution


@implementer(IReactorFDSet, IReactorDaemonize)
class AMEReactor(
    _ame.Timers, posixbase.PosixReactorBase, posixbase._PollLikeMixin
):
    """
    A reactor whose file descriptors are watched by ame's C reactor.

    @ivar _core: the L{_ame.Core}: the C reactor and its thread.
    @ivar _selectables: fd -> the L{FileDescriptor} registered for it.
    @ivar _reads: fds watched for reading.
    @ivar _writes: fds watched for writing.
    @ivar _continuousPolling: for fds epoll refuses (regular files), as in
        L{EPollReactor}.
    """

    _POLL_DISCONNECTED = _ame.DISCONNECT
    _POLL_IN = _ame.READABLE
    _POLL_OUT = _ame.WRITABLE

    def __init__(self, io=None):
        # "thread" (a C worker thread does the socket I/O beside the Python
        # thread), "inline" (no thread: doPoll steps the C reactor on the
        # Python thread; for processes that should have one thread, such as
        # `ame run` workers that fill every core) or "auto": inline if this
        # process may use one CPU only (its affinity mask, or its cgroup's
        # CPU quota: _ame.cpu_count()), else thread.  Default: $AME_IO,
        # else "auto".
        io = io or os.environ.get("AME_IO") or "auto"
        if io == "auto":
            io = "inline" if _ame.cpu_count() <= 1 else "thread"
        self._ameIO = io
        self._core = _ame.Core(io=self._ameIO)
        self._reads = set()
        self._writes = set()
        self._selectables = {}
        self._continuousPolling = posixbase._ContinuousPolling(self)
        self._core.set_handlers(self._ameReadFailed)
        _tls.adopt()
        posixbase.PosixReactorBase.__init__(self)

    # The waker: wakeUp() signals the core directly.
    def installWaker(self):
        if not self.waker:
            self.waker = _AMEWaker(self)

    def spawnProcess(
        self,
        processProtocol,
        executable,
        args=(),
        env={},
        path=None,
        uid=None,
        gid=None,
        usePTY=0,
        childFDs=None,
    ):
        if usePTY:
            return posixbase.PosixReactorBase.spawnProcess(
                self, processProtocol, executable, args, env, path, uid,
                gid, usePTY, childFDs)
        return _Process(self, executable, args, env, path, processProtocol,
                        uid, gid, childFDs)

    def _initThreads(self):
        posixbase.PosixReactorBase._initThreads(self)
        # DNS on the C reactor rather than on the Python thread pool.
        self.installNameResolver(_AMEResolver(self))

    # IReactorFDSet

    def _mask(self, fd):
        return (_ame.READABLE if fd in self._reads else 0) | (
            _ame.WRITABLE if fd in self._writes else 0
        )

    def _add(self, xer, primary, event):
        fd = xer.fileno()
        if fd < 0:
            # What epoll's register raises (a closed selectable's -1).
            raise ValueError(
                "file descriptor cannot be a negative integer (%d)" % (fd,))
        if fd not in primary:
            # OSError (EPERM for regular files, EBADF, ...) goes through
            # before any state changes, as with epoll.
            self._core.watch(fd, self._mask(fd) | event)
            primary.add(fd)
            self._selectables[fd] = xer

    def addReader(self, reader):
        """
        Add a FileDescriptor for notification of data available to read.
        """
        if getattr(reader, "_ameFast", False):
            fd = reader.fileno()
            if fd != reader._ameFd:
                # Its socket was replaced (ame run gives each worker a
                # listening socket of its own): follow it.
                listener = reader._ameListener
                reader._ameDetach()
                _attach(reader, self, fd, listener)
                if not reader._ameFast:
                    return self.addReader(reader)
            if fd not in self._reads:
                self._reads.add(fd)
                self._selectables[fd] = reader
                reader._ameSetRead(True)
            return
        try:
            self._add(reader, self._reads, _ame.READABLE)
        except OSError as e:
            if e.errno == errno.EPERM:
                self._continuousPolling.addReader(reader)
            else:
                raise

    def addWriter(self, writer):
        """
        Add a FileDescriptor for notification of data available to write.
        """
        if getattr(writer, "_ameFast", False):
            # A fast stream is "writable" once the worker sent everything.
            writer._ameMoveBuffers()
            fd = writer.fileno()
            if fd not in self._writes:
                self._writes.add(fd)
                self._selectables[fd] = writer
                writer._ameSetDrain(True)
            return
        try:
            self._add(writer, self._writes, _ame.WRITABLE)
        except OSError as e:
            if e.errno == errno.EPERM:
                self._continuousPolling.addWriter(writer)
            else:
                raise

    def _remove(self, xer, primary, other):
        fd = xer.fileno()
        if fd == -1:
            for fd, fdes in self._selectables.items():
                if xer is fdes:
                    break
            else:
                return
        if fd in primary:
            primary.remove(fd)
            if fd not in other:
                del self._selectables[fd]
            if getattr(xer, "_ameFast", False):
                if primary is self._reads:
                    xer._ameSetRead(False)
                else:
                    xer._ameSetDrain(False)
                return
            # Returns once the C side no longer watches fd (if it was the
            # last interest), so the caller may close it.
            self._core.watch(fd, self._mask(fd))

    def removeReader(self, reader):
        """
        Remove a Selectable for notification of data available to read.
        """
        if self._continuousPolling.isReading(reader):
            self._continuousPolling.removeReader(reader)
            return
        self._remove(reader, self._reads, self._writes)

    def removeWriter(self, writer):
        """
        Remove a Selectable for notification of data available to write.
        """
        if self._continuousPolling.isWriting(writer):
            self._continuousPolling.removeWriter(writer)
            return
        self._remove(writer, self._writes, self._reads)

    def removeAll(self):
        """
        Remove all selectables, and return a list of them.
        """
        return (
            self._removeAll(
                [self._selectables[fd] for fd in self._reads],
                [self._selectables[fd] for fd in self._writes],
            )
            + self._continuousPolling.removeAll()
        )

    def getReaders(self):
        return [
            self._selectables[fd] for fd in self._reads
        ] + self._continuousPolling.getReaders()

    def getWriters(self):
        return [
            self._selectables[fd] for fd in self._writes
        ] + self._continuousPolling.getWriters()

    # The loop

    def doPoll(self, timeout):
        """
        Wait (GIL released) for events or a wake-up, at most C{timeout}
        seconds (L{None}: forever; 0: return at once), then dispatch them.
        """
        events = self._core.wait(timeout, self._ameCatchUp)
        _drdw = self._doReadOrWrite
        selectables = self._selectables
        reads = self._reads
        for fd, event in events:
            if fd.__class__ is int:
                selectable = selectables.get(fd)
            else:  # a fast stream (its data went to dataReceived already)
                selectable = fd
                fd = selectable.fileno()
                # wait() took this event while the stream read; a callback
                # that ran since (a dataReceived called from wait(), an
                # earlier event of this loop) may have stopped its reading.
                # Then it is not delivered, as EPollReactor delivers
                # nothing to a selectable removed meanwhile: a listening
                # port would accept a connection after stopReading() (ame
                # run's worker stops its ports at --max-requests, then
                # accepts nothing more).  What the worker took stays in C
                # until the stream reads again.
                if event == _READABLE and (
                        fd not in reads or selectables.get(fd) is not
                        selectable):
                    continue
            if selectable is not None:
                log.callWithLogger(selectable, _drdw, selectable, fd, event)

    def _ameReadFailed(self, selectable, value, raised):
        """
        A fast stream's C{dataReceived} (called from C) raised C{value}, or
        returned it: do what L{_doReadOrWrite} and
        L{tcp.Connection._dataReceived} do then.
        """
        log.callWithLogger(
            selectable, self._ameReadFailedIn, selectable, value, raised
        )

    def _ameReadFailedIn(self, selectable, value, raised):
        if raised:
            log.err(failure.Failure(value), None)
        else:
            protocol = getattr(selectable, "protocol", None)
            offender = getattr(protocol, "dataReceived", None)
            if offender is not None:
                warningString = deprecate.getDeprecationWarningString(
                    offender,
                    versions.Version("Twisted", 11, 0, 0),
                    format=(
                        "Returning a value other than None from "
                        "%(fqpn)s is deprecated since %(version)s."
                    ),
                )
                deprecate.warnAboutFunction(offender, warningString)
        if value:
            # As _doReadOrWrite: a value doRead returned is the read's
            # outcome (ConnectionDone: the end of the input, which a
            # half-closeable transport takes as a half-close); an
            # exception it raised is not, whatever its class.
            self._disconnectSelectable(selectable, value, not raised)

    # TCP: transports whose I/O is in C.

    def listenTCP(self, port, factory, backlog=50, interface=""):
        p = Port(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        c = Connector(host, port, factory, timeout, bindAddress, self)
        c.connect()
        return c

    # TLS: Twisted's TLSMemoryBIOFactory over TCP, as on EPollReactor, but
    # the handshake and record layer run on the C worker where they can
    # (ame._tls).

    def listenSSL(self, port, factory, contextFactory, backlog=50,
                  interface=""):
        tlsFactory = _tls.TLSFactory(contextFactory, False, factory, self)
        p = self.listenTCP(port, tlsFactory, backlog, interface)
        p._type = "TLS"
        return p

    def connectSSL(self, host, port, factory, contextFactory, timeout=30,
                   bindAddress=None):
        tlsFactory = _tls.TLSFactory(contextFactory, True, factory, self)
        return self.connectTCP(host, port, tlsFactory, timeout, bindAddress)

    doIteration = doPoll

    # wait(0)'s catch-up with the worker (thread mode): for an explicit
    # iterate(), which must deliver what the kernel reported before it
    # began (trial's janitor: iterate(0) after each test, then unclean if
    # a closed connection is still a reader).  Not for the loop's own
    # iterations while calls are due: a callLater(0) loop would wait for
    # two worker passes per iteration; what the worker is still handing
    # over comes in a later iteration.
    _ameCatchUp = False

    def iterate(self, delay=0.0):
        # An iterate() run by a callback of this one gives back the flag
        # as it found it: this one's wait still catches up.
        outer = self._ameCatchUp
        self._ameCatchUp = True
        try:
            posixbase.PosixReactorBase.iterate(self, delay)
        finally:
            self._ameCatchUp = outer

    def mainLoop(self):
        """
        Twisted's main loop; when it ends (C{run()} returns), the TLS
        handshake pool's threads end too: a stopped reactor makes no
        handshakes, and a reactor run again starts them at its next TLS
        connection.  The C worker stays, for C{ameStats()} and a later
        C{run()}, until the reactor is collected.
        """
        try:
            posixbase.PosixReactorBase.mainLoop(self)
        finally:
            self._core.tls_pool_stop()

    # ame.atomic: calls made inside happen once, after the commit.

    def _ameAtomicCallLater(self, delay, callable, *args, **kw):
        # callLater (C, timers.c) comes here inside ame.atomic.
        assert builtins.callable(callable), f"{callable} is not callable"
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        dc = _AtomicDelayedCall(self, delay, callable, args, kw)
        _afterCommit(dc._schedule)
        _onRollback(dc._rolledBack)
        return dc

    # The thread running one of Twisted's signal handlers (sigInt, ...),
    # else None.  A signal handler runs in whatever its thread was doing,
    # an ame.atomic attempt included, but is no part of that transaction:
    # its stop must neither wait for the commit nor go with a rollback.
    _ameSignalThread = None

    def _ameSignalled(self, handler, number, frame):
        outer = self._ameSignalThread
        self._ameSignalThread = threading.get_ident()
        try:
            handler(self, number, frame)
        finally:
            self._ameSignalThread = outer

    def sigInt(self, number, frame=None):
        self._ameSignalled(posixbase.PosixReactorBase.sigInt, number, frame)

    def sigTerm(self, number, frame=None):
        self._ameSignalled(posixbase.PosixReactorBase.sigTerm, number, frame)

    def sigBreak(self, number, frame=None):
        self._ameSignalled(posixbase.PosixReactorBase.sigBreak, number, frame)

    def callFromThread(self, f, *args, **kw):
        if _inAtomic() and self._ameSignalThread != threading.get_ident():
            return _afterCommit(
                posixbase.PosixReactorBase.callFromThread, self, f, *args,
                **kw)
        return posixbase.PosixReactorBase.callFromThread(self, f, *args, **kw)

    # A stop() of this attempt of an ame.atomic block, waiting for its
    # commit.
    _ameStopQueued = False

    def stop(self):
        if _inAtomic():
            # ReactorBase.stop's check, made at the call, as EPollReactor
            # makes it: a reactor that is not running, or whose stop this
            # block already asked for, raises here, in the block (whose
            # writes then roll back), not out of ame.atomic after the
            # commit.  The stop itself waits for the commit.
            if self._stopped or self._ameStopQueued:
                raise error.ReactorNotRunning(
                    "Can't stop reactor that isn't running.")
            self._ameStopQueued = True
            _onRollback(self._ameStopDropped)
            return _afterCommit(self._ameStopCommitted)
        return posixbase.PosixReactorBase.stop(self)

    def _ameStopCommitted(self):
        self._ameStopQueued = False
        posixbase.PosixReactorBase.stop(self)

    def _ameStopDropped(self):
        self._ameStopQueued = False

    # ame

    def _reinitAfterFork(self, io=None):
        """
        In a child made by C{fork()} after this reactor was created (the
        C{ame run --workers N} supervisor forks at C{reactor.run()}): the
        parent's C worker thread does not exist here, so start a new core
        (C{io}: as for L{__init__}; default: as before) and watch again
        every fd the reactor watched.
        """
        if io is not None:
            self._ameIO = io
        self._core = _ame.Core(io=self._ameIO)
        self._core.set_handlers(self._ameReadFailed)
        if isinstance(self.waker, _AMEWaker):
            self.waker._core = self._core
        for fd in self._reads | self._writes:
            s = self._selectables.get(fd)
            if isinstance(s, Port) or (
                isinstance(s, (Server, Client)) and s.connected
            ):
                _attach(s, self, fd, isinstance(s, Port))
            if getattr(s, "_ameFast", False):
                s._ameSetRead(fd in self._reads)
                s._ameSetDrain(fd in self._writes)
            else:
                self._core.watch(fd, self._mask(fd))

    # IReactorDaemonize: the C worker thread does not survive fork().

    def beforeDaemonize(self):
        """
        Stop the C reactor and its thread before twistd forks.
        """
        self._core.close()

    def afterDaemonize(self):
        """
        Start a new C reactor in the daemon and watch every fd again.
        """
        self._reinitAfterFork()

    def ameStats(self):
        """
        Return the C reactor's counters (C{ame_reactor_stats}) and the
        binding's, as a dict: C{callbacks}, C{failures}, C{stolen},
        C{accepted}, C{accept_errors}, C{streams_open},
        C{per_worker_callbacks}, C{workers}; and the binding's:
        C{fd_events} (readiness events the worker delivered),
        C{stream_reads}, C{stream_sends}, C{stream_writes} (the C TCP
        streams' recv() and send() calls and write() calls),
        C{stream_accepted} (connections accepted for their listeners),
        C{stream_open} (their connections open now), C{bytes_received},
        C{bytes_sent} (their bytes),
        C{stm_commits}, C{stm_aborts}, C{stm_irrevocable} (process-wide
        STM totals),
        C{direct_events} (events found by the Python thread's own check of
        the fds it had just dispatched or changed, with no worker round
        trip), C{catchups} (C{wait(0)}s that waited for the worker to
        take what the kernel had reported), C{watch_flushes} (batches of watch changes posted to the
        worker), C{watch_barriers} (removals that waited for the worker),
        C{watch_polls} (the watched fds the worker holds a poll for now);
        C{python_path} (connections and listeners left on Twisted's
        own Python I/O because the C side could not take them: a full
        descriptor table); C{tls_c} and C{tls_python} (TLS connections
        whose TLS ran in C, and Twisted's), C{tls_c_handshakes},
        C{tls_c_failures}, C{tls_c_open} (the worker's side of them).
        """
        stats = self._core.stats()
        stats["python_path"] = getattr(self, "_amePythonPath", 0)
        stats["tls_c"] = getattr(self, "_ameTLSC", 0)
        stats["tls_python"] = getattr(self, "_ameTLSPython", 0)
        return stats

    def ameReport(self):
        """
        Return the C reactor's report as text: its counters and the STM
        conflict report (totals, aborts by cause, the most conflicted
        words with their labels and call sites; see docs/stm.md).  Python
        callbacks never run as STM transactions, so the STM figures are
        those of the C side (the worker's poll callbacks and posted calls).
        """
        return self._core.report()


@implementer(IDelayedCall)
class _AtomicDelayedCall:
    """
    What C{callLater} returns inside C{ame.atomic}: the call is scheduled
    when the transaction commits, for the time asked for (counted from the
    C{callLater}), and never for an attempt that aborts.  Until then it
    can be cancelled, reset or delayed; from then on it stands for the
    reactor's own DelayedCall.  The stand-in of an attempt that was rolled
    back (a conflict, or an exception out of the block) is cancelled: not
    C{active()}, and C{cancel}, C{reset} and C{delay} raise
    L{error.AlreadyCancelled}, as for a call cancelled before it ran.
    """

    def __init__(self, reactor, delay, f, args, kw):
        self._reactor = reactor
        self._time = reactor.seconds() + delay
        self._call = (f, args, kw)
        self._dc = None
        self._cancelled = False

    def _schedule(self):
        if self._cancelled:
            return
        f, args, kw = self._call
        self._call = None
        delay = max(0.0, self._time - self._reactor.seconds())
        self._dc = _ame.Timers.callLater(self._reactor, delay, f, *args, **kw)

    def _rolledBack(self):
        self._cancelled = True
        self._call = None

    def _pending(self):
        if self._cancelled:
            raise error.AlreadyCancelled
        return self._dc is None

    def getTime(self):
        return self._time if self._dc is None else self._dc.getTime()

    def cancel(self):
        if self._pending():
            self._cancelled = True
        else:
            self._dc.cancel()

    def reset(self, secondsFromNow):
        if self._pending():
            self._time = self._reactor.seconds() + secondsFromNow
        else:
            self._dc.reset(secondsFromNow)

    def delay(self, secondsLater):
        if self._pending():
            self._time += secondsLater
        else:
            self._dc.delay(secondsLater)

    def active(self):
        if self._dc is None:
            return not self._cancelled
        return self._dc.active()

    # DelayedCall's flags, which programs read as well as active().

    @property
    def cancelled(self):
        return int(self._cancelled) if self._dc is None else self._dc.cancelled

    @property
    def called(self):
        return 0 if self._dc is None else self._dc.called


def install(io=None):
    """
    Install the ame reactor as C{twisted.internet.reactor}.  C{io}: as for
    L{AMEReactor}.
    """
    p = AMEReactor(io=io)
    from twisted.internet.main import installReactor

    installReactor(p)
