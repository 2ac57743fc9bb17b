#!/usr/bin/python3
"""ame.tasks (independent tasks, each one transaction, run on worker
processes over ame.shared) against the usual way of spreading work over
processes in Python, in one run, in two sections:

  wordcount  examples/python/wordcount.py's task (count one file's words,
             add them to a shared tally) over a corpus written by
             examples/python/corpus.py, with ame.tasks.run(workers=1) and
             (workers=2), against multiprocessing.Pool(2) mapping the files
             to Counters merged in the parent (per-file Counters, with
             imap_unordered), or each process counting its half of the
             files into one Counter (per-process Counters, two merged), and
             a plain loop in one process (no processes, no ame).  Each
             run's time includes starting its processes and reading the
             counts out as one dict, which must equal the plain loop's.
  overhead   the cost of an empty task: N calls of a function that does
             nothing, with ame.tasks.add + run(workers=2), with
             concurrent.futures.ProcessPoolExecutor(2).submit and with
             multiprocessing.Pool(2).apply_async (every result waited
             for); per task: (time for N - time for 1) / (N - 1), so that
             starting the processes does not count.

Runs are interleaved (every configuration once per repetition, the order
reversed on every other one); figures are medians with the min-max over
the repetitions, and ratios are taken between medians of the same run.  A
"bars" section compares them with those the project holds ame.tasks to;
missing a bar never fails the run.  The exit status is 1 if a run fails
(wrong counts, a task error, a worker that dies).

Default: 5 repetitions; wordcount over 128 files of 128 KiB; 20000 empty
tasks for ame.tasks and 4000 for the others: about 2 minutes.  --quick:
1 repetition, 32 files, 5000 and 1000 tasks: under a minute.  Run it with
Debian's /usr/bin/python3 after `ninja -C build-release`.
"""

import collections
import concurrent.futures
import multiprocessing
import os
import resource
import sys
import time

from benchlib import (BenchError, LoadMeter, REPO, ServerSession, ame_cpus,
                      command_line, emit, fmt_ratio, fmt_us, machine_info,
                      make_bar, med, name_list, parse_args, print_bars,
                      print_failures, print_machine, print_rows, ratio,
                      round_robin, runner_parser, use_ame_here)

SECTIONS = ("wordcount", "overhead")
EXAMPLES = os.path.join(REPO, "examples", "python")
WC_CONFIGS = ("plain loop", "ame.tasks 1w", "ame.tasks 2w",
              "Pool(2), per-file Counters", "Pool(2), per-process Counters")
OV_CONFIGS = ("ame.tasks", "ProcessPoolExecutor.submit",
              "Pool.apply_async")


def noop():
    """The empty task."""


def close(pool):
    """Stop a multiprocessing.Pool as a program that is done with it does:
    close() and join() (its workers exit; `with` would SIGTERM them)."""
    pool.close()
    pool.join()


def as_bench_error(fn, *args):
    """fn(*args), with an exception of a run (ame.tasks.TaskError,
    TaskFailed, a pool's error) raised as BenchError: a failed run."""
    try:
        return fn(*args)
    except BenchError:
        raise
    except Exception as e:
        raise BenchError("%s: %s" % (type(e).__name__, e))


# ---- wordcount ----------------------------------------------------------------

def count_file(path):
    """One file's words as a Counter (wordcount.count's counting, without
    the shared tally)."""
    import wordcount
    with open(path, encoding="utf-8", errors="replace") as f:
        return collections.Counter(wordcount.WORD.findall(f.read().lower()))


def count_files(paths):
    """The words of several files in one Counter."""
    total = collections.Counter()
    for p in paths:
        total.update(count_file(p))
    return total


def cpu_seconds():
    """CPU seconds used by this process and its reaped children (the
    workers of ame.tasks and of a Pool, joined before a run ends)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def wc_run(config, paths, rep, expected):
    """Count the corpus's words with config; return (seconds, details).
    The counts must equal expected."""
    import ame.shared
    import ame.tasks
    import wordcount
    details = {}
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    if config == "plain loop":
        counts = count_files(paths)
    elif config.startswith("ame.tasks"):
        table = "tasks_bench.wc.%s.%d" % (config.split()[-1], rep)
        for p in paths:
            ame.tasks.add(wordcount.count, p, table)
        ame.tasks.run(workers=int(config[-2]))
        counts = dict(ame.shared.counts(table).items())
        st = ame.tasks.stats()
        details = {"tasks": st["tasks"], "reruns": st["reruns"]}
    elif config == "Pool(2), per-file Counters":
        counts = collections.Counter()
        pool = multiprocessing.Pool(2)
        for c in pool.imap_unordered(count_file, paths):
            counts.update(c)
        close(pool)
    else:
        counts = collections.Counter()
        pool = multiprocessing.Pool(2)
        for c in pool.map(count_files, [paths[0::2], paths[1::2]]):
            counts.update(c)
        close(pool)
    dt = time.perf_counter() - t0
    details["cpu_s"] = cpu_seconds() - c0
    if dict(counts) != expected:
        raise BenchError("%s: the counts differ from the plain loop's "
                         "(%d distinct words, expected %d)"
                         % (config, len(counts), len(expected)))
    return dt, details


def wordcount_section(args, session, failures):
    sys.path.insert(0, EXAMPLES)
    import corpus
    paths = corpus.make(os.path.join(session.tmpdir, "corpus"), args.files,
                        args.kib)
    expected = dict(count_files(paths))
    results = round_robin(
        list(WC_CONFIGS), args.reps,
        lambda c, rep: as_bench_error(wc_run, c, paths, rep, expected),
        lambda c: "wordcount, %s" % c,
        lambda c, rep, e: failures.append(
            {"what": "wordcount %s rep %d" % (c, rep), "error": e}),
        label="tasks wordcount", quiet_wait=args.quiet_wait, alternate=True)
    rows = []
    mib = args.files * args.kib / 1024.0
    for c in WC_CONFIGS:
        runs = results.get(c)
        if not runs:
            continue
        secs = [r[0] for r in runs]
        row = {"config": c, "seconds": secs, "median_s": med(secs),
               "min_s": min(secs), "max_s": max(secs),
               "mib_per_s": mib / med(secs),
               "cpu_s": med([r[1]["cpu_s"] for r in runs])}
        if c.startswith("ame.tasks"):
            row["reruns"] = sum(r[1]["reruns"] for r in runs)
            row["tasks"] = sum(r[1]["tasks"] for r in runs)
        rows.append(row)
    by = {r["config"]: r for r in rows}
    plain = by.get("plain loop", {}).get("median_s")
    one = by.get("ame.tasks 1w", {}).get("median_s")
    one_cpu = by.get("ame.tasks 1w", {}).get("cpu_s")
    for r in rows:
        # Speed ratios: the other's time over this one's.
        r["x_plain"] = ratio(plain, r["median_s"])
        r["x_ame_1w"] = ratio(one, r["median_s"])
        # CPU against ame.tasks on 1 worker: what running in parallel
        # costs, which a busy machine does not hide.
        r["cpu_x_ame_1w"] = ratio(r["cpu_s"], one_cpu)
    return {"rows": rows, "files": args.files, "kib": args.kib,
            "words": sum(expected.values()), "distinct": len(expected)}


# ---- the cost of an empty task ------------------------------------------------

def ov_run(config, n):
    """Seconds to run n empty tasks with config, processes started and
    stopped included."""
    import ame.tasks
    t0 = time.perf_counter()
    if config == "ame.tasks":
        for _ in range(n):
            ame.tasks.add(noop)
        ame.tasks.run(workers=2)
        if ame.tasks.stats()["tasks"] != n:
            raise BenchError("ame.tasks ran %d tasks of %d"
                             % (ame.tasks.stats()["tasks"], n))
    elif config == "ProcessPoolExecutor.submit":
        with concurrent.futures.ProcessPoolExecutor(2) as ex:
            for f in [ex.submit(noop) for _ in range(n)]:
                f.result()
    else:
        pool = multiprocessing.Pool(2)
        for r in [pool.apply_async(noop) for _ in range(n)]:
            r.get()
        close(pool)
    return time.perf_counter() - t0


def overhead_section(args, failures):
    counts = {c: (args.tasks if c == "ame.tasks" else args.slow_tasks)
              for c in OV_CONFIGS}

    def run(config, rep):
        t1 = as_bench_error(ov_run, config, 1)
        tn = as_bench_error(ov_run, config, counts[config])
        return t1, tn, max(0.0, tn - t1) / (counts[config] - 1) * 1e6

    results = round_robin(
        list(OV_CONFIGS), args.reps, run, lambda c: "empty tasks, %s" % c,
        lambda c, rep, e: failures.append(
            {"what": "empty tasks %s rep %d" % (c, rep), "error": e}),
        label="tasks overhead", quiet_wait=args.quiet_wait, alternate=True)
    rows = []
    for c in OV_CONFIGS:
        runs = results.get(c)
        if not runs:
            continue
        us = [r[2] for r in runs]
        rows.append({"config": c, "tasks": counts[c], "us_per_task": us,
                     "median_us": med(us), "min_us": min(us),
                     "max_us": max(us),
                     "startup_ms": med([r[0] * 1e3 for r in runs])})
    ame_us = next((r["median_us"] for r in rows
                   if r["config"] == "ame.tasks"), None)
    for r in rows:
        r["x_ame"] = ratio(r["median_us"], ame_us)   # times ame's cost
    return {"rows": rows,
            "start_method": multiprocessing.get_start_method()}


# ---- the report ---------------------------------------------------------------

def bars_of(d):
    wc, ov = d.get("wordcount") or {}, d.get("overhead") or {}
    by = {r["config"]: r for r in wc.get("rows", [])}
    two = by.get("ame.tasks 2w", {}).get("median_s")
    pools = [by[c]["median_s"] for c in WC_CONFIGS
             if c.startswith("Pool") and c in by]
    bars = [
        make_bar("wordcount: 2 workers / 1 worker (speed)",
                 by.get("ame.tasks 2w", {}).get("x_ame_1w"), ">=", 1.7),
        make_bar("wordcount: 2 workers / the faster multiprocessing.Pool(2)"
                 " (speed)", ratio(min(pools), two) if pools else None,
                 ">=", 1.0),
    ]
    ovs = {r["config"]: r for r in ov.get("rows", [])}
    for c in OV_CONFIGS[1:]:
        bars.append(make_bar("empty task: %s cost / ame.tasks cost" % c,
                             ovs.get(c, {}).get("x_ame"), ">=", 10.0))
    return bars


def report(d):
    print_machine("tasks_bench", d["machine"])
    s = d["settings"]
    wc = d.get("wordcount")
    if wc:
        print()
        print("wordcount: %d files of %d KiB (%d words, %d distinct), "
              "counted into one dict; %d repetition(s)"
              % (wc["files"], wc["kib"], wc["words"], wc["distinct"],
                 s["reps"]))
        print()
        print_rows(["config", "seconds", "min-max", "MiB/s", "x plain loop",
                    "x ame.tasks 1w", "CPU s", "CPU x ame.tasks 1w",
                    "re-runs"],
                   [[r["config"], "%.3f" % r["median_s"],
                     "%.3f-%.3f" % (r["min_s"], r["max_s"]),
                     "%.2f" % r["mib_per_s"], fmt_ratio(r["x_plain"]),
                     fmt_ratio(r["x_ame_1w"]),
                     "-" if r.get("cpu_s") is None else "%.3f" % r["cpu_s"],
                     fmt_ratio(r.get("cpu_x_ame_1w")),
                     str(r["reruns"]) if "reruns" in r else "-"]
                    for r in wc["rows"]], right_from=1)
    ov = d.get("overhead")
    if ov:
        print()
        print("The cost of an empty task, 2 worker processes (start "
              "method %s):" % ov["start_method"])
        print()
        print_rows(["config", "tasks", "us/task", "min-max",
                    "x ame.tasks", "start+stop ms"],
                   [[r["config"], str(r["tasks"]), fmt_us(r["median_us"]),
                     "%s-%s" % (fmt_us(r["min_us"]), fmt_us(r["max_us"])),
                     fmt_ratio(r["x_ame"]), "%.1f" % r["startup_ms"]]
                    for r in ov["rows"]], right_from=1)
    print()
    print_bars(d["bars"])
    print_failures(d["failures"])


def main():
    ap = runner_parser(__doc__, "build-release", results=True,
                       quiet_wait=True)
    ap.add_argument("--quick", action="store_true",
                    help="short form: 1 repetition, 32 files, 5000 and "
                         "1000 empty tasks")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions of every run (default 5; quick 1)")
    ap.add_argument("--files", type=int, default=None,
                    help="wordcount: files in the corpus (default 128; "
                         "quick 32)")
    ap.add_argument("--sections", type=name_list(SECTIONS, "section"),
                    default=list(SECTIONS),
                    help="comma-separated: wordcount,overhead (default all)")
    ap.add_argument("--kib", type=int, default=128,
                    help="wordcount: KiB per file (default 128)")
    ap.add_argument("--tasks", type=int, default=None,
                    help="empty tasks for ame.tasks (default 20000; quick "
                         "5000)")
    ap.add_argument("--slow-tasks", type=int, default=None,
                    help="empty tasks for ProcessPoolExecutor and Pool "
                         "(default 4000; quick 1000)")
    args = parse_args(ap, report)
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if args.files is None:
        args.files = 32 if args.quick else 128
    if args.tasks is None:
        args.tasks = 5000 if args.quick else 20000
    if args.slow_tasks is None:
        args.slow_tasks = 1000 if args.quick else 4000
    args.builddir = use_ame_here("tasks_bench", args.builddir)
    failures = []
    machine = machine_info()
    meter = LoadMeter()
    out = {"machine": machine}
    with ServerSession("tasks_bench") as session:
        if "wordcount" in args.sections:
            out["wordcount"] = wordcount_section(args, session, failures)
        if "overhead" in args.sections:
            out["overhead"] = overhead_section(args, failures)
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    out["settings"] = {"command": command_line(), "reps": args.reps,
                       "files": args.files, "kib": args.kib,
                       "tasks": args.tasks, "slow_tasks": args.slow_tasks,
                       "sections": args.sections, "quick": args.quick,
                       "cpus": ame_cpus()}
    out["bars"] = bars_of(out)
    out["failures"] = failures
    return emit(args, out, report)


if __name__ == "__main__":
    sys.exit(main())
