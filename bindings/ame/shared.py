"""
Named objects that every worker process sees, and transactions over them.

    import ame, ame.shared

    hits = ame.shared.counter("hits")
    sessions = ame.shared.dict("sessions")
    jobs = ame.shared.queue("jobs")
    chat = ame.shared.channel("chat")

    hits.add(1)                       # or: hits += 1
    sessions["alice"] = {"cart": [3, 4]}
    def move(src, dst, n):
        sessions[src] = sessions[src] - n      # both, or neither
        sessions[dst] = sessions.get(dst, 0) + n
    ame.atomic(move, "a", "b", 5)
    chat.subscribe(print)             # in every process, in the same order
    chat.publish("hello")

Objects.  C{dict(name)}, C{counter(name)}, C{queue(name)} and
C{channel(name)} return the object of that name, creating it empty if it
does not exist; a name (a str, 1 to 255 bytes of UTF-8) belongs to one
kind of object for the heap's life (asking for it as another kind is a
TypeError).  Named objects are never destroyed; C{clear()} empties a dict.

  - A dict has the usual protocols: C{d[k]}, C{d[k] = v}, C{del d[k]},
    C{k in d}, C{len(d)}, C{get}, C{setdefault}, C{pop}, C{popitem} (some
    pair, in no order), C{update}, C{clear}, and C{keys()}, C{values()},
    C{items()}, C{copy()} and iteration, which copy the contents in one
    transaction (a consistent snapshot, as lists); C{==} compares with any
    mapping as C{collections.abc.Mapping} does (unhashable, as dict).
  - A counter is a 64-bit signed integer: C{add(n=1)} and C{c += n} (which
    conflict with no other add, from any process), C{c.value} (read or set;
    reading conflicts with every add), C{int(c)}.  Adds wrap around at
    2**63.  In a function, C{c += 1} on a global needs C{global c}; prefer
    C{c.add(1)}.
  - A queue is FIFO: C{put(v)}, C{get(block=True, timeout=None)} (like
    C{queue.Queue.get}: waits, with the GIL released, and raises
    C{queue.Empty} on timeout), C{get_nowait()}, C{len(q)}, and
    C{get_deferred()}, a Twisted Deferred that fires in this process's
    reactor with the next value (the reactor is woken, no thread waits).
    C{get()} that would block in the reactor's thread while it runs raises
    RuntimeError.
  - A channel is publish/subscribe across processes: C{publish(v)} returns
    the message's number; C{subscribe(callback)} calls C{callback(v)} in
    this process's reactor for every message published after this process
    started receiving (when its reactor started, or at subscribe() if it
    runs), in publication (commit) order, the same order in every process.
    C{unsubscribe(callback)} or the returned subscription's C{cancel()}
    stops it.  Messages that every receiving process has seen are dropped
    from the heap.

Values.  Keys and values are str, bytes, int (any size), float, bool, None,
and (values) tuples, lists and dicts of them, nested up to 100 levels.
Anything else is a TypeError before anything is written.  They are stored
serialized, by a codec of ame's own (bindings/ame/shared.c): one tag byte,
then for int a zigzag LEB128 varint (or, beyond 64 bits, a length and two's
complement bytes), for float 8 IEEE-754 bytes, for str (UTF-8) and bytes a
varint length and the bytes, for tuple, list and dict a varint count and
the items.  Keys are looked up by their encoded bytes: C{1}, C{1.0} and
C{True} are three different keys (unlike a Python dict), and so are C{0.0}
and C{-0.0}.  Subclasses are stored as their base type (an IntEnum reads
back as int, a namedtuple as tuple).  A value read out is a new copy:
changing it does not change the shared object (store it back).

Transactions.  Every operation outside C{ame.atomic} is one transaction.
C{ame.atomic(fn, *args, **kwargs)} runs fn as one transaction over every
shared object it touches and returns fn's result; if another transaction
conflicts, its attempt is rolled back and fn runs again from the start, so
fn must be free of other side effects (it may run several times; its
effects on shared objects happen exactly once).  An exception from fn rolls
the transaction back and propagates.  C{@ame.atomically} is the decorator
form.  Nested C{ame.atomic} calls join the outermost one (an exception that
leaves an inner block does not undo its writes unless it leaves the
outermost too).  Inside an atomic block:

  - reactor calls are deferred to the commit and happen once: a TCP
    transport's C{write}, C{writeSequence}, C{loseConnection} and
    C{abortConnection}, and the reactor's C{callLater} (which returns a
    stand-in DelayedCall), C{callFromThread}, C{stop} (AMEReactor only);
    C{after_commit(fn, *args, **kwargs)} defers anything else;
  - print() and logging are not deferred: they happen in every attempt
    (wrap them in after_commit to have them once);
  - a blocking C{queue.get()} on an empty queue ends the attempt, waits for
    the queue to get a value, and runs the block again (a C{retry}).

Without C{ame run}, the heap is created in this process at first use
(C{AME_SHARED_SIZE} bytes, K/M/G suffixes, default 256M) and shared with
the processes it forks afterwards.  Under C{ame run --workers N} the
supervisor creates it before forking and passes its address in
C{AME_SHARED_HEAP}.  A heap that is full raises MemoryError (the
transaction is rolled back); C{--shared-size}/C{AME_SHARED_SIZE} gives it
more.  C{stats()} reports commits, aborts by cause, heap use and the most
conflicted objects and keys.
"""

import atexit as _atexit
import builtins as _builtins
import collections as _collections
import collections.abc as _abc
import functools as _functools
import itertools as _itertools
import os as _os
import queue as _queue
import select as _select
import socket as _socket
import sys as _sys
import threading as _threading
import time as _time

from ame import _ame

__all__ = [
    "Channel",
    "Counts",
    "Queue",
    "after_commit",
    "atomic",
    "atomically",
    "channel",
    "counter",
    "counts",
    "dict",
    "in_atomic",
    "queue",
    "stats",
]

atomic = _ame.atomic
after_commit = _ame.after_commit
_Conflict = _ame._Conflict
_EMPTY = _ame._EMPTY
_in_atomic = _ame._shared_in_atomic


def in_atomic():
    """
    Return True inside an C{ame.atomic} block (on this thread).
    """
    return _in_atomic()


def atomically(fn):
    """
    Decorator: calling the function runs it as C{ame.atomic(fn, ...)}.
    """

    @_functools.wraps(fn)
    def run(*args, **kwargs):
        return atomic(fn, *args, **kwargs)

    return run


# ---------------------------------------------------------------------------
# Opening objects.

_objects = {}  # (class, name) -> object


def _keep(cache, key, obj):
    """
    cache[key] = obj: at once outside ame.atomic; inside, once the
    transaction commits.  An object opened by an attempt that rolls back
    may hold the addresses of a header and container that the attempt
    created and the rollback freed, which later allocations reuse: cached,
    it would read and write another object's storage.
    """
    if _in_atomic():
        after_commit(cache.__setitem__, key, obj)
    else:
        cache[key] = obj


def _open(cls, name):
    obj = _objects.get((cls, name))
    if obj is None:
        if not isinstance(name, str):
            raise TypeError(
                "ame.shared: a name is a str, not %s" % type(name).__name__
            )
        obj = _ame._shared_open(cls, name)
        _keep(_objects, (cls, name), obj)
    return obj


def dict(name):
    """
    The shared dict called C{name} (created empty if it does not exist).
    """
    return _open(_ame.SharedDict, name)


def counter(name):
    """
    The shared counter called C{name} (created at 0 if it does not exist).
    """
    return _open(_ame.SharedCounter, name)


def queue(name):
    """
    The shared FIFO queue called C{name} (created empty if need be).
    """
    return _open(Queue, name)


def counts(name):
    """
    The shared tally called C{name}: a L{Counts} (created empty if need
    be).
    """
    c = _objects.get((Counts, name))
    if c is None:
        if not isinstance(name, str):
            raise TypeError(
                "ame.shared: a name is a str, not %s" % type(name).__name__
            )
        c = Counts(name)
        _keep(_objects, (Counts, name), c)
    return c


def channel(name):
    """
    The publish/subscribe channel called C{name} (created if need be).
    """
    return _open(Channel, name)


class _Count(int):
    """
    A count as C{c[key]} reads it: an int that remembers its tally, key
    and value, and so does C{c[key] + n} and C{c[key] - n}.  Stored back
    to the same key (C{c[key] += n}: a read, then a write), it adds the
    difference, as C{c.add(key, n)}, instead of setting the sum, which
    would drop what others added between the read and the write.  Stored
    anywhere else, compared, printed or pickled, it is the int it is.
    """

    def _derive(self, value):
        r = _Count(value)
        r._src = self._src
        r._base = self._base
        return r

    def __add__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return self._derive(int(self) + int(other))

    __radd__ = __add__

    def __sub__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return self._derive(int(self) - int(other))

    def __reduce__(self):
        return (int, (int(self),))


class Counts:
    """
    A tally of keys (like C{collections.Counter}): integer counts that any
    number of processes add to without conflicting with each other.  Each
    participant (thread of a process) adds to its own lane, one of 16
    shared dicts ("NAME#0" ... "NAME#15"); a count is the sum over the
    lanes, read in one transaction.  Use it where many transactions add to
    the same keys at once (word counts, hit counts per page): in one
    C{ame.shared.dict}, such adds conflict, and all but one are run again.

      - C{add(key, n=1)}, C{update(mapping)} (adds each count), C{c[key] +=
        n}, C{c[key] -= n}: one transaction each (C{+=} reads, then adds
        n), or part of the running C{ame.atomic}.
      - C{c[key]} (0 if absent), C{get(key, default=0)}, C{key in c},
        C{len(c)} (keys with a count), C{items()}, C{keys()}, C{values()},
        C{most_common(n=None)}, C{copy()} (a C{collections.Counter}), each
        one consistent snapshot.
      - C{clear()}.  Setting a count (C{c[key] = n}) sets it: the other
        lanes' parts of the key are dropped; but a value read as C{c[key]},
        plus or minus an int, stored back to the same key adds the
        difference (that is what makes C{c[key] += n} an add).
    """

    LANES = 16

    def __init__(self, name):
        self.name = name
        self._lanes = [None] * self.LANES

    def _lane(self, i):
        d = self._lanes[i]
        if d is None:
            d = _open(_ame.SharedDict, "%s#%d" % (self.name, i))
            _keep(self._lanes, i, d)
        return d

    def _all(self):
        return [self._lane(i) for i in range(self.LANES)]

    def add(self, key, n=1):
        self._lane(_ame._shared_lane()).add(key, n)

    def update(self, mapping=(), **kw):
        lane = self._lane(_ame._shared_lane())
        if not isinstance(mapping, _builtins.dict):
            mapping = _builtins.dict(mapping)
        if kw:
            mapping = _builtins.dict(mapping, **kw)
        lane.add(mapping)

    def __getitem__(self, key):
        lanes = self._all()
        r = _Count(atomic(lambda: sum(d.get(key, 0) for d in lanes)))
        r._src = (self, key)
        r._base = int(r)
        return r

    def get(self, key, default=0):
        lanes = self._all()

        def read():
            found = False
            total = 0
            for d in lanes:
                v = d.get(key, _EMPTY)
                if v is not _EMPTY:
                    found = True
                    total += v
            return total if found else default

        return atomic(read)

    def __setitem__(self, key, value):
        if type(value) is _Count and value._src[0] is self and \
                _ame._shared_encode(value._src[1]) == \
                _ame._shared_encode(key):
            # c[key] += n: add n (see _Count).
            self.add(key, int(value) - value._base)
            return
        lanes = self._all()
        mine = _ame._shared_lane()

        def put():
            for i, d in enumerate(lanes):
                if i != mine:
                    d.pop(key, None)
            lanes[mine][key] = value

        atomic(put)

    def __iadd__(self, mapping):
        self.update(mapping)
        return self

    def __contains__(self, key):
        lanes = self._all()
        return atomic(lambda: any(key in d for d in lanes))

    def _sums(self):
        """
        A dict of every count (one transaction).
        """
        lanes = self._all()

        def read():
            total = {}
            for d in lanes:
                d._add_to(total)  # total[k] = total.get(k, 0) + v
            return total

        return atomic(read)

    def copy(self):
        """
        A C{collections.Counter} of every count (one transaction).
        """
        return _collections.Counter(self._sums())

    def items(self):
        return list(self._sums().items())

    def keys(self):
        return list(self._sums())

    def values(self):
        return list(self._sums().values())

    def __len__(self):
        return len(self._sums())

    def __iter__(self):
        return iter(self.keys())

    def most_common(self, n=None):
        return self.copy().most_common(n)

    def clear(self):
        lanes = self._all()
        atomic(lambda: [d.clear() for d in lanes])

    def __eq__(self, other):
        # As collections.Counter's: with another tally or a Counter, a key
        # counted 0 is as one missing; with any other mapping, as dicts.
        if isinstance(other, Counts):
            other = other.copy()
        elif not isinstance(other, _abc.Mapping):
            return NotImplemented
        return self.copy() == other

    __hash__ = None  # unhashable, as Counter

    def __repr__(self):
        return "<ame.shared.Counts %r>" % (self.name,)


# ---------------------------------------------------------------------------
# Waking other processes.  Each process that waits for a queue or receives
# a channel binds an abstract-namespace Unix datagram socket named after
# its pid and start time, and registers that name with the object in the
# heap (the object's watchers).  A transaction that adds to a watched
# object reads the watchers' version; after it commits, _notify sends a
# byte to each watcher (the list is cached per object and read again when
# the version changes).  A name nobody listens on any more (the process
# died) is dropped from the watchers.


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _datagram_socket():
    return _socket.socket(
        _socket.AF_UNIX,
        _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC,
    )


class _Receiver:
    """
    A reactor's wake-up socket in this process (its reader): what the
    queues (get_deferred) and channels (subscribe) served by that reactor
    wake.
    """

    def __init__(self, proc, reactor):
        self.reactor = reactor
        self.name = ("%s.r%d" % (proc.prefix, next(proc.serial))).encode()
        self.sock = _datagram_socket()
        self.sock.bind(b"\0" + self.name)
        self.pending = {}  # queue -> deque of Deferreds
        self.channels = []  # _Subscribers
        reactor.addReader(self)

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "ame.shared"

    def doRead(self):
        try:
            while self.sock.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        for subs in list(self.channels):
            subs.drain()
        for q in list(self.pending):
            _service(self, q)

    def connectionLost(self, reason):
        # The reactor let go of it (removeAll, disconnectAll): forget it.
        proc = _process()
        if proc.receivers.get(self.reactor) is self:
            del proc.receivers[self.reactor]
        self.sock.close()


class _Process:
    """
    What this process (one pid) has for waking and being woken.
    """

    def __init__(self):
        self.pid = _os.getpid()
        self.prefix = "ame.%d.%d" % (self.pid, _start_time(self.pid))
        self.sender = _datagram_socket()
        self.receivers = {}  # reactor -> _Receiver
        self.watch_cache = {}  # object -> (version, [names])
        self.serial = _itertools.count(1)

    def receiver(self, reactor):
        r = self.receivers.get(reactor)
        if r is None:
            r = self.receivers[reactor] = _Receiver(self, reactor)
        return r


_proc = None


def _process():
    global _proc
    if _proc is None or _proc.pid != _os.getpid():
        _proc = _Process()
    return _proc


def _global_reactor():
    from twisted.internet import reactor

    return reactor


def _notify(obj, version):
    """
    After a commit that added to obj (a queue or channel) while it had
    watchers: wake them.
    """
    proc = _process()
    cached = proc.watch_cache.get(obj)
    if cached is None or cached[0] != version:
        cached = proc.watch_cache[obj] = obj._watchers()
    stale = []
    for name in cached[1]:
        try:
            proc.sender.sendto(b"!", b"\0" + name)
        except (BlockingIOError, InterruptedError):
            pass  # its buffer is full: it has wake-ups to read already
        except (ConnectionRefusedError, FileNotFoundError):
            stale.append(name)
        except OSError:
            pass
    for name in stale:
        obj._unwatch(name)


class _ThreadWaiter(_threading.local):
    """
    A thread's own wake-up socket, for blocking get()s.
    """

    pid = None

    def get(self):
        if self.pid != _os.getpid():
            proc = _process()
            self.pid = proc.pid
            self.name = ("%s.w%d" % (proc.prefix, next(proc.serial))).encode()
            self.sock = _datagram_socket()
            self.sock.bind(b"\0" + self.name)
        return self

    def wait(self, timeout):
        _select.select([self.sock], [], [], timeout)
        try:
            while self.sock.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass


_waiter = _ThreadWaiter()


def _in_reactor_thread():
    r = _sys.modules.get("twisted.internet.reactor")
    if r is None or not getattr(r, "running", False):
        return False
    from twisted.python import threadable

    return threadable.isInIOThread()


def _refuse_in_reactor():
    if _in_reactor_thread():
        raise RuntimeError(
            "ame.shared: a blocking get() in the reactor's thread would "
            "stop the reactor; use get_deferred() or get_nowait()"
        )


def _deadline(timeout):
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return _time.monotonic() + timeout


def _left(deadline):
    return None if deadline is None else deadline - _time.monotonic()


def _wait(q, timeout, seen=0):
    """
    For ame.atomic: a blocking get() in the block found q empty, after the
    attempt took C{seen} values more from q than it put there (all that
    its snapshot had; the rollback put them back).  Wait until q has more
    than C{seen} values (True) or timeout seconds pass (False).
    """
    w = _waiter.get()
    deadline = _deadline(timeout)
    q._watch(w.name)
    try:
        while len(q) <= seen:
            left = _left(deadline)
            if left is not None and left <= 0:
                return False
            w.wait(left)
        return True
    finally:
        q._unwatch(w.name)


_ame._shared_set_hooks(_notify, _wait)


# ---------------------------------------------------------------------------
# Queues.


class Queue(_ame.SharedQueue):
    """
    A FIFO queue in the shared heap: see the module's documentation.
    """

    __slots__ = ()

    def get(self, block=True, timeout=None):
        """
        Remove and return the first value.  If there is none: with C{block}
        false, raise C{queue.Empty}; else wait (up to C{timeout} seconds,
        then raise C{queue.Empty}).  Inside C{ame.atomic}, waiting ends the
        attempt, and the block runs again once the queue has a value; the
        timeout counts from this get's first wait, whatever reruns follow
        (a conflict, a value another participant took first).
        """
        v = self._take()
        if v is not _EMPTY:
            return v
        if not block:
            raise _queue.Empty
        _refuse_in_reactor()
        if _in_atomic():
            _deadline(timeout)  # checks it
            _ame._shared_wait(self, timeout)  # raises
        w = _waiter.get()
        deadline = _deadline(timeout)
        try:
            while True:
                v = self._take_or_watch(w.name)
                if v is not _EMPTY:
                    return v
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise _queue.Empty
                w.wait(left)
        finally:
            self._unwatch(w.name)

    def get_deferred(self, reactor=None):
        """
        Return a Deferred that fires, in this process's reactor (by default
        the global one), with the next value; the reactor is woken when
        another process puts one.  Deferreds of one process fire in the
        order they were asked for.  Inside C{ame.atomic}: the value is
        taken in the transaction if there is one, and the Deferred fires
        (or starts waiting) after the commit.
        """
        from twisted.internet import defer

        if reactor is None:
            reactor = _global_reactor()
        d = defer.Deferred(lambda d: _unpend(self, d))
        # Behind Deferreds of this reactor that wait on this queue, it
        # waits too (a value may be there before the reactor serves them).
        r = _process().receivers.get(reactor)
        v = _EMPTY if r is not None and r.pending.get(self) else self._take()
        if v is not _EMPTY:
            after_commit(d.callback, v)
        else:
            after_commit(_pend, self, d, reactor)
        return d

    def empty(self):
        """
        True if the queue has no value now.
        """
        return len(self) == 0

    def qsize(self):
        """
        The number of values now.
        """
        return len(self)


def _pend(q, d, reactor):
    r = _process().receiver(reactor)
    r.pending.setdefault(q, _collections.deque()).append(d)
    d._ameReceiver = r
    _service(r, q)


def _unpend(q, d):
    r = getattr(d, "_ameReceiver", None)
    waiting = r.pending.get(q) if r is not None else None
    if waiting is not None and d in waiting:
        waiting.remove(d)
        if not waiting:
            del r.pending[q]
            q._unwatch(r.name)


def _service(r, q):
    """
    Give q's values to the Deferreds waiting in r, in order.  A callback
    may ask for more, cancel, or service q itself (a get_deferred that
    waits calls this), which may empty r's list and make a new one: the
    list is looked up again each time, and dropped, with the watch, only
    if no Deferred is in what is there at the end.
    """
    while True:
        waiting = r.pending.get(q)
        if not waiting:
            break
        v = q._take_or_watch(r.name)
        if v is _EMPTY:
            return  # watched: a put wakes the reactor
        waiting.popleft().callback(v)
    if q in r.pending:
        del r.pending[q]
    q._unwatch(r.name)


# ---------------------------------------------------------------------------
# Channels.

_BATCH = 256  # records read per transaction
_TRIM_EVERY = 64  # records a process reads between two trims


class _Subscribers:
    """
    A channel's subscribers on one reactor of this process, and where they
    are in its log.
    """

    def __init__(self, channel, reactor):
        self.channel = channel
        self.reactor = reactor
        self.callbacks = []
        self.receiver = None  # registered (in this pid) under its name
        self.pid = None
        self.cursor = 0
        self.unread = 0  # records read since the last trim
        self.lost = 0  # records trimmed before this process read them
        self.waiting = False  # a start is queued (callWhenRunning)
        self.shutdown = None

    def registered(self):
        return self.pid == _os.getpid() and self.receiver is not None

    def start(self):
        """
        Start receiving in this process: when the reactor runs.
        """
        self.waiting = False
        if not self.callbacks or self.registered():
            return
        r = _process().receiver(self.reactor)
        self.cursor = self.channel._register(r.name)
        self.receiver, self.pid = r, _os.getpid()
        r.channels.append(self)
        self.shutdown = self.reactor.addSystemEventTrigger(
            "before", "shutdown", self.stop
        )

    def stop(self):
        if self.registered():
            self.channel._unregister(self.receiver.name)
            if self in self.receiver.channels:
                self.receiver.channels.remove(self)
            if self.shutdown is not None:
                try:
                    self.reactor.removeSystemEventTrigger(self.shutdown)
                except (KeyError, ValueError, TypeError):
                    pass
        self.receiver = self.pid = self.shutdown = None

    def drain(self):
        if not self.registered():
            return
        from twisted.python import log

        name = self.receiver.name
        ch = self.channel
        while True:
            records, more, registered = ch._read(name, self.cursor, _BATCH)
            if not registered:
                # Dropped as dead (it looked so to a publisher): start
                # again from the log's end.
                self.cursor = ch._register(name)
                log.msg(
                    "ame.shared: channel %r: this process was dropped from "
                    "its subscribers; messages were lost" % ch.name
                )
                return
            for seq, value in records:
                if seq != self.cursor + 1:
                    self.lost += seq - self.cursor - 1
                self.cursor = seq
                for cb in list(self.callbacks):
                    try:
                        cb(value)
                    except Exception:
                        log.err(
                            None,
                            "ame.shared: subscriber %r of channel %r"
                            % (cb, ch.name),
                        )
            self.unread += len(records)
            if not more:
                break
        if self.unread >= _TRIM_EVERY:
            self.unread = 0
            ch._trim()


_subscribers = {}  # (channel, reactor) -> _Subscribers


class Subscription:
    """
    What C{Channel.subscribe} returns: C{cancel()} unsubscribes.
    """

    def __init__(self, channel, callback, reactor):
        self.channel = channel
        self.callback = callback
        self.reactor = reactor

    def cancel(self):
        self.channel.unsubscribe(self.callback, self.reactor)


class Channel(_ame.SharedChannel):
    """
    A publish/subscribe channel in the shared heap: see the module's
    documentation.
    """

    __slots__ = ()

    def subscribe(self, callback, reactor=None):
        """
        Call C{callback(value)} in this process's reactor (by default the
        global one) for every message published from when it starts
        receiving: when the reactor starts, or now if it runs.  Return a
        L{Subscription}.
        """
        if reactor is None:
            reactor = _global_reactor()
        subs = _subscribers.get((self, reactor))
        if subs is None:
            subs = _subscribers[(self, reactor)] = _Subscribers(self, reactor)
        subs.callbacks.append(callback)
        if not subs.registered() and not subs.waiting:
            subs.waiting = True
            reactor.callWhenRunning(subs.start)
        return Subscription(self, callback, reactor)

    def unsubscribe(self, callback, reactor=None):
        """
        Stop calling C{callback} (one subscription of it).
        """
        if reactor is None:
            reactor = _global_reactor()
        subs = _subscribers.get((self, reactor))
        if subs is None or callback not in subs.callbacks:
            raise ValueError("ame.shared: %r is not subscribed" % (callback,))
        subs.callbacks.remove(callback)
        if not subs.callbacks:
            subs.stop()
            del _subscribers[(self, reactor)]


# ---------------------------------------------------------------------------
# Statistics, forks.


def stats():
    """
    Return the shared heap's statistics, as a dict: C{commits},
    C{commits_ro}, C{aborts}, C{aborts_by_cause} (cause name -> count),
    C{irrevocable}, C{escalations}, C{max_attempts} (over every process
    and thread that used the heap); C{heap} (C{mapped}, C{arena}, C{used},
    C{top}, C{slots_max}, C{slots_live}, C{recoveries},
    C{recovered_commits}, C{clock}); and C{conflicts}: this process's
    aborts by the object and key they were about, most first, as dicts
    C{{"object": name, "kind": kind, "key": key or None, "aborts": n}}
    (C{object} None: not known).
    """
    s = _ame._shared_stats()
    raw = s.pop("conflicts_raw")
    rows = []
    for (name, kind, key), n in raw.items():
        if key is not None:
            try:
                key = _ame._shared_decode(key)
            except ValueError:
                key = repr(key)
        rows.append({"object": name, "kind": kind, "key": key, "aborts": n})
    rows.sort(key=lambda r: -r["aborts"])
    s["conflicts"] = rows
    return s


def _after_fork():
    """
    In a child just forked: the parent's heap slots are the parent's.
    (Registered with os.register_at_fork.)
    """
    _ame._shared_after_fork()


def _use_heap(name=None, size=0, create=True):
    """
    Tests: use the named heap C{name} (create it, or open it), or with no
    name forget the heap (the next use finds one as at start).
    """
    _objects.clear()
    _subscribers.clear()
    _ame._shared_use_heap(name, size, create)


_os.register_at_fork(after_in_child=_after_fork)
# The main thread leaves the heap at exit (other threads do as they end):
# its slot is free for the next process at once.
_atexit.register(_ame._shared_leave)
