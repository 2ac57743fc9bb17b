#!/usr/bin/python3
"""Run ame's STM benchmarks against their baselines and print one table.

Every configuration (a data structure, its parameters, a thread count) is
run with each variant -- ame (ame's STM), itm (GCC libitm; where the CPU
has Intel RTM its default runs transactions as hardware transactions),
itm-stm (the same binary on libitm's own STM, ITM_DEFAULT_METHOD=ml_wt),
ame-itm (the itm variant's -fgnu-tm code linked against libame-itm: GCC's
TM ABI on ame), mutex (one global lock), seq (no synchronisation, 1 thread
only) -- all built from the same data-structure source (bench/tm.h) -- and
tinystm (TinySTM's own API, statically linked) where the build has it (meson
-Dtinystm=DIR, DIR a TinySTM tree built outside this repository with its
default configuration); then the table also has ratios ame/tinystm per
structure and thread count.  With --tinystm DIR, also tinystm-itm: the itm
binaries run on TinySTM's implementation of the same ABI (DIR: a TinySTM
source tree, built outside this repository with `make -C DIR/abi/gcc`; its
libitm.so stands in for GCC's through LD_LIBRARY_PATH).  Runs are
interleaved round-robin over configurations and variants, and each is
repeated.  The variants linked with their STM statically (ame, tinystm)
are built once per code placement (bench/meson.build: 0, 80, 160 and 240
bytes of code between the benchmark's objects and the library), and
repetition i runs placement i mod 4 of both, as the STAMP runner does, so
that a median does not hang on one layout.  Multi-thread runs are taken
while moving a cache line between the CPUs is cheap (benchlib.Steady:
waiting for it, running again what ran while it was dear).  The table
shows the median, the min-max spread, aborts per commit, and ratios
against seq, itm and the 1-thread run.  A "bars" section compares the
figures the project is held to.  Missing a bar never fails the run; a
binary that reports a broken invariant (invalid structure, wrong size,
money not conserved), crashes or hangs does: the exit status is then 1.

Default matrix: every structure (rbtree, skiplist, hashset: 4096 keys in
1..8192; list: 256 keys in 1..512; bank: 1024 accounts, 90% transfers, 10%
balance checks; hotbank: 8 accounts, 90% transfers, no balance checks) at
1 and 2 threads with 20% updates, plus the red-black tree at 1 and 2
threads with 100% updates; 1 s per run, 5 repetitions: 77 runs x 5 x 1 s,
about 6.5 minutes.  --quick: the red-black tree configurations
and the other structures at 2 threads only, 1 repetition of 300 ms (about
10 s).

Run it with Debian's /usr/bin/python3 from the repository root, after
`ninja -C build` (or `make bench`, `make demo`).
"""

import atexit
import os
import shutil
import statistics
import sys
import tempfile

from benchlib import (PLACEMENTS, BenchError, LoadMeter, Steady, add_runs,
                      command_line, emit, fmt_apc, fmt_rate, fmt_ratio,
                      fmt_same_round, machine_info, make_bar, name_list,
                      parse_args, print_bars, print_failures, print_machine,
                      ratio, resolve_builddir, round_robin, run_json,
                      runner_parser, same_round, steady_note)

VARIANTS = ("ame", "itm", "itm-stm", "ame-itm", "tinystm", "mutex", "seq")
# The itm binary on libitm's own STM: where the CPU has Intel RTM, libitm's
# default runs each transaction first as a hardware transaction (its HTM
# fast path, uninstrumented code, serial-mode fallback); this variant asks
# for its multi-lock write-through STM (ml_wt) instead, the software
# algorithm that libame-itm replaces.
ITM_STM_METHOD = "ml_wt"
# Run where built (meson -Dtinystm=DIR), never reported as missing.
OPTIONAL = ("tinystm",)
# Not run unless --tinystm is given.
TINYSTM_ITM = "tinystm-itm"
STRUCTURES = ("rbtree", "skiplist", "hashset", "list", "bank", "hotbank")
# The variants linked with their STM statically, run at the code
# placements (benchlib.PLACEMENTS) in turn: where the same code lies moved
# the hot bank at one thread by 3-8 % (docs/stm.md).
PLACED = ("ame", "tinystm")

# The parameters of each structure's configurations (threads and update
# percent are added per configuration).
BASES = {
    "rbtree": {"prog": "intset", "s": "rbtree", "i": 4096, "r": 8192},
    "skiplist": {"prog": "intset", "s": "skiplist", "i": 4096, "r": 8192},
    "hashset": {"prog": "intset", "s": "hashset", "i": 4096, "r": 8192},
    "list": {"prog": "intset", "s": "list", "i": 256, "r": 512},
    "bank": {"prog": "bank", "a": 1024, "T": 90, "c": 10},
    # Many short transactions on a few hot words: 8 accounts, no balance
    # checks (the rest of the operations read one account).
    "hotbank": {"prog": "bank", "a": 8, "T": 90, "c": 0},
}


def config_label(cfg):
    """A short human name: 'rbtree i=4096 r=8192 u=20%'."""
    if cfg["prog"] == "bank":
        return "bank a=%d T=%d%% c=%d%%" % (cfg["a"], cfg["T"], cfg["c"])
    return "%s i=%d r=%d u=%d%%" % (cfg["s"], cfg["i"], cfg["r"], cfg["u"])


def base_key(cfg):
    """What identifies a configuration apart from its thread count."""
    return tuple(sorted((k, v) for k, v in cfg.items() if k != "t"))


def build_matrix(args):
    """Return the list of configurations to run, in run order."""
    structures = args.structures
    threads = args.threads
    configs = []
    for s in structures:
        ts = threads
        if args.quick and not args.threads_given and s != "rbtree":
            ts = [t for t in threads if t > 1] or threads
        for t in ts:
            cfg = dict(BASES[s])
            if cfg["prog"] == "intset":
                cfg["u"] = args.update
            cfg["t"] = t
            configs.append(cfg)
        if s == "rbtree" and args.update != 100:
            for t in threads:
                cfg = dict(BASES[s], u=100, t=t)
                configs.append(cfg)
    return configs


# The directory whose libitm.so.1 is TinySTM's (set up by main()).
TINYSTM_LIBDIR = None


def binary(builddir, prog, variant, pad=0):
    if variant in (TINYSTM_ITM, "itm-stm"):
        variant = "itm"
    return os.path.join(builddir, "bench", "bench-%s-%s%s" % (
        prog, variant, "-p%d" % pad if pad else ""))


def code_placement(builddir, prog, variant, rep):
    """The bytes of padding of the binary that repetition rep runs: the
    placements in turn for ame and tinystm (0 where a build lacks the
    padded binaries), 0 for the others."""
    if variant not in PLACED:
        return 0
    pad = PLACEMENTS[rep % len(PLACEMENTS)]
    return pad if os.access(binary(builddir, prog, variant, pad),
                            os.X_OK) else 0


def command(builddir, cfg, variant, duration, seed, pad=0):
    cmd = [binary(builddir, cfg["prog"], variant, pad)]
    if variant == TINYSTM_ITM:
        cmd = ["env", "LD_LIBRARY_PATH=" + TINYSTM_LIBDIR] + cmd
    elif variant == "itm-stm":
        cmd = ["env", "ITM_DEFAULT_METHOD=" + ITM_STM_METHOD] + cmd
    for k, v in cfg.items():
        if k != "prog":
            cmd += ["-" + k, str(v)]
    cmd += ["-d", str(duration), "-S", str(seed)]
    return cmd


def run_one(cmd, duration):
    """Run one benchmark binary.  Return (result dict or None, error text)."""
    return run_json(cmd, 60 + 20 * duration / 1000.0)


def placement(rows):
    """Split each multi-thread row's runs by the line-transfer cost measured
    just before and after each: "near" when both were at most twice the
    cheapest measured in this invocation.  Adds line_ns (every measurement),
    near_runs, near_median and near_vs_1t to the rows; returns the
    cheapest and dearest measurement (None, None if there were none)."""
    every = [ns for r in rows for run in r.get("_runs", [])
             for ns in run.get("line_ns", [])]
    if not every:
        return None, None
    fastest = min(every)
    for r in rows:
        runs = [run for run in r.get("_runs", []) if "line_ns" in run]
        if r["threads"] < 2 or not runs:
            continue
        near = [run["ops_per_s"] for run in runs
                if max(run["line_ns"]) <= 2 * fastest]
        r["line_ns"] = [run["line_ns"] for run in runs]
        r["near_runs"] = len(near)
        r["near_median"] = statistics.median(near) if near else None
        r["near_vs_1t"] = (r["near_median"] / r["_base_1t"]
                           if near and r.get("_base_1t") else None)
    return fastest, max(every)


def print_placement(rows, fastest, dearest, steady=None):
    print()
    print("Moving a cache line between the two CPUs cost %.0f-%.0f ns "
          "around the multi-thread runs (bench-line-transfer, before and "
          "after each run); under a hypervisor it changes with where the "
          "host places the vCPUs, and every figure at 2+ threads moves with "
          "it.  %sRuns with both measurements at most %.0f ns (twice the "
          "cheapest), for reference -- the bars use every run kept:"
          % (fastest, dearest, (steady_note(steady) or "") +
             (" " if steady else ""), 2 * fastest))
    for r in rows:
        if "near_runs" not in r:
            continue
        print("  %-32s t=%d %-7s  near %d/%d runs: %s, 2t/1t %s"
              % (r["config"], r["threads"], r["variant"], r["near_runs"],
                 len(r["line_ns"]), fmt_rate(r["near_median"])
                 if r["near_median"] else "-", fmt_ratio(r["near_vs_1t"])))


def fmt_bar_ratio(x):
    """A ratio against a bar: three decimals, so that 1.797x does not show
    as the 1.80x it misses."""
    return "-" if x is None else "%.3fx" % x


def summarise(configs, variants_for, results, failures):
    """Return one row per (configuration, variant) with medians and ratios."""
    rows = []
    med = {}
    for ci, cfg in enumerate(configs):
        for v in variants_for[ci]:
            runs = results.get((ci, v), [])
            rates = [r["ops_per_s"] for r in runs]
            apcs = [r["aborts_per_commit"] for r in runs
                    if r.get("aborts_per_commit") is not None]
            row = {
                "config": config_label(cfg),
                "params": cfg,
                "threads": cfg["t"],
                "variant": v,
                "runs": len(rates),
                "failed": failures.get((ci, v), 0),
                "ops_per_s": rates,
                "reps": [r.get("rep") for r in runs],
                "placements": sorted({r.get("pad", 0) for r in runs}),
                "median": statistics.median(rates) if rates else None,
                "min": min(rates) if rates else None,
                "max": max(rates) if rates else None,
                "aborts_per_commit":
                    statistics.median(apcs) if apcs else None,
                "_runs": runs,
            }
            med[(base_key(cfg), cfg["t"], v)] = row["median"]
            rows.append(row)

    for row in rows:
        cfg, v, t = row["params"], row["variant"], row["threads"]
        key = base_key(cfg)
        row["vs_seq"] = ratio(row["median"], med.get((key, 1, "seq")))
        row["vs_itm"] = (ratio(row["median"], med.get((key, t, "itm")))
                         if v != "itm" else None)
        row["vs_ame"] = (ratio(row["median"], med.get((key, t, "ame")))
                         if v == "ame-itm" else None)
        row["vs_itm_stm"] = (ratio(row["median"],
                                   med.get((key, t, "itm-stm")))
                             if v in ("ame", "ame-itm") else None)
        # ame against TinySTM's own API; tinystm-itm (TinySTM's GCC ABI
        # layer) against the same, what the ABI costs TinySTM; ame-itm
        # against tinystm-itm, the two ABI layers side by side.
        row["vs_tinystm"] = (ratio(row["median"],
                                   med.get((key, t, "tinystm")))
                             if v in ("ame", TINYSTM_ITM) else None)
        row["vs_tinystm_itm"] = (ratio(row["median"],
                                       med.get((key, t, TINYSTM_ITM)))
                                 if v == "ame-itm" else None)
        row["vs_1t"] = (ratio(row["median"], med.get((key, 1, v)))
                        if t > 1 else None)
        row["_base_1t"] = med.get((key, 1, v))
    return rows


def find_row(rows, structure, update, threads, variant):
    for r in rows:
        p = r["params"]
        if (p.get("s") == structure and p.get("u") == update
                and r["threads"] == threads and r["variant"] == variant):
            return r
    return None


def evaluate_bars(rows, htm):
    """The figures the project is held to (htm: whether the CPU has RTM,
    for the notes on the bars against libitm).  Return a list of dicts."""
    bars = []

    def bar(name, figure, op, target, fmt, note=None):
        bars.append(make_bar(name, figure, op, target, fmt, note))

    def rounds(row, other):
        # The bar's ratio within each repetition, for its note (the bar
        # itself is the ratio of the medians).
        pairs = same_round(row, other)
        return "same-round ratios %s" % fmt_same_round(pairs) if pairs \
            else None

    def notes(*parts):
        return "; ".join(p for p in parts if p) or None

    r1 = find_row(rows, "rbtree", 20, 1, "ame")
    r2 = find_row(rows, "rbtree", 20, 2, "ame")
    r100 = find_row(rows, "rbtree", 100, 2, "ame")
    bar("rbtree 20% upd, 1 thread: ame vs seq",
        r1 and r1["vs_seq"], ">=", 0.6, fmt_bar_ratio)
    bar("rbtree 20% upd, 2 threads: ame vs itm",
        r2 and r2["vs_itm"], ">=", 2.0, fmt_bar_ratio,
        note=notes(rounds(r2, find_row(rows, "rbtree", 20, 2, "itm")),
                   itm_note(r2, htm)))
    bar("rbtree 20% upd: ame 2 threads / 1 thread",
        r2 and r2["vs_1t"], ">=", 1.8, fmt_bar_ratio)
    bar("rbtree 100% upd, 2 threads: ame vs itm",
        r100 and r100["vs_itm"], ">=", 2.0, fmt_bar_ratio,
        note=notes(rounds(r100, find_row(rows, "rbtree", 100, 2, "itm")),
                   itm_note(r100, htm)))
    bar("rbtree 100% upd, 2 threads: ame aborts/commit",
        r100 and r100["aborts_per_commit"], "<=", 0.1,
        lambda x: fmt_apc(x, none="n/a"))
    # GCC's TM ABI on ame (libame-itm), the same -fgnu-tm objects as itm.
    # Where TinySTM's own ABI layer ran too, the ame-itm vs ame bar's note
    # gives what the same ABI costs TinySTM against its own API.
    for u in (20, 100):
        ri = find_row(rows, "rbtree", u, 2, "ame-itm")
        rt = find_row(rows, "rbtree", u, 2, TINYSTM_ITM)
        bar("rbtree %d%% upd, 2 threads: ame-itm vs itm" % u,
            ri and ri["vs_itm"], ">=", 2.0, fmt_bar_ratio,
            note=notes(rounds(ri, find_row(rows, "rbtree", u, 2, "itm")),
                       itm_note(ri, htm)))
        bar("rbtree %d%% upd, 2 threads: ame-itm vs ame" % u,
            ri and ri["vs_ame"], ">=", 0.8, fmt_bar_ratio,
            note=notes(rounds(ri, find_row(rows, "rbtree", u, 2, "ame")),
                       abi_note(ri, rt)))
    return bars


def itm_note(row, htm):
    """The same-run context of a bar against libitm: what libitm ran (its
    HTM fast path where the CPU has RTM) and the row against libitm's own
    STM (itm-stm) when that ran."""
    notes = []
    if htm:
        notes.append("this CPU has Intel RTM: libitm's default ran its "
                     "transactions as hardware transactions, with serial "
                     "fallback")
    if row is not None and row.get("vs_itm_stm") is not None:
        notes.append("against libitm's own STM (itm-stm, ITM_DEFAULT_METHOD="
                     "%s) %s" % (ITM_STM_METHOD,
                                 fmt_ratio(row["vs_itm_stm"])))
    return "; ".join(notes) or None


def abi_note(ame_itm, tinystm_itm):
    """The same-run comparison for an ame-itm vs ame bar: TinySTM's GCC ABI
    layer against TinySTM's own API, and ame-itm against it; None when
    tinystm-itm or tinystm did not run."""
    if ame_itm is None or tinystm_itm is None or \
            tinystm_itm.get("vs_tinystm") is None:
        return None
    return ("same run: TinySTM's own ABI layer vs TinySTM's API %s; "
            "ame-itm vs TinySTM's ABI layer %s" % (
                fmt_ratio(tinystm_itm["vs_tinystm"]),
                fmt_ratio(ame_itm.get("vs_tinystm_itm"))))


def print_table(rows, bars, failures, settings, machine):
    print("STM benchmarks: %d x %d ms per run, median of the runs; "
          "%s CPUs (%s)" % (settings["reps"], settings["duration_ms"],
                            machine["cpus"], machine["cpu"]))
    print_machine(None, machine, worst="2 threads")
    if len(settings.get("placements", [])) > 1:
        print("Code placements: ame and tinystm linked with %s bytes of code "
              "between the benchmark and the STM library, one per "
              "repetition in turn." % ", ".join(
                  str(k) for k in settings["placements"]))
    print("x seq: against seq at 1 thread; x itm, x itm-stm, x ame, x tiny, "
          "x tiny-itm: against itm, itm-stm, ame, tinystm, tinystm-itm at "
          "the same thread count; 2t/1t: against the same variant at 1 "
          "thread.  itm-stm: the itm binary on libitm's own STM "
          "(ITM_DEFAULT_METHOD=%s)%s." % (
              ITM_STM_METHOD,
              "; this CPU has Intel RTM, which libitm's default (itm) uses "
              "for hardware transactions" if machine.get("rtm") else ""))
    head = ("configuration", "thr", "variant", "ops/s", "min-max",
            "aborts/commit", "x seq", "x itm", "x itm-stm", "x ame",
            "x tiny", "x tiny-itm", "2t/1t")
    table = [head]
    for r in rows:
        if r["median"] is None:
            spread = "-"
        else:
            spread = "%s-%s" % (fmt_rate(r["min"]), fmt_rate(r["max"]))
        rate = fmt_rate(r["median"])
        if r["failed"]:
            rate = "FAILED" if r["median"] is None else rate + " (FAILED)"
        table.append((r["config"], str(r["threads"]), r["variant"],
                      rate, spread,
                      fmt_apc(r["aborts_per_commit"], none="n/a"),
                      fmt_ratio(r["vs_seq"]), fmt_ratio(r["vs_itm"]),
                      fmt_ratio(r.get("vs_itm_stm")),
                      fmt_ratio(r.get("vs_ame")),
                      fmt_ratio(r.get("vs_tinystm")),
                      fmt_ratio(r.get("vs_tinystm_itm")),
                      fmt_ratio(r["vs_1t"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    prev = None
    for n, row in enumerate(table):
        if n > 1 and (row[0], row[1]) != prev:
            print()
        prev = (row[0], row[1])
        cells = [row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i])
                 for i in range(len(head))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    tiny = [r for r in rows if r["variant"] == "ame"
            and r.get("vs_tinystm") is not None]
    if tiny:
        print()
        print("ame / tinystm (ratio of the medians, then within each "
              "repetition: median (range); above 1: ame ahead):")
        for r in tiny:
            other = next((o for o in rows if o["config"] == r["config"]
                          and o["threads"] == r["threads"]
                          and o["variant"] == "tinystm"), None)
            print("  %-32s t=%d  %s  %s" % (
                r["config"], r["threads"], fmt_bar_ratio(r["vs_tinystm"]),
                fmt_same_round(same_round(r, other))))
    print()
    print_bars(bars, width=10)
    print_failures(failures, what=lambda f: "%s  %s t=%d" % (
        f["variant"], f["config"], f["threads"]))


def print_report(d):
    """The human-readable form of one run (also for --show FILE)."""
    print_table(d["results"], d["bars"], d["failures"], d["settings"],
                d["machine"])
    lt = d["machine"].get("line_transfer_ns")
    if lt:
        print_placement(d["results"], lt["min"], lt["max"],
                        d["machine"].get("steady"))


def main():
    ap = runner_parser(__doc__, "build", epilog_from=2, results=True)
    add_runs(ap, "fewer configurations (structures other than rbtree at "
             "2 threads only, unless --threads is given), 1 repetition of "
             "300 ms", (5, 1), (1000, 300), "milliseconds per run",
             metavar="MS")
    ap.add_argument("--structures", default=",".join(STRUCTURES),
                    type=name_list(STRUCTURES, "structure"),
                    help="comma-separated subset of %s" % ",".join(STRUCTURES))
    ap.add_argument("--threads", default=None,
                    type=lambda s: sorted({int(x) for x in s.split(",")}),
                    help="comma-separated thread counts (default 1,2; the "
                         "100%% update rbtree runs at each count)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    type=name_list(VARIANTS, "variant"),
                    help="comma-separated subset of %s" % ",".join(VARIANTS))
    ap.add_argument("--update", type=int, default=20, metavar="PCT",
                    help="update percent of the intset runs (default 20)")
    ap.add_argument("--seed", type=int, default=1,
                    help="seed of the first repetition (default 1)")
    ap.add_argument("--tinystm", metavar="DIR",
                    help="also run the itm binaries on TinySTM's GCC ABI "
                         "library (variant %s): DIR is a TinySTM source "
                         "tree built with `make -C DIR/abi/gcc`" % TINYSTM_ITM)
    args = parse_args(ap, print_report)
    args.threads_given = args.threads is not None
    if args.threads is None:
        args.threads = [1, 2]
    if args.reps < 1 or args.duration < 1 or min(args.threads) < 1:
        ap.error("--reps, --duration and --threads must be positive")

    builddir = resolve_builddir(args.builddir, need="bench")
    if builddir is None:
        sys.exit("stm_bench: no %s/bench: build first (ninja -C %s)"
                 % (args.builddir, args.builddir))

    global TINYSTM_LIBDIR
    if args.tinystm:
        lib = os.path.join(os.path.abspath(args.tinystm), "abi", "gcc",
                           "libitm.so")
        if not os.path.exists(lib):
            sys.exit("stm_bench: no %s: build it first (make -C %s/abi/gcc)"
                     % (lib, args.tinystm))
        TINYSTM_LIBDIR = tempfile.mkdtemp(prefix="stm_bench-tinystm-")
        atexit.register(shutil.rmtree, TINYSTM_LIBDIR, True)
        os.symlink(lib, os.path.join(TINYSTM_LIBDIR, "libitm.so.1"))
        args.variants = list(args.variants) + [TINYSTM_ITM]

    configs = build_matrix(args)
    variants_for = []
    skipped = set()
    for cfg in configs:
        vs = []
        for v in args.variants:
            if v == "seq" and cfg["t"] != 1:
                continue
            if not os.access(binary(builddir, cfg["prog"], v), os.X_OK):
                if v not in OPTIONAL:
                    skipped.add("bench-%s-%s" % (cfg["prog"], v))
                continue
            vs.append(v)
        variants_for.append(vs)
    if skipped:
        print("stm_bench: not built here, skipped: %s"
              % ", ".join(sorted(skipped)), file=sys.stderr)

    machine = machine_info()
    meter = LoadMeter()
    failures = []

    def pad(key, rep):
        return code_placement(builddir, configs[key[0]]["prog"], key[1], rep)

    def cmd(key, rep):
        ci, v = key
        return command(builddir, configs[ci], v, args.duration,
                       args.seed + rep, pad(key, rep))

    steady = Steady(builddir)

    def run(key, rep):
        def once():
            res, err = run_one(cmd(key, rep), args.duration)
            if err is not None:
                raise BenchError(err)
            return res
        if configs[key[0]]["t"] > 1:
            res, line_ns = steady.run(once)
            if line_ns is not None:
                res["line_ns"] = line_ns
        else:
            res = once()
        res["rep"] = rep
        res["pad"] = pad(key, rep)
        return res

    def again(key, rep):
        res = run(key, rep)
        return res, res.get("line_ns")

    def keep(key, rep, res):
        runs = results[key]
        runs[next(i for i, old in enumerate(runs) if old["rep"] == rep)] = res

    def describe(key):
        cfg = configs[key[0]]
        return "%-40s %-7s t=%d" % (config_label(cfg), key[1], cfg["t"])

    def failed(key, rep, err):
        cfg = configs[key[0]]
        failures.append({"index": key, "config": config_label(cfg),
                         "threads": cfg["t"], "variant": key[1],
                         "error": err, "command": " ".join(cmd(key, rep))})

    keys = [(ci, v) for ci in range(len(configs)) for v in variants_for[ci]]
    try:
        results = round_robin(keys, args.reps, run, describe, failed)
        steady.retake([(key, res["rep"], res.get("line_ns"))
                       for rep in range(args.reps) for key in keys
                       for res in results.get(key, [])
                       if res["rep"] == rep and configs[key[0]]["t"] > 1],
                      again, keep, failed)
    except KeyboardInterrupt:
        print("\nstm_bench: interrupted", file=sys.stderr)
        return 130

    failed_runs = {}
    for f in failures:
        failed_runs[f["index"]] = failed_runs.get(f["index"], 0) + 1
        del f["index"]
    rows = summarise(configs, variants_for, results, failed_runs)
    bars = evaluate_bars(rows, machine.get("rtm"))
    fastest, dearest = placement(rows)
    for r in rows:
        del r["_runs"], r["_base_1t"]
    settings = {"reps": args.reps, "duration_ms": args.duration,
                "quick": args.quick, "builddir": builddir,
                "placements": sorted({k for r in rows
                                      for k in r["placements"]}),
                "seed": args.seed, "command": command_line()}
    machine["other_cpus"] = meter.others()
    machine["line_transfer_ns"] = (None if fastest is None
                                   else {"min": fastest, "max": dearest})
    if fastest is not None:
        machine["steady"] = steady.summary()
    return emit(args, {"settings": settings, "machine": machine,
                       "results": rows, "bars": bars, "failures": failures},
                print_report)


if __name__ == "__main__":
    sys.exit(main())
