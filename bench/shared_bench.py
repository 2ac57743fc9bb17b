#!/usr/bin/python3
"""bench/shared_bench.py -- ame.shared against the stores a Python program
would otherwise share state through, from Python, in one run: single-key
get and set from one process, two processes on disjoint keys, and one hot
key.

Baselines (Debian packages: scripts/install-deps.sh bench): Redis
(redis-server on a Unix socket, python3-redis with python3-hiredis's parser
when installed), LMDB (python3-lmdb; writemap, no sync, one transaction
per operation), multiprocessing.Manager().dict(), and a plain dict (the
ceiling; not shared).  Every operation is its own transaction, as in
ame.shared outside ame.atomic.  A missing baseline is reported as skipped.

Each case runs --repeat times, the variants interleaved, and the table
gives the median with the min-max range.  Loops are --n calls (default
100,000) for ame.shared, the dict and LMDB, and --slow-n calls (default
20,000) for Redis and the Manager, which are two orders of magnitude
slower.  Timings decide nothing; on a busy machine (the LoadMeter column)
rerun on a quiet one.

    PYTHONPATH=build/bindings:bindings /usr/bin/python3 bench/shared_bench.py
        [--n 100000] [--repeat 5] [--json] [--show FILE]

Cases:
  get, set       one process, 100 keys, values of 16 bytes
  get x2, set x2 two processes at once, each on its own 100 keys: the
                 aggregate rate, and its ratio to one process; also per
                 CPU-second the processes used (on a busy machine the
                 processes wait for CPUs: the per-CPU ratio says what two
                 idle CPUs would give)
  hot atomic     two processes each run ame.atomic(d[k] = d[k] + 1) on one
                 key: commits/s and aborts per commit
  hot counter    two processes add to one ame.shared.counter (adds do not
                 conflict): adds/s
"""

import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    LoadMeter,
    fmt_rate,
    machine_info,
    runner_parser,
)

KEYS = 100
VALUE = "v" * 16


# ---------------------------------------------------------------------------
# The stores: each gives get(key) and set(key, value) callables over str
# keys, and a loop that runs n of them.


def loop_get(get, keys):
    t = time.perf_counter()
    for k in keys:
        get(k)
    return time.perf_counter() - t


def loop_set(set_, keys, value):
    t = time.perf_counter()
    for k in keys:
        set_(k, value)
    return time.perf_counter() - t


def loop_get_sub(d, keys):
    t = time.perf_counter()
    for k in keys:
        d[k]
    return time.perf_counter() - t


def loop_set_sub(d, keys, value):
    t = time.perf_counter()
    for k in keys:
        d[k] = value
    return time.perf_counter() - t


class Ame:
    name = "ame.shared"
    slow = False

    def __init__(self, tag):
        import ame.shared
        self.shared = ame.shared
        self.d = ame.shared.dict("bench-" + tag)

    def keys(self, prefix):
        return ["%s%d" % (prefix, i) for i in range(KEYS)]

    def in_child(self):
        """In a forked child, before its loop."""

    def around_fork(self, before):
        """In the parent, before (True) and after (False) the children."""

    def fill(self, keys):
        for k in keys:
            self.d[k] = VALUE

    def get(self, keys):
        return loop_get_sub(self.d, keys)

    def set(self, keys):
        return loop_set_sub(self.d, keys, VALUE)


class Plain(Ame):
    name = "dict"

    def __init__(self, tag):
        self.d = {}


class Lmdb:
    name = "LMDB"
    slow = False

    def __init__(self, tag, path):
        self.path = path
        self.env = self.open()

    def open(self):
        import lmdb
        return lmdb.open(self.path, map_size=1 << 30, writemap=True,
                         sync=False, metasync=False, lock=True)

    def in_child(self):
        # LMDB's environment must not be used across fork: each process
        # opens its own (the parent closes its own meanwhile).
        self.env = self.open()

    def around_fork(self, before):
        if before:
            self.env.close()
        else:
            self.env = self.open()

    def keys(self, prefix):
        return [("%s%d" % (prefix, i)).encode() for i in range(KEYS)]

    def fill(self, keys):
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, VALUE.encode())

    def get(self, keys):
        env = self.env
        t = time.perf_counter()
        for k in keys:
            with env.begin() as txn:
                txn.get(k)
        return time.perf_counter() - t

    def set(self, keys):
        env, v = self.env, VALUE.encode()
        t = time.perf_counter()
        for k in keys:
            with env.begin(write=True) as txn:
                txn.put(k, v)
        return time.perf_counter() - t


class Redis:
    name = "Redis"
    slow = True

    def __init__(self, tag, sock):
        import redis
        self.r = redis.Redis(unix_socket_path=sock)

    def in_child(self):
        pass  # redis-py's pool opens new connections after fork

    def around_fork(self, before):
        pass

    def keys(self, prefix):
        return ["%s%d" % (prefix, i) for i in range(KEYS)]

    def fill(self, keys):
        for k in keys:
            self.r.set(k, VALUE)

    def get(self, keys):
        return loop_get(self.r.get, keys)

    def set(self, keys):
        return loop_set(self.r.set, keys, VALUE)


class Manager(Ame):
    name = "Manager().dict()"
    slow = True

    def __init__(self, tag, proxy):
        self.d = proxy

    def in_child(self):
        # The proxy's connection is the parent's: make one of our own.
        self.d._connect()

    def around_fork(self, before):
        pass


# ---------------------------------------------------------------------------
# Running the cases.


def reps(keys, n):
    return (keys * (n // len(keys) + 1))[:n]


def one_process(store, what, n):
    """(ops per second, ops per CPU-second of this process)."""
    keys = store.keys("k")
    store.fill(keys)
    seq = reps(keys, n)
    cpu = time.process_time()
    dt = store.get(seq) if what == "get" else store.set(seq)
    return n / dt, n / max(1e-9, time.process_time() - cpu)


def in_children(count, fn):
    """Fork count children; each waits for the go, runs fn(i), and reports.
    Return the wall time from the go until all reported, and the CPU time
    the children used."""
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    sys.stdout.flush()
    for i in range(count):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(go_w)
                os.read(go_r, 1)
                cpu = time.process_time()
                fn(i)
                os.write(res_w, b"%20.9f" % (time.process_time() - cpu))
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(res_w)
    time.sleep(0.05)
    t = time.perf_counter()
    os.write(go_w, b"!" * count)
    got = b""
    while len(got) < 20 * count:
        b = os.read(res_r, 20 * count)
        if not b:
            break  # every child exited: one failed
        got += b
    wall = time.perf_counter() - t
    cpu = sum(float(got[k:k + 20]) for k in range(0, len(got) - 19, 20))
    os.close(go_w)
    os.close(res_r)
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        if st:
            raise RuntimeError("a benchmark child failed")
    return wall, cpu


def two_processes(store, what, n):
    keysets = [store.keys("p%d-" % i) for i in range(2)]
    for ks in keysets:
        store.fill(ks)

    def child(i):
        store.in_child()
        seq = reps(keysets[i], n)
        store.get(seq) if what == "get" else store.set(seq)

    store.around_fork(True)
    try:
        wall, cpu = in_children(2, child)
    finally:
        store.around_fork(False)
    return 2 * n / wall, 2 * n / max(1e-9, cpu)


def hot(n, counter):
    import ame
    import ame.shared
    tag = "%d-%d" % (os.getpid(), time.monotonic_ns())
    d = ame.shared.dict("hot-" + tag)
    c = ame.shared.counter("hot-counter-" + tag)
    d["k"] = 0

    def incr():
        d["k"] = d["k"] + 1

    def child(i):
        if counter:
            for _ in range(n):
                c.add(1)
        else:
            for _ in range(n):
                ame.atomic(incr)

    before = ame.shared.stats()
    wall, _ = in_children(2, child)
    after = ame.shared.stats()
    total = c.value if counter else d["k"]
    assert total == 2 * n, (total, 2 * n)
    commits = after["commits"] - before["commits"]
    aborts = after["aborts"] - before["aborts"]
    return 2 * n / wall, aborts / max(1, commits)


def start_redis(tmp):
    exe = shutil.which("redis-server")
    if exe is None:
        return None, "redis-server not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return None, "python3-redis not installed"
    sock = os.path.join(tmp, "redis.sock")
    p = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock,
                          "--save", "", "--appendonly", "no",
                          "--dir", tmp],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            return (p, sock), None
        time.sleep(0.02)
    p.kill()
    return None, "redis-server did not start"


def hiredis():
    try:
        import hiredis  # noqa: F401
        return True
    except ImportError:
        return False


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "runs": xs}


def run(args):
    import ame.shared
    tmp = tempfile.mkdtemp(prefix="ame-shared-bench-")
    stores, skipped = [], {}
    redis_proc = manager = None
    try:
        stores.append(Ame("%d" % os.getpid()))
        stores.append(Plain(""))
        try:
            stores.append(Lmdb("", os.path.join(tmp, "lmdb")))
        except ImportError:
            skipped["LMDB"] = "python3-lmdb not installed"
        r, why = start_redis(tmp)
        if r:
            redis_proc, sock = r
            stores.append(Redis("", sock))
        else:
            skipped["Redis"] = why
        manager = multiprocessing.Manager()
        stores.append(Manager("", manager.dict()))
        meter = LoadMeter()
        results = {}
        cases = ["get", "set", "get x2", "set x2"]
        for rep in range(args.repeat):
            for case in cases:
                for s in stores:
                    if s.name == "dict" and case.endswith("x2"):
                        continue  # not shared
                    n = args.slow_n if s.slow else args.n
                    what = case.split()[0]
                    rate, per_cpu = (two_processes(s, what, n)
                                     if case.endswith("x2")
                                     else one_process(s, what, n))
                    results.setdefault((case, s.name), []).append(rate)
                    results.setdefault((case + " per cpu", s.name),
                                       []).append(per_cpu)
            for counter in (False, True):
                rate, apc = hot(args.hot_n, counter)
                key = "hot counter" if counter else "hot atomic"
                results.setdefault((key, "ame.shared"), []).append(rate)
                results.setdefault((key + " aborts/commit", "ame.shared"),
                                   []).append(apc)
        others = meter.others()
    finally:
        if manager is not None:
            manager.shutdown()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for (case, name), xs in results.items():
        rows.append(dict(case=case, store=name, **summary(xs)))
    return {
        "machine": machine_info(),
        "settings": {"n": args.n, "slow_n": args.slow_n,
                     "hot_n": args.hot_n, "repeat": args.repeat,
                     "keys": KEYS, "value_bytes": len(VALUE),
                     "hiredis": hiredis(),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "other_load_cpus": others,
        "skipped": skipped,
        "results": rows,
    }


def print_tables(out):
    rows = {(r["case"], r["store"]): r for r in out["results"]}
    s = out["settings"]
    print("ame.shared benchmark, %s; %d calls a loop (%d for Redis and the "
          "Manager), %d runs, median (min-max)" % (
              s["date"], s["n"], s["slow_n"], s["repeat"]))
    if out.get("other_load_cpus") is not None:
        print("other work on the machine meanwhile: %.2f CPUs"
              % out["other_load_cpus"])
    for name, why in out["skipped"].items():
        print("skipped %s: %s" % (name, why))
    stores = ["ame.shared", "dict", "LMDB", "Redis", "Manager().dict()"]

    def cell(r):
        return "%s (%s-%s)" % (fmt_rate(r["median"]), fmt_rate(r["min"]),
                               fmt_rate(r["max"]))

    print()
    print("%-8s %-18s %-26s %s" % ("case", "store", "ops/s", "ame.shared / it"))
    for case in ("get", "set", "get x2", "set x2"):
        me = rows.get((case, "ame.shared"))
        for st in stores:
            r = rows.get((case, st))
            if r is None:
                continue
            ratio = "" if st == "ame.shared" or me is None else \
                "%.2fx" % (me["median"] / r["median"])
            print("%-8s %-18s %-26s %s" % (case, st, cell(r), ratio))
        one = rows.get((case.split()[0], "ame.shared"))
        if case.endswith("x2") and me and one:
            c2 = rows[(case + " per cpu", "ame.shared")]["median"]
            c1 = rows[(case.split()[0] + " per cpu", "ame.shared")]["median"]
            print("%-8s %-18s ame.shared, two processes / one: %.2fx "
                  "(per CPU-second: %.2fx, so %.2fx with two idle CPUs)"
                  % ("", "", me["median"] / one["median"], c2 / c1,
                     2 * c2 / c1))
    for case in ("hot atomic", "hot counter"):
        r = rows.get((case, "ame.shared"))
        a = rows.get((case + " aborts/commit", "ame.shared"))
        if r:
            print("%-12s 2 processes: %s ops/s, %.3f aborts/commit (%.3f-%.3f)"
                  % (case, cell(r), a["median"], a["min"], a["max"]))


def main():
    ap = runner_parser(__doc__, "build", results=True)
    ap.add_argument("--n", type=int, default=100000,
                    help="calls per loop (ame.shared, dict, LMDB)")
    ap.add_argument("--slow-n", type=int, default=20000,
                    help="calls per loop for Redis and the Manager")
    ap.add_argument("--hot-n", type=int, default=20000,
                    help="increments per process in the hot-key cases")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.show:
        with open(args.show) as f:
            print_tables(json.load(f))
        return
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_tables(out)


if __name__ == "__main__":
    main()
