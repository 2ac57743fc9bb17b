#!/usr/bin/python3
"""ame.shared (the transactional heap that processes share) against what a
Python program would otherwise share state through, in one run, in four
sections:

  ops    single-key get and set from one process (100 keys, values of 16
         bytes), against Redis (redis-server on a Unix socket, python3-redis
         with the hiredis parser when installed), LMDB (python3-lmdb:
         writemap, no sync, one transaction per operation, so one write
         transaction per put), multiprocessing.Manager().dict() and a plain
         dict (the ceiling; not shared); then two processes at once, each on
         its own 100 keys (ame.shared; LMDB, whose writers take turns, as
         a comparison; and the dict, each process its own copy, sharing
         nothing: what two processes on this machine give at best): the
         aggregate rate and its ratio to one process, also per CPU-second
         the two used; then one hot key: two processes
         each incrementing it in ame.atomic (commits/s, aborts per commit),
         and adding to one ame.shared.counter (adds/s; adds never conflict)
  web    a twisted.web app (bench/counter_web.py) under `ame run --workers
         2`, loaded by `ame load -t1 -c32`, with and without one shared
         counter add per request (req/s; the counter must equal the
         requests served)
  crash  the heap's crash injection (tests/stm/test_heap_crash.c, the test
         of `make stress`): worker processes SIGKILLed at random moments
         and inside each phase of a commit, recovered by the test
         (heap_crash) or by the surviving workers (heap_crash_peer); the
         kills after which every invariant held, and the recovery time
         p50/p99/max

Every operation is its own transaction, as ame.shared's are outside
ame.atomic.  Each timed loop runs about --loop seconds (its count of calls
is fixed per store from a short calibration, the same in every
repetition); runs are interleaved (every configuration once per
repetition); figures are medians with the min-max over the repetitions,
and ratios are taken between medians of the same run.  A "bars" section
compares the figures with those the project holds ame.shared to; missing
a bar never fails the run.  A missing baseline (package not installed) is
skipped and said so.  The exit status is 1 if a run fails: a store
disagrees with what was written, the counter misses requests, the crash
test breaks an invariant, a server does not start.

Default: 5 repetitions, loops of 0.3 s, 4 s of load per web run, 200 kills
(heap_crash) and 100 (heap_crash_peer): about 2 minutes.  --quick: 1
repetition, loops of 0.1 s, 2 s of load, 50 and 30 kills: about a minute.
Run it with Debian's /usr/bin/python3 after `ninja -C build-release`.
"""

import multiprocessing
import os
import shutil
import sys
import time
import urllib.request

from benchlib import (BenchError, LoadMeter, REPO, Server, ServerSession,
                      add_runs, ame_cpus, ame_run_status, check_http,
                      command_line, emit, fmt_apc, fmt_rate, fmt_ratio,
                      fmt_us, free_port, machine_info, make_bar, med,
                      name_list, parse_args, print_bars, print_failures,
                      print_machine, print_rows, ratio, round_robin,
                      run_ame_load, run_heap_crash, runner_parser,
                      start_ame_run, use_ame_here)

SECTIONS = ("ops", "web", "crash")
KEYS = 100
VALUE = "v" * 16
STORES = ("ame.shared", "dict", "LMDB", "Redis", "Manager().dict()")
# The stores run in two processes: the dict (each process its own copy,
# nothing shared) is what two processes of this machine give at best.
TWO = ("ame.shared", "dict", "LMDB")
WEB_APP = os.path.join(REPO, "bench", "counter_web.py")
WEB_CONFIGS = ("plain", "counter")


# ---- the stores ---------------------------------------------------------------
#
# Each store gives keys(prefix) (its key type), fill(keys), get(seq) and
# set(seq) (timed loops over a sequence of keys: seconds), and the fork
# hooks in_child() (in a forked child, before its loop) and around_fork(
# before) (in the parent, before and after the children).


class Ame:
    name = "ame.shared"

    def __init__(self, tag):
        import ame.shared
        self.d = ame.shared.dict("shared_bench." + tag)

    def keys(self, prefix):
        return ["%s%d" % (prefix, i) for i in range(KEYS)]

    def in_child(self):
        pass

    def around_fork(self, before):
        pass

    def fill(self, keys):
        for k in keys:
            self.d[k] = VALUE

    def check(self, keys):
        for k in keys:
            if self.d[k] != VALUE:
                raise BenchError("%s: %r reads %r, not %r"
                                 % (self.name, k, self.d[k], VALUE))

    def get(self, seq):
        d = self.d
        t = time.perf_counter()
        for k in seq:
            d[k]
        return time.perf_counter() - t

    def set(self, seq):
        d, v = self.d, VALUE
        t = time.perf_counter()
        for k in seq:
            d[k] = v
        return time.perf_counter() - t


class Plain(Ame):
    name = "dict"

    def __init__(self, tag):
        self.d = {}


class Manager(Ame):
    name = "Manager().dict()"

    def __init__(self, proxy):
        self.d = proxy


class Lmdb(Ame):
    name = "LMDB"

    def __init__(self, path):
        import lmdb
        self.lmdb = lmdb
        self.path = path
        self.env = self.open()

    def open(self):
        return self.lmdb.open(self.path, map_size=1 << 30, writemap=True,
                              sync=False, metasync=False, lock=True)

    def in_child(self):
        self.env = self.open()  # an environment must not cross a fork

    def around_fork(self, before):
        if before:
            self.env.close()
        else:
            self.env = self.open()

    def keys(self, prefix):
        return [k.encode() for k in Ame.keys(self, prefix)]

    def fill(self, keys):
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, VALUE.encode())

    def check(self, keys):
        with self.env.begin() as txn:
            for k in keys:
                if txn.get(k) != VALUE.encode():
                    raise BenchError("LMDB: %r reads %r" % (k, txn.get(k)))

    def get(self, seq):
        env = self.env
        t = time.perf_counter()
        for k in seq:
            with env.begin() as txn:
                txn.get(k)
        return time.perf_counter() - t

    def set(self, seq):
        env, v = self.env, VALUE.encode()
        t = time.perf_counter()
        for k in seq:
            with env.begin(write=True) as txn:
                txn.put(k, v)
        return time.perf_counter() - t


class Redis(Ame):
    name = "Redis"

    def __init__(self, sock):
        import redis
        self.r = redis.Redis(unix_socket_path=sock)
        self.r.ping()

    def fill(self, keys):
        for k in keys:
            self.r.set(k, VALUE)

    def check(self, keys):
        for k in keys:
            if self.r.get(k) != VALUE.encode():
                raise BenchError("Redis: %r reads %r" % (k, self.r.get(k)))

    def get(self, seq):
        get = self.r.get
        t = time.perf_counter()
        for k in seq:
            get(k)
        return time.perf_counter() - t

    def set(self, seq):
        set_, v = self.r.set, VALUE
        t = time.perf_counter()
        for k in seq:
            set_(k, v)
        return time.perf_counter() - t


def start_redis(tmpdir):
    """A Redis server on a Unix socket of tmpdir (its own process group,
    stopped with the session): (Redis store, None) or (None, why not)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, "redis-server not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return None, "python3-redis not installed"
    sock = os.path.join(tmpdir, "redis.sock")
    srv = Server([exe, "--port", "0", "--unixsocket", sock, "--save", "",
                  "--appendonly", "no", "--dir", tmpdir],
                 os.path.join(tmpdir, "redis.log"))
    end = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > end or srv.proc.poll() is not None:
            srv.stop()
            return None, "redis-server did not start: %s" % srv.log_tail()
        time.sleep(0.02)
    for _ in range(100):
        try:
            return Redis(sock), None
        except Exception:  # redis.ConnectionError: not accepting yet
            time.sleep(0.05)
    return None, "redis-server does not answer on %s" % sock


def hiredis_installed():
    try:
        import hiredis  # noqa: F401
        return True
    except ImportError:
        return False


# ---- running the loops --------------------------------------------------------

def cycle(keys, n):
    return (keys * (n // len(keys) + 1))[:n]


def calibrate(store, what, loop_s):
    """The number of calls that makes a loop of store's `what` last about
    loop_s seconds (at least 1000)."""
    keys = store.keys("k")
    store.fill(keys)
    n = 1000
    while True:
        dt = getattr(store, what)(cycle(keys, n))
        if dt >= 0.02 or n >= 1 << 24:
            break
        n *= 4
    return max(1000, int(n * loop_s / max(dt, 1e-9)))


def one_process(store, what, n):
    """(calls per second, calls per CPU-second) of one loop of n."""
    keys = store.keys("k")
    store.fill(keys)
    seq = cycle(keys, n)
    cpu = time.process_time()
    dt = getattr(store, what)(seq)
    cpu = time.process_time() - cpu
    store.check(keys)
    return n / dt, n / max(cpu, 1e-9)


def in_children(count, fn, prepare=None):
    """Fork count children; each runs prepare(i) (not timed: e.g. building
    its sequence of keys), waits for the go, runs fn(i, prepared) (fn(i)
    without prepare) and reports its CPU time.  Return (wall seconds from
    the go until every child reported, their CPU seconds).  BenchError if
    a child fails."""
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    sys.stdout.flush()
    sys.stderr.flush()
    for i in range(count):
        pid = os.fork()
        if pid == 0:
            code = 0
            told = False
            try:
                os.close(go_w)
                os.close(res_r)
                ready = prepare(i) if prepare else None
                told = True
                os.write(res_w, b"r")
                os.read(go_r, 1)
                cpu = time.process_time()
                if prepare:
                    fn(i, ready)
                else:
                    fn(i)
                os.write(res_w, b"%20.9f" % (time.process_time() - cpu))
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
                if not told:
                    os.write(res_w, b"x")   # failed preparing: go on
            os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(res_w)
    got = b""
    while len(got) < count:     # every child prepared
        b = os.read(res_r, count - len(got))
        if not b:
            break
        got += b
    time.sleep(0.05)
    t = time.perf_counter()
    os.write(go_w, b"!" * count)
    got = b""
    while len(got) < 20 * count:
        b = os.read(res_r, 20 * count)
        if not b:
            break   # every child exited: one failed
        got += b
    wall = time.perf_counter() - t
    os.close(go_w)
    os.close(res_r)
    failed = 0
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        failed += st != 0
    if failed or len(got) < 20 * count:
        raise BenchError("%d of %d benchmark children failed" % (failed,
                                                                 count))
    return wall, sum(float(got[k:k + 20]) for k in range(0, len(got), 20))


def two_processes(store, what, n):
    """Two processes at once, each n calls on its own keys: (aggregate
    calls per second, calls per CPU-second)."""
    keysets = [store.keys("p%d-" % i) for i in range(2)]
    for ks in keysets:
        store.fill(ks)

    def prepare(i):
        store.in_child()
        return cycle(keysets[i], n)

    def child(i, seq):
        getattr(store, what)(seq)

    store.around_fork(True)
    try:
        wall, cpu = in_children(2, child, prepare)
    finally:
        store.around_fork(False)
    for ks in keysets:
        store.check(ks)
    return 2 * n / wall, 2 * n / max(cpu, 1e-9)


def hot(n, counter, rep):
    """Two processes, n increments each of one key in ame.atomic (or adds
    to one counter): (increments per second, aborts per commit)."""
    import ame
    import ame.shared
    tag = "shared_bench.hot.%d.%d" % (rep, int(counter))
    d = ame.shared.dict(tag)
    c = ame.shared.counter(tag + ".counter")
    d["k"] = 0
    c.value = 0

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
    if total != 2 * n:
        raise BenchError("hot %s: %d increments, expected %d"
                         % ("counter" if counter else "key", total, 2 * n))
    commits = after["commits"] - before["commits"]
    aborts = after["aborts"] - before["aborts"]
    return 2 * n / wall, aborts / max(1, commits)


def spread_of(xs):
    return {"median": med(xs), "min": min(xs), "max": max(xs), "runs": xs}


def ops_section(args, session, failures):
    stores, skipped = [], {}
    stores.append(Ame("%d" % os.getpid()))
    stores.append(Plain(""))
    try:
        stores.append(Lmdb(os.path.join(session.tmpdir, "lmdb")))
    except ImportError:
        skipped["LMDB"] = "python3-lmdb not installed"
    r, why = start_redis(session.tmpdir)
    if r:
        stores.append(r)
    else:
        skipped["Redis"] = why
    manager = multiprocessing.Manager()
    try:
        stores.append(Manager(manager.dict()))
        by = {s.name: s for s in stores}
        n = {}
        for s in stores:
            for what in ("get", "set"):
                n[(s.name, what)] = calibrate(s, what, args.loop)
        keys = [(case, s.name) for case in ("get", "set", "get x2", "set x2")
                for s in stores if not case.endswith("x2") or s.name in TWO]
        keys += [("hot key", "ame.shared"), ("hot counter", "ame.shared")]
        hot_n = max(1000, int(n[("ame.shared", "set")] / 4))

        def run(key, rep):
            case, name = key
            if case.startswith("hot"):
                return hot(hot_n, case == "hot counter", rep)
            what = case.split()[0]
            fn = two_processes if case.endswith("x2") else one_process
            return fn(by[name], what, n[(name, what)])

        def fail(key, rep, e):
            failures.append({"what": "%s %s rep %d" % (key[0], key[1], rep),
                             "error": e})

        results = round_robin(keys, args.reps, run,
                              lambda k: "%s, %s" % k, fail,
                              label="shared ops", quiet_wait=args.quiet_wait)
    finally:
        manager.shutdown()
    rows, two, hots = [], [], []
    one = {}
    for (case, name), runs in results.items():
        rate = spread_of([r[0] for r in runs])
        if case.startswith("hot"):
            rate["aborts_per_commit"] = med([r[1] for r in runs])
            rate["case"] = case
            rate["increments"] = hot_n
            hots.append(rate)
            continue
        rate["per_cpu"] = med([r[1] for r in runs])
        rate.update(case=case, store=name, calls=n[(name, case.split()[0])])
        if case.endswith("x2"):
            two.append(rate)
        else:
            one[(case, name)] = rate
            rows.append(rate)
    for r in rows:
        me = one.get((r["case"], "ame.shared"), {})
        r["ame_vs"] = ratio(me.get("median"), r["median"])
        r["us_per_call"] = 1e6 / r["median"]
    for r in two:
        base = one.get((r["case"].split()[0], r["store"]), {})
        r["vs_one"] = ratio(r["median"], base.get("median"))
        r["per_cpu_vs_one"] = ratio(r["per_cpu"], base.get("per_cpu"))
    order = {s: i for i, s in enumerate(STORES)}
    rows.sort(key=lambda r: (r["case"], order[r["store"]]))
    two.sort(key=lambda r: (r["case"], order[r["store"]]))
    return {"rows": rows, "two": two, "hot": hots, "skipped": skipped,
            "hiredis": hiredis_installed(), "keys": KEYS,
            "value_bytes": len(VALUE), "loop_s": args.loop}


# ---- the web app --------------------------------------------------------------

def http_count(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/count" % port,
                                timeout=5) as r:
        return int(r.read())


def web_run(args, config, rep, tmpdir):
    port = free_port()
    program = [WEB_APP, "--port", str(port)]
    if config == "counter":
        program.append("--counter")
    srv = start_ame_run(args.builddir, program, args.workers, port,
                        os.path.join(tmpdir, "web-%s-%d.log" % (config, rep)))
    try:
        check_http(port, b"Hello, world!")
        before = http_count(port)
        meter = LoadMeter()
        ame = os.path.join(args.builddir, "cmd", "ame")
        d, _, command = run_ame_load(ame, port, args.threads, args.conns,
                                     args.duration, tmpdir)
        others = meter.others()
        srv.check_running("the run")
        time.sleep(0.2)     # requests in flight when ame load stopped
        counted = http_count(port) - before
        served = d["status"].get("200", 0)
        abandoned = d.get("abandoned", 0)
        want = (served, served + abandoned) if config == "counter" else (0, 0)
        if not want[0] <= counted <= want[1]:
            raise BenchError("the shared counter counted %d requests; ame "
                             "load read %d responses (+%d abandoned)"
                             % (counted, served, abandoned))
        return {"rps": d["requests_per_s"], "requests": d["requests"],
                "p99_us": d["latency_us"]["p99"],
                "errors": d["errors"]["total"],
                "non2xx": sum(v for k, v in d["status"].items()
                              if not k.startswith("2")),
                "counted": counted, "others_cpus": others,
                "command": command}
    finally:
        srv.stop()


def web_section(args, session, failures):
    ok, why = ame_run_status(args.builddir)
    if not ok:
        return {"skipped": why}
    results = round_robin(
        list(WEB_CONFIGS), args.reps,
        lambda c, rep: web_run(args, c, rep, session.tmpdir),
        lambda c: "web, %s" % c,
        lambda c, rep, e: failures.append(
            {"what": "web %s rep %d" % (c, rep), "error": e}),
        label="shared web", quiet_wait=args.quiet_wait, alternate=True)
    rows = []
    for c in WEB_CONFIGS:
        runs = results.get(c)
        if not runs:
            continue
        rps = [r["rps"] for r in runs]
        rows.append({"config": c, "rps_median": med(rps),
                     "rps_min": min(rps), "rps_max": max(rps),
                     "p99_median_us": med([r["p99_us"] for r in runs]),
                     "errors": sum(r["errors"] for r in runs),
                     "non2xx": sum(r["non2xx"] for r in runs),
                     "counted": sum(r["counted"] for r in runs),
                     "others_cpus": med([r["others_cpus"] for r in runs
                                         if r["others_cpus"] is not None]),
                     "runs_detail": runs})
    plain = next((r for r in rows if r["config"] == "plain"), {})
    for r in rows:
        r["rps_vs_plain"] = ratio(r["rps_median"], plain.get("rps_median"))
    return {"rows": rows, "workers": args.workers, "threads": args.threads,
            "connections": args.conns, "duration_s": args.duration}


# ---- the crash stress ---------------------------------------------------------

def crash_section(args, failures):
    runner = os.path.join(args.builddir, "tests", "stm", "run-stm-tests")
    if not os.access(runner, os.X_OK):
        return {"skipped": "%s not built" % runner}
    runs = []
    for test, kills in (("heap_crash", args.kills),
                        ("heap_crash_peer", args.peer_kills)):
        if kills <= 0:
            continue
        if sys.stderr.isatty():
            print("[shared crash] %s, %d kills" % (test, kills),
                  file=sys.stderr)
        try:
            r = run_heap_crash(runner, test, kills, 120 + 2 * kills)
        except BenchError as e:
            failures.append({"what": test, "error": str(e)})
            continue
        if r["error"]:
            failures.append({"what": test, "error": r["error"],
                             "command": r["command"]})
        runs.append(r)
    return {"runs": runs}


# ---- the report ---------------------------------------------------------------

def bars_of(d):
    ops, web, crash = d.get("ops") or {}, d.get("web") or {}, \
        d.get("crash") or {}
    one = {(r["case"], r["store"]): r for r in ops.get("rows", [])}
    two = {(r["case"], r["store"]): r for r in ops.get("two", [])}
    bars = []
    for what in ("get", "set"):
        bars.append(make_bar("%s, one process: ame.shared / Redis" % what,
                             one.get((what, "Redis"), {}).get("ame_vs"),
                             ">=", 10.0))
    for what in ("get", "set"):
        bars.append(make_bar("%s, one process: ame.shared / LMDB" % what,
                             one.get((what, "LMDB"), {}).get("ame_vs"),
                             ">=", 1.0))
    for what in ("get", "set"):
        r = two.get((what + " x2", "ame.shared"), {})
        ceiling = two.get((what + " x2", "dict"), {}).get("vs_one")
        notes = []
        if r.get("per_cpu_vs_one"):
            notes.append("per CPU-second %s" % fmt_ratio(r["per_cpu_vs_one"]))
        if ceiling:
            notes.append("a dict in each process: %s" % fmt_ratio(ceiling))
        bars.append(make_bar(
            "%s, two processes on disjoint keys / one process" % what,
            r.get("vs_one"), ">=", 1.6, note="; ".join(notes) or None))
    rows = {r["config"]: r for r in web.get("rows", [])}
    bars.append(make_bar("twisted.web, `ame run --workers 2`: req/s with a "
                         "shared counter / without",
                         rows.get("counter", {}).get("rps_vs_plain"),
                         ">=", 0.9))
    for r in crash.get("runs", []):
        bars.append(make_bar("%s: kills after which every invariant held"
                             % r["test"], r["survived"], ">=", r["kills"],
                             fmt=lambda x: "%d" % x))
    return bars


def report(d):
    print_machine("shared_bench", d["machine"])
    s = d["settings"]
    ops = d.get("ops")
    if ops:
        print()
        print("Single-key operations, each one transaction; %d keys, values "
              "of %d bytes; loops of about %.2g s; %d repetition(s); Redis "
              "parser: %s" % (ops["keys"], ops["value_bytes"], ops["loop_s"],
                              s["reps"], "hiredis" if ops["hiredis"]
                              else "Python"))
        for name, why in ops["skipped"].items():
            print("skipped %s: %s" % (name, why))
        print()
        print_rows(["case", "store", "calls/s", "min-max", "us/call",
                    "ame.shared x it"],
                   [[r["case"], r["store"], fmt_rate(r["median"]),
                     "%s-%s" % (fmt_rate(r["min"]), fmt_rate(r["max"])),
                     fmt_us(r["us_per_call"]),
                     "" if r["store"] == "ame.shared"
                     else fmt_ratio(r["ame_vs"])] for r in ops["rows"]],
                   right_from=2, group=lambda row: row[0])
        print()
        print("Two processes at once, each on its own keys:")
        print()
        print_rows(["case", "store", "calls/s", "min-max", "x one process",
                    "per CPU-s x one"],
                   [[r["case"], r["store"], fmt_rate(r["median"]),
                     "%s-%s" % (fmt_rate(r["min"]), fmt_rate(r["max"])),
                     fmt_ratio(r["vs_one"]), fmt_ratio(r["per_cpu_vs_one"])]
                    for r in ops["two"]], right_from=2)
        print()
        print("One hot key, two processes:")
        print()
        print_rows(["case", "increments/s", "min-max", "aborts/commit"],
                   [[("ame.atomic(d[k] = d[k] + 1)" if r["case"] == "hot key"
                      else "counter.add(1)"), fmt_rate(r["median"]),
                     "%s-%s" % (fmt_rate(r["min"]), fmt_rate(r["max"])),
                     fmt_apc(r["aborts_per_commit"])] for r in ops["hot"]],
                   right_from=1)
    web = d.get("web")
    if web and web.get("rows"):
        print()
        print("bench/counter_web.py under `ame run --workers %d`, `ame load "
              "-t%d -c%d -d%ds`:" % (web["workers"], web["threads"],
                                     web["connections"], web["duration_s"]))
        print()
        print_rows(["config", "req/s", "min-max", "x plain", "p99 ms",
                    "errors / non-2xx", "counted"],
                   [[r["config"], fmt_rate(r["rps_median"]),
                     "%s-%s" % (fmt_rate(r["rps_min"]),
                                fmt_rate(r["rps_max"])),
                     fmt_ratio(r["rps_vs_plain"]),
                     fmt_us(r["p99_median_us"] / 1000.0),
                     "%d / %d" % (r["errors"], r["non2xx"]),
                     str(r["counted"])] for r in web["rows"]], right_from=1)
    elif web and web.get("skipped"):
        print()
        print("web: skipped (%s)" % web["skipped"])
    crash = d.get("crash")
    if crash and crash.get("runs"):
        print()
        print("Crash injection (tests/stm/test_heap_crash.c), SIGKILL of "
              "worker processes:")
        print()
        print_rows(["test", "kills", "survived", "recovery ms p50", "p99",
                    "max", "by a survivor", "transfers", "seconds"],
                   [[r["test"], str(r["kills"]), str(r["survived"]),
                     fmt_us(r["p50_ms"]), fmt_us(r["p99_ms"]),
                     fmt_us(r["max_ms"]),
                     "-" if r["by_survivor"] is None
                     else str(r["by_survivor"]),
                     fmt_rate(r.get("acknowledged")),
                     "%.0f" % r["seconds"]] for r in crash["runs"]],
                   right_from=1)
    elif crash and crash.get("skipped"):
        print()
        print("crash: skipped (%s)" % crash["skipped"])
    print()
    print_bars(d["bars"])
    print_failures(d["failures"])


def main():
    ap = runner_parser(__doc__, "build-release", results=True,
                       quiet_wait=True)
    add_runs(ap, "1 repetition, loops of 0.1 s, 2 s of load, 50 and 30 "
             "kills", (5, 1), (4, 2), "seconds of load per web run")
    ap.add_argument("--sections", type=name_list(SECTIONS, "section"),
                    default=list(SECTIONS),
                    help="comma-separated: ops,web,crash (default all)")
    ap.add_argument("--loop", type=float, default=None, metavar="S",
                    help="seconds per timed loop (default 0.3; quick 0.1)")
    ap.add_argument("--kills", type=int, default=None,
                    help="kills in heap_crash (default 200; quick 50)")
    ap.add_argument("--peer-kills", type=int, default=None,
                    help="kills in heap_crash_peer (default 100; quick 30)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conns", type=int, default=32)
    args = parse_args(ap, report)
    for name, full, quick in (("loop", 0.3, 0.1), ("kills", 200, 50),
                              ("peer_kills", 100, 30)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.builddir = use_ame_here("shared_bench", args.builddir)
    failures = []
    machine = machine_info()
    meter = LoadMeter()
    out = {"machine": machine}
    with ServerSession("shared_bench") as session:
        if "ops" in args.sections:
            out["ops"] = ops_section(args, session, failures)
        if "web" in args.sections:
            out["web"] = web_section(args, session, failures)
        if "crash" in args.sections:
            out["crash"] = crash_section(args, failures)
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    out["settings"] = {"command": command_line(), "reps": args.reps,
                       "duration_s": args.duration, "loop_s": args.loop,
                       "kills": args.kills, "peer_kills": args.peer_kills,
                       "sections": args.sections, "quick": args.quick,
                       "cpus": ame_cpus()}
    out["bars"] = bars_of(out)
    out["failures"] = failures
    return emit(args, out, report)


if __name__ == "__main__":
    sys.exit(main())
