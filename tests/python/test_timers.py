"""
reactor.callLater and DelayedCall: AMEReactor's are C (bindings/ame/timers.c)
and must behave exactly as Twisted's (twisted.internet.base.ReactorBase and
DelayedCall).  One suite run over AMEReactor and Twisted's EPollReactor, and
where it can, a test compares what the reactor under test does with what
EPollReactor does for the same calls on the same clock.

Run with Debian's python and the extension built::

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 -m twisted.trial tests/python/test_timers.py
"""

import gc
import random
import re
import weakref

from twisted.internet import base, error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.test import test_base as _tw_test_base
from twisted.trial.unittest import SynchronousTestCase

from ame import _ame
from ame.reactor import AMEReactor


class _Boom(Exception):
    pass


class _Clock:
    """A clock the test moves: reactor.seconds = clock.seconds."""

    def __init__(self, now=100.0):
        self.now = now

    def seconds(self):
        return self.now


def _noop(*a, **kw):
    pass


def _unid(text):
    """A DelayedCall's repr without its id()."""
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def _schedule(reactor, *args, **kw):
    # One line for every reactor: debug creators are compared.
    return reactor.callLater(*args, **kw)


def _construct(cls, *args, **kw):
    # One line for both DelayedCall classes: debug creators are compared.
    return cls(*args, **kw)


class TimersMixin:
    """
    The behaviours; subclasses set C{reactorFactory} and
    C{delayedCallClass} (what DelayedCall(...) makes for this reactor).
    """

    reactorFactory = None
    delayedCallClass = None

    def buildReactor(self, clock=None):
        reactor = self.reactorFactory()
        self.addCleanup(self._unbuild, reactor)
        if clock is not None:
            reactor.seconds = clock.seconds
        return reactor

    def _unbuild(self, reactor):
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        reactor._internalReaders.clear()
        reactor.disconnectAll()
        for c in reactor.getDelayedCalls():
            c.cancel()

    def reference(self, clock):
        """
        An EPollReactor on C{clock}: what Twisted itself does.
        """
        reactor = EPollReactor()
        self.addCleanup(self._unbuild, reactor)
        reactor.seconds = clock.seconds
        return reactor

    def debugOn(self):
        self.patch(base.DelayedCall, "debug", True)

    # Ordering

    def test_order(self):
        """
        Calls run in deadline order when their time comes, not before.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        order = []
        reactor.callLater(3, order.append, "c")
        reactor.callLater(1, order.append, "a")
        reactor.callLater(2, order.append, "b")
        reactor.callLater(0, order.append, "now")
        reactor.runUntilCurrent()
        self.assertEqual(order, ["now"])
        clock.now += 1.5
        reactor.runUntilCurrent()
        self.assertEqual(order, ["now", "a"])
        clock.now += 10
        reactor.runUntilCurrent()
        self.assertEqual(order, ["now", "a", "b", "c"])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_ties(self):
        """
        Calls due at the same time run in the order scheduled (a few), and in
        Twisted's order (many: the heap decides, as in EPollReactor).
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        order = []
        for name in "abc":
            reactor.callLater(5, order.append, name)
        clock.now += 5
        reactor.runUntilCurrent()
        self.assertEqual(order, list("abc"))

        def run(r, clk):
            got = []
            rnd = random.Random(7)
            for i in range(300):
                r.callLater(rnd.choice([0, 1, 2]), got.append, i)
                if i % 50 == 49:
                    r.runUntilCurrent()
            clk.now += 3
            r.runUntilCurrent()
            return got

        clock2, clock3 = _Clock(), _Clock()
        got = run(self.buildReactor(clock2), clock2)
        self.assertEqual(got, run(self.reference(clock3), clock3))
        self.assertEqual(sorted(got), list(range(300)))

    def test_manyRandom(self):
        """
        10,000 calls scheduled in random order run in deadline order.
        """
        clock = _Clock(1000.0)
        reactor = self.buildReactor(clock)
        rnd = random.Random(1)
        delays = [rnd.random() * 100 for _ in range(10000)]
        got = []
        for i, d in enumerate(delays):
            reactor.callLater(d, got.append, i)
        clock.now += 50
        reactor.runUntilCurrent()
        clock.now += 51
        reactor.runUntilCurrent()
        self.assertEqual(
            got, sorted(range(10000), key=lambda i: (delays[i], i))
        )

    # The flags, cancel, reset, delay

    def test_flags(self):
        """
        cancelled and called are 0 then 1; active() says whether neither.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        dc = reactor.callLater(1, _noop)
        self.assertIs(type(dc.cancelled), int)
        self.assertEqual((dc.cancelled, dc.called, dc.active()), (0, 0, True))
        self.assertEqual(dc.delayed_time, 0.0)
        self.assertIs(type(dc.delayed_time), float)
        clock.now += 1
        reactor.runUntilCurrent()
        self.assertEqual((dc.cancelled, dc.called, dc.active()), (0, 1, False))
        self.assertRaises(error.AlreadyCalled, dc.cancel)
        self.assertRaises(error.AlreadyCalled, dc.reset, 1)
        self.assertRaises(error.AlreadyCalled, dc.delay, 1)
        dc2 = reactor.callLater(1, _noop)
        dc2.cancel()
        self.assertEqual((dc2.cancelled, dc2.called, dc2.active()),
                         (1, 0, False))
        self.assertRaises(error.AlreadyCancelled, dc2.cancel)
        self.assertRaises(error.AlreadyCancelled, dc2.reset, 1)
        self.assertRaises(error.AlreadyCancelled, dc2.delay, 1)
        # A set flag of any truth counts, as in Twisted.
        dc3 = reactor.callLater(1, _noop)
        dc3.called = True
        self.assertFalse(dc3.active())
        self.assertRaises(error.AlreadyCalled, dc3.cancel)
        dc3.called = 0
        dc3.cancel()

    def test_cancel(self):
        """
        A cancelled call does not run, loses func/args/kw, leaves
        getDelayedCalls, and calls the reactor's canceller once.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ran = []
        dc = reactor.callLater(1, ran.append, 1)
        other = reactor.callLater(1, ran.append, 2)
        before = reactor._cancellations
        dc.cancel()
        self.assertEqual(reactor._cancellations, before + 1)
        for name in ("func", "args", "kw"):
            self.assertFalse(hasattr(dc, name), name)
        self.assertEqual(reactor.getDelayedCalls(), [other])
        clock.now += 2
        reactor.runUntilCurrent()
        self.assertEqual(ran, [2])
        # Dropped from _newTimedCalls with the count taken back.
        self.assertEqual(reactor._cancellations, before)

    def test_cancelOnHeap(self):
        """
        A call cancelled once on the heap is dropped when its time comes.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ran = []
        dc = reactor.callLater(1, ran.append, 1)
        reactor.runUntilCurrent()
        self.assertIn(dc, reactor._pendingTimedCalls)
        dc.cancel()
        self.assertEqual(reactor._cancellations, 1)
        clock.now += 1
        reactor.runUntilCurrent()
        self.assertEqual((ran, reactor._cancellations), ([], 0))
        self.assertEqual(reactor._pendingTimedCalls, [])

    def test_compaction(self):
        """
        More than 50 cancelled calls, over half the heap: runUntilCurrent
        rebuilds the heap without them.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        calls = [reactor.callLater(10 + i, _noop) for i in range(200)]
        reactor.runUntilCurrent()
        for dc in calls[:50]:
            dc.cancel()
        reactor.runUntilCurrent()
        self.assertEqual(
            (reactor._cancellations, len(reactor._pendingTimedCalls)),
            (50, 200))
        for dc in calls[50:100]:
            dc.cancel()
        reactor.runUntilCurrent()
        self.assertEqual(
            (reactor._cancellations, len(reactor._pendingTimedCalls)),
            (100, 200))
        calls[100].cancel()
        reactor.runUntilCurrent()
        self.assertEqual(
            (reactor._cancellations, len(reactor._pendingTimedCalls)),
            (0, 99))
        self.assertEqual(sorted(reactor.getDelayedCalls()), calls[101:])

    def test_resetLater(self):
        """
        reset() to a later time sets delayed_time, keeps time, and the call
        runs at the new time (re-queued when its old time comes).
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ran = []
        dc = reactor.callLater(10, ran.append, 1)
        dc.reset(20)
        self.assertEqual((dc.time, dc.delayed_time, dc.getTime()),
                         (110.0, 10.0, 120.0))
        clock.now = 110
        reactor.runUntilCurrent()
        self.assertEqual((ran, dc.time, dc.delayed_time), ([], 120.0, 0.0))
        clock.now = 120
        reactor.runUntilCurrent()
        self.assertEqual(ran, [1])

    def test_resetSooner(self):
        """
        reset() to a sooner time moves time and calls the reactor's
        resetter, which moves the call up the heap.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ran = []
        calls = [reactor.callLater(10 + i, ran.append, i) for i in range(8)]
        reactor.runUntilCurrent()
        calls[7].reset(1)
        self.assertEqual((calls[7].time, calls[7].delayed_time), (101.0, 0.0))
        self.assertIs(reactor._pendingTimedCalls[0], calls[7])
        clock.now = 101
        reactor.runUntilCurrent()
        self.assertEqual(ran, [7])
        # Not yet on the heap (in _newTimedCalls): the resetter finds
        # nothing to move, and the call still runs at its new time.
        dc = reactor.callLater(50, ran.append, "x")
        dc.reset(5)
        clock.now = 106
        reactor.runUntilCurrent()
        self.assertEqual(ran, [7, "x"])

    def test_resetResetter(self):
        """
        reset() calls resetter(call) only when moving sooner; cancel()
        calls canceller(call) before it sets cancelled.
        """
        clock = _Clock()
        seen = []
        dc = self.delayedCallClass(
            105, _noop, (), {},
            lambda c: seen.append(("cancel", c.cancelled)),
            lambda c: seen.append(("reset", c.time)),
            seconds=clock.seconds)
        dc.reset(5)  # the same time: not sooner
        self.assertEqual((dc.time, dc.delayed_time), (105, 0.0))
        dc.reset(10)
        dc.reset(1)
        dc.cancel()
        self.assertEqual(seen, [("reset", 101.0), ("cancel", 0)])

    def test_delay(self):
        """
        delay() adds to delayed_time; below zero it is applied at once and
        the resetter called.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ran = []
        dc = reactor.callLater(10, ran.append, 1)
        dc.delay(5)
        self.assertEqual((dc.time, dc.delayed_time, dc.getTime()),
                         (110.0, 5.0, 115.0))
        reactor.runUntilCurrent()  # activate_delay when inserted
        self.assertEqual((dc.time, dc.delayed_time), (115.0, 0.0))
        dc.delay(-7)
        self.assertEqual((dc.time, dc.delayed_time), (108.0, 0.0))
        clock.now = 108
        reactor.runUntilCurrent()
        self.assertEqual(ran, [1])

    def test_intClock(self):
        """
        A clock of ints gives int times, as in Twisted.
        """
        clock = _Clock(100)
        reactor = self.buildReactor(clock)
        ref = self.reference(_Clock(100))
        for r in (reactor, ref):
            dc = r.callLater(5, _noop)
            dc.reset(7)
            dc.delay(1)
            r.seen = (dc.time, dc.delayed_time, dc.getTime())
        self.assertEqual(reactor.seen, (105, 3, 108))
        self.assertEqual([type(x) for x in reactor.seen],
                         [type(x) for x in ref.seen])

    # Arguments and errors

    def test_arguments(self):
        """
        Positional and keyword arguments reach the callable; the call holds
        them as args (a tuple) and kw (a new dict).
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        got = []
        dc = reactor.callLater(0, lambda *a, **kw: got.append((a, kw)),
                               1, "two", x=3)
        self.assertEqual(dc.args, (1, "two"))
        self.assertEqual(dc.kw, {"x": 3})
        reactor.runUntilCurrent()
        self.assertEqual(got, [((1, "two"), {"x": 3})])
        d1 = reactor.callLater(1, _noop)
        d2 = reactor.callLater(1, _noop)
        self.assertEqual((d1.args, d1.kw), ((), {}))
        self.assertIsNot(d1.kw, d2.kw)
        d3 = reactor.callLater(callable=_noop, delay=2)
        self.assertEqual((d3.func, d3.time), (_noop, 102.0))
        self.assertRaises(TypeError, reactor.callLater, 1, _noop, delay=1)
        self.assertRaises(TypeError, reactor.callLater, 1)
        self.assertRaises(TypeError, reactor.callLater)

    def test_assertions(self):
        """
        A callable that is not, or a negative delay, fails Twisted's asserts
        with its messages.
        """
        if not __debug__:
            raise self.skipTest("python -O: no asserts")
        reactor = self.buildReactor(_Clock())
        ref = self.reference(_Clock())
        for args in [(1, "nope"), (-1, _noop), (-0.5, _noop)]:
            e = self.assertRaises(AssertionError, reactor.callLater, *args)
            e2 = self.assertRaises(AssertionError, ref.callLater, *args)
            self.assertEqual(e.args, e2.args)
        self.assertRaises(TypeError, reactor.callLater, "1", _noop)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_exceptionLogged(self):
        """
        A call that raises is logged and the calls after it still run.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ran = []

        def boom():
            raise _Boom()

        reactor.callLater(1, boom)
        reactor.callLater(2, ran.append, 2)
        clock.now += 3
        reactor.runUntilCurrent()
        self.assertEqual(ran, [2])
        self.assertEqual(len(self.flushLoggedErrors(_Boom)), 1)

    # What Twisted's code and tools look at

    def test_reprMatchesTwisted(self):
        """
        repr() and str() are Twisted's, for the same arguments, before and
        after cancel, and with time and func replaced.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ref = self.reference(clock)

        class K:
            def m(self):
                pass

        for args, kw in [((), {}), ((1, "a"), {}), ((), {"k": [1]}),
                         ((b"x",), {"k": 2, "j": None})]:
            for f in (_noop, K().m, len, lambda: None, _Boom):
                mine = reactor.callLater(1.5, f, *args, **kw)
                theirs = ref.callLater(1.5, f, *args, **kw)
                self.assertEqual(_unid(repr(mine)), _unid(repr(theirs)))
                self.assertEqual(_unid(str(mine)), _unid(str(theirs)))
                self.assertIn("0x%x" % (id(mine),), repr(mine))
                for dc in (mine, theirs):
                    dc.time = 200
                    dc.cancel()
                self.assertEqual(_unid(repr(mine)), _unid(repr(theirs)))
        direct = self.delayedCallClass(
            101, _noop, (1,), {}, _noop, _noop, seconds=clock.seconds)
        twisted = base.DelayedCall(
            101, _noop, (1,), {}, _noop, _noop, seconds=clock.seconds)
        self.assertEqual(_unid(repr(direct)), _unid(repr(twisted)))

    def test_debugCreator(self):
        """
        With DelayedCall.debug, a call records the stack that created it as
        Twisted does (the same frames), and its repr and the log of its
        failure show it.
        """
        self.debugOn()
        clock = _Clock()
        reactor = self.buildReactor(clock)
        ref = self.reference(clock)
        mine, theirs = [_schedule(r, 1, _noop) for r in (reactor, ref)]
        self.assertEqual(mine.creator, theirs.creator)
        self.assertIn("in _schedule", mine.creator[-1])
        self.assertIn("test_debugCreator", "".join(mine.creator[-3:]))
        self.assertEqual(_unid(repr(mine)), _unid(repr(theirs)))
        mine.cancel()
        theirs.cancel()
        self.assertEqual(_unid(mine._repr), _unid(theirs._repr))
        self.assertEqual(_unid(repr(mine)), _unid(repr(theirs)))
        d1, d2 = [_construct(cls, 1, _noop, (), {}, _noop, _noop)
                  for cls in (self.delayedCallClass, base.DelayedCall)]
        self.assertEqual(d1.creator, d2.creator)
        # Twisted drops __init__'s caller's frame too.
        self.assertNotIn("in _construct", "".join(d1.creator))
        self.assertIn("test_debugCreator", "".join(d1.creator[-2:]))

        def boom():
            raise _Boom()

        reactor.callLater(1, boom)
        messages = []
        from twisted.python import log
        log.addObserver(messages.append)
        self.addCleanup(log.removeObserver, messages.append)
        clock.now += 1
        reactor.runUntilCurrent()
        self.assertEqual(len(self.flushLoggedErrors(_Boom)), 1)
        text = "".join("".join(m["message"]) for m in messages)
        self.assertIn("a DelayedCall created here", text)
        self.assertIn("test_debugCreator", text)

    def test_noDebug(self):
        """
        Without debug there is no creator and cancel() sets no _repr.
        """
        reactor = self.buildReactor(_Clock())
        dc = reactor.callLater(1, _noop)
        self.assertFalse(hasattr(dc, "creator"))
        dc.cancel()
        self.assertIsNone(dc._repr)

    def test_isDelayedCall(self):
        """
        A call is a base.DelayedCall providing IDelayedCall, hashable by
        identity, weakly referenceable, with a __dict__ for new attributes.
        """
        reactor = self.buildReactor(_Clock())
        dc = reactor.callLater(1, _noop)
        self.assertIsInstance(dc, base.DelayedCall)
        self.assertTrue(IDelayedCall.providedBy(dc))
        self.assertEqual({dc: 1}[dc], 1)
        self.assertEqual(hash(dc), hash(dc))
        ref = weakref.ref(dc)
        self.assertIs(ref(), dc)
        dc.extra = 5
        self.assertEqual(dc.__dict__["extra"], 5)
        dc.debug = False
        dc.cancel()
        self.assertEqual(reactor.getDelayedCalls(), [])
        reactor.runUntilCurrent()
        del dc
        gc.collect()
        self.assertIsNone(ref())

    def test_attributes(self):
        """
        The fields are plain attributes: set, read back, deleted.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        dc = reactor.callLater(1, _noop)
        self.assertEqual(dc.seconds, clock.seconds)
        self.assertEqual(dc.canceller, reactor._cancelCallLater)
        self.assertEqual(dc.resetter, reactor._moveCallLaterSooner)
        for name in ("time", "func", "args", "kw", "resetter", "canceller",
                     "seconds", "cancelled", "called", "delayed_time"):
            v = object()
            old = getattr(dc, name)
            setattr(dc, name, v)
            self.assertIs(getattr(dc, name), v)
            delattr(dc, name)
            self.assertFalse(hasattr(dc, name), name)
            setattr(dc, name, old)
        dc.cancel()

    def test_compare(self):
        """
        < and <= compare time (not delayed_time), with Twisted's calls too;
        == is identity.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        a = reactor.callLater(1, _noop)
        b = reactor.callLater(2, _noop)
        a.delay(5)
        tw = base.DelayedCall(101.5, _noop, (), {}, _noop, _noop)
        self.assertTrue(a < b and a <= b and b > a and b >= a)
        self.assertFalse(b < a or b <= a)
        self.assertTrue(a < tw < b and tw > a and b > tw)
        self.assertTrue(a <= a and not a < a)
        self.assertTrue(a == a and a != b and not a == b)
        self.assertNotEqual(a, tw)
        self.assertEqual(sorted([b, tw, a]), [a, tw, b])
        self.assertRaises(TypeError, lambda: a < 1)
        self.assertRaises(TypeError, lambda: a <= "x")

    def test_copy(self):
        """
        copy.copy and copy.deepcopy of a call give what Twisted's give: a
        new object of the same class with the same fields (and anything
        else set on it), not scheduled; the original is unchanged.
        """
        import copy

        clock = _Clock()
        reactor = self.buildReactor(clock)
        dc = reactor.callLater(1, _noop, 1, k=2)
        dc.delay(0.5)
        dc.extra = "x"
        names = ("time", "func", "args", "kw", "resetter", "canceller",
                 "seconds", "cancelled", "called", "delayed_time", "extra")
        c = copy.copy(dc)
        self.assertIs(type(c), type(dc))
        self.assertIsNot(c, dc)
        for name in names:
            self.assertIs(getattr(c, name), getattr(dc, name), name)
        self.assertEqual(c.getTime(), 101.5)
        self.assertTrue(c.active())
        self.assertEqual(reactor.getDelayedCalls(), [dc])
        # deepcopy copies the fields too (a call of a reactor cannot be:
        # its canceller's reactor holds an epoll object, in Twisted's too).
        made = _construct(self.delayedCallClass, 5, _noop, (1,), {"k": [2]},
                          _noop, _noop)
        made.extra = ["x"]
        d = copy.deepcopy(made)
        self.assertIs(type(d), type(made))
        self.assertEqual((d.time, d.args, d.kw, d.extra),
                         (5, (1,), {"k": [2]}, ["x"]))
        self.assertIsNot(d.kw["k"], made.kw["k"])
        self.assertIsNot(d.extra, made.extra)
        # A cancelled call (func, args and kw deleted) copies too.
        dc.cancel()
        c = copy.copy(dc)
        self.assertEqual(c.cancelled, 1)
        self.assertFalse(hasattr(c, "func") or hasattr(c, "kw"))
        self.assertFalse(c.active())

    def test_newTimedCallsReplaced(self):
        """
        callLater appends to whatever _newTimedCalls is now.
        """
        reactor = self.buildReactor(_Clock())
        reactor._newTimedCalls = []
        mine = reactor._newTimedCalls
        dc = reactor.callLater(1, _noop)
        self.assertEqual(mine, [dc])
        self.assertEqual(reactor.getDelayedCalls(), [dc])

    def test_timeout(self):
        """
        timeout() is the time to the earliest call (after inserting the new
        ones), as Twisted computes it.
        """
        clock = _Clock()
        reactor = self.buildReactor(clock)
        self.assertIsNone(reactor.timeout())
        reactor.callLater(5, _noop)
        reactor.callLater(2.5, _noop)
        self.assertEqual(reactor.timeout(), 2.5)
        clock.now += 10
        self.assertEqual(reactor.timeout(), 0)

    def test_run(self):
        """
        With the real clock and the real loop, calls run and stop it.
        """
        reactor = self.buildReactor()
        order = []
        reactor.callLater(0.02, order.append, "b")
        reactor.callLater(0.01, order.append, "a")
        dc = reactor.callLater(0.015, order.append, "x")
        reactor.callLater(0.005, dc.cancel)
        reactor.callLater(0.03, reactor.stop)
        guard = reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        guard.cancel()
        self.assertEqual(order, ["a", "b"])


class EPollReactorTimersTests(TimersMixin, SynchronousTestCase):
    reactorFactory = EPollReactor
    delayedCallClass = base.DelayedCall


class AMEReactorTimersTests(TimersMixin, SynchronousTestCase):
    reactorFactory = AMEReactor
    delayedCallClass = _ame.DelayedCall

    def test_inC(self):
        """
        AMEReactor's callLater and its calls' methods are the C ones.
        """
        reactor = self.buildReactor()
        dc = reactor.callLater(1, _noop)
        self.assertIs(type(dc), _ame.DelayedCall)
        self.assertIs(AMEReactor.callLater, _ame.Timers.callLater)
        self.assertIs(AMEReactor._cancelCallLater,
                      _ame.Timers._cancelCallLater)
        for name in ("cancel", "reset", "delay", "getTime", "active"):
            self.assertIs(getattr(type(dc), name),
                          getattr(_ame.DelayedCallBase, name))
        dc.cancel()


class _OnAMEDelayedCall:
    """
    Twisted's own DelayedCall tests (twisted.internet.test.test_base), run on
    ame's DelayedCall.
    """

    def setUp(self):
        self.patch(_tw_test_base, "DelayedCall", _ame.DelayedCall)
        # Trial's patch of DelayedCall.debug restores it as an attribute of
        # ame's class: take it away again, so that base.DelayedCall.debug
        # reaches ame's calls as before.
        self.addCleanup(self._undebug)
        super().setUp()

    def _undebug(self):
        if "debug" in _ame.DelayedCall.__dict__:
            del _ame.DelayedCall.debug


class TwistedDelayedCallNoDebugTests(
    _OnAMEDelayedCall, _tw_test_base.DelayedCallNoDebugTests
):
    pass


class TwistedDelayedCallDebugTests(
    _OnAMEDelayedCall, _tw_test_base.DelayedCallDebugTests
):
    pass
