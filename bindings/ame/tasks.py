"""
The thread-less API: add pieces of work, run them in parallel; each is one
transaction, and the outcome is that of some serial order of them.

    import ame.shared, ame.tasks

    counts = ame.shared.dict("counts")

    def count(path):                       # a task: one transaction
        for word in open(path).read().split():
            counts[word] = counts.get(word, 0) + 1

    for path in paths:
        ame.tasks.add(count, path)
    ame.tasks.run(workers="auto")          # returns when all have run

The model (PyPy's C{transaction.add}/C{transaction.run}): every task runs
as one transaction over the shared objects it touches (L{ame.shared}), in
some worker process; tasks that conflict are run again, so the result is
that of running them one at a time in some order.  No threads, no locks.

  - C{add(fn, *args, **kwargs)} queues C{fn(*args, **kwargs)}.  C{fn} must
    be importable by name (a module-level function, as for
    C{multiprocessing}); its arguments must be values C{ame.shared} can
    store (str, bytes, int, float, bool, None, and tuples, lists and dicts
    of them).  Otherwise C{add} raises TypeError and queues nothing.  A
    task may call C{add}: the new tasks join the queue only if its
    transaction commits.
  - C{run(workers="auto")} forks the workers (C{"auto"}: one per CPU this
    process may use) and returns when the queue is empty and no task runs.
    The first exception a task raises stops the run: C{run} raises
    L{TaskError} naming the task, with its traceback.  A task that kills
    its worker (C{os._exit}, a signal, a crash) is recorded as failed and
    not run again (it would kill the next worker too), the worker is
    replaced, and the run goes on; C{run} then raises L{TaskFailed} naming
    each such task.  Its transaction never committed: nothing it did is
    in the shared objects (the heap's recovery, docs/shared.md).
  - Output: C{print()} and C{logging} inside a task go to a buffer of the
    attempt, written once, when the task commits (an attempt that is run
    again or fails prints nothing).
  - C{defer(fn, *args, **kwargs)}, in a Twisted program, returns a Deferred
    that fires in this process with fn's result once the task has
    committed in one of a pool of worker processes (started at the first
    call): C{deferToThread}, but on other cores, each worker with its own
    interpreter lock.  The Deferred fails with L{TaskError} if fn raises,
    L{TaskFailed} if fn kills its worker.
  - C{stats()}: the last run's tasks, attempts (re-runs), conflicts (the
    hottest objects and keys, from every worker), and each worker's busy
    time.

Tasks and their arguments travel through the shared heap (ame.shared's
queue), so a task's claim by a worker and its completion are transactions
too: a worker killed while running a task leaves it claimed, and C{run}
sees exactly which task that was.
"""

import collections as _collections
import ctypes as _ctypes
import importlib as _importlib
import io as _io
import itertools as _itertools
import logging as _logging
import os as _os
import queue as _queue
import select as _select
import signal as _signal
import sys as _sys
import time as _time
import traceback as _traceback

import ame.shared as _shared
from ame import _ame

__all__ = ["add", "run", "defer", "stats", "TaskError", "TaskFailed"]


class TaskError(Exception):
    """
    A task raised an exception.  C{task} names it (C{"module.fn(args)"}),
    C{type} is the exception's type name, C{tb} its traceback (text).
    """

    def __init__(self, task, type, message, tb):
        Exception.__init__(self, "%s raised %s: %s\n%s" % (task, type, message,
                                                          tb.rstrip()))
        self.task, self.type, self.message, self.tb = task, type, message, tb


class TaskFailed(Exception):
    """
    Tasks killed their worker process.  C{failures} is a list of
    (task, how) pairs.
    """

    def __init__(self, failures):
        Exception.__init__(self, "; ".join("%s killed its worker (%s)" % f
                                           for f in failures))
        self.failures = failures


# ---------------------------------------------------------------------------
# Tasks as values.


def _ref(fn):
    """
    "module:qualname" for fn, which must be found again by that name.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise TypeError(
            "ame.tasks: %r is not importable by name (define it at module "
            "level)" % (fn,))
    if _resolve(module, qualname) is not fn:
        raise TypeError(
            "ame.tasks: %s.%s does not name %r" % (module, qualname, fn))
    return "%s:%s" % (module, qualname)


def _resolve(module, qualname):
    try:
        obj = _sys.modules.get(module) or _importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None


def _message(e):
    """
    str(e), or a stand-in if that raises (it is the task's error to
    report, not the worker's).
    """
    try:
        return str(e)
    except Exception as how:
        return "<%s: str() failed: %s>" % (type(e).__name__,
                                           type(how).__name__)


def _describe(rec):
    ref, args, kwargs = rec[1], rec[2], rec[3]
    parts = [repr(a) for a in args]
    parts += ["%s=%r" % kv for kv in sorted(kwargs.items())]
    text = "%s(%s)" % (ref.replace(":", "."), ", ".join(parts))
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------
# A session: the shared objects a process's run()s use (one set per
# process, emptied at the start of each run: named objects are never
# destroyed, so a set per run would keep a dozen KiB of the heap each).


class _Session:
    """
    A worker claims tasks from the queue a batch at a time (one
    transaction: the batch goes to `batch[worker]`, its cursor to 0, and
    `claimed` grows by its size), then runs them in order, each one
    transaction that also advances the worker's cursor and `done`.  So the
    run is over when the queue is empty and `done` has reached `claimed`;
    and after a worker dies, its batch and cursor say which task it was
    running (the cursor's) and which it had not started (after it).
    """

    def __init__(self, name):
        self.name = name
        self.queue = _shared.queue(name + ".queue")
        self.batch = _shared.dict(name + ".batch")      # worker -> [tasks]
        self.state = _shared.dict(name + ".state")
        self.claimed = _shared.counter(name + ".claimed")
        self.done = _shared.counter(name + ".done")
        self.stats = _shared.dict(name + ".stats")      # worker -> stats
        self.cursors = {}
        self.rans = {}
        self.reruns_ = {}
        self.busies = {}
        self.pending = []   # added here, not yet in the queue
        self.pool = False   # a defer() pool's (its queue holds tasks)

    def reset(self, workers):
        """
        Make the objects as new for a run: what a run that stopped early
        left in the queue is dropped (as its tasks were), a thousand
        items a transaction (it may hold more than one transaction can
        write: tasks that add tasks put one item each; no worker runs);
        then, in one transaction, its batches, state, counts and
        statistics too.  (The workers' cursors are set when they claim.)
        """
        def drop(n):
            for _ in range(n):
                try:
                    self.queue.get(block=False)
                except _queue.Empty:
                    return False
            return True

        while _shared.atomic(drop, 1000):
            pass

        def empty():
            self.batch.clear()
            self.state.clear()
            self.stats.clear()
            self.claimed.value = 0
            for wid in range(workers):
                self.ran(wid).value = 0
                self.reruns(wid).value = 0
                self.busy_us(wid).value = 0
            self.done.value = 0
        _shared.atomic(empty)

    def flush(self, workers):
        """
        Put the tasks added here into the queue, in chunks (a queue item
        per chunk keeps the queue's cost per task low).  Chunks shrink
        as the queue drains (each a 2*workers-th of the tasks left, at
        most _CHUNK, down to one task): the first are big, and the last
        are small enough that the workers finish together.
        """
        recs, self.pending = self.pending, []
        i = 0
        try:
            while i < len(recs):
                size = max(1, min(_CHUNK, (len(recs) - i) // (2 * workers)))
                self.queue.put(recs[i:i + size])
                i += size
        except BaseException:
            # A full heap (MemoryError), an interrupt: none has run, so
            # all are kept for the next run(), whose reset() drops those
            # queued here.
            self.pending[:0] = recs
            raise

    def cursor(self, wid):
        """Worker wid's place in its batch: the tasks of it done."""
        return self._counter(self.cursors, "cursor", wid)

    def ran(self, wid):
        """
        The tasks committed by worker wid (and those that replaced it) in
        this run: counted in each task's transaction, so that a worker
        that dies has its count kept.
        """
        return self._counter(self.rans, "ran", wid)

    def reruns(self, wid):
        """
        The re-runs of the tasks worker wid (and those that replaced it)
        committed in this run: added in the transaction of a task that
        needed more than one attempt, so that a worker that dies has them
        kept too.
        """
        return self._counter(self.reruns_, "reruns", wid)

    def busy_us(self, wid):
        """
        Worker wid's busy time in this run, in microseconds: added in a
        task's transaction once _BUSY_REPORT_S of it is unrecorded (and
        the rest as the worker ends), so that a worker that dies loses at
        most that much.
        """
        return self._counter(self.busies, "busy", wid)

    def _counter(self, cache, kind, wid):
        """The shared counter NAME.KIND.WID, opened once (cache)."""
        c = cache.get(wid)
        if c is None:
            c = _shared.counter("%s.%s.%d" % (self.name, kind, wid))
            _shared._keep(cache, wid, c)
        return c


_session = None
_serial = _itertools.count(1)
_CHUNK = 64         # tasks per queue item
_BUSY_REPORT_S = 0.1    # busy time a worker records at most this late


def _current_session():
    global _session
    if _session is None or _session.pid != _os.getpid():
        pid = _os.getpid()
        _session = _Session("ame.tasks.%d.%d.%d" % (
            pid, int(_time.time() * 1e6), next(_serial)))
        _session.pid = pid
    return _session


# The task this process is running (inside its transaction), if any.
_running_task = None


_refs = {}  # function -> its "module:qualname"


def add(fn, *args, **kwargs):
    """
    Queue C{fn(*args, **kwargs)} as a task.  Inside a task, it joins the
    queue when (and only if) that task commits; inside an C{ame.atomic}
    block, it is kept for the next run() when (and only if) the block
    commits.  TypeError (nothing
    queued) if fn is not importable by name or an argument cannot be
    stored.
    """
    try:
        ref = _refs[fn]
    except (KeyError, TypeError):
        ref = _ref(fn)
        try:
            _refs[fn] = ref
        except TypeError:
            pass  # not hashable: look it up each time
    rec = (0, ref, args, kwargs)
    if _running_task:
        if _running_task[0].pool:
            # Its result and errors would have nowhere to go.
            raise RuntimeError(
                "ame.tasks.add() inside a defer() task: return what is "
                "left to do, and defer() it from the reactor")
        # Part of the running task's transaction: queued if it commits.
        _running_task[0].queue.put([rec])
        return
    _ame._shared_encode(rec)  # TypeError now, with nothing queued
    # Inside ame.atomic: kept when the block commits, once however often
    # it runs (and the session is opened outside it: objects opened in
    # an attempt that rolls back are freed with it).  Outside: now.
    _shared.after_commit(_keep_pending, rec)


def _keep_pending(rec):
    _current_session().pending.append(rec)


# ---------------------------------------------------------------------------
# Output of a task: written at commit.


class _Sink(_io.TextIOBase):
    """
    A text stream that keeps what is written (an attempt's output): text,
    and bytes written to its C{buffer}, in order, in C{parts}.  It says of
    itself what the stream it stands for says (encoding, errors,
    isatty()); fileno() is unsupported, as for any stream in memory.
    """

    def __init__(self, stream):
        self.parts = []
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._errors = getattr(stream, "errors", None) or "strict"
        try:
            self._tty = bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            self._tty = False
        self.buffer = _BinarySink(self.parts)

    @property
    def encoding(self):
        return self._encoding

    @property
    def errors(self):
        return self._errors

    def isatty(self):
        return self._tty

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s"
                            % type(text).__name__)
        self.parts.append(text)
        return len(text)

    def flush(self):
        pass


class _BinarySink(_io.BufferedIOBase):
    """
    A C{_Sink}'s C{buffer}: bytes join the sink's parts.
    """

    def __init__(self, parts):
        self.parts = parts

    def writable(self):
        return True

    def write(self, data):
        data = bytes(data)
        self.parts.append(data)
        return len(data)

    def flush(self):
        pass


def _write_parts(stream, parts):
    """
    Write a sink's parts to the real stream: text as text, bytes to its
    buffer (the text before them flushed first), in order; each run of
    parts of one kind in one write (an unbuffered stream makes a write
    a system call, and other workers write to the same file).
    """
    for _, run in _itertools.groupby(parts, type):
        run = list(run)
        part = "".join(run) if isinstance(run[0], str) else b"".join(run)
        if isinstance(part, str):
            stream.write(part)
        else:
            stream.flush()
            binary = getattr(stream, "buffer", None)
            if binary is not None:
                binary.write(part)
                binary.flush()
            else:
                stream.write(part.decode(getattr(stream, "encoding", None)
                                         or "utf-8", "replace"))
    stream.flush()


def _stream_handlers():
    """
    logging's handlers that write to this process's stdout or stderr, with
    the stream each writes to.
    """
    std = (_sys.stdout, _sys.stderr, _sys.__stdout__, _sys.__stderr__)
    found = []
    loggers = [_logging.getLogger()] + [
        lg for lg in list(_logging.Logger.manager.loggerDict.values())
        if isinstance(lg, _logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, _logging.StreamHandler) and \
                    any(stream is x for x in std):
                found.append((h, stream))
    return found


class _Output:
    """
    A worker's redirection of sys.stdout, sys.stderr and logging's stream
    handlers to the buffers of the task attempt that runs: what an attempt
    prints is written, once, when its task commits.  refresh() looks for
    logging's handlers again (once per batch of tasks).
    """

    def __init__(self):
        self.saved = (_sys.stdout, _sys.stderr)
        self.out, self.err = _Sink(self.saved[0]), _Sink(self.saved[1])
        self.handlers = []

    def refresh(self):
        self.handlers = [
            (h, stream, self.err if stream is self.saved[1] or
             stream is _sys.__stderr__ else self.out)
            for h, stream in _stream_handlers()]

    def begin(self):
        out, err = self.out, self.err
        del out.parts[:]
        del err.parts[:]
        for h, stream, sink in self.handlers:
            h.stream = sink
        _sys.stdout, _sys.stderr = out, err
        return out, err

    def end(self):
        _sys.stdout, _sys.stderr = self.saved
        for h, stream, sink in self.handlers:
            h.stream = stream

    def flush(self, parts_out, parts_err):
        if parts_out:
            _write_parts(self.saved[0], parts_out)
        if parts_err:
            _write_parts(self.saved[1], parts_err)


# ---------------------------------------------------------------------------
# Workers.

_PR_SET_PDEATHSIG = 1
# _EXIT_STUCK: a worker's own transaction (its start, a claim) failed:
# a replacement would meet the same (every heap slot taken, the heap
# full), so none is started.
_EXIT_DONE, _EXIT_ERROR, _EXIT_STUCK = 0, 3, 4
_STOP, _DONE, _WAIT = "stop", "done", "wait"


# Tests: called in a forked worker before it asks to die with its parent.
_before_die_with_parent = None


def _die_with_parent(parent):
    """
    In a process forked by C{parent} (its pid): be killed when the parent
    dies, and die now if it died already (after the fork, before this:
    the kernel would never send the signal).
    """
    if _before_die_with_parent is not None:
        _before_die_with_parent()
    try:
        libc = _ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if _os.getppid() != parent:
        _os.kill(_os.getpid(), _signal.SIGKILL)


class _Worker:
    """
    A worker process's loop: claim a batch of tasks (a transaction), run
    each (one transaction), until nothing is left (see L{_Session}).
    """

    def __init__(self, session, wid, workers):
        self.s = session
        self.wid = wid
        self.workers = workers
        self.cursor = session.cursor(wid)
        self.ran = session.ran(wid)
        self.reruns = session.reruns(wid)
        self.busy_us = session.busy_us(wid)
        self.tasks = 0
        self.attempts = 0
        self.busy = 0.0
        self.busy_recorded = 0.0    # of self.busy, in busy_us(wid)
        self.fns = {}       # ref -> function
        self.output = _Output()

    def claim(self):
        s = self.s
        if s.state.get("stop"):
            s.batch.pop(self.wid, None)     # a clean end: see run()
            return _STOP
        # About half of a fair share each time, at most _BATCH_MAX: big
        # enough to spread the claim's cost, small enough to balance.
        # One queue item: a chunk of tasks (up to _CHUNK, one when a task
        # added it).
        try:
            recs = s.queue.get_nowait()
        except _queue.Empty:
            recs = None
        if not recs:
            if s.claimed.value != s.done.value:
                return _WAIT
            s.batch.pop(self.wid, None)     # a clean end: see run()
            return _DONE
        s.batch[self.wid] = recs
        self.cursor.value = 0
        s.claimed.add(len(recs))
        return recs

    def resume(self):
        """
        A batch this worker's id left unfinished (a worker that died
        before it, replaced by this one: run() has dealt with the task it
        died in), from its cursor on; or None.
        """
        s = self.s
        recs = s.batch.get(self.wid)
        if recs is None:
            return None
        done = self.cursor.value
        return recs[done:] or None

    def execute(self, rec):
        ref, args, kwargs = rec[1], rec[2], rec[3]
        fn = self.fns.get(ref)
        if fn is None:
            module, qualname = ref.split(":", 1)
            fn = self.fns[ref] = _resolve(module, qualname)
            if fn is None:
                raise ImportError("ame.tasks: cannot find %s" % ref)
        s = self.s
        cursor = self.cursor
        ran = self.ran
        output = self.output
        first = self.attempts + 1   # this task's first attempt
        # The busy time this task's commit records, if that much is
        # unrecorded (self.busy grows only between tasks).
        record = self.busy - self.busy_recorded
        if record < _BUSY_REPORT_S:
            record = 0.0

        def attempt():
            global _running_task
            self.attempts += 1
            out, err = output.begin()
            _running_task = (s, rec)
            try:
                fn(*args, **kwargs)
            finally:
                _running_task = None
                output.end()
            cursor.add(1)
            s.done.add(1)
            ran.add(1)
            if self.attempts != first:
                self.reruns.add(self.attempts - first)
            if record:
                self.busy_us.add(int(record * 1e6))
            if out.parts or err.parts:
                _shared.after_commit(output.flush, list(out.parts),
                                     list(err.parts))

        t0 = _time.perf_counter()
        try:
            _shared.atomic(attempt)
            if record:
                self.busy_recorded += record
        finally:
            self.busy += _time.perf_counter() - t0
        self.tasks += 1

    def loop(self, recs):
        """
        Run recs (what resume() gave), then claim and run batches until
        the run is over; return the exit code.
        """
        pause = 0.0002
        while True:
            if recs is None:
                try:
                    recs = _shared.atomic(self.claim)
                except Exception:
                    _traceback.print_exc()
                    return _EXIT_STUCK
            if recs == _STOP or recs == _DONE:
                return _EXIT_DONE
            if recs == _WAIT:
                recs = None
                _time.sleep(pause)
                pause = min(pause * 2, 0.005)
                continue
            pause = 0.0002
            self.output.refresh()
            for rec in recs:
                try:
                    self.execute(rec)
                except BaseException as e:  # sys.exit() is one too
                    tb = _traceback.format_exc()
                    _shared.atomic(self._record_error, rec, e, tb)
                    return _EXIT_ERROR
            recs = None

    def _record_error(self, rec, e, tb):
        if "error" not in self.s.state:
            self.s.state["error"] = (_describe(rec), type(e).__name__,
                                     _message(e), tb)
        self.s.state["stop"] = True
        self.s.batch.pop(self.wid, None)    # a clean end: see run()

    def report(self):
        """
        As this worker ends: its busy time not yet recorded, and its
        conflicts, added to those of the workers of its id that it
        replaced.  (Its committed tasks, their re-runs and all but the
        last _BUSY_REPORT_S of its busy time are recorded as it goes:
        ran(), reruns(), busy_us(); a worker that dies loses only its
        conflicts and that remainder.)
        """
        conflicts = [(c["object"], c["kind"], repr(c["key"]), c["aborts"])
                     for c in _shared.stats()["conflicts"][:20]]
        rest = self.busy - self.busy_recorded

        def add():
            prev = self.s.stats.get(self.wid) or {"conflicts": []}
            self.s.stats[self.wid] = {
                "pid": _os.getpid(),
                "conflicts": prev["conflicts"] + conflicts}
            if rest > 0:
                self.busy_us.add(int(rest * 1e6))

        _shared.atomic(add)


def _worker_main(session, wid, workers, parent):
    code = 1
    try:
        _die_with_parent(parent)
        try:
            # Its first transactions (it joins the heap): a failure here
            # is one to start, which the next worker would meet too.
            w = _Worker(session, wid, workers)
            recs = _shared.atomic(w.resume)
        except BaseException:
            code = _EXIT_STUCK
            raise
        try:
            code = w.loop(recs)
        finally:
            w.report()
    except BaseException:
        _traceback.print_exc()
    finally:
        try:
            _sys.stdout.flush()
            _sys.stderr.flush()
        finally:
            _os._exit(code)


def _fork_worker(session, wid, workers):
    _sys.stdout.flush()
    _sys.stderr.flush()
    parent = _os.getpid()
    pid = _os.fork()
    if pid == 0:
        _worker_main(session, wid, workers, parent)
    return pid


def _died(session, wid):
    """
    Worker wid ended (its heap slots recovered).  A worker that ends
    cleanly removes its batch in the transaction that decides it (a claim
    that finds nothing left, or the record of a task's exception): if the
    batch is still there, the worker died in it, and the task its cursor
    points at killed it (dropped, and returned), whatever its exit status
    (a task may call os._exit(0)); the rest of its batch stays for the
    worker that replaces it.
    """
    recs = session.batch.get(wid)
    if recs is None:
        return None
    cursor = session.cursor(wid)
    i = cursor.value
    if i >= len(recs):
        return None
    cursor.add(1)
    session.done.add(1)
    return recs[i]


def _how(status):
    if _os.WIFSIGNALED(status):
        sig = _os.WTERMSIG(status)
        try:
            return "signal %d, %s" % (sig, _signal.Signals(sig).name)
        except ValueError:
            return "signal %d" % sig
    return "exit status %d" % _os.WEXITSTATUS(status)


_last_stats = None


def run(workers="auto"):
    """
    Run every queued task (and those they add) in C{workers} processes
    (C{"auto"}: one per CPU this process may use); return when none is
    left.  Raise L{TaskError} for the first task that raised,
    L{TaskFailed} for tasks that killed their worker.
    """
    global _last_stats
    if _running_task or _shared.in_atomic():
        raise RuntimeError("ame.tasks.run() inside a task or ame.atomic")
    n = _ame.cpu_count() if workers == "auto" else int(workers)
    if n < 1:
        raise ValueError("ame.tasks.run: workers must be >= 1 or 'auto'")
    session = _current_session()
    session.reset(n)
    session.flush(n)
    t0 = _time.monotonic()
    pids = {}       # pid -> (wid, pidfd)
    failures = []
    stuck = 0       # workers that could not start, or claim
    # Each worker's end is watched through its pidfd, and only our
    # workers are reaped (waitpid(-1) would reap, and take the status of,
    # any child of the program, a subprocess.Popen's for one).
    poll = _select.poll()

    def start(wid):
        pid = _fork_worker(session, wid, n)
        try:
            fd = _os.pidfd_open(pid)
        except OSError:     # out of descriptors: this worker goes too
            _os.kill(pid, _signal.SIGKILL)
            _os.waitpid(pid, 0)
            _ame._shared_recover_pid(pid)
            raise
        pids[pid] = (wid, fd)
        poll.register(fd, _select.POLLIN)

    def reap(pid):
        wid, fd = pids.pop(pid)
        poll.unregister(fd)
        _os.close(fd)
        return wid, _os.waitpid(pid, 0)[1]

    try:
        for wid in range(n):
            start(wid)
        while pids:
            ended = {fd for fd, _ in poll.poll()}
            pid = next(p for p, (w, fd) in pids.items() if fd in ended)
            wid, status = reap(pid)
            # Its slot in the heap goes back, however it ended (a worker
            # leaves with os._exit: its slot would stay taken, and the
            # spans it allocated from with it, until the heap ran out).
            _ame._shared_recover_pid(pid)
            # The heap, not the exit status, says whether it died in a
            # task: the task it had claimed is the culprit.
            rec = _shared.atomic(_died, session, wid)
            if rec is not None:
                failures.append((_describe(rec), _how(status)))
            elif _os.WIFEXITED(status) and \
                    _os.WEXITSTATUS(status) in (_EXIT_DONE, _EXIT_ERROR):
                continue
            elif _os.WIFEXITED(status) and \
                    _os.WEXITSTATUS(status) == _EXIT_STUCK:
                # It could not start or claim (its traceback is on
                # stderr), nor would a replacement: the others, if any,
                # go on without it; see below.
                stuck += 1
                continue
            if not session.state.get("stop"):
                start(wid)
    finally:
        for pid in list(pids):
            try:
                _os.kill(pid, _signal.SIGKILL)
                reap(pid)
                _ame._shared_recover_pid(pid)
            except OSError:
                pass
    _last_stats = _collect_stats(session, n, _time.monotonic() - t0)
    error = session.state.get("error")
    if error is not None:
        raise TaskError(*error)
    if failures:
        raise TaskFailed(failures)
    if stuck and not session.state.get("stop") and _shared.atomic(
            lambda: len(session.queue) > 0 or
            session.claimed.value != session.done.value):
        raise RuntimeError(
            "ame.tasks.run: %d of %d workers could not start or claim "
            "tasks (their tracebacks are on stderr), and tasks are left"
            % (stuck, n))


def _collect_stats(session, n, elapsed):
    def read():
        return (dict(session.stats.items()),
                {wid: (session.ran(wid).value, session.reruns(wid).value,
                       session.busy_us(wid).value) for wid in range(n)})

    per, counts = _shared.atomic(read)
    conflicts = _collections.Counter()
    for w in per.values():
        for obj, kind, key, aborts in w.get("conflicts", ()):
            conflicts[(obj, kind, key)] += aborts
    tasks = sum(c[0] for c in counts.values())
    reruns = sum(c[1] for c in counts.values())
    return {
        "workers": n, "elapsed_s": elapsed, "tasks": tasks,
        "attempts": tasks + reruns, "reruns": reruns,
        "per_worker": {wid: {"tasks": counts[wid][0],
                             "busy_s": counts[wid][2] / 1e6,
                             "pid": per.get(wid, {}).get("pid")}
                       for wid in sorted(counts)
                       if counts[wid][0] or counts[wid][2] or wid in per},
        "conflicts": [{"object": o, "kind": k, "key": key, "aborts": a}
                      for (o, k, key), a in conflicts.most_common(10)],
    }


# ---------------------------------------------------------------------------
# defer(): a pool of workers serving a reactor.


class _PoolWorker(_Worker):
    """
    A worker of a defer() pool: one task at a time, waiting for the next
    in a transaction (the queue's blocking get: no thread, no polling);
    each task's result goes to the results queue in its transaction.
    """

    def __init__(self, session, wid, results):
        _Worker.__init__(self, session, wid, 1)
        self.results = results

    def claim_one(self):
        s = self.s
        rec = s.queue.get()  # in ame.atomic: waits for a value
        s.batch[self.wid] = [rec]
        self.cursor.value = 0
        return rec

    def run_one(self, rec):
        ref, args, kwargs = rec[1], rec[2], rec[3]
        fn = self.fns.get(ref)
        if fn is None:
            module, qualname = ref.split(":", 1)
            fn = self.fns[ref] = _resolve(module, qualname)
            if fn is None:
                raise ImportError("ame.tasks: cannot find %s" % ref)
        output = self.output
        cursor = self.cursor
        results = self.results

        def attempt():
            global _running_task
            out, err = output.begin()
            _running_task = (self.s, rec)
            try:
                value = fn(*args, **kwargs)
            finally:
                _running_task = None
                output.end()
            results.put((rec[0], True, value))
            cursor.add(1)
            if out.parts or err.parts:
                _shared.after_commit(output.flush, list(out.parts),
                                     list(err.parts))

        _shared.atomic(attempt)

    def serve(self, recs):
        """
        Run recs (what resume() gave), then each task as it comes;
        return _EXIT_STUCK if a claim fails.
        """
        for rec in recs or ():
            self.one(rec)
        while True:
            self.output.refresh()
            try:
                rec = _shared.atomic(self.claim_one)
            except Exception:
                _traceback.print_exc()
                return _EXIT_STUCK
            self.one(rec)

    def one(self, rec):
        try:
            self.run_one(rec)
        except BaseException as e:  # sys.exit() is one too
            failure = (_describe(rec), type(e).__name__, _message(e),
                       _traceback.format_exc())

            def report():
                self.results.put((rec[0], False, failure))
                self.cursor.add(1)

            _shared.atomic(report)


def _close_inherited_fds():
    """
    A pool worker keeps only stdin, stdout and stderr of what its parent
    had open (listening sockets, connections: they are the parent's).
    """
    try:
        fds = [int(fd) for fd in _os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                _os.close(fd)
            except OSError:
                pass


class _Pool:
    """
    This process's defer() workers, and the Deferreds waiting for them.
    """

    def __init__(self, reactor, workers):
        self.reactor = reactor
        self.workers = workers
        pid = _os.getpid()
        self.session = _Session("ame.tasks.pool.%d.%d" % (
            pid, int(_time.time() * 1e6)))
        self.session.pool = True
        self.results = _shared.queue(self.session.name + ".results")
        self.waiting = {}   # task id -> Deferred
        self.ids = _itertools.count(1)
        self.procs = {}     # wid -> (pid, reader)
        self.receiving = False
        self.stopped = False
        for wid in range(workers):
            self.start(wid)
        reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def start(self, wid):
        _sys.stdout.flush()
        _sys.stderr.flush()
        parent = _os.getpid()
        pid = _os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent(parent)
                _close_inherited_fds()
                _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
                # The parent's reactor is not this process's: this one
                # runs tasks and blocks where it waits.
                self.reactor.running = False
                try:
                    # Its first transactions (it joins the heap): see
                    # died() for a failure here.
                    w = _PoolWorker(self.session, wid, self.results)
                    recs = _shared.atomic(w.resume)
                except BaseException:
                    code = _EXIT_STUCK
                    raise
                code = w.serve(recs)
            except BaseException:
                _traceback.print_exc()
            finally:
                _os._exit(code)
        self.procs[wid] = (pid, _PidWatch(self, wid, pid))

    def submit(self, fn, args, kwargs):
        from twisted.internet import defer
        ref = _ref(fn)
        tid = next(self.ids)
        d = defer.Deferred()
        self.session.queue.put((tid, ref, args, kwargs))  # TypeError: none
        self.waiting[tid] = d
        self.receive()
        return d

    def receive(self):
        if self.receiving or not self.waiting:
            return
        self.receiving = True
        d = self.results.get_deferred(self.reactor)
        d.addCallback(self.got)

    def got(self, item):
        self.receiving = False
        tid, ok, value = item
        d = self.waiting.pop(tid, None)
        if d is not None:
            if ok:
                d.callback(value)
            else:
                d.errback(TaskError(*value))
        self.receive()

    def died(self, wid, pid, status):
        """
        Worker wid (pid) has ended: recover it, fail the task it ran,
        start another.
        """
        global _pool
        self.procs.pop(wid, None)
        _ame._shared_recover_pid(pid)
        rec = _shared.atomic(_died, self.session, wid)
        if rec is not None:
            d = self.waiting.pop(rec[0], None)
            if d is not None:
                d.errback(TaskFailed([(_describe(rec), _how(status))]))
        elif _os.WIFEXITED(status) and \
                _os.WEXITSTATUS(status) == _EXIT_STUCK:
            # It could not start or claim (its traceback is on stderr),
            # nor would a replacement: the others go on without it.  With
            # none left, the pool fails what waits and is dropped; the
            # next defer() starts another.
            if not self.procs:
                self.stop()
                if _pool is self:
                    _pool = None
                waiting, self.waiting = self.waiting, {}
                for d in waiting.values():
                    d.errback(RuntimeError(
                        "ame.tasks.defer: the pool's %d workers could not "
                        "start, or claim tasks (their tracebacks are on "
                        "stderr)"
                        % self.workers))
            return
        if not self.stopped:
            self.start(wid)

    def stop(self):
        self.stopped = True
        for wid, (pid, watch) in list(self.procs.items()):
            watch.close()
            try:
                _os.kill(pid, _signal.SIGKILL)
                _os.waitpid(pid, 0)
                _ame._shared_recover_pid(pid)
            except OSError:
                pass
        self.procs.clear()


class _PidWatch:
    """
    The reactor's watch on a pool worker's end: its pidfd becomes
    readable when the process exits (an authoritative death: no pid is
    guessed at).
    """

    def __init__(self, pool, wid, pid):
        self.pool, self.wid, self.pid = pool, wid, pid
        self.fd = _os.pidfd_open(pid)
        pool.reactor.addReader(self)

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "ame.tasks"

    def doRead(self):
        self.close()
        try:
            _, status = _os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        self.pool.died(self.wid, self.pid, status)

    def close(self):
        if self.fd >= 0:
            self.pool.reactor.removeReader(self)
            _os.close(self.fd)
            self.fd = -1

    def connectionLost(self, reason):
        pass


_pool = None


def defer(fn, *args, **kwargs):
    """
    Run C{fn(*args, **kwargs)} as a task in a pool of worker processes of
    this one (started at the first call: one per CPU this process may
    use), and return a Deferred that fires in this process's reactor with
    fn's result once the task has committed.  Inside C{ame.atomic}, the
    task is sent when (and only if) the block commits.  fn must be
    importable by name, its arguments and result values C{ame.shared}
    can store.  The Deferred fails with L{TaskError} if fn raises,
    L{TaskFailed} if it kills its worker (which is replaced).
    """
    global _pool
    if _shared.in_atomic():
        # Sent once, when (and only if) the block commits: an attempt
        # that rolls back sends nothing, and neither forks the pool nor
        # opens its shared objects (which its rollback would free).
        _ame._shared_encode((0, _ref(fn), args, kwargs))  # TypeError now
        from twisted.internet.defer import Deferred
        d = Deferred()
        _shared.after_commit(
            lambda: defer(fn, *args, **kwargs).chainDeferred(d))
        return d
    if _pool is None or _pool.session.name.split(".")[3] != str(_os.getpid()):
        from twisted.internet import reactor
        _pool = _Pool(reactor, _ame.cpu_count())
    return _pool.submit(fn, args, kwargs)


def stats():
    """
    The last run's statistics: C{tasks} (committed), C{attempts},
    C{reruns} (attempts that conflicted and ran again), C{per_worker}
    (tasks and busy seconds per worker), C{conflicts} (the objects and
    keys that caused the most re-runs), C{elapsed_s}; None before any run.
    """
    return _last_stats
