"""
The Python half of C{ame run} and C{ame twistd} (the C half, which embeds
CPython and supervises the workers, is C{cmd/run/run.c} and
C{cmd/run/supervise.c}; see C{docs/multicore.md}).

L{main} installs the ame reactor, wraps C{reactor.run} on the instance, and
runs the program (C{runpy}) or twistd.  When the program calls
C{reactor.run()}:

  - with one worker, the real C{run()} runs: exactly C{ame.reactor.install()}
    followed by the program;
  - with N workers (or a supervisor of one: --max-requests, --max-rss,
    --metrics), the process becomes the supervisor
    (C{_ame_run.supervise()}, which never returns there) and each forked
    worker comes back here, starts a new C reactor core
    (C{reactor._reinitAfterFork()}), installs the graceful stop
    (L{_GracefulStop}) and the heartbeat (L{_Heartbeat}), and runs the real
    C{run()} on the listening sockets the setup created (each worker's
    slot's own: the supervisor puts them in place, C{cmd/run/listeners.h});
  - in a reload's candidate (a fresh run of the program on SIGHUP,
    C{cmd/run/reload.h}), the setup adopts the running service's listening
    sockets by address (L{_adoptInherited}), and at C{reactor.run()} the
    process becomes the zygote that forks the new workers.

Errors in the program's setup become one line, C{"ame run: PROGRAM: Type:
message (at file:line)"}, and exit status 1.

This module is only meant to be imported by the C{ame} command (it needs
the built-in module C{_ame_run} for N workers).
"""

import gc
import itertools
import os
import signal
import sys
import traceback

__all__ = ["main"]

# How often a stopping worker looks at its connections.
_DRAIN_POLL_S = 0.05
# A stopping worker closes a keep-alive connection idle for this long.
_IDLE_CLOSE_S = 1.0


class _State:
    inWorker = False  # this process is a worker (of this process's run)
    ran = False  # the program called reactor.run()
    worker = None  # the worker id, in a worker
    pidfile = None  # twistd's pid file (absolute), if it writes one
    made = itertools.count()  # numbers TCP ports as they are made


def main(cmd, mode, target, python, args, workers, grace, sockets, io,
         verbose, supervised=None, timeout=0.0):
    """
    Run the program as C{ame run} / C{ame twistd} and return the exit status.

    @param cmd: C{"ame run"} or C{"ame twistd"}: the prefix of messages.
    @param mode: C{"path"} (run the file C{target}), C{"module"} (run the
        module C{target} as C{python -m} would) or C{"twistd"}.
    @param python: the interpreter the command stands for (C{sys.executable}).
    @param args: the program's arguments (C{sys.argv[1:]}).
    @param workers: worker processes (1: no supervisor).
    @param grace: seconds a stopping worker waits for its connections.
    @param sockets: C{"reuseport"}: each worker listens on a TCP socket of
        its own (L{_ownSocket}); C{"shared"}: the workers share the setup's.
    @param io: C{"thread"} or C{"inline"}: the reactor's I/O mode
        (L{ame.reactor.AMEReactor}), in the setup and in every worker.
    @param verbose: print the traceback after the one line of an error.
    @param supervised: run a supervisor (default: with more than one
        worker).
    @param timeout: the supervisor's --timeout: a worker whose heartbeat is
        older is hung (0: no check); the heartbeat beats four times in it.
    """
    if supervised is None:
        supervised = workers > 1
    label = target if mode != "twistd" else None
    if mode == "path":
        if not os.path.exists(target):
            _error(cmd, label, "No such file or directory")
            return 1
        sys.argv = [target] + list(args)
        sys.path.insert(0, os.path.dirname(os.path.realpath(target)))
    elif mode == "module":
        sys.argv = ["-m"] + list(args)  # runpy puts the module's file in [0]
        sys.path.insert(0, os.getcwd())
    else:
        args, bad = _twistdArgs(args)
        if bad:
            _error(cmd, None, "the reactor is ame; remove '%s'" % bad)
            return 1
        sys.argv = ["twistd"] + args
    if python and not sys.executable:
        sys.executable = python

    state = _State()
    try:
        _install(state, workers, grace, sockets, io, supervised, timeout)
        if mode == "path":
            import runpy

            runpy.run_path(target, run_name="__main__")
        elif mode == "module":
            import runpy

            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            _twistdPidFile(state)
            from twisted.scripts.twistd import run

            run()
    except SystemExit as e:
        return _exitStatus(e.code)
    except KeyboardInterrupt:
        _error(cmd, label, "interrupted")
        return 130
    except BaseException as e:
        _error(cmd, label, _oneLine(e))
        if verbose:
            traceback.print_exception(type(e), e, _programTraceback(e))
        return 1
    finally:
        _flush()
    if not state.ran:
        _error(cmd, label, "returned without calling reactor.run()")
        return 1
    return 0


def _install(state, workers, grace, sockets, io, supervised, timeout):
    """
    Install the ame reactor and wrap its C{run}: return the reactor.
    """
    from ame import reactor as amereactor

    amereactor.install(io=io)
    from twisted.internet import reactor

    _daemonizeHooks(reactor)
    if supervised:
        _serviceListeners(sockets == "reuseport")
    realRun = reactor.run

    def run(*args, **kwargs):
        state.ran = True
        if supervised:
            _becomeWorker(state, reactor, workers, grace, timeout)
        return realRun(*args, **kwargs)

    run.__doc__ = realRun.__doc__
    reactor.run = run
    return reactor


def _twistdPidFile(state):
    """
    With workers, twistd's pid file holds the supervisor's pid (it is
    written before reactor.run()); the supervisor removes it when it exits,
    and a worker that stops must not.  Note where twistd writes it (after
    its chdir to --rundir) and keep workers from removing it.
    """
    from twisted.scripts import _twistd_unix

    runner = _twistd_unix.UnixApplicationRunner
    setupEnvironment = runner.setupEnvironment
    removePID = runner.removePID

    def setupEnvironmentNoted(self, *args, **kwargs):
        setupEnvironment(self, *args, **kwargs)
        pidfile = kwargs.get("pidfile", args[4] if len(args) > 4 else None)
        state.pidfile = os.path.abspath(pidfile) if pidfile else None

    def removePIDUnlessWorker(self, pidfile):
        if state.worker is None:
            removePID(self, pidfile)

    runner.setupEnvironment = setupEnvironmentNoted
    runner.removePID = removePIDUnlessWorker


def _daemonizeHooks(reactor):
    """
    twistd without C{-n} forks twice to daemonize, after the reactor (and
    its core's C thread) exist; it calls C{beforeDaemonize()} and
    C{afterDaemonize()} on a reactor that provides L{IReactorDaemonize}.
    If AMEReactor does not (yet), give this instance the two hooks: stop
    the core before the forks, start a new one in the daemon.
    """
    from zope.interface import alsoProvides

    from twisted.internet.interfaces import IReactorDaemonize

    if IReactorDaemonize.providedBy(reactor):
        return

    def beforeDaemonize():
        reactor._core.close()

    def afterDaemonize():
        _reinitAfterFork(reactor)

    reactor.beforeDaemonize = beforeDaemonize
    reactor.afterDaemonize = afterDaemonize
    alsoProvides(reactor, IReactorDaemonize)


def _reinitAfterFork(reactor):
    """C{reactor._reinitAfterFork()}, and point the waker at the new core
    (C{ame.reactor._AMEWaker} keeps the core it was made with)."""
    reactor._reinitAfterFork()
    waker = getattr(reactor, "waker", None)
    if waker is not None and getattr(waker, "_core", None) is not None:
        waker._core = reactor._core


def _becomeWorker(state, reactor, workers, grace, timeout):
    """
    At C{reactor.run()} with a supervisor: fork the workers and supervise
    them (this process never returns from here); in each worker, set the
    reactor up for the worker's life and return.
    """
    import faulthandler
    import threading

    from twisted.internet.interfaces import IListeningPort

    import _ame_run

    # In the order the program made them (a set's order is its objects'
    # addresses'): the supervisor numbers its listeners so, and a reload's
    # program, made in the same order, adopts them so (_adoptInherited).
    ports = sorted(
        (
            s
            for s in set(reactor.getReaders())
            if IListeningPort.providedBy(s) and not _isInternal(reactor, s)
        ),
        key=_madeOrder,
    )
    if not ports:
        sys.stderr.write(
            "ame run: warning: no listening port was opened before "
            "reactor.run(); each worker runs on its own\n"
        )
    others = threading.active_count() - 1
    if others:
        sys.stderr.write(
            "ame run: warning: %d other thread(s) running at reactor.run(); "
            "they do not exist in the workers\n" % (others,)
        )
    # The TCP listeners the supervisor hands out per worker slot (and to a
    # reload's new program).
    listeners = []
    for port in ports:
        skt = getattr(port, "socket", None)
        if skt is not None and _isTCP(skt):
            listeners.append((skt.fileno(), getattr(port, "backlog", 50)))
    # Whatever is buffered would be written once per worker.
    _flush()
    # The core's C thread would not survive fork(); stop it here, where no
    # reactor will run again.  Each worker starts its own.
    reactor._core.close()
    wid, count = _ame_run.supervise(workers, grace, state.pidfile,
                                    listeners)
    state.worker = wid
    _State.inWorker = True
    # A worker, from here on.
    os.environ["AME_WORKER"] = str(wid)
    os.environ["AME_WORKERS"] = str(count)  # the count at this fork
    # SIGABRT (a hung worker, killed by the supervisor) prints the Python
    # traceback of every thread to the worker's stderr (fd 2: twistd may
    # have replaced sys.stderr) before the process dies.
    try:
        faulthandler.enable(file=2, all_threads=True)
    except (OSError, RuntimeError, ValueError):
        pass
    _reinitAfterFork(reactor)
    for port in ports:
        # The socket is shared with the supervisor (and with a replacement
        # worker): closing this copy must not shut it down for them.
        port._shouldShutdown = False
        if os.environ.get("AME_RUN_GREEDY_ACCEPT") != "1":
            _acceptOneAtATime(port)
    beat = _Heartbeat(reactor, timeout, ports)
    stop = _GracefulStop(reactor, ports, grace)
    reactor.callWhenRunning(beat.start)
    # Twisted installs reactor.sigInt/sigTerm at run(): use ours instead.
    reactor.sigInt = stop.onSignal
    reactor.sigTerm = stop.onSignal
    # A new worker starts with SIGINT and SIGTERM blocked (so that a stop
    # sent before this point is not lost to the default action): handle
    # them from now on.  Before reactor.run() the stop is queued
    # (callFromThread) and begins at its first iteration.
    signal.signal(signal.SIGINT, stop.onSignal)
    signal.signal(signal.SIGTERM, stop.onSignal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _madeOrder(port):
    """A key that sorts listening ports in the order they were made."""
    skt = getattr(port, "socket", None)
    try:
        fd = skt.fileno() if skt is not None else -1
    except OSError:
        fd = -1
    return (getattr(port, "_ameMade", float("inf")), fd)


def _isTCP(skt):
    import socket

    try:
        return (skt.family in (socket.AF_INET, socket.AF_INET6)
                and skt.type == socket.SOCK_STREAM)
    except OSError:
        return False


def _serviceListeners(reuseport):
    """
    Make every TCP listening socket Twisted creates from now on the
    service's own: bound without C{SO_REUSEPORT}, so that the address must
    be free (a second C{ame run} on a port this one serves fails with
    "address already in use", as gunicorn and nginx do), and made
    C{SO_REUSEPORT} once bound when C{reuseport}, so that the supervisor
    can bind each worker slot a socket of its own to the same address
    (C{cmd/run/listeners.h}).  In a reload's candidate, a port whose
    address the running service listens on adopts its socket instead
    (L{_adoptInherited}).
    """
    import socket

    from twisted.internet import tcp

    if hasattr(socket, "SO_REUSEPORT"):

        class _ServiceSocket(socket.socket):
            def bind(self, address):
                if _State.inWorker:
                    # A listener a worker opens after reactor.run(): each
                    # worker binds its own, on the same port.
                    self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT,
                                    1)
                socket.socket.bind(self, address)
                if reuseport:
                    self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT,
                                    1)

        create = tcp.Port.createInternetSocket

        def createInternetSocket(self):
            self._ameMade = next(_State.made)  # (_madeOrder)
            s = create(self)
            if s.family not in (socket.AF_INET, socket.AF_INET6):
                return s
            new = _ServiceSocket(s.family, s.type, s.proto, s.detach())
            new.setblocking(False)
            return new

        tcp.Port.createInternetSocket = createInternetSocket
    _adoptInherited()


def _adoptInherited():
    """
    In a reload's candidate: make C{tcp.Port.startListening} use the
    running service's listening socket for the address it asks for, when
    there is one (the same socket, so that no connection waiting in it is
    lost when the old workers stop).  A port asked for as 0 takes the first
    one left on the same host: the service keeps its port.
    """
    import _ame_run

    fds = _ame_run.inherited()
    if not fds:
        return
    import socket

    from twisted.internet import tcp

    available = {}
    for fd in fds:
        try:
            s = socket.socket(fileno=fd)
            available[fd] = (s.family, _normalAddress(s.getsockname()))
            s.detach()
        except OSError:
            pass
    startListening = tcp.Port.startListening

    def startListeningAdopting(self):
        if self._preexistingSocket is None:
            want = _normalAddress((_boundHost(self.interface,
                                              self.addressFamily),
                                   self.port))
            # In the listeners' order, which is the order in which the
            # first program made them (_becomeWorker): a port 0 (the
            # kernel's choice) takes the first one left on that host, so
            # that each listenTCP(0) gets its own port back across reloads
            # when the program makes its ports in the same order.
            for fd, (family, addr) in list(available.items()):
                if family == self.addressFamily and (
                        addr == want or
                        (want[1] == 0 and addr[0] == want[0])):
                    del available[fd]
                    skt = socket.socket(family, socket.SOCK_STREAM, 0, fd)
                    skt.setblocking(False)
                    self._preexistingSocket = skt
                    break
        return startListening(self)

    tcp.Port.startListening = startListeningAdopting


def _boundHost(host, family):
    """The address bind() will give C{host} in C{family}: a host name
    resolved as CPython's bind() does (the first address getaddrinfo
    gives), so that C{interface="localhost"} finds the socket bound to
    127.0.0.1; C{host} itself when it cannot be resolved."""
    import socket

    if not host:
        return ""
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return host
    return infos[0][4][0] if infos else host


def _normalAddress(addr):
    """(host, port) with the wildcard and numeric forms of a host made
    one."""
    import ipaddress

    host, port = addr[0], addr[1]
    if host in ("", "0.0.0.0"):
        host = "0.0.0.0"
    else:
        try:
            host = str(ipaddress.ip_address(host.split("%")[0]))
        except ValueError:
            pass
    return host, port


class _Heartbeat:
    """
    A worker's heartbeat: a reactor timer that tells the supervisor, through
    the page it shares with it (C{_ame_run.tick}, C{cmd/run/page.h}), that
    this worker's reactor loop runs, with its counters: requests served,
    the reactor's and the STM's (C{reactor.ameStats()}), and the hottest
    STM conflicts when there are any.  It beats four times per --timeout
    (at most once a second), so a worker whose loop is stuck (a handler in
    an endless loop) stops beating and the supervisor replaces it.  The
    first beat, as the reactor starts, tells the supervisor the worker
    serves; the last, at shutdown, leaves its final counts.

    Requests are counted where twisted.web finishes them
    (C{HTTPChannel.requestDone}).  At the request limit the supervisor gave
    this worker (--max-requests), it beats at once, asking to be replaced,
    stops accepting (the connections that arrive meanwhile wait in the
    slot's socket for the replacement, which the supervisor starts at
    once; those its C worker had already accepted wait in it for the
    graceful stop, L{_GracefulStop}, which answers them with "Connection:
    close") and answers the next request of each of its connections with
    "Connection: close" (so the clients reconnect, to the replacement).
    No other connection reaches it: its ports accept nothing after
    C{stopReading()}, not even in the reactor iteration where the limit
    was reached (C{AMEReactor.doPoll}).  The supervisor stops it once the
    replacement serves.
    """

    def __init__(self, reactor, timeout, ports):
        import _ame_run

        self.reactor = reactor
        self.ports = ports
        self.interval = min(1.0, timeout / 4.0) if timeout > 0 else 1.0
        self.requests = 0
        self.limit = _ame_run.max_requests()
        self.asked = False
        self.aborts = 0
        self.last = {}
        self.tick = _ame_run.tick
        self._countRequests()
        reactor.addSystemEventTrigger("after", "shutdown", self.beat)

    def _countRequests(self):
        from twisted.web import http

        requestDone = http.HTTPChannel.requestDone
        beat = self

        def requestDoneCounted(self, request):
            beat.requests += 1
            if beat.requests == beat.limit:
                beat.reachedLimit()
            return requestDone(self, request)

        http.HTTPChannel.requestDone = requestDoneCounted

    def reachedLimit(self):
        from twisted.web.http import HTTPChannel

        self.asked = True
        self.beat()
        for port in self.ports:
            port.stopReading()
        for transport in _connections(self.reactor):
            protocol = _unwrap(transport.protocol)
            if isinstance(protocol, HTTPChannel):
                protocol.checkPersistence = _closeAfter

    def start(self):
        from twisted.internet import task

        self.loop = task.LoopingCall(self.beat)
        self.loop.clock = self.reactor
        self.loop.start(self.interval, now=True)

    def beat(self):
        try:
            st = self.last = self.reactor.ameStats()
        except Exception:
            # The core is gone (the last beat, at shutdown): its last
            # figures stand.
            st = self.last
        g = st.get
        # Connections: the C core's own streams and the binding's fast
        # streams under Twisted's transports (twisted.web's, say).
        counters = (self.requests,
                    g("accepted", 0) + g("stream_accepted", 0),
                    g("streams_open", 0) + g("stream_open", 0),
                    g("callbacks", 0), g("fd_events", 0),
                    g("stream_reads", 0), g("stream_sends", 0),
                    g("python_path", 0), g("stm_commits", 0),
                    g("stm_aborts", 0), g("bytes_received", 0),
                    g("bytes_sent", 0))
        text = None
        if g("stm_aborts", 0) != self.aborts:
            self.aborts = g("stm_aborts", 0)
            text = _hottest(self.reactor)
        self.tick(counters, text, self.asked)


def _hottest(reactor):
    """The hottest-conflicts part of the reactor's STM report, or ""."""
    try:
        report = reactor.ameReport()
    except Exception:
        return ""
    at = report.find("hottest conflicts")
    return report[at:].strip()[:470] if at >= 0 else ""


def _acceptOneAtATime(port):
    """
    Make a worker's C{port} accept one connection per readiness event.

    Every worker watches the shared listening socket, and every worker
    wakes when it is readable.  Twisted's C{tcp.Port.doRead} accepts up to
    C{numberAccepts} connections in a loop (growing by 20 each time it
    empties the queue), so the first worker to wake takes a whole burst
    of new connections.  One accept per event lets the workers that woke
    share the burst, and a busy worker (which polls less often) takes
    fewer (docs/multicore.md, --sockets shared; AME_RUN_GREEDY_ACCEPT=1
    keeps Twisted's loop).
    """
    if not hasattr(port, "numberAccepts"):
        return
    doRead = port.doRead

    def doReadOne():
        port.numberAccepts = 1
        return doRead()

    port.doRead = doReadOne


def _isInternal(reactor, selectable):
    return selectable in getattr(reactor, "_internalReaders", ())


class _GracefulStop:
    """
    A worker's answer to SIGINT or SIGTERM (the supervisor sends SIGTERM to
    stop it, to replace it, or to end a generation after a reload): stop
    accepting, let the connections finish what they are doing, then stop
    the reactor.

      - Every listening port the setup opened stops listening, after the
        connections already accepted for it (by the C side too) are taken:
        this closes the worker's copy of the socket only; the supervisor
        and any replacement keep it, so that nothing queued on it is lost.
      - An HTTP connection (L{twisted.web.http.HTTPChannel}, under TLS too)
        answers its requests from now on with "Connection: close" and
        closes once the response is written.  One that stays idle for
        C{_IDLE_CLOSE_S} (a keep-alive connection with no request coming)
        is closed: a client's next request is not cut off by a close the
        moment its previous response went out.
      - Any other connection is closed with C{loseConnection()}: what it
        has written is flushed first, and a producer registered on it
        finishes first (Twisted closes once it unregisters).
      - When no connection is left, or after C{grace} seconds, the reactor
        stops (C{reactor.stop()}, which closes whatever remains).

    A second signal does nothing here: the supervisor kills the workers.
    """

    def __init__(self, reactor, ports, grace):
        self.reactor = reactor
        self.ports = ports
        self.grace = grace
        self.started = False
        self.deadline = None
        self.connections = []
        self.closed = set()
        self.busy = {}  # id(transport) -> when it last had a request

    def onSignal(self, number, frame=None):
        self.reactor._exitSignal = number
        if not self.started:
            self.started = True
            self.reactor.callFromThread(self.start)

    def start(self):
        from twisted.python import log

        log.msg("ame: worker stopping: finishing in-flight requests")
        for port in self.ports:
            try:
                _drainAccepted(port)
            except Exception:
                log.err(None, "ame: taking the accepted connections")
            try:
                port.stopListening()
            except Exception:
                log.err(None, "ame: stopListening")
        self.begun = self.reactor.seconds()
        self.deadline = self.begun + self.grace
        self.idle = min(_IDLE_CLOSE_S, self.grace / 2.0)
        # No server connection can appear once the ports stopped listening:
        # find them once (a scan of every object), then watch that list.
        self.connections = _connections(self.reactor)
        self.check()

    def check(self):
        left = 0
        now = self.reactor.seconds()
        for transport in self.connections:
            if not transport.connected:
                continue
            left += 1
            self._finish(transport, now)
        if left == 0 or now >= self.deadline:
            if self.reactor.running:
                self.reactor.stop()
            return
        self.reactor.callLater(_DRAIN_POLL_S, self.check)

    def _finish(self, transport, now):
        """
        Ask one connection to close once it has finished; called at every
        check until it has closed.
        """
        from twisted.web.http import HTTPChannel

        if id(transport) in self.closed:
            return
        protocol = _unwrap(transport.protocol)
        if isinstance(protocol, HTTPChannel):
            if protocol.__dict__.get("checkPersistence") is not _closeAfter:
                # Every request from now on is the connection's last (its
                # headers may still be arriving: it is decided when they
                # are complete).
                protocol.checkPersistence = _closeAfter
            if protocol.requests:
                protocol.persistent = False
                self.busy[id(transport)] = now
                return
            since = max(self.busy.get(id(transport), self.begun), self.begun)
            if now - since >= self.idle:
                self.closed.add(id(transport))
                protocol.loseConnection()
        else:
            self.closed.add(id(transport))
            transport.loseConnection()


def _closeAfter(request, version):
    """An C{HTTPChannel.checkPersistence} for a stopping worker: the
    response says "Connection: close", and the connection closes after
    it."""
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


def _drainAccepted(port):
    """
    Take the connections already accepted for C{port} (by the C side, or
    waiting in this worker's accept loop) before it stops listening, so
    that closing it does not close them.
    """
    port.stopReading()
    accept = type(port).doRead
    for _ in range(64):
        before = getattr(port, "sessionno", 0)
        port.numberAccepts = 1024
        accept(port)
        if getattr(port, "sessionno", 0) == before:
            break


def _unwrap(protocol):
    """
    The protocol under TLS (C{wrappedProtocol}) and under twisted.web's
    C{_GenericHTTPChannelProtocol} (C{_channel}: a proxy for C{IProtocol}
    only, which hides C{HTTPChannel.requests} and C{persistent}).
    """
    for _ in range(8):
        inner = getattr(protocol, "wrappedProtocol", None)
        if inner is None:
            inner = getattr(protocol, "_channel", None)
        if inner is None:
            break
        protocol = inner
    return protocol


def _connections(reactor):
    """
    The open server-side connections of this process.  A connection whose
    reading is paused (an HTTP request in progress) is in none of the
    reactor's sets, so they are found by their type.
    """
    from twisted.internet import tcp

    try:
        from twisted.internet import unix

        types = (tcp.Server, unix.Server)
    except ImportError:
        types = (tcp.Server,)
    return [
        o
        for o in gc.get_objects()
        if issubclass(type(o), types) and o.connected and o.reactor is reactor
    ]


def _twistdArgs(args):
    """
    Drop C{--reactor=ame} / C{-r ame} from twistd's arguments; return the
    rest and the first reactor option that names another reactor, if any.
    """
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-r", "--reactor") and i + 1 < len(args):
            if args[i + 1] != "ame":
                return out, "%s %s" % (a, args[i + 1])
            i += 2
            continue
        if a.startswith("--reactor="):
            if a != "--reactor=ame":
                return out, a
            i += 1
            continue
        if a == "--":
            out.extend(args[i:])
            break
        out.append(a)
        i += 1
    return out, None


def _exitStatus(code):
    """The exit status for C{SystemExit(code)}, as python gives it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write("%s\n" % (code,))
    return 1


def _oneLine(e):
    """C{"Type: message (at file:line)"} for exception C{e}, on one line."""
    name = type(e).__name__
    msg = " ".join(str(e).split())
    where = _where(e)
    line = name + (": " + msg if msg else "")
    if where and not isinstance(e, SyntaxError):
        line += " (at %s)" % (where,)
    return line


def _where(e):
    """
    The innermost frame of the traceback in the program's own code (not in
    the standard library, an installed package or ame), as C{file:line}.
    """
    import sysconfig

    skip = {sysconfig.get_paths()["stdlib"], os.path.dirname(__file__)}
    found = None
    for frame, lineno in traceback.walk_tb(e.__traceback__):
        fn = frame.f_code.co_filename
        if fn.startswith("<") or "-packages" + os.sep in fn:
            continue
        if any(fn.startswith(p + os.sep) for p in skip):
            continue
        found = (fn, lineno)
    if found is None:
        return None
    fn, lineno = found
    rel = os.path.relpath(fn)
    return "%s:%d" % (rel if not rel.startswith("..") else fn, lineno)


def _programTraceback(e):
    """C{e}'s traceback without the frames of this module and runpy."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None and (
        tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>")
    ):
        tb = tb.tb_next
    return tb


def _error(cmd, label, what):
    sys.stderr.write(
        "%s: %s%s\n" % (cmd, label + ": " if label else "", what)
    )


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass
