#!/usr/bin/python3
"""ame against TinySTM on STAMP's applications (optional: needs a STAMP tree
and a TinySTM tree, both fetched and built outside this repository).

STAMP, the Stanford transactional applications (genome, intruder, kmeans,
labyrinth, ssca2, vacation, yada), reaches its STM through the TL2-style
STM_* macros of a header named stm.h.  This runner compiles each
application three ways from the STAMP tree's own sources, into
BUILDDIR/bench/stamp/: with bench/stamp/ame/stm.h (ame's API, linked
statically against BUILDDIR's libame.a), with bench/stamp/tinystm/stm.h
(TinySTM's own API, its default build), and sequential (no STM; one
thread).  Each STM build is linked once per code placement (PLACEMENTS:
that many bytes of padding between the application's objects and the STM
library), and repetition i runs placement i mod 4 of both.  It then runs
every application at 1 and 2 threads, interleaved and alternating the
order on every other repetition, and reports the median of the time each
application prints for its parallel phase, with ame's speed against
TinySTM's and against the sequential program's.

Without --stamp DIR (or $STAMP, or a tree at ../stamp beside this
checkout) or without --tinystm DIR (or $TINYSTM, or ../tinystm), it says
what is missing and writes a result marked skipped: nothing fails.

Each application checks its own result where it has a check (genome's
sequence, intruder's attacks found, labyrinth's paths, vacation's tables,
yada's mesh); a run that crashes, hangs or fails its check fails the
runner (exit status 1).

Run it with Debian's /usr/bin/python3 from the repository root after
`ninja -C build-release`, or through `make bench STAMP=DIR TINYSTM=DIR`.
"""

import functools
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys

from benchlib import (PLACEMENTS, REPO, BenchError, LoadMeter, Steady,
                      command_line, emit, fmt_ratio, int_list, machine_info,
                      name_list, parse_args, print_failures, print_machine,
                      print_rows, ratio, resolve_builddir, round_robin,
                      runner_parser, steady_note)

# (name, STAMP directory, arguments with {t} for the thread count, inputs
# to decompress into the build directory, the line that says the result
# was checked or None).  Sizes between STAMP's simulator and "+" inputs:
# a few tenths of a second per run on 2 CPUs.
APPS = (
    ("kmeans-high", "kmeans",
     "-m15 -n15 -t0.00001 -i {dir}/random-n16384-d24-c16.txt -p{t}",
     ["inputs/random-n16384-d24-c16.txt.gz"], None),
    ("kmeans-low", "kmeans",
     "-m40 -n40 -t0.00001 -i {dir}/random-n16384-d24-c16.txt -p{t}",
     ["inputs/random-n16384-d24-c16.txt.gz"], None),
    ("genome", "genome", "-g4096 -s32 -n524288 -t{t}", [],
     r"Sequence matches gene: yes"),
    ("intruder", "intruder", "-a10 -l16 -n32768 -s1 -t{t}", [], None),
    ("ssca2", "ssca2", "-s16 -i1.0 -u1.0 -l3 -p3 -t{t}", [], None),
    ("vacation-high", "vacation", "-n4 -q60 -u90 -r65536 -t131072 -c{t}",
     [], r"Checking tables\.\.\. done"),
    ("vacation-low", "vacation", "-n2 -q90 -u98 -r65536 -t131072 -c{t}",
     [], r"Checking tables\.\.\. done"),
    ("labyrinth", "labyrinth", "-i {src}/inputs/random-x128-y128-z3-n128.txt"
     " -t{t}", [], r"Verification passed"),
    ("yada", "yada", "-a20 -i {dir}/ttimeu10000.2 -t{t}",
     ["inputs/ttimeu10000.2.ele.gz", "inputs/ttimeu10000.2.node.gz",
      "inputs/ttimeu10000.2.poly.gz"], r"Final mesh is valid"),
)
APP_NAMES = tuple(a[0] for a in APPS)
VARIANTS = ("ame", "tinystm", "seq")
# Code placements (benchlib.PLACEMENTS): bytes of padding linked between
# an application's objects and its STM library.  Where code lies moves a
# program's time by about as much as some of the differences measured:
# yada at 2 threads on ame ran in 0.1380-0.1450 s over these four
# placements in one set of interleaved runs and 0.1355-0.1385 s in
# another (medians of five and of six runs).  Repetitions that each run
# another placement keep the median from hanging on one layout.  The
# sequential build has no library to move.
# The time each application prints for its parallel phase.
TIME = re.compile(r"(?:^Time\s*[=:]|Elapsed time\s*=|Time taken for all is)"
                  r"\s*([0-9.]+)", re.M)
# Intruder reports what it found; the two must agree.
INTRUDER = re.compile(r"Num attack\s*=\s*(\d+).*?Num found\s*=\s*(\d+)", re.S)


def find_tree(given, env, beside, marker):
    """The tree given on the command line, else in $env, else beside the
    checkout (../beside), if it holds marker; else None."""
    d = given or os.environ.get(env) or os.path.join(os.path.dirname(REPO),
                                                     beside)
    return os.path.abspath(d) if os.path.exists(os.path.join(d, marker)) \
        else None


def stamp_sources(stamp, app):
    """The C sources and extra flags of one STAMP application: SRCS and
    CFLAGS of its own Defines.common.mk (read by make, with $(LIB) as
    STAMP's lib/)."""
    script = ("LIB := %s\ninclude Defines.common.mk\n"
              "print: ; @echo '$(SRCS)'; echo '$(CFLAGS)'\n"
              % os.path.join(stamp, "lib"))
    p = subprocess.run(["make", "-s", "-C", os.path.join(stamp, app), "-f",
                        "-", "print"], input=script, capture_output=True,
                       text=True)
    lines = p.stdout.splitlines()
    if p.returncode != 0 or len(lines) != 2:
        raise BenchError("reading %s/Defines.common.mk failed: %s" % (
            app, p.stderr.strip()))
    srcs = [w if os.path.isabs(w) else os.path.join(stamp, app, w)
            for w in lines[0].split()]
    return srcs, lines[1].split()


def compile_run(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError("%s failed:\n%s" % (what, p.stderr[-2000:]))


@functools.lru_cache(maxsize=None)
def padding(builddir, k):
    """An object of k bytes of text (bench/pad.c, as the STM runner's
    drivers link), to link between an application and its library
    (compiled once per run); None for 0."""
    if k == 0:
        return None
    obj = os.path.join(builddir, "bench", "stamp", "pad-%d.o" % k)
    compile_run(["gcc", "-c", "-DAME_BENCH_PAD=%d" % k,
                 os.path.join(REPO, "bench", "pad.c"), "-o", obj],
                "compiling bench/pad.c for %d bytes" % k)
    return obj


def build(builddir, stamp, tinystm, app, variant):
    """Compile one application one way; return its binaries' paths, one
    per code placement (PLACEMENTS; one in all for the sequential build).
    The first, without padding, is BUILDDIR/bench/stamp/APP-VARIANT."""
    out = os.path.join(builddir, "bench", "stamp", "%s-%s" % (app, variant))
    objdir = out + ".objs"
    os.makedirs(objdir, exist_ok=True)
    srcs, flags = stamp_sources(stamp, app)
    cmd = ["gcc", "-O3", "-w", "-pthread", "-I" + os.path.join(stamp, "lib")]
    cmd += flags
    if variant == "ame":
        cmd += ["-DSTM", "-DAME_STM_INLINE",
                "-I" + os.path.join(REPO, "bench", "stamp", "ame"),
                "-I" + os.path.join(REPO, "stm", "include")]
        libs = [os.path.join(builddir, "stm", "libame.a")]
    elif variant == "tinystm":
        cmd += ["-DSTM", "-I" + os.path.join(REPO, "bench", "stamp",
                                             "tinystm"),
                "-I" + os.path.join(tinystm, "include")]
        libs = [os.path.join(tinystm, "lib", "libstm.a")]
    else:
        libs = []
    objs = []
    for i, src in enumerate(srcs):
        obj = os.path.join(objdir, "%02d-%s.o" % (
            i, os.path.splitext(os.path.basename(src))[0]))
        compile_run(cmd + ["-c", src, "-o", obj],
                    "building %s-%s" % (app, variant))
        objs.append(obj)
    exes = []
    for k in PLACEMENTS if libs else (0,):
        exe = out if k == 0 else "%s-p%d" % (out, k)
        pad = padding(builddir, k)
        compile_run(["gcc", "-pthread"] + objs + ([pad] if pad else []) +
                    ["-o", exe] + libs + ["-lm"],
                    "linking %s" % os.path.basename(exe))
        exes.append(exe)
    return exes


def unpack(builddir, stamp, app, inputs):
    """Decompress an application's inputs into the build directory once;
    return that directory."""
    d = os.path.join(builddir, "bench", "stamp", "inputs-" + app)
    os.makedirs(d, exist_ok=True)
    for rel in inputs:
        dst = os.path.join(d, os.path.basename(rel)[:-3])
        if not os.path.exists(dst):
            with gzip.open(os.path.join(stamp, app, rel), "rb") as f, \
                    open(dst + ".part", "wb") as g:
                shutil.copyfileobj(f, g)
            os.rename(dst + ".part", dst)
    return d


def run_app(exe, args, check, timeout):
    """Run one binary; return the time it printed, in seconds."""
    try:
        p = subprocess.run([exe] + args, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("timed out after %d s" % timeout)
    if p.returncode != 0:
        raise BenchError("exit status %d: %s" % (
            p.returncode, (p.stderr or p.stdout)[-300:].strip()))
    found = TIME.findall(p.stdout)
    if not found:
        raise BenchError("no time in the output: %s" % p.stdout[-300:])
    if check and not re.search(check, p.stdout):
        raise BenchError("its check failed: %s" % p.stdout[-300:])
    m = INTRUDER.search(p.stdout)
    if m and m.group(1) != m.group(2):
        raise BenchError("intruder found %s of %s attacks"
                         % (m.group(2), m.group(1)))
    return float(found[-1])


def summarise(apps, threads, variants, results, failures, reps, placed):
    rows = []
    med = {}
    for app in apps:
        for t in threads:
            for v in variants:
                if v == "seq" and t != 1:
                    continue
                times = results.get((app, t, v), [])
                m = statistics.median(times) if times else None
                med[(app, t, v)] = m
                rows.append({"app": app, "threads": t, "variant": v,
                             "runs": len(times), "seconds": times,
                             "reps": reps.get((app, t, v), []),
                             "placements": placed.get((app, t, v), []),
                             "median": m,
                             "min": min(times) if times else None,
                             "max": max(times) if times else None,
                             "failed": failures.get((app, t, v), 0)})
    for r in rows:
        if r["variant"] != "ame":
            continue
        a, t = r["app"], r["threads"]
        # Speeds: above 1 when ame takes less time.
        r["vs_tinystm"] = ratio(med.get((a, t, "tinystm")), r["median"])
        r["vs_seq"] = ratio(med.get((a, 1, "seq")), r["median"])
        r["vs_1t"] = (ratio(med.get((a, 1, "ame")), r["median"])
                      if t > 1 else None)
        r["tinystm_vs_1t"] = (ratio(med.get((a, 1, "tinystm")),
                                    med.get((a, t, "tinystm")))
                              if t > 1 else None)
    return rows


def geomean(xs):
    xs = [x for x in xs if x]
    return statistics.geometric_mean(xs) if xs else None


def geomeans(rows, threads):
    """ame's speed against TinySTM's, geometric mean over the applications
    at each thread count: {threads: ratio or None}."""
    return {t: geomean([r["vs_tinystm"] for r in rows
                        if r["variant"] == "ame" and r["threads"] == t])
            for t in threads}


def print_report(d):
    if d.get("skipped"):
        print("STAMP: skipped (%s)" % d["skipped"])
        return
    s = d["settings"]
    print("STAMP against TinySTM: %d repetitions, median of the times the "
          "applications print (seconds); %s CPUs (%s)"
          % (s["reps"], d["machine"]["cpus"], d["machine"]["cpu"]))
    if s.get("placements"):
        print("Code placements: %s bytes between each application and its "
              "STM library, one per repetition in turn."
              % ", ".join(str(k) for k in s["placements"]))
    print_machine(None, d["machine"], worst="2 threads")
    st = steady_note(d["machine"].get("steady"))
    if st:
        print(st)
    print("ame x tinystm, ame x seq: speed (inverse time) against TinySTM "
          "at the same thread count and the sequential program; above 1: "
          "ame faster.  2t/1t: speed-up of each STM from 1 to 2 threads.")
    by = {}
    for r in d["results"]:
        by[(r["app"], r["threads"], r["variant"])] = r
    head = ("application", "thr", "ame s", "tinystm s", "seq s",
            "ame x tinystm", "ame x seq", "ame 2t/1t", "tinystm 2t/1t")
    table = []

    def sec(r):
        if r is None or r["median"] is None:
            return "FAILED" if r and r["failed"] else "-"
        return "%.3f" % r["median"]

    for app in s["apps"]:
        for t in s["threads"]:
            a = by.get((app, t, "ame"), {})
            table.append((app, str(t), sec(by.get((app, t, "ame"))),
                          sec(by.get((app, t, "tinystm"))),
                          sec(by.get((app, t, "seq"))) if t == 1 else "",
                          fmt_ratio(a.get("vs_tinystm")),
                          fmt_ratio(a.get("vs_seq")),
                          fmt_ratio(a.get("vs_1t")),
                          fmt_ratio(a.get("tinystm_vs_1t"))))
    print_rows(head, table, right_from=2, group=lambda row: row[0])
    print()
    for t, g in sorted(d["geomean_vs_tinystm"].items(), key=lambda kv:
                       int(kv[0])):
        print("ame x tinystm at %s thread%s, geometric mean over the "
              "applications: %s" % (t, "s" if int(t) > 1 else "",
                                    fmt_ratio(g)))
    print_failures(d["failures"], what=lambda f: f["what"])


def main():
    ap = runner_parser(__doc__, "build-release", results=True)
    ap.add_argument("--quick", action="store_true",
                    help="one repetition instead of five")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions of every run (default 5; quick 1)")
    ap.add_argument("--stamp", default=None, metavar="DIR",
                    help="a STAMP source tree (default: $STAMP, or "
                         "../stamp beside this checkout)")
    ap.add_argument("--tinystm", default=None, metavar="DIR",
                    help="a built TinySTM tree (default: $TINYSTM, or "
                         "../tinystm beside this checkout)")
    ap.add_argument("--apps", default=",".join(APP_NAMES),
                    type=name_list(APP_NAMES, "application"),
                    help="comma-separated subset of %s" % ",".join(APP_NAMES))
    ap.add_argument("--threads", default=[1, 2], type=int_list,
                    help="comma-separated thread counts (default 1,2)")
    args = parse_args(ap, print_report)
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if args.reps < 1 or not args.threads or min(args.threads) < 1:
        ap.error("--reps and --threads must be positive")
    settings = {"reps": args.reps, "quick": args.quick, "apps": args.apps,
                "threads": args.threads, "placements": list(PLACEMENTS),
                "command": command_line()}

    builddir = resolve_builddir(args.builddir, need="stm")
    stamp = find_tree(args.stamp, "STAMP", "stamp",
                      os.path.join("lib", "tm.h"))
    tinystm = find_tree(args.tinystm, "TINYSTM", "tinystm",
                        os.path.join("lib", "libstm.a"))
    missing = []
    if builddir is None or not os.path.exists(
            os.path.join(builddir, "stm", "libame.a")):
        missing.append("no libame.a in %s/stm: build first" % args.builddir)
    if stamp is None:
        missing.append("no STAMP tree (lib/tm.h) at %s: --stamp DIR, $STAMP "
                       "or ../stamp" % (args.stamp or os.environ.get("STAMP")
                                        or "../stamp"))
    if tinystm is None:
        missing.append("no built TinySTM tree (lib/libstm.a) at %s: "
                       "--tinystm DIR, $TINYSTM or ../tinystm" % (
                           args.tinystm or os.environ.get("TINYSTM")
                           or "../tinystm"))
    if missing:
        print("stamp_bench: skipped: %s" % "; ".join(missing),
              file=sys.stderr)
        return emit(args, {"settings": settings, "machine": machine_info(),
                           "skipped": "; ".join(missing), "results": [],
                           "geomean_vs_tinystm": {}, "bars": [],
                           "failures": []}, print_report)

    apps = [a for a in APPS if a[0] in args.apps]
    exes, failures = {}, []
    os.makedirs(os.path.join(builddir, "bench", "stamp"), exist_ok=True)
    for name, src, _, _, _ in apps:
        for v in VARIANTS:
            if (src, v) in exes:
                continue
            try:
                exes[(src, v)] = build(builddir, stamp, tinystm, src, v)
            except BenchError as e:
                print("stamp_bench: %s" % e, file=sys.stderr)
                failures.append({"app": name, "threads": 0, "variant": v,
                                 "what": "building %s-%s" % (src, v),
                                 "error": str(e)})
    table = {a[0]: a for a in apps}
    dirs = {name: unpack(builddir, stamp, src, inputs)
            for name, src, _, inputs, _ in apps}

    keys = [(name, t, v) for name, src, _, _, _ in apps
            for t in args.threads for v in VARIANTS
            if (src, v) in exes and (v != "seq" or t == 1)]

    def argv(key):
        name, t, _ = key
        _, src, fmt, _, _ = table[name]
        return fmt.format(t=t, dir=dirs[name],
                          src=os.path.join(stamp, src)).split()

    reps = {}  # key: the repetitions that completed, in order
    placed = {}  # key: the code placement of each of them

    def exe(key, rep):
        builds = exes[(table[key[0]][1], key[2])]
        return builds[rep % len(builds)]

    lines = {}  # key: [before, after] around each of them (2+ threads)
    steady = Steady(builddir)

    def measure(key, rep):
        """(seconds, [before, after] or None): multi-thread runs are taken
        as the STM runner takes them (benchlib.Steady)."""
        def once():
            return run_app(exe(key, rep), argv(key), table[key[0]][4], 300)
        return steady.run(once) if key[1] > 1 else (once(), None)

    def run(key, rep):
        secs, line_ns = measure(key, rep)
        reps.setdefault(key, []).append(rep)
        lines.setdefault(key, []).append(line_ns)
        if key[2] != "seq":
            placed.setdefault(key, []).append(
                PLACEMENTS[rep % len(PLACEMENTS)])
        return secs

    def again(key, rep):
        got = measure(key, rep)
        return got, got[1]

    def keep(key, rep, got):
        i = reps[key].index(rep)
        results[key][i], lines[key][i] = got

    def failed(key, rep, err):
        failures.append({"app": key[0], "threads": key[1], "variant": key[2],
                         "what": "%s %s t=%d" % (key[2], key[0], key[1]),
                         "error": err, "command": " ".join(
                             [exe(key, rep)] + argv(key))})

    machine = machine_info()
    meter = LoadMeter()
    try:
        results = round_robin(keys, args.reps, run,
                              lambda k: "%-14s t=%d %s" % k, failed,
                              label="stamp", alternate=True)
        steady.retake([(key, rep, lines[key][reps[key].index(rep)])
                       for rep in range(args.reps) for key in keys
                       if key[1] > 1 and rep in reps.get(key, [])],
                      again, keep, failed)
    except KeyboardInterrupt:
        print("\nstamp_bench: interrupted", file=sys.stderr)
        return 130
    counts = {}
    for f in failures:
        k = (f["app"], f["threads"], f["variant"])
        counts[k] = counts.get(k, 0) + 1
    rows = summarise(args.apps, args.threads, VARIANTS, results, counts,
                     reps, placed)
    for r in rows:
        if r["threads"] > 1:
            r["line_ns"] = lines.get((r["app"], r["threads"], r["variant"]),
                                     [])
    machine["other_cpus"] = meter.others()
    if steady.fastest is not None:
        machine["steady"] = steady.summary()
    settings.update({"builddir": builddir, "stamp": stamp,
                     "tinystm": tinystm})
    return emit(args, {"settings": settings, "machine": machine,
                       "results": rows,
                       "geomean_vs_tinystm": geomeans(rows, args.threads),
                       "bars": [], "failures": failures}, print_report)


if __name__ == "__main__":
    sys.exit(main())
