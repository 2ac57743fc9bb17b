"""
A Twisted reactor on ame's C reactor.

To install it (before anything imports C{twisted.internet.reactor})::

    from ame import reactor
    reactor.install()

or run C{twistd --reactor=ame ...} / C{trial --reactor=ame ...} (the plugin
in C{twisted/plugins/ame_reactor.py}).

The C reactor runs on a thread of its own and watches file descriptors;
their readiness comes back to the thread that called C{reactor.run()},
which runs every Python callback, one at a time, under the GIL.  Python
code therefore never aborts and never touches the STM: each callback is,
in AME terms, an irrevocable transaction.  Everything Twisted layers on top
of file descriptors (TCP, UDP, Unix sockets, TLS, processes, threads) is
Twisted's own posix code, exactly as for L{EPollReactor}; see
C{docs/twisted.md} for what is in C and what is still Python.
"""

import errno

from zope.interface import implementer

from twisted.internet import posixbase
from twisted.internet.interfaces import IReactorFDSet
from twisted.python import log

from ame import _ame

__all__ = ["AMEReactor", "install"]


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


@implementer(IReactorFDSet)
class AMEReactor(posixbase.PosixReactorBase, posixbase._PollLikeMixin):
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

    def __init__(self):
        self._core = _ame.Core()
        self._reads = set()
        self._writes = set()
        self._selectables = {}
        self._continuousPolling = posixbase._ContinuousPolling(self)
        posixbase.PosixReactorBase.__init__(self)

    # The waker: wakeUp() signals the core directly.
    def installWaker(self):
        if not self.waker:
            self.waker = _AMEWaker(self)

    # IReactorFDSet

    def _mask(self, fd):
        return (_ame.READABLE if fd in self._reads else 0) | (
            _ame.WRITABLE if fd in self._writes else 0
        )

    def _add(self, xer, primary, event):
        fd = xer.fileno()
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
        events = self._core.wait(timeout)
        _drdw = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                log.callWithLogger(selectable, _drdw, selectable, fd, event)

    doIteration = doPoll

    # ame

    def _reinitAfterFork(self):
        """
        In a child made by C{fork()} after this reactor was created (the
        C{ame run --workers N} supervisor forks at C{reactor.run()}): the
        parent's C worker thread does not exist here, so start a new core
        and watch again every fd the reactor watched.
        """
        self._core = _ame.Core()
        for fd in self._reads | self._writes:
            self._core.watch(fd, self._mask(fd))

    def ameStats(self):
        """
        Return the C reactor's counters (C{ame_reactor_stats}) and the
        binding's, as a dict: C{callbacks}, C{failures}, C{stolen},
        C{accepted}, C{accept_errors}, C{streams_open},
        C{per_worker_callbacks}, C{workers}; and the binding's:
        C{fd_events} (readiness events the worker delivered),
        C{direct_events} (events found by the Python thread's own check of
        the fds it had just dispatched or changed, with no worker round
        trip), C{watch_flushes} (batches of watch changes posted to the
        worker), C{watch_barriers} (removals that waited for the worker).
        """
        return self._core.stats()


def install():
    """
    Install the ame reactor as C{twisted.internet.reactor}.
    """
    p = AMEReactor()
    from twisted.internet.main import installReactor

    installReactor(p)
