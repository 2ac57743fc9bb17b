"""
The Python half of C{ame run} and C{ame twistd} (the C half, which embeds
CPython and supervises the workers, is C{cmd/run/run.c} and
C{cmd/run/supervise.c}; see C{docs/multicore.md}).

L{main} installs the ame reactor, wraps C{reactor.run} on the instance, and
runs the program (C{runpy}) or twistd.  When the program calls
C{reactor.run()}:

  - with one worker, the real C{run()} runs: exactly C{ame.reactor.install()}
    followed by the program;
  - with N workers, the process becomes the supervisor
    (C{_ame_run.supervise()}, which never returns there) and each forked
    worker comes back here, starts a new C reactor core
    (C{reactor._reinitAfterFork()}), installs the graceful stop
    (L{_GracefulStop}) and runs the real C{run()} on the listening sockets
    the setup created.

Errors in the program's setup become one line, C{"ame run: PROGRAM: Type:
message (at file:line)"}, and exit status 1.

This module is only meant to be imported by the C{ame} command (it needs
the built-in module C{_ame_run} for N workers).
"""

import gc
import os
import signal
import sys
import traceback

__all__ = ["main"]

# How often a stopping worker looks at its connections.
_DRAIN_POLL_S = 0.05


class _State:
    ran = False  # the program called reactor.run()
    worker = None  # the worker id, in a worker
    pidfile = None  # twistd's pid file (absolute), if it writes one


def main(cmd, mode, target, python, args, workers, grace, sockets, io,
         verbose):
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
    """
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
        _install(state, workers, grace, sockets, io)
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


def _install(state, workers, grace, sockets, io):
    """
    Install the ame reactor and wrap its C{run}: return the reactor.
    """
    from ame import reactor as amereactor

    amereactor.install(io=io)
    from twisted.internet import reactor

    _daemonizeHooks(reactor)
    if workers > 1 and sockets == "reuseport":
        _reusePortForTCP()
    realRun = reactor.run

    def run(*args, **kwargs):
        state.ran = True
        if workers > 1:
            _becomeWorker(state, reactor, workers, grace, sockets)
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


def _becomeWorker(state, reactor, workers, grace, sockets):
    """
    At C{reactor.run()} with N workers: fork them and supervise them (this
    process never returns from here); in each worker, set the reactor up
    for the worker's life and return.
    """
    import threading

    from twisted.internet.interfaces import IListeningPort

    import _ame_run

    ports = [
        s
        for s in set(reactor.getReaders())
        if IListeningPort.providedBy(s) and not _isInternal(reactor, s)
    ]
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
    # Whatever is buffered would be written once per worker.
    _flush()
    # The core's C thread would not survive fork(); stop it here, where no
    # reactor will run again.  Each worker starts its own.
    reactor._core.close()
    wid = _ame_run.supervise(workers, grace, state.pidfile)
    state.worker = wid
    # A worker, from here on.
    os.environ["AME_WORKER"] = str(wid)
    os.environ["AME_WORKERS"] = str(workers)
    _reinitAfterFork(reactor)
    for port in ports:
        if sockets == "reuseport" and wid > 1 and _ownSocket(port):
            continue
        if os.environ.get("AME_RUN_GREEDY_ACCEPT") != "1":
            _acceptOneAtATime(port)
    stop = _GracefulStop(reactor, ports, grace)
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


def _reusePortForTCP():
    """
    Make every TCP listening socket Twisted creates from now on
    C{SO_REUSEPORT} (set before C{bind()}), so that the workers can each
    bind a socket of their own to the same address (L{_ownSocket}).
    """
    import socket

    from twisted.internet import tcp

    if not hasattr(socket, "SO_REUSEPORT"):
        return
    create = tcp.Port.createInternetSocket

    def createInternetSocket(self):
        s = create(self)
        if s.family in (socket.AF_INET, socket.AF_INET6):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            except OSError:
                pass
        return s

    tcp.Port.createInternetSocket = createInternetSocket


def _ownSocket(port):
    """
    In worker 2..N: give C{port} a listening socket of this worker's own,
    bound to the same address with C{SO_REUSEPORT}, in place of its copy of
    the setup's socket (which worker 1 goes on serving; the supervisor
    keeps it open, so the address stays bound whatever the workers do).
    The kernel then spreads new connections over the workers' sockets by a
    hash of their addresses.  Return False (and leave the port alone) when
    the port's socket was not made with C{SO_REUSEPORT} (a UNIX socket, an
    adopted one) or the new socket cannot be bound.
    """
    import socket

    skt = getattr(port, "socket", None)
    if skt is None or not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        if (
            skt.family not in (socket.AF_INET, socket.AF_INET6)
            or skt.type != socket.SOCK_STREAM
            or not skt.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        ):
            return False
        new = port.createInternetSocket()
    except OSError:
        return False
    try:
        new.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        new.bind(skt.getsockname())
        new.listen(port.backlog)
    except OSError as e:
        new.close()
        sys.stderr.write(
            "ame run: warning: cannot bind a socket of this worker's own "
            "to %s (%s); sharing the setup's\n" % (skt.getsockname(), e)
        )
        return False
    port.stopReading()
    port.socket = new
    port.fileno = new.fileno
    skt.close()  # this worker's copy; the socket stays open elsewhere
    port.startReading()
    return True


def _acceptOneAtATime(port):
    """
    Make a worker's C{port} accept one connection per readiness event.

    Every worker watches the shared listening socket, and every worker
    wakes when it is readable.  Twisted's C{tcp.Port.doRead} accepts up to
    C{numberAccepts} connections in a loop (growing by 20 each time it
    empties the queue), so the first worker to wake takes a whole burst
    of new connections.  One accept per event lets the workers that woke
    share the burst, and a busy worker (which polls less often) takes
    fewer: see the measurements in docs/multicore.md.
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
    A worker's answer to SIGINT or SIGTERM: stop accepting, let the
    connections finish what they are doing, then stop the reactor.

      - Every listening port the setup opened stops listening (this closes
        the worker's copy of the socket only).
      - An HTTP connection (L{twisted.web.http.HTTPChannel}, under TLS too)
        with no request in flight is closed; one with a request in flight is
        made non-persistent, so that it closes once the response is
        written.
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
                port.stopListening()
            except Exception:
                log.err(None, "ame: stopListening")
        self.deadline = self.reactor.seconds() + self.grace
        # No server connection can appear once the ports stopped listening:
        # find them once (a scan of every object), then watch that list.
        self.connections = _connections(self.reactor)
        self.check()

    def check(self):
        left = 0
        for transport in self.connections:
            if not transport.connected:
                continue
            left += 1
            self._finish(transport)
        if left == 0 or self.reactor.seconds() >= self.deadline:
            if self.reactor.running:
                self.reactor.stop()
            return
        self.reactor.callLater(_DRAIN_POLL_S, self.check)

    def _finish(self, transport):
        """
        Ask one connection to close once it has finished; called at every
        check until it has closed.
        """
        from twisted.web.http import HTTPChannel

        protocol = _unwrap(transport.protocol)
        if isinstance(protocol, HTTPChannel):
            if protocol.requests:
                # Reset at each check: a request whose headers were still
                # arriving recomputes it when they are complete.
                protocol.persistent = False
                return
            if id(transport) not in self.closed:
                self.closed.add(id(transport))
                protocol.loseConnection()
        elif id(transport) not in self.closed:
            self.closed.add(id(transport))
            transport.loseConnection()


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
