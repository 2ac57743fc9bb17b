"""
ame.shared and ame.atomic (bindings/ame/shared.c, bindings/ame/shared.py):
the codec, the dict, counter, queue and channel protocols, transactions
(rolled back, run again, never half-applied, their reactor effects once),
several processes at once (os.fork after the first use of the heap, as
`ame run` forks its workers), a full heap, and the chat example end to end.
Helpers that need a reactor of their own per process are in shared_apps/.

Every test names its objects afresh (the heap lives as long as the test
process).  Run with Debian's python and the extension built::

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 -m twisted.trial tests/python/test_shared.py
"""

import collections
import enum
import json
import math
import os
import pickle
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import queue as stdqueue

from twisted.internet import error, protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import ame
import ame.shared as shared
from ame import _ame
from ame.reactor import AMEReactor

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "shared_apps")

# Under ThreadSanitizer's runtime, which make check's TSan pass preloads
# into python.
_TSAN = "libtsan" in os.environ.get("LD_PRELOAD", "")


def unrelatedOpens():
    """
    Skip a test whose processes, not forked from one another, open one
    named heap: the runtime of ThreadSanitizer keeps address ranges of its
    own and drops the heap's address hint (stm/src/heap.c, named_hint), so
    the address the first process got may be taken in the next.
    """
    if _TSAN:
        raise SkipTest("unrelated processes opening one named heap: "
                       "ThreadSanitizer drops the heap's address hint")


def fresh(what="t"):
    return "%s-%s" % (what, uuid.uuid4().hex[:12])


def in_child(fn, *args):
    """
    Fork; run fn(*args) in the child, which exits 0 if it returned and 1
    if it raised.  Return the child's pid.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_ok(testcase, pid):
    _, status = os.waitpid(pid, 0)
    testcase.assertEqual(status, 0, "child %d: status %#x" % (pid, status))


def python(code, env=None, timeout=60):
    """
    Run code in a new Debian python with this test's PYTHONPATH; return
    (returncode, stdout + stderr).
    """
    full = dict(os.environ)
    for k in ("AME_SHARED_HEAP", "AME_SHARED_SIZE"):
        full.pop(k, None)
    full.update(env or {})
    p = subprocess.run([sys.executable, "-c", code], env=full,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    return p.returncode, p.stdout.decode()


class _Boom(Exception):
    pass


# ---------------------------------------------------------------------------
# The codec.


class CodecTests(SynchronousTestCase):
    def test_roundTrip(self):
        """
        Every storable value reads back equal, of the same type.
        """
        d = shared.dict(fresh())
        values = [
            None, True, False, 0, 1, -1, 2**63 - 1, -2**63, 2**63, -2**63 - 1,
            2**200, -(2**200) + 7, 0.0, -0.0, 1.5, -1e300, math.inf,
            -math.inf, "", "a", "é", "\U0001f600", "\ud800 lone surrogate",
            b"", b"\x00\xff" * 100, "x" * 100000, (), [], {}, (1, "a", None),
            [1, [2, [3, (4, b"5")]]], {"a": 1, 2: [3], (4, 5): {"x": None}},
            {1: "int", 1.0: "float?"},  # one key in Python
            [True, 1, 1.0],
        ]
        for v in values:
            d["k"] = v
            back = d["k"]
            self.assertEqual(back, v)
            self.assertEqual(repr(back), repr(v))
        d["nan"] = math.nan
        self.assertTrue(math.isnan(d["nan"]))
        self.assertEqual(math.copysign(1, d.get("missing", -0.0)), -1)
        d["negzero"] = -0.0
        self.assertEqual(math.copysign(1, d["negzero"]), -1)

    def test_deepNesting(self):
        """
        100 levels of nesting are stored; 101 are a TypeError.
        """
        d = shared.dict(fresh())
        v = "leaf"
        for _ in range(100):
            v = [v]
        d["deep"] = v
        self.assertEqual(d["deep"], v)
        self.assertRaises(TypeError, d.__setitem__, "deeper", [v])
        loop = []
        loop.append(loop)
        self.assertRaises(TypeError, d.__setitem__, "loop", loop)
        self.assertNotIn("deeper", d)
        self.assertNotIn("loop", d)

    def test_encoding(self):
        """
        The documented encoding, byte for byte.
        """
        enc = _ame._shared_encode
        self.assertEqual(enc(None), b"\x00")
        self.assertEqual(enc(False), b"\x01")
        self.assertEqual(enc(True), b"\x02")
        self.assertEqual(enc(0), b"\x03\x00")
        self.assertEqual(enc(1), b"\x03\x02")
        self.assertEqual(enc(-1), b"\x03\x01")
        self.assertEqual(enc(300), b"\x03\xd8\x04")
        self.assertEqual(enc(2**64), b"\x04\x09" + b"\x00" * 8 + b"\x01")
        self.assertEqual(enc(1.0), b"\x05\x00\x00\x00\x00\x00\x00\xf0\x3f")
        self.assertEqual(enc("é"), b"\x06\x02\xc3\xa9")
        self.assertEqual(enc(b"ab"), b"\x07\x02ab")
        self.assertEqual(enc((1, "a")), b"\x08\x02\x03\x02\x06\x01a")
        self.assertEqual(enc([None]), b"\x09\x01\x00")
        self.assertEqual(enc({"a": 1}), b"\x0a\x01\x06\x01a\x03\x02")
        self.assertEqual(_ame._shared_decode(b"\x04\x09" + b"\x00" * 8 +
                                             b"\x01"), 2**64)

    def test_corruptRefused(self):
        """
        Bytes that are not a value are a ValueError, not a crash.
        """
        for bad in [b"", b"\x0b", b"\x06\x05ab", b"\x03", b"\x03\x80",
                    b"\x05\x00", b"\x08\x02\x00", b"\x0a\x01\x00",
                    b"\x03\x02\x00", b"\x09\xff\xff\xff\xff\x0f"]:
            self.assertRaises(ValueError, _ame._shared_decode, bad)

    def test_keysCompareEncoded(self):
        """
        1, 1.0 and True are three keys; so are 0.0 and -0.0.
        """
        d = shared.dict(fresh())
        d[1] = "int"
        d[1.0] = "float"
        d[True] = "bool"
        d[0.0] = "zero"
        d[-0.0] = "negative zero"
        d[(1, "a")] = "tuple"
        self.assertEqual(len(d), 6)
        self.assertEqual((d[1], d[1.0], d[True]), ("int", "float", "bool"))
        self.assertEqual((d[0.0], d[-0.0]), ("zero", "negative zero"))
        self.assertEqual(d[(1, "a")], "tuple")
        self.assertNotIn((1, "b"), d)

    def test_unstorable(self):
        """
        Anything else is a TypeError, raised before anything is written.
        """
        d = shared.dict(fresh())
        d["k"] = "old"
        for bad in [{1, 2}, frozenset(), object(), 1j, bytearray(b"x"),
                    memoryview(b"x"), [1, object()], {"a": {1}},
                    {frozenset(): 1}, type, len]:
            self.assertRaises(TypeError, d.__setitem__, "k", bad)
            self.assertRaises(TypeError, d.__setitem__, "new", bad)
            self.assertEqual(d["k"], "old")
            self.assertNotIn("new", d)
        for badkey in [[1], {}, (1, [2]), object(), {1}]:
            self.assertRaises(TypeError, d.__setitem__, badkey, 1)
            self.assertRaises(TypeError, d.__getitem__, badkey)
        # update: every pair is checked first; nothing is written.
        self.assertRaises(TypeError, d.update, {"a": 1, "b": object()})
        self.assertRaises(TypeError, d.update, [("a", 1), ([], 2)])
        self.assertRaises(TypeError, d.update, a=1, b={2})
        self.assertNotIn("a", d)
        self.assertEqual(len(d), 1)
        q = shared.queue(fresh())
        self.assertRaises(TypeError, q.put, object())
        self.assertEqual(len(q), 0)
        ch = shared.channel(fresh())
        seq = ch.seq
        self.assertRaises(TypeError, ch.publish, {1})
        self.assertEqual(ch.seq, seq)

    def test_subclassesStoredAsBase(self):
        """
        Subclasses of the storable types read back as the base type.
        """

        class Color(enum.IntEnum):
            RED = 1

        Point = collections.namedtuple("Point", "x y")

        class S(str):
            pass

        d = shared.dict(fresh())
        d["v"] = [Color.RED, Point(1, 2), collections.OrderedDict(a=1), S("s")]
        v = d["v"]
        self.assertEqual(v, [1, (1, 2), {"a": 1}, "s"])
        self.assertEqual([type(x) for x in v], [int, tuple, dict, str])
        d[Color.RED] = "key"
        self.assertEqual(d[1], "key")


# ---------------------------------------------------------------------------
# The dict.


class DictTests(SynchronousTestCase):
    def test_protocols(self):
        """
        The dict protocols behave as a plain dict's, over a random run of
        operations checked against one.
        """
        d = shared.dict(fresh())
        ref = {}
        rnd = random.Random(7)
        # (Not both 1 and True: one key in a dict, two in a shared one.)
        keys = ["a", "b", 1, 2.5, (1, 2), b"x", None, False, "c" * 300]
        for _ in range(3000):
            k = rnd.choice(keys)
            v = rnd.choice([1, "v", [1, 2], {"n": rnd.random()}, None])
            op = rnd.randrange(11)
            if op == 0:
                d[k] = v
                ref[k] = v
            elif op == 1:
                self.assertEqual(d.get(k), ref.get(k))
                self.assertEqual(d.get(k, "dflt"), ref.get(k, "dflt"))
            elif op == 2:
                if k in ref:
                    del d[k]
                    del ref[k]
                else:
                    self.assertRaises(KeyError, d.__delitem__, k)
            elif op == 3:
                self.assertEqual(d.setdefault(k, v), ref.setdefault(k, v))
            elif op == 4:
                self.assertEqual(d.pop(k, "gone"), ref.pop(k, "gone"))
            elif op == 5:
                self.assertEqual(k in d, k in ref)
            elif op == 6:
                if k in ref:
                    self.assertEqual(d[k], ref[k])
                else:
                    self.assertRaises(KeyError, d.__getitem__, k)
            elif op == 7:
                upd = {rnd.choice(keys): v, rnd.choice(keys): 2}
                d.update(upd)
                ref.update(upd)
            elif op == 8:
                self.assertEqual(len(d), len(ref))
            elif op == 9 and rnd.random() < 0.05:
                d.clear()
                ref.clear()
            elif op == 10:
                self.assertEqual(d.copy(), ref)
        self.assertEqual(dict(d.items()), ref)
        self.assertEqual(sorted(map(repr, d.keys())), sorted(map(repr, ref)))
        self.assertEqual(sorted(map(repr, d.values())),
                         sorted(map(repr, ref.values())))
        self.assertEqual(sorted(map(repr, d)), sorted(map(repr, ref)))
        self.assertEqual(bool(d), bool(ref))

    def test_updateFromCodeThatWrites(self):
        """
        update() of pairs whose producing writes to shared objects (a
        generator, a mapping's items()) applies the pairs it was given and
        those writes, each once.  (It encoded the pairs into the thread's
        buffer for values going in, which those writes reuse: the child
        that runs it died with SIGSEGV.)
        """
        d = shared.dict(fresh())
        e = shared.dict(fresh())

        def pairs():
            for k in ["a", "b"]:
                e[k] = "seen " * 40
                yield k, k * 3

        class Mapping:
            def keys(self):
                return ["c"]

            def items(self):
                e["c"] = list(range(50))
                return [("c", 3)]

        def child():
            d.update(pairs(), z=[1] * 30)
            d.update(Mapping())
        wait_ok(self, in_child(child))
        self.assertEqual(d.copy(), {"a": "aaa", "b": "bbb", "c": 3,
                                    "z": [1] * 30})
        self.assertEqual(e.copy(), {"a": "seen " * 40, "b": "seen " * 40,
                                    "c": list(range(50))})

    def test_methods(self):
        """
        The methods' details: KeyError's key, pop without a default,
        popitem, update's forms.
        """
        d = shared.dict(fresh())
        with self.assertRaises(KeyError) as e:
            d[(1, 2)]
        self.assertEqual(e.exception.args, ((1, 2),))
        self.assertRaises(KeyError, d.pop, "x")
        self.assertRaises(KeyError, d.popitem)
        d.update({"a": 1}, b=2)
        d.update([("c", 3)])
        d.update(shared.dict(fresh()))  # an empty shared dict
        other = shared.dict(fresh())
        other["d"] = 4
        d.update(other)
        self.assertEqual(d.copy(), {"a": 1, "b": 2, "c": 3, "d": 4})
        self.assertRaises(ValueError, d.update, [("a", 1, 2)])
        self.assertRaises(TypeError, d.update, 5)
        self.assertRaises(TypeError, d.get)
        self.assertRaises(TypeError, d.get, 1, 2, 3)
        seen = {}
        while d:
            k, v = d.popitem()
            seen[k] = v
        self.assertEqual(seen, {"a": 1, "b": 2, "c": 3, "d": 4})
        self.assertEqual(d.setdefault("s"), None)
        self.assertIn("s", d)
        self.assertIsNone(d["s"])

    def test_valueIsACopy(self):
        """
        A value read out is a copy: changing it changes nothing shared;
        setdefault returns the caller's object when it stores it.
        """
        d = shared.dict(fresh())
        d["l"] = [1, 2]
        v = d["l"]
        v.append(3)
        self.assertEqual(d["l"], [1, 2])
        self.assertIsNot(d["l"], d["l"])
        default = {"n": 1}
        self.assertIs(d.setdefault("m", default), default)
        default["n"] = 2
        self.assertEqual(d["m"], {"n": 1})
        items = d.items()
        items[0][1].clear() if isinstance(items[0][1], list) else None
        self.assertEqual(d["l"], [1, 2])

    def test_namesAndKinds(self):
        """
        One object per name; the same name as another kind is a clear
        TypeError; names are 1 to 255 bytes of UTF-8.
        """
        name = fresh()
        d = shared.dict(name)
        self.assertIs(shared.dict(name), d)
        self.assertEqual(d.name, name)
        self.assertEqual(repr(d), "<ame.shared.dict %r>" % name)
        for make, kind in [(shared.counter, "counter"),
                           (shared.queue, "queue"),
                           (shared.channel, "channel")]:
            with self.assertRaises(TypeError) as e:
                make(name)
            self.assertIn("is a dict, not a %s" % kind, str(e.exception))
        c = shared.counter(fresh())
        with self.assertRaises(TypeError) as e:
            shared.dict(c.name)
        self.assertIn("is a counter, not a dict", str(e.exception))
        self.assertRaises(ValueError, shared.dict, "")
        self.assertRaises(ValueError, shared.dict, "é" * 128)
        self.assertRaises(TypeError, shared.dict, b"bytes")
        self.assertRaises(TypeError, _ame.SharedDict)
        # Another process sees the same object by name.
        d["x"] = 1

        def child():
            assert shared.dict(name)["x"] == 1
            shared.dict(name)["y"] = 2

        wait_ok(self, in_child(child))
        self.assertEqual(d["y"], 2)

    def test_snapshotConsistent(self):
        """
        items() copies the dict in one transaction: while another thread
        moves amounts between keys atomically, every snapshot sums to the
        same total.
        """
        d = shared.dict(fresh())
        d.update({i: 100 for i in range(10)})
        stop = threading.Event()

        def move():
            rnd = random.Random(1)

            def step(a, b):
                d[a] = d[a] - 1
                d[b] = d[b] + 1

            while not stop.is_set():
                ame.atomic(step, rnd.randrange(10), rnd.randrange(10))

        t = threading.Thread(target=move)
        t.start()
        try:
            for _ in range(300):
                self.assertEqual(sum(v for _, v in d.items()), 1000)
                self.assertEqual(sum(d.values()), 1000)
        finally:
            stop.set()
            t.join()
        self.assertEqual(sum(d.values()), 1000)

    def test_threadsHaveTheirOwnSlots(self):
        """
        Each thread that uses the heap takes a slot and gives it back when
        it ends: more threads than the heap has slots can come and go.
        """
        d = shared.dict(fresh())
        slots = shared.stats()["heap"]["slots_max"]

        def use(i):
            d[i] = i

        for i in range(slots + 20):
            t = threading.Thread(target=use, args=(i,))
            t.start()
            t.join()
        self.assertEqual(len(d), slots + 20)


# ---------------------------------------------------------------------------
# Counters.


    def test_addMapping(self):
        """
        add(mapping) adds each count in one transaction, as a Counter
        would: to present keys and new ones, of every key type, across
        the boundary where a count no longer fits in a word (and back);
        a value that is not an int is a TypeError with nothing added.
        """
        d = shared.dict(fresh())
        ref = collections.Counter()
        big = 2 ** 60
        rounds = [{"a": 1, "é": 2, 7: 3, (1, "x"): 4, b"b": 5, "w" * 40: 6},
                  {"a": 10, "é": -2, "new": 1, 7: big, "w" * 40: 1},
                  {7: -big, "a": -11, "zz": 0},
                  {"é": 1, 7: 1}]
        for r in rounds:
            d.add(r)
            ref.update(r)
            self.assertEqual(d.copy(), dict(ref))
        d["s"] = "text"
        self.assertRaises(TypeError, d.add, {"a": 1, "s": 1})
        self.assertRaises(TypeError, d.add, {"a": 1, "q": "1"})
        ref["s"] = "text"
        self.assertEqual(d.copy(), dict(ref))

    def test_addKnownEntries(self):
        """
        add() keeps each key's entry in this process between calls; what
        removes entries (del, pop, clear, here or in another process) and
        an attempt that inserted a key and rolled back leave no stale one:
        every count stays exact.
        """
        d = shared.dict(fresh())
        ref = collections.Counter()

        def add(m):
            d.add(m)
            ref.update(m)

        add({"a": 1, "b": 2, 3: 4, b"c": 5})
        add({"a": 1, "b": 2, 3: 4, b"c": 5})
        del d["a"]
        del ref["a"]
        add({"a": 7, "b": 1})
        self.assertEqual(d.pop(3), 8)
        del ref[3]
        add({3: 1, "a": 1})
        d.clear()
        ref.clear()
        add({"a": 2, "b": 3})
        self.assertEqual(d.copy(), dict(ref))

        def rolled_back():
            d.add({"new": 1, "b": 1})
            d.add({"new": 1})   # finds the entry this attempt inserted
            raise _Boom()

        self.assertRaises(_Boom, ame.atomic, rolled_back)
        self.assertNotIn("new", d)
        add({"new": 5, "b": 1})
        add({"new": 1})
        d["b"] = 100            # set in place: the entry stays
        ref["b"] = 100
        add({"b": 1})
        self.assertEqual(d.copy(), dict(ref))

        def other(name):
            o = shared.dict(name)
            del o["new"]
            o.pop("a")
            o["new"] = 1
        wait_ok(self, in_child(other, d.name))
        del ref["a"]
        ref["new"] = 1
        add({"new": 2, "a": 1, "b": 1})
        self.assertEqual(d.copy(), dict(ref))

    def test_addMappingFailsWhole(self):
        """
        Inside ame.atomic, an add(mapping) that raises TypeError (a value
        that is not an int, a sum beyond 64 bits) has added nothing, to
        present keys or new ones, whether their entries were known from
        earlier adds or not; the block, which caught it, goes on and
        commits the rest.
        """
        d = shared.dict(fresh())
        d.add({"a": 1, "b": 2})
        d.add({"a": 1, "b": 2})   # their entries known to this process
        d["s"] = "text"
        d["m"] = 2 ** 63 - 1
        caught = []

        def block():
            d["before"] = 1
            for m in ({"new": 1, "a": 5, "s": 1, "b": 7, "z": 1},
                      {"x": 1, "m": 1, "a": 1},
                      {"q": 1, "a": 1, "s": 1},   # "q", "a" looked up
                      {"a": 1, "y": "1"}):
                try:
                    d.add(m)
                except TypeError as e:
                    caught.append(str(e))
            d["after"] = 1

        ame.atomic(block)
        self.assertEqual(len(caught), 4)
        self.assertEqual(d.copy(), {"a": 2, "b": 4, "s": "text",
                                    "m": 2 ** 63 - 1, "before": 1,
                                    "after": 1})

    def test_addEqualEncodings(self):
        """
        Two keys of one mapping that are one key in the shared dict (str
        subclasses that Python keeps apart) both add to it.
        """
        class Apart(str):
            __eq__ = object.__eq__
            __hash__ = object.__hash__

        d = shared.dict(fresh())
        d.add({"w": 1})
        d.add({Apart("w"): 2, Apart("w"): 3, Apart("v"): 1, Apart("v"): 1})
        self.assertEqual(d.copy(), {"w": 6, "v": 2})

    def test_addTo(self):
        """
        _add_to(total) adds every pair to total as total.get(k, 0) + v,
        Python's equality deciding which keys are one (1 and True are two
        keys in the shared dict, one in total).
        """
        d = shared.dict(fresh())
        d.update({"a": 2, 1: 3, "f": 0.5})
        d[True] = 4
        total = {"a": 1, "z": 9}
        d._add_to(total)
        self.assertEqual(total, {"a": 3, 1: 7, "f": 0.5, "z": 9})
        self.assertRaises(TypeError, d._add_to, [])


    def test_equality(self):
        """
        == and != as collections.abc.Mapping's: a shared dict equals any
        mapping (a plain dict, another shared dict, a UserDict, a mapping
        proxy) with the same items, from either side, and nothing else; it
        is unhashable, as dict is, and has no order.
        """
        import collections.abc
        import types

        d = shared.dict(fresh())
        self.assertTrue(d == {} and {} == d)
        d.update({"a": 1, "b": [2, 3]})
        same = {"a": 1, "b": [2, 3]}
        self.assertTrue(d == same and same == d)
        self.assertFalse(d != same or same != d)
        self.assertTrue(d != {"a": 1} and {"a": 1} != d)
        self.assertTrue(d != {"a": 1, "b": [2, 4]})
        self.assertEqual(d, collections.UserDict(same))
        self.assertEqual(collections.UserDict(same), d)
        self.assertEqual(d, types.MappingProxyType(same))
        e = shared.dict(fresh())
        self.assertNotEqual(d, e)
        e.update(same)
        self.assertTrue(d == e and not d != e)
        self.assertTrue(d == shared.dict(d.name))
        # Not a mapping: not equal (identity), as for a dict.
        self.assertNotEqual(d, [("a", 1), ("b", [2, 3])])
        self.assertNotEqual(d, None)
        self.assertRaises(TypeError, hash, d)
        self.assertRaises(TypeError, lambda: d < e)
        # Inside a block: the block's view.
        self.assertTrue(shared.atomic(
            lambda: (d.__setitem__("c", 3), d == dict(same, c=3))[1]))
        self.assertFalse(isinstance(d, collections.abc.Hashable))


class CountsTests(SynchronousTestCase):
    def test_lanesSum(self):
        """
        Threads add to lanes of their own; a count, copy() and items() are
        sums over the lanes, keys in several lanes once.
        """
        t = shared.counts(fresh())
        words = ["w%d" % i for i in range(50)]
        ref = collections.Counter()

        def adder(k):
            for i in range(20):
                t.update(collections.Counter(words[(k * 7 + i) % 50:][:10]))

        threads = [threading.Thread(target=adder, args=(k,))
                   for k in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for k in range(3):
            for i in range(20):
                ref.update(words[(k * 7 + i) % 50:][:10])
        self.assertEqual(t.copy(), ref)
        self.assertIsInstance(t.copy(), collections.Counter)
        self.assertEqual(sorted(t.items()), sorted(ref.items()))
        self.assertEqual(t["w3"], ref["w3"])
        self.assertEqual(len(t), len(ref))

    def test_equality(self):
        """
        == as collections.Counter's: a tally equals another tally or a
        Counter with the same counts (a key counted 0 is as one missing),
        and any other mapping with the same items, as dicts compare; it
        is unhashable, as Counter is.
        """
        t = shared.counts(fresh())
        self.assertTrue(t == collections.Counter() and t == {})
        t.update({"a": 2, "b": 1})
        self.assertTrue(t == collections.Counter(a=2, b=1))
        self.assertTrue(collections.Counter(a=2, b=1) == t)
        self.assertTrue(t == {"a": 2, "b": 1} and {"a": 2, "b": 1} == t)
        self.assertTrue(t != {"a": 2} and t != collections.Counter(a=2))
        t.add("c", 0)
        self.assertEqual(t, collections.Counter(a=2, b=1))
        u = shared.counts(fresh())
        self.assertNotEqual(t, u)
        u.update({"a": 2, "b": 1})
        self.assertTrue(t == u and not t != u)
        self.assertNotEqual(t, [("a", 2), ("b", 1)])
        self.assertRaises(TypeError, hash, t)

    def test_augmentedAssignmentAdds(self):
        """
        C{c[key] += n} is a read, then a write; the write adds n, so an
        add another participant made in between is kept (the sum was
        set: that add was lost, and two processes doing C{c["w"] += 1}
        3,000 times each ended near 4,200).  The statement's two halves
        with another thread's add between them, then the statement itself
        from two processes.  C{c[key] = n} still sets, and a count read
        out is an int.
        """
        t = shared.counts(fresh())
        t["w"] += 1
        t["w"] += 4
        t["w"] -= 2
        self.assertEqual(t["w"], 3)
        v = t["w"]                      # c["w"] += 10, first half
        th = threading.Thread(target=t.add, args=("w", 100))
        th.start()
        th.join()
        t["w"] = v + 10                 # ... second half
        self.assertEqual(t["w"], 113)
        t["x"] = t["w"] + 1             # another key: set
        self.assertEqual(t["x"], 114)
        t["w"] = 7                      # a plain int: set
        self.assertEqual((t["w"], dict(t.items())), (7, {"w": 7, "x": 114}))
        self.assertEqual(type(pickle.loads(pickle.dumps(t["w"]))), int)
        self.assertEqual(json.dumps([t["w"]]), "[7]")

        def child():
            c = shared.counts(t.name)
            for i in range(300):
                c["n"] += 1
        pids = [in_child(child) for _ in range(2)]
        for pid in pids:
            wait_ok(self, pid)
        self.assertEqual(t["n"], 600)

    def test_equalCountsInTwoLanes(self):
        """
        A key with the same count in two lanes counts twice, small ints
        (one object in CPython) and big ones alike, and a key in one lane
        once.
        """
        t = shared.counts(fresh())
        counts = {"small": 5, "big": 10**12, "one": 1}
        t.update(counts)
        th = threading.Thread(target=t.update, args=({"small": 5,
                                                     "big": 10**12},))
        th.start()
        th.join()
        self.assertEqual(dict(t.items()),
                         {"small": 10, "big": 2 * 10**12, "one": 1})
        self.assertEqual(t.copy(), collections.Counter(
            {"small": 10, "big": 2 * 10**12, "one": 1}))


class CounterTests(SynchronousTestCase):
    def test_counter(self):
        c = shared.counter(fresh())
        self.assertEqual(c.value, 0)
        c += 5
        c -= 2
        c.add()
        c.add(10)
        self.assertEqual(int(c), 14)
        self.assertEqual(c.value, 14)
        self.assertEqual([0, 1, 2][c.value - 13], 1)
        self.assertEqual(range(20)[c], 14)  # __index__
        c.value = -7
        self.assertEqual(c.value, -7)
        self.assertRaises(TypeError, c.add, "1")
        self.assertRaises(OverflowError, c.add, 2**63)
        with self.assertRaises(OverflowError):
            c += 2**64
        self.assertEqual(c.value, -7)
        self.assertEqual(repr(c), "<ame.shared.counter %r>" % c.name)
        self.assertIs(shared.counter(c.name), c)

    def test_addsFromProcesses(self):
        """
        Adds from several processes all count.
        """
        c = shared.counter(fresh())
        n, each = 4, 3000

        def child():
            for _ in range(each):
                c.add(1)

        pids = [in_child(child) for _ in range(n)]
        for pid in pids:
            wait_ok(self, pid)
        self.assertEqual(c.value, n * each)


# ---------------------------------------------------------------------------
# Queues.


class QueueTests(SynchronousTestCase):
    def test_fifo(self):
        q = shared.queue(fresh())
        self.assertTrue(q.empty())
        for i in range(100):
            q.put({"i": i})
        self.assertEqual(len(q), 100)
        self.assertEqual(q.qsize(), 100)
        self.assertEqual([q.get()["i"] for _ in range(50)], list(range(50)))
        self.assertEqual([q.get_nowait()["i"] for _ in range(50)],
                         list(range(50, 100)))
        self.assertRaises(stdqueue.Empty, q.get_nowait)
        self.assertRaises(stdqueue.Empty, q.get, False)
        self.assertRaises(stdqueue.Empty, q.get, timeout=0.01)
        self.assertRaises(ValueError, q.get, timeout=-1)
        v = [1]
        q.put(v)
        v.append(2)
        self.assertEqual(q.get(), [1])

    def test_blockingGetFromThread(self):
        """
        A blocking get() waits until another thread puts.
        """
        q = shared.queue(fresh())
        got = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
        t.start()
        q.put("x")
        t.join()
        self.assertEqual(got, ["x"])

    def test_blockingGetAcrossProcesses(self):
        """
        A blocking get() is woken by a put from another process (and the
        other way round); every value is taken once.
        """
        requests, replies = shared.queue(fresh()), shared.queue(fresh())

        def child():
            for _ in range(200):
                n = requests.get(timeout=30)
                replies.put(n * 2)

        pid = in_child(child)
        for i in range(200):
            requests.put(i)
            self.assertEqual(replies.get(timeout=30), 2 * i)
        wait_ok(self, pid)
        self.assertEqual(len(requests) + len(replies), 0)

    def test_consumersTakeEachOnce(self):
        """
        Several consuming processes take every value exactly once.
        """
        q, out = shared.queue(fresh()), shared.queue(fresh())
        n, total = 3, 600

        def child():
            while True:
                v = q.get(timeout=30)
                if v is None:
                    return
                out.put(v)

        pids = [in_child(child) for _ in range(n)]
        for i in range(total):
            q.put(i)
        for _ in range(n):
            q.put(None)
        for pid in pids:
            wait_ok(self, pid)
        got = sorted(out.get_nowait() for _ in range(total))
        self.assertEqual(got, list(range(total)))
        self.assertRaises(stdqueue.Empty, out.get_nowait)

    def test_getDeferred(self):
        """
        get_deferred fires in the reactor, woken by another process's put
        (no thread waits), in the order asked for; one that has a value
        now fires at once; a cancelled one takes nothing.
        """
        q = shared.queue(fresh())
        q.put("ready")
        reactor = AMEReactor()
        got = []
        first = q.get_deferred(reactor)
        first.addCallback(got.append)
        self.assertEqual(got, ["ready"])
        d1 = q.get_deferred(reactor)
        d2 = q.get_deferred(reactor)
        d3 = q.get_deferred(reactor)
        d1.addCallback(got.append)
        d2.addErrback(lambda f: got.append("cancelled"))
        d3.addCallback(got.append)
        d2.cancel()
        d3.addCallback(lambda _: reactor.stop())

        def child():
            q.put("one")
            q.put("two")

        pid = None

        def start():
            nonlocal pid
            pid = in_child(child)

        reactor.callWhenRunning(start)
        timeout = reactor.callLater(30, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timeout.active(), "timed out")
        timeout.cancel()
        wait_ok(self, pid)
        self.assertEqual(got, ["ready", "cancelled", "one", "two"])
        self.assertEqual(len(q), 0)
        reactor.removeAll()

    def test_getDeferredAskedInCallback(self):
        """
        A get_deferred asked for in the callback of one that fired keeps
        waiting after that callback, even when the queue's waiting list
        was emptied and made anew meanwhile (here: one cancelled, one
        asked).  (The reactor's service of the queue, on its way out,
        dropped the list it found, the new one, and the queue's watch:
        the new Deferred never fired.  defer()'s pool hung so under load,
        a result arriving between a take and its watch.)
        """
        q = shared.queue(fresh())
        reactor = AMEReactor()
        got = []

        def first(v):
            got.append(v)
            d2 = q.get_deferred(reactor)
            d2.addErrback(lambda f: got.append("cancelled"))
            d2.cancel()
            d3 = q.get_deferred(reactor)
            d3.addCallback(got.append)
            d3.addCallback(lambda _: reactor.stop())
            reactor.callLater(0.01, q.put, "two")

        q.get_deferred(reactor).addCallback(first)
        reactor.callWhenRunning(q.put, "one")
        timeout = reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timeout.active(), "timed out")
        timeout.cancel()
        self.assertEqual(got, ["one", "cancelled", "two"])
        self.assertEqual(len(q), 0)
        reactor.removeAll()

    def test_getDeferredAfterWaitingOnes(self):
        """
        A get_deferred asked for while earlier ones of this process wait
        on the queue takes nothing ahead of them, even when a value is
        there before the reactor has served them: Deferreds of one
        process fire in the order they were asked for.  (It took the
        value at once, and fired before them.)
        """
        q = shared.queue(fresh())
        reactor = AMEReactor()
        got = []

        def fired(name, v):
            got.append((name, v))
            if len(got) == 2:
                reactor.stop()

        q.get_deferred(reactor).addCallback(lambda v: fired("d1", v))
        q.put("a")          # before the reactor has run: d1 still waits
        q.get_deferred(reactor).addCallback(lambda v: fired("d2", v))
        reactor.callWhenRunning(q.put, "b")
        timeout = reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timeout.active(), "timed out")
        timeout.cancel()
        self.assertEqual(got, [("d1", "a"), ("d2", "b")])
        reactor.removeAll()

    def test_getInRunningReactorRefused(self):
        """
        A get() that would block the running reactor's thread raises; one
        that finds a value does not.
        """
        code = """
import ame.reactor
ame.reactor.install()
from twisted.internet import reactor
import ame.shared
q = ame.shared.queue("q")
out = []
def run():
    q.put(1)
    out.append(q.get())
    try:
        q.get()
    except RuntimeError as e:
        out.append("refused: " + str(e))
    reactor.stop()
reactor.callWhenRunning(run)
reactor.run()
print(out)
"""
        rc, out = python(code)
        self.assertEqual(rc, 0, out)
        self.assertIn("[1, \"refused: ame.shared: a blocking get()", out)


# ---------------------------------------------------------------------------
# ame.atomic.


class AtomicTests(SynchronousTestCase):
    def test_result(self):
        d = shared.dict(fresh())

        def f(a, b, c=0):
            d["sum"] = a + b + c
            return d["sum"]

        self.assertEqual(ame.atomic(f, 1, 2, c=3), 6)
        self.assertEqual(shared.atomic(f, 1, 2), 3)
        self.assertIs(ame.atomic, shared.atomic)

        @ame.atomically
        def g(x):
            d["g"] = x
            return shared.in_atomic()

        self.assertTrue(g(5))
        self.assertFalse(shared.in_atomic())
        self.assertEqual(d["g"], 5)
        self.assertEqual(g.__name__, "g")
        self.assertRaises(TypeError, ame.atomic)

    def test_exceptionRollsBack(self):
        """
        An exception from fn rolls every write back (dict, counter, queue,
        channel) and propagates.
        """
        d, c = shared.dict(fresh()), shared.counter(fresh())
        q, ch = shared.queue(fresh()), shared.channel(fresh())
        d["k"] = "before"
        seq = ch.seq

        def f():
            d["k"] = "after"
            d["new"] = 1
            del d["k"]
            c.add(5)
            q.put(1)
            ch.publish("m")
            d.clear()
            raise _Boom()

        self.assertRaises(_Boom, ame.atomic, f)
        self.assertEqual(d.copy(), {"k": "before"})
        self.assertEqual((c.value, len(q), ch.seq), (0, 0, seq))

    def test_openRolledBackNotKept(self):
        """
        Objects first opened (created) by an attempt that rolls back are
        not kept: opened again, a dict, a counter and a tally's lane have
        storage of their own, not blocks the rollback freed and a later
        object took.
        """
        names = [fresh("gone") for _ in range(3)]

        def f():
            shared.dict(names[0])["a"] = 1
            shared.counter(names[1]).add(7)
            shared.counts(names[2]).add("w", 3)
            raise _Boom()

        self.assertRaises(_Boom, ame.atomic, f)
        # New objects, which may take the blocks freed by the rollback.
        others = [shared.dict(fresh()), shared.counter(fresh()),
                  shared.counts(fresh())]
        others[0]["other"] = "o"
        others[1].add(100)
        others[2].add("other", 5)
        d, c, t = (shared.dict(names[0]), shared.counter(names[1]),
                   shared.counts(names[2]))
        self.assertEqual((d.copy(), c.value, t.copy()), ({}, 0, {}))
        d["b"] = 2
        c.add(1)
        t.add("w", 1)
        self.assertEqual((d.copy(), c.value, dict(t.copy())),
                         ({"b": 2}, 1, {"w": 1}))
        self.assertEqual((others[0].copy(), others[1].value,
                          dict(others[2].copy())),
                         ({"other": "o"}, 100, {"other": 5}))

    def test_nestedJoinsOuter(self):
        """
        An inner ame.atomic joins the outer one: an exception caught
        between them undoes nothing; one leaving the outer undoes all.
        """
        d = shared.dict(fresh())

        def inner():
            d["inner"] = 1
            raise _Boom()

        def outer(fail):
            d["outer"] = 1
            try:
                ame.atomic(inner)
            except _Boom:
                pass
            self.assertTrue(shared.in_atomic())
            if fail:
                raise ValueError()

        ame.atomic(outer, False)
        self.assertEqual(d.copy(), {"outer": 1, "inner": 1})
        d.clear()
        self.assertRaises(ValueError, ame.atomic, outer, True)
        self.assertEqual(d.copy(), {})

    def test_abortRunsAgain(self):
        """
        An attempt that aborts is rolled back and fn runs again; its
        after_commit calls never run, the committed attempt's run once, in
        order, after the commit.
        """
        d = shared.dict(fresh())
        runs, calls = [], []

        def f():
            runs.append(1)
            n = len(runs)
            d["n"] = n
            shared.after_commit(calls.append, ("first", n))
            shared.after_commit(calls.append, n=None) if False else None
            shared.after_commit(lambda **kw: calls.append(kw), n=n)
            if n < 3:
                _ame._shared_abort()
            calls.append("not yet")  # before the commit
            return n

        self.assertEqual(ame.atomic(f), 3)
        self.assertEqual(d["n"], 3)
        self.assertEqual(calls, ["not yet", ("first", 3), {"n": 3}])
        self.assertEqual(len(runs), 3)

    def test_createdInRolledBackAttempt(self):
        """
        An object that an attempt creates is rolled back with it: the next
        attempt's open makes it anew (not a handle on freed blocks), the
        rolled-back attempt's handle refuses to be used (RuntimeError),
        and what the committed attempt wrote is there for a process that
        opens the name afterwards.
        """
        name = fresh()
        handles = []

        def f():
            d = shared.dict(name)
            c = shared.counter(name + ".c")
            handles.append((d, c))
            d["k"] = len(handles)
            c.add(len(handles))
            if len(handles) < 3:
                _ame._shared_abort()
            return d["k"]

        self.assertEqual(ame.atomic(f), 3)
        (d1, c1), (d2, c2), (d3, c3) = handles
        self.assertIsNot(d1, d3)
        self.assertIsNot(c2, c3)
        for h in (d1, c1, d2, c2):
            # (Not `h in (d1, d2)`: == on a shared dict reads it.)
            e = self.assertRaises(RuntimeError, (lambda c: c.value)
                                  if h in (c1, c2) else len, h)
            self.assertIn("rolled back", str(e))
        self.assertEqual(d3["k"], 3)
        self.assertIs(shared.dict(name), d3)
        self.assertIs(shared.counter(name + ".c"), c3)

        def child():
            assert shared.dict(name).copy() == {"k": 3}, \
                shared.dict(name).copy()
            assert shared.counter(name + ".c").value == 3

        wait_ok(self, in_child(child))

    def test_createdInAttemptThatRaises(self):
        """
        An attempt that creates an object and then raises leaves nothing:
        its handle refuses to be used, and a later open makes the object
        afresh, empty.
        """
        name = fresh()
        held = []

        def f():
            held.append(shared.dict(name))
            held[0]["x"] = 1
            raise _Boom()

        self.assertRaises(_Boom, ame.atomic, f)
        self.assertRaises(RuntimeError, len, held[0])
        d = shared.dict(name)
        self.assertIsNot(d, held[0])
        self.assertEqual(d.copy(), {})

    def test_createConflictsAcrossProcesses(self):
        """
        Processes that create the same objects inside conflicting atomic
        blocks (as the first tasks of ame.tasks workers do) lose nothing:
        every increment is counted once and no process crashes.
        """
        name = fresh()
        n = 300

        def child(w):
            def body(i):
                shared.counter(name + ".total").add(1)
                shared.dict(name + ".seen")[(w, i)] = i
                shared.counts(name + ".tally").update({"w": 1, "k%d" % (i % 7): 1})
            for i in range(n):
                ame.atomic(body, i)

        pids = [in_child(child, w) for w in range(3)]
        for pid in pids:
            wait_ok(self, pid)
        self.assertEqual(shared.counter(name + ".total").value, 3 * n)
        self.assertEqual(len(shared.dict(name + ".seen")), 3 * n)
        self.assertEqual(shared.counts(name + ".tally")["w"], 3 * n)

    def test_conflictCaughtByUserStillReruns(self):
        """
        _Conflict is a BaseException; a block that catches it anyway (bare
        except) still runs again: every later operation of the dead
        attempt raises it too, and its result is not used.
        """
        d = shared.dict(fresh())
        runs = []

        def f():
            runs.append(1)
            try:
                if len(runs) == 1:
                    _ame._shared_abort()
            except BaseException:
                pass
            try:
                d["x"] = len(runs)
            except BaseException:
                pass
            return len(runs)

        self.assertEqual(ame.atomic(f), 2)
        self.assertEqual(d["x"], 2)
        self.assertTrue(issubclass(shared._Conflict, BaseException))
        self.assertFalse(issubclass(shared._Conflict, Exception))

    def test_afterCommitErrors(self):
        """
        Every call queued runs; the first error is raised by atomic (the
        transaction stays committed), outside atomic after_commit calls
        at once.
        """
        d = shared.dict(fresh())
        ran = []

        def bad():
            raise _Boom()

        def f():
            d["x"] = 1
            shared.after_commit(bad)
            shared.after_commit(ran.append, 2)

        self.assertRaises(_Boom, ame.atomic, f)
        self.assertEqual(ran, [2])
        self.assertEqual(d["x"], 1)
        self.assertEqual(shared.after_commit(lambda: 7), 7)

    def test_realConflictRunsAgain(self):
        """
        Another process commits a write to a key this block read: the
        block runs again and its result builds on the other write; the
        conflict report names the key.
        """
        d = shared.dict(fresh())
        d["k"] = 0
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()

        def child():
            os.read(go_r, 1)
            d["k"] = 100
            os.write(done_w, b"!")

        pid = in_child(child)
        runs = []

        def f():
            runs.append(1)
            v = d["k"]
            if len(runs) == 1:
                os.write(go_w, b"!")
                os.read(done_r, 1)
            d["k"] = v + 1

        ame.atomic(f)
        wait_ok(self, pid)
        for fd in (go_r, go_w, done_r, done_w):
            os.close(fd)
        self.assertEqual(d["k"], 101)
        self.assertEqual(len(runs), 2)
        rows = [r for r in shared.stats()["conflicts"]
                if r["object"] == d.name]
        self.assertEqual(rows, [{"object": d.name, "kind": "dict",
                                 "key": "k", "aborts": 1}])

    def test_processesSerialise(self):
        """
        Conflicting read-modify-write blocks from several processes at once
        serialise: a count that each of 3 processes increments 100,000
        times ends at exactly 300,000.
        """
        d, c = shared.dict(fresh()), shared.counter(fresh())
        d["n"] = 0
        n, each = 3, 100000

        def bump():
            d["n"] = d["n"] + 1
            c.add(1)

        def child():
            for _ in range(each):
                ame.atomic(bump)

        before = shared.stats()
        pids = [in_child(child) for _ in range(n)]
        for pid in pids:
            wait_ok(self, pid)
        after = shared.stats()
        self.assertEqual(d["n"], n * each)
        self.assertEqual(c.value, n * each)
        self.assertGreaterEqual(after["commits"] - before["commits"],
                                n * each)

    def test_threadsSerialise(self):
        """
        The same from threads of this process (each with its own slot;
        the GIL is released while a transaction may wait).
        """
        d = shared.dict(fresh())
        d["n"] = 0

        def bump():
            d["n"] = d["n"] + 1

        def work():
            for _ in range(1500):
                ame.atomic(bump)

        ts = [threading.Thread(target=work) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(d["n"], 4500)

    def recordWaits(self, what):
        """
        Wrap ame.atomic's wait for a queue (shared._wait) for this test:
        each wait appends what(timeout, seen) to the list returned.
        """
        calls = []
        original = shared._wait

        def wait(queue, timeout, seen=0):
            calls.append(what(timeout, seen))
            return original(queue, timeout, seen)

        _ame._shared_set_hooks(shared._notify, wait)
        self.addCleanup(_ame._shared_set_hooks, shared._notify, original)
        return calls

    def test_blockingGetDeadline(self):
        """
        Inside atomic, get(timeout=T) waits T in all, counted from the
        first time the block waited there, across the attempts it takes:
        the block waits, a value arrives after 0.6 s and is taken by
        another thread before the rerun's get, which waits again: for what
        is left of T (it waited a full T again), then raises Empty.  Each
        of two gets in a block has a timeout of its own.
        """
        T = 1.0
        q = shared.queue(fresh())
        waits = self.recordWaits(lambda timeout, seen: timeout)
        runs = []

        def steal():
            self.assertEqual(q.get_nowait(), "v")

        def f():
            runs.append(1)
            if len(runs) == 2:  # the value came: another thread takes it
                th = threading.Thread(target=steal)
                th.start()
                th.join()
            return q.get(timeout=T)

        timer = threading.Timer(0.6, q.put, ("v",))
        timer.start()
        t0 = time.monotonic()
        self.assertRaises(stdqueue.Empty, ame.atomic, f)
        took = time.monotonic() - t0
        timer.join()
        self.assertEqual(len(runs), 3)
        self.assertEqual(len(waits), 2, waits)
        self.assertEqual(waits[0], T)
        self.assertLessEqual(waits[1], T - 0.5, waits)
        self.assertLess(took, T + 0.5)

        # Two gets: the second's T starts at its own first wait, not the
        # first get's.
        del waits[:], runs[:]
        q2 = shared.queue(fresh())

        def g():
            runs.append(1)
            return q.get(timeout=0.3), q2.get(timeout=0.3)

        timer = threading.Timer(0.2, q.put, ("a",))
        timer.start()
        self.assertRaises(stdqueue.Empty, ame.atomic, g)
        timer.join()
        self.assertEqual(len(waits), 2, waits)
        self.assertEqual(waits[0], 0.3)
        self.assertGreater(waits[1], 0.25, waits)
        self.assertEqual(q.get_nowait(), "a")  # rolled back: still there

    def test_blockingGetWaitsForMore(self):
        """
        Inside atomic, a block that needs more values than the queue holds
        waits until there are more than its attempt took (less what it
        put there), not until the queue has any: the rollback puts back
        what it took, and it does not run again until a value arrives.  It
        runs twice, before the wait and after.
        """
        q = shared.queue(fresh())
        seens = self.recordWaits(lambda timeout, seen: seen)
        runs = []

        def f():
            runs.append(1)
            return q.get(), q.get()

        def later():
            while not q._watchers()[1]:  # the block waits
                time.sleep(0.001)
            q.put("b")

        q.put("a")
        th = threading.Thread(target=later)
        th.start()
        self.assertEqual(ame.atomic(f), ("a", "b"))
        th.join()
        self.assertEqual((len(runs), seens), (2, [1]))

        # Its own puts count: it took "a" and "x", put "x", and waits for
        # a second value; none comes, and the rerun raises Empty.
        del runs[:], seens[:]

        def g():
            runs.append(1)
            q.put("x")
            return q.get(timeout=0.2), q.get(timeout=0.2), q.get(timeout=0.2)

        q.put("a")
        self.assertRaises(stdqueue.Empty, ame.atomic, g)
        self.assertEqual((len(runs), seens), (2, [1]))
        self.assertEqual(q.get_nowait(), "a")  # rolled back
        self.assertEqual(len(q), 0)

    def test_blockingGetRetries(self):
        """
        Inside atomic, get() on an empty queue ends the attempt and runs
        the block again once a value arrives; with a timeout that passes,
        it raises queue.Empty in the last run.
        """
        q, d = shared.queue(fresh()), shared.dict(fresh())
        runs = []

        def f():
            runs.append(1)
            d["tries"] = len(runs)
            return q.get()

        def child():
            # The block waits (watches the queue) before this puts.
            while not q._watchers()[1]:
                time.sleep(0.001)
            q.put("late")

        pid = in_child(child)
        self.assertEqual(ame.atomic(f), "late")
        wait_ok(self, pid)
        self.assertGreaterEqual(len(runs), 2)
        self.assertEqual(d["tries"], len(runs))

        def g():
            return q.get(timeout=0.01)

        self.assertRaises(stdqueue.Empty, ame.atomic, g)

    def test_capacity(self):
        """
        A transaction larger than a write log is a MemoryError that says
        so, with nothing written.
        """
        d = shared.dict(fresh())

        def big():
            for i in range(60000):
                d[i] = i

        with self.assertRaises(MemoryError) as e:
            ame.atomic(big)
        self.assertIn("split it", str(e.exception))
        self.assertEqual(len(d), 0)


# ---------------------------------------------------------------------------
# Reactor calls inside atomic.


class _Atomic(protocol.Protocol):
    """
    On each line: run a block that writes and schedules, aborting its
    first attempt; the client must see the second attempt's effects once.
    """

    def dataReceived(self, data):
        runs = []
        reactor = self.factory.reactor

        def f():
            runs.append(1)
            tag = b"%d" % len(runs)
            self.transport.write(b"w" + tag + b";")
            self.transport.writeSequence([b"s", tag, b";"])
            reactor.callLater(0, self.transport.write, b"later" + tag + b";")
            gone = reactor.callLater(0, self.transport.write, b"cancelled;")
            gone.cancel()
            if data.startswith(b"close"):
                self.transport.loseConnection()
            if len(runs) == 1:
                _ame._shared_abort()

        ame.atomic(f)


class DeferredEffectsTests(SynchronousTestCase):
    def test_writesOnceAfterCommit(self):
        """
        transport.write, writeSequence, callLater and loseConnection inside
        atomic happen once, from the committed attempt, never from the
        aborted one.
        """
        reactor = AMEReactor()
        factory = protocol.ServerFactory.forProtocol(_Atomic)
        factory.reactor = reactor
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        got = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                self.buf = b""
                self.transport.write(b"go")

            def dataReceived(self, data):
                self.buf += data
                if self.buf.endswith(b"later2;") and b"close" not in self.buf:
                    self.buf += b"|close"
                    self.transport.write(b"close")

            def connectionLost(self, reason):
                got.append(self.buf)
                reactor.stop()

        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           protocol.ClientFactory.forProtocol(Client))
        timeout = reactor.callLater(30, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timeout.active(), "timed out")
        timeout.cancel()
        port.stopListening()
        # The second line's block closes the connection after its writes;
        # its callLater's write comes in before the close completes.
        self.assertEqual(got, [b"w2;s2;later2;|closew2;s2;later2;"])
        reactor.removeAll()

    def test_stopNotRunning(self):
        """
        reactor.stop() inside atomic raises ReactorNotRunning in the block,
        as EPollReactor raises it at the call, when the reactor is not
        running, and when this block already stopped it: the block's
        writes roll back.  (It raised out of ame.atomic after the commit,
        with the writes kept.)  A block that stops a running reactor once
        commits, and the reactor stops after the commit; an attempt rolled
        back leaves no stop behind.
        """
        reactor = AMEReactor()
        d = shared.dict(fresh())

        def block(key, stops):
            d[key] = 1
            for _ in range(stops):
                reactor.stop()

        self.assertRaises(error.ReactorNotRunning, ame.atomic, block, "a", 1)
        self.assertNotIn("a", d)
        ran = []

        def inRunning():
            self.assertRaises(error.ReactorNotRunning, ame.atomic, block,
                              "b", 2)
            self.assertNotIn("b", d)
            attempts = []

            def rolledBackOnce():
                attempts.append(1)
                block("c", 1)
                if len(attempts) == 1:
                    _ame._shared_abort()

            ame.atomic(rolledBackOnce)
            self.assertEqual(len(attempts), 2)
            ran.append(d["c"])

        reactor.callWhenRunning(inRunning)
        timeout = reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timeout.active(), "timed out")
        timeout.cancel()
        self.assertEqual(ran, [1])
        self.assertRaises(error.ReactorNotRunning, ame.atomic, block, "d", 1)
        self.assertNotIn("d", d)
        reactor.removeAll()

    def test_delayedCallStandIn(self):
        """
        callLater inside atomic returns a DelayedCall that can be reset,
        delayed and cancelled before the commit, and stands for the real
        one after.
        """
        reactor = AMEReactor()
        now = [100.0]
        reactor.seconds = lambda: now[0]

        def f():
            dc = reactor.callLater(5, lambda: None)
            self.assertEqual(dc.getTime(), 105)
            dc.reset(10)
            dc.delay(1)
            self.assertEqual(dc.getTime(), 111)
            self.assertTrue(dc.active())
            return dc

        dc = ame.atomic(f)
        self.assertEqual(dc.getTime(), 111)
        self.assertTrue(dc.active())
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        dc.cancel()
        self.assertFalse(dc.active())
        dead = ame.atomic(lambda: reactor.callLater(1, lambda: None))
        dead.cancel()

        def g():
            x = reactor.callLater(1, lambda: None)
            x.cancel()
            self.assertRaises(Exception, x.cancel)
            return x

        x = ame.atomic(g)
        self.assertFalse(x.active())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_delayedCallStandInRolledBack(self):
        """
        The stand-in that callLater returned in an attempt that was rolled
        back is cancelled, as that attempt's call is: not active, and
        cancel, reset and delay raise AlreadyCancelled.  So for a block
        that raised, and for the aborted attempt of a block that ran
        again (whose committed attempt's stand-in stands for its call).
        """
        reactor = AMEReactor()
        kept = []

        def raising():
            kept.append(reactor.callLater(1, lambda: None))
            raise ValueError("rolled back")

        self.assertRaises(ValueError, ame.atomic, raising)
        [dc] = kept
        self.assertFalse(dc.active())
        self.assertTrue(dc.cancelled)
        self.assertFalse(dc.called)
        self.assertRaises(error.AlreadyCancelled, dc.cancel)
        self.assertRaises(error.AlreadyCancelled, dc.reset, 2)
        self.assertRaises(error.AlreadyCancelled, dc.delay, 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

        kept = []

        def conflicting():
            kept.append(reactor.callLater(1, lambda: None))
            if len(kept) == 1:
                _ame._shared_abort()

        ame.atomic(conflicting)
        first, second = kept
        self.assertFalse(first.active())
        self.assertRaises(error.AlreadyCancelled, first.cancel)
        self.assertTrue(second.active())
        self.assertFalse(second.cancelled)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        second.cancel()
        self.assertTrue(second.cancelled)
        self.assertEqual(reactor.getDelayedCalls(), [])


# ---------------------------------------------------------------------------
# Channels.


class ChannelTests(SynchronousTestCase):
    def test_orderSameInEveryProcess(self):
        """
        Three processes publish at once; each receives all messages, in
        the same order, each publisher's in its own order.
        """
        n, m = 3, 200
        p = subprocess.run([sys.executable, os.path.join(APPS,
                                                         "channel_order.py"),
                            str(n), str(m)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        rows = [json.loads(line) for line in p.stdout.splitlines()]
        self.assertEqual(len(rows), n)
        first = rows[0]["got"]
        self.assertEqual(len(first), n * m)
        for row in rows:
            self.assertEqual(row["got"], first)
        for i in range(n):
            self.assertEqual([k for w, k in first if w == i], list(range(m)))

    def test_subscribeInProcess(self):
        """
        A subscriber on a reactor gets what a forked process publishes, in
        order; unsubscribing stops it; what every subscriber has read is
        trimmed from the heap.
        """
        ch = shared.channel(fresh())
        reactor = AMEReactor()
        got, other = [], []
        sub = ch.subscribe(got.append, reactor)
        ch.subscribe(other.append, reactor)

        def child():
            for i in range(150):
                ch.publish(i)

        def started():
            in_child_pid.append(in_child(child))

        def check():
            if len(got) == 150:
                reactor.stop()
            else:
                reactor.callLater(0.005, check)

        in_child_pid = []
        reactor.callWhenRunning(started)
        reactor.callWhenRunning(check)
        timeout = reactor.callLater(30, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timeout.active(), "timed out")
        timeout.cancel()
        wait_ok(self, in_child_pid[0])
        self.assertEqual(got, list(range(150)))
        self.assertEqual(other, got)
        ch._trim()
        records, more, registered = ch._read(b"nobody", 0, 1000)
        self.assertEqual((records, more, registered), ([], False, False))
        self.assertEqual(ch.seq, 150)
        sub.cancel()
        self.assertRaises(ValueError, sub.cancel)
        ch.unsubscribe(other.append, reactor)
        self.assertEqual(ch._watchers()[1], [])
        reactor.removeAll()

    def test_noSubscriberNothingKept(self):
        """
        With nobody subscribed, published messages are not kept.
        """
        ch = shared.channel(fresh())
        for i in range(10):
            self.assertEqual(ch.publish(i), i + 1)
        self.assertEqual(ch._read(b"x", 0, 100)[0], [])

    def test_deadSubscriberDropped(self):
        """
        A subscriber whose socket is gone (its process died) is dropped
        when a publisher fails to wake it, so it keeps nothing.
        """
        ch = shared.channel(fresh())
        ch._register(b"ame.0.0.dead")
        self.assertEqual(ch._watchers()[1], [b"ame.0.0.dead"])
        ch.publish("x")
        self.assertEqual(ch._watchers()[1], [])
        ch._trim()
        self.assertEqual(ch._read(b"x", 0, 100)[0], [])


# ---------------------------------------------------------------------------
# The heap: a full one, set-up, errors.


class HeapTests(SynchronousTestCase):
    def test_fullHeap(self):
        """
        On a 4 MiB heap: MemoryError naming AME_SHARED_SIZE and
        --shared-size, the failing operation and the failing block rolled
        back, the heap usable again after clear().
        """
        code = r"""
import ame, ame.shared as s
d = s.dict("d")
marker = s.counter("c")
n = 0
try:
    while True:
        d[n] = "x" * 5000
        n += 1
except MemoryError as e:
    msg = str(e)
print("full after", n)
assert "AME_SHARED_SIZE" in msg and "--shared-size" in msg, msg
assert len(d) == n and n not in d, (len(d), n)
d[0] = "y"   # a smaller value still fits
def block():
    marker.add(1)
    for i in range(100):
        d["more", i] = "z" * 5000
try:
    ame.atomic(block)
    raise SystemExit("no MemoryError")
except MemoryError as e:
    assert "AME_SHARED_SIZE" in str(e)
assert marker.value == 0 and ("more", 0) not in d and len(d) == n
d.clear()
for i in range(n):
    d[i] = "x" * 5000
print("ok", len(d))
"""
        rc, out = python(code, {"AME_SHARED_SIZE": "4M"})
        self.assertEqual(rc, 0, out)
        self.assertIn("ok ", out)

    def test_noSetupNeeded(self):
        """
        One process, no environment: the heap is made at first use.
        """
        rc, out = python("import ame, ame.shared as s\n"
                         "d = s.dict('x'); d['a'] = [1]\n"
                         "print(ame.atomic(lambda: d['a']))\n")
        self.assertEqual((rc, out), (0, "[1]\n"))

    def test_environmentErrors(self):
        """
        Bad AME_SHARED_SIZE and AME_SHARED_HEAP values are clear errors.
        """
        code = "import ame.shared as s\ns.dict('x')\n"
        rc, out = python(code, {"AME_SHARED_SIZE": "lots"})
        self.assertNotEqual(rc, 0)
        self.assertIn("AME_SHARED_SIZE=lots is not a size", out)
        # Below the heap's least size or above its most (docs/shared.md:
        # 4M to 47G), 0 and signs included: a ValueError naming the
        # variable, the value and what it takes, not the heap's "invalid
        # argument".
        for size in ("1M", "4194303", "0", "-1", "+8M", " 8M", "48G",
                     "50465865729"):
            rc, out = python(code, {"AME_SHARED_SIZE": size})
            self.assertNotEqual(rc, 0, size)
            self.assertIn("ValueError: ame.shared: AME_SHARED_SIZE=%s is "
                          "not a size of 4M to 47G (bytes, with K, M or "
                          "G; default 256M)" % size, out)
        rc, out = python(code, {"AME_SHARED_SIZE": "4M"})
        self.assertEqual(rc, 0, out)
        for addr in ("nothex", "-1", "0"):
            rc, out = python(code, {"AME_SHARED_HEAP": addr})
            self.assertNotEqual(rc, 0, addr)
            self.assertIn("ValueError: ame.shared: AME_SHARED_HEAP=%s is "
                          "not an address in hex" % addr, out)
        # An address where no heap is mapped (aligned or not): say so,
        # and who sets the variable, not "No such file or directory".
        for addr in ("7f0000001000", "7f0000001001"):
            rc, out = python(code, {"AME_SHARED_HEAP": addr})
            self.assertNotEqual(rc, 0, addr)
            self.assertIn("OSError: ame.shared: AME_SHARED_HEAP=%s: no "
                          "heap is mapped at that address in this process "
                          "(the ame command sets it for its workers; unset "
                          "it to make a heap here)" % addr, out)
        rc, out = python(code, {"AME_SHARED_SIZE": "64M"})
        self.assertEqual(rc, 0, out)

    def test_foreignNamedHeap(self):
        """
        A file in /dev/shm that is not a heap is refused with the heap's
        own message; a real one opens, in another process too.
        """
        unrelatedOpens()
        name = fresh("ame-test-heap")
        path = "/dev/shm/" + name
        with open(path, "wb") as f:
            f.write(b"not a heap" * 1000)
        try:
            code = ("import ame.shared as s\n"
                    "s._use_heap(%r, create=False)\n" % name)
            rc, out = python(code)
            self.assertNotEqual(rc, 0)
            self.assertIn("not an ame heap, or a corrupt one", out)
        finally:
            os.unlink(path)
        code = ("import ame.shared as s, sys\n"
                "s._use_heap(%r, size=8 << 20, create=sys.argv[1] == 'c')\n"
                "d = s.dict('d')\n"
                "d['n'] = d.get('n', 0) + 1\n"
                "print(d['n'])\n" % name)
        try:
            for arg, want in (("c", "1\n"), ("o", "2\n")):
                full = dict(os.environ)
                p = subprocess.run([sys.executable, "-c", code, arg],
                                   env=full, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=60)
                self.assertEqual(p.stdout.decode(), want)
        finally:
            _ame._shared_unlink(name)

    def test_namedHeapAcrossProcesses(self):
        """
        AME_SHARED_NAME: unrelated processes (not forked from one another),
        started at once, open the same named heap (the first one makes
        it) and add to one counter: the total is exact.
        """
        unrelatedOpens()
        name = fresh("ame-test-named")
        code = ("import ame.shared as s\n"
                "c = s.counter('n')\n"
                "for i in range(500): c.add(1)\n")
        env = dict(os.environ, AME_SHARED_NAME=name, AME_SHARED_SIZE="8M")
        try:
            procs = [subprocess.Popen([sys.executable, "-c", code], env=env)
                     for _ in range(4)]
            for p in procs:
                self.assertEqual(p.wait(60), 0)
            p = subprocess.run(
                [sys.executable, "-c",
                 "import ame.shared as s; print(s.counter('n').value)"],
                env=env, stdout=subprocess.PIPE, timeout=60)
            self.assertEqual(p.stdout.decode().strip(), "2000")
        finally:
            _ame._shared_unlink(name)

    def test_mainThreadLeavesAtExit(self):
        """
        A process's main thread leaves the heap when the interpreter
        exits: a forked child that used the heap and exited normally
        holds no slot once reaped.  (Its slot stayed taken, with the
        arena it had reserved, until someone found the process dead.)
        """
        code = ("import os, ame.shared as s\n"
                "c = s.counter('n')\n"
                "c.add(1)\n"
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    c.add(1)\n"
                "else:\n"
                "    os.waitpid(pid, 0)\n"
                "    print(c.value, s.stats()['heap']['slots_live'])\n")
        rc, out = python(code)
        self.assertEqual((rc, out.strip()), (0, "2 1"))

    def test_stats(self):
        s = shared.stats()
        for k in ("commits", "commits_ro", "aborts", "aborts_by_cause",
                  "irrevocable", "escalations", "max_attempts", "heap",
                  "conflicts"):
            self.assertIn(k, s)
        for k in ("mapped", "arena", "used", "top", "slots_max",
                  "slots_live", "recoveries", "recovered_commits", "clock"):
            self.assertIn(k, s["heap"])
        self.assertIn("read-locked", s["aborts_by_cause"])
        self.assertGreater(s["heap"]["used"], 0)
        self.assertGreater(s["commits"], 0)


# ---------------------------------------------------------------------------
# The chat example, end to end.


class ChatTests(SynchronousTestCase):
    def test_everyClientSameOrder(self):
        """
        examples/python/chat.py on three worker processes: lines from
        clients on every worker reach every client on every worker, in
        one order.
        """
        n = 3
        p = subprocess.Popen([sys.executable,
                              os.path.join(APPS, "chat_workers.py"), str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        self.addCleanup(self._stop, p)
        # Raw reads: a buffered readline() after select() could take two
        # lines into its buffer and leave select() nothing to see.
        out, deadline = b"", time.monotonic() + 60
        while out.count(b"\n") < n and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 1)
            data = os.read(p.stdout.fileno(), 4096) if ready else b""
            if ready and not data:
                break
            out += data
        lines = out.splitlines()
        self.assertEqual(len(lines), n, "workers did not start: %r" % out)
        workers = [tuple(map(int, line.split())) for line in lines]
        self.assertEqual(len({pid for _, pid in workers}), n)
        clients = []
        for port, pid in workers:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                greeting = self._line(s)
                self.assertIn("(process %d)" % pid, greeting)
                clients.append(s)
        said = []
        for i, s in enumerate(clients):
            for k in range(3):
                text = "line %d.%d" % (i, k)
                s.sendall(text.encode() + b"\n")
                said.append(text)
        heard = []
        for s in clients:
            lines = []
            while len(lines) < len(said):
                line = self._line(s)
                if line.startswith("<"):
                    lines.append(line.split("> ", 1)[1])
            heard.append(lines)
        for lines in heard:
            self.assertEqual(lines, heard[0])
        self.assertEqual(sorted(heard[0]), sorted(said))
        for s in clients:
            s.close()

    def _line(self, s):
        bufs = self.__dict__.setdefault("_bufs", {})
        buf = bufs.get(s, b"")
        while b"\r\n" not in buf:
            data = s.recv(4096)
            self.assertTrue(data, "connection closed")
            buf += data
        line, bufs[s] = buf.split(b"\r\n", 1)
        return line.decode()

    def _stop(self, p):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        p.stdout.close()
        p.stderr.close()
