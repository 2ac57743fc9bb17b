#!/usr/bin/python3
"""Cross-check `ame load` against wrk: the same HTTP server, loaded by one
and then the other with the same threads, connections and duration; both
saturate it, so their req/s should agree.

The server is ame's C HTTP example (BUILDDIR/examples/c/http -w W), one
process per repetition and worker count, loaded by `wrk -tT -cC -dDs` and
by `ame load -tT -cC -dDs --json` back to back, after 1 s of warm-up, in
an order that alternates between repetitions.  The table gives each
client's req/s (median, min-max) and its own CPU per request, and the
ratio ame load / wrk of the medians (and the range of the per-pair
ratios).  The bar (the multi-core issue's): within 15% (0.85-1.15).
Never a test: timings decide nothing in `make check`.

Default: -t2 -c50, 5 s, 5 repetitions, servers with 1 and 2 workers
(about 2 minutes).  --quick: 1 repetition of 2 s.  Run it with Debian's
/usr/bin/python3 after `ninja -C build-release`.
"""

import argparse
import json
import os
import subprocess
import sys

from benchlib import (LoadMeter, fmt_rate, machine_info, resolve_builddir,
                      runner_parser)
from reactor_bench import (BenchError, Server, ServerSession, Tools, fmt_ratio, fmt_us,
                           free_port, int_list, med, print_bars, print_rows,
                           run_wrk, wait_client, wait_quiet)

LOW, HIGH = 0.85, 1.15


def run_ame_load(ame, port, threads, conns, duration, tmpdir):
    """Run `ame load --json`; return (req/s, requests, errors, CPU s)."""
    out_path = os.path.join(tmpdir, "ame-load.json")
    cmd = [ame, "load", "http://127.0.0.1:%d/" % port, "-t", str(threads),
           "-c", str(conns), "-d", "%ds" % duration, "--json"]
    with open(out_path, "wb") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.DEVNULL)
        rc, ru = wait_client(p, duration + 30, "ame load")
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        d = json.loads(text)
    except ValueError:
        raise BenchError("ame load exit %d, no JSON: %s" % (rc, text[-200:]))
    errors = d.get("errors", {}).get("total", 0) + sum(
        n for code, n in d.get("status", {}).items()
        if not code.startswith("2"))
    return (d["requests_per_s"], d["requests"], errors,
            ru.ru_utime + ru.ru_stime, " ".join(cmd))


def run_pair(tools, ame, workers, order, args, tmpdir):
    """One server, both clients; return {"wrk": {...}, "ame": {...}}."""
    port = free_port()
    cmd = tools.command("ame-%dw" % workers, port, tmpdir)
    srv = Server(cmd, os.path.join(tmpdir, "http-%d.log" % port))
    out = {}
    try:
        srv.wait_port(port)
        for client in order:
            wait_quiet(args.quiet_wait)
            if client == "wrk":
                run_wrk(tools.wrk, port, args.threads, args.connections, 1,
                        tmpdir)
                res, cpu, _ = run_wrk(tools.wrk, port, args.threads,
                                      args.connections, args.duration, tmpdir)
                out["wrk"] = {"rps": res["rps"], "requests": res["requests"],
                              "errors": res["socket_errors"] + res["non2xx"],
                              "cpu_s": cpu, "command": res["command"]}
            else:
                run_ame_load(ame, port, args.threads, args.connections, 1,
                             tmpdir)
                rps, n, errors, cpu, command = run_ame_load(
                    ame, port, args.threads, args.connections, args.duration,
                    tmpdir)
                out["ame"] = {"rps": rps, "requests": n, "errors": errors,
                              "cpu_s": cpu, "command": command}
            if srv.proc.poll() is not None:
                raise BenchError("server exited (status %s): %s"
                                 % (srv.proc.returncode, srv.log_tail()))
        return out
    finally:
        srv.stop()


def summarize(workers, pairs):
    rows = []
    for w in workers:
        ps = [p for p in pairs.get(w, []) if "wrk" in p and "ame" in p]
        row = {"workers": w, "pairs": ps}
        for c in ("wrk", "ame"):
            rps = [p[c]["rps"] for p in ps]
            row[c] = {
                "rps_median": med(rps), "rps_min": min(rps, default=None),
                "rps_max": max(rps, default=None),
                "cpu_us_per_req": med([p[c]["cpu_s"] * 1e6 / p[c]["requests"]
                                       for p in ps if p[c]["requests"]]),
                "errors": sum(p[c]["errors"] for p in ps)}
        a, b = row["ame"]["rps_median"], row["wrk"]["rps_median"]
        row["ratio"] = a / b if a is not None and b else None
        per = [p["ame"]["rps"] / p["wrk"]["rps"] for p in ps
               if p["wrk"]["rps"]]
        row["pair_ratio_min"] = min(per, default=None)
        row["pair_ratio_max"] = max(per, default=None)
        rows.append(row)
    return rows


def evaluate_bars(rows):
    bars = []
    for r in rows:
        x = r["ratio"]
        if x is None:
            status, shown = "n/a", "not measured"
        else:
            status = "PASS" if LOW <= x <= HIGH else "MISS"
            shown = fmt_ratio(x)
        bars.append({"bar": "load: ame load / wrk req/s, server -w %d"
                     % r["workers"],
                     "target": "%s-%s" % (fmt_ratio(LOW), fmt_ratio(HIGH)),
                     "measured": x, "shown": shown, "status": status,
                     "note": None})
    return bars


def print_report(d):
    m, s = d["machine"], d["settings"]
    print("ame load vs wrk: %s CPUs (%s), load average %s at the start"
          % (m["cpus"], m["cpu"], " ".join(m["loadavg_at_start"] or ["?"])))
    other = m.get("other_cpus")
    if other is not None:
        print("Other work on the machine used %.2f CPUs on average during "
              "the run%s" % (other, " -- figures are disturbed"
                             if other > 0.2 else "."))
    print()
    print("Server: examples/c/http -w W.  Clients: wrk and ame load, -t%d "
          "-c%d -d%ds after 1 s of warm-up each, back to back on the same "
          "server, %d repetition%s; median (min-max).  CPU us/req: the "
          "client's own CPU per request.  ratio: ame load / wrk (medians; "
          "per-pair range)."
          % (s["threads"], s["connections"], s["duration_s"], s["reps"],
             "" if s["reps"] == 1 else "s"))
    table = []
    for r in d["rows"]:
        def cell(c):
            x = r[c]
            if x["rps_median"] is None:
                return ("FAILED", "-", "-")
            return (fmt_rate(x["rps_median"]), "%s-%s" % (
                fmt_rate(x["rps_min"]), fmt_rate(x["rps_max"])),
                fmt_us(x["cpu_us_per_req"]))
        pr = ("-" if r["pair_ratio_min"] is None else "%s-%s" % (
            fmt_ratio(r["pair_ratio_min"]), fmt_ratio(r["pair_ratio_max"])))
        table.append((str(r["workers"]),) + cell("wrk") + cell("ame") + (
            fmt_ratio(r["ratio"]), pr,
            "%d/%d" % (r["wrk"]["errors"], r["ame"]["errors"])))
    print_rows(("server -w", "wrk req/s", "min-max", "CPU us/req",
                "ame load req/s", "min-max", "CPU us/req", "ratio",
                "pairs", "errors wrk/ame"), table, 1)
    print()
    print_bars(d["bars"])
    for f in d["failures"]:
        print("FAILED: %s: %s" % (f["what"], f["error"]))


def main():
    ap = runner_parser(__doc__, "build-release", results=True)
    ap.add_argument("--quick", action="store_true",
                    help="short form: 1 repetition of 2 s")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions (default 5; quick 1)")
    ap.add_argument("--duration", type=int, default=None, metavar="S",
                    help="seconds per client run (default 5; quick 2)")
    ap.add_argument("--threads", type=int, default=2,
                    help="client threads, wrk -t and ame load -t (default 2)")
    ap.add_argument("--connections", type=int, default=50,
                    help="connections (default 50)")
    ap.add_argument("--workers", type=int_list, default=[1, 2],
                    metavar="W,..", help="server workers (default 1,2)")
    # reactor_bench.Tools reads these two.
    ap.add_argument("--ame-http", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--nginx", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--wrk", default=None, metavar="PATH",
                    help="wrk binary (default: on PATH)")
    args = ap.parse_args()
    if args.show:
        with open(args.show) as f:
            print_report(json.load(f))
        return 0
    args.reps = args.reps or (1 if args.quick else 5)
    args.duration = args.duration or (2 if args.quick else 5)
    if min(args.reps, args.duration, args.threads, args.connections,
           min(args.workers)) < 1:
        ap.error("counts must be positive")
    builddir = resolve_builddir(args.builddir)
    if builddir is None:
        sys.exit("load_bench: %s is not a build directory: build first "
                 "(meson setup %s -Dbuildtype=release && ninja -C %s)"
                 % (args.builddir, args.builddir, args.builddir))
    tools = Tools(args, builddir)
    ame = os.path.join(builddir, "cmd", "ame")
    if tools.wrk is None:
        sys.exit("load_bench: wrk not found (Debian: apt-get install wrk)")
    if "ame" in tools.missing or not os.access(ame, os.X_OK):
        sys.exit("load_bench: the HTTP example or the ame command is not "
                 "built in %s" % builddir)

    machine = machine_info()
    meter = LoadMeter()
    progress = sys.stderr.isatty()
    failures, pairs = [], {}
    with ServerSession("load_bench") as session:
        total = args.reps * len(args.workers)
        done = 0
        for rep in range(args.reps):
            order = ("wrk", "ame") if rep % 2 == 0 else ("ame", "wrk")
            for w in args.workers:
                done += 1
                if progress:
                    print("\r[load %d/%d] server -w %d   " % (done, total, w),
                          end="", file=sys.stderr, flush=True)
                try:
                    pairs.setdefault(w, []).append(
                        run_pair(tools, ame, w, order, args,
                                 session.tmpdir))
                except BenchError as e:
                    failures.append({"what": "server -w %d, repetition %d"
                                     % (w, rep + 1), "error": str(e)})
        if progress:
            print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    rows = summarize(args.workers, pairs)
    d = {"settings": {"reps": args.reps, "duration_s": args.duration,
                      "threads": args.threads,
                      "connections": args.connections,
                      "workers": args.workers, "quick": args.quick,
                      "builddir": builddir},
         "machine": machine, "rows": rows, "bars": evaluate_bars(rows),
         "failures": failures}
    if args.json:
        json.dump(d, sys.stdout, indent=1)
        print()
    else:
        print_report(d)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
