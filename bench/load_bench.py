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
import os
import sys

from benchlib import (LoadMeter, Server, ServerSession, add_runs,
                      command_line, emit, fmt_rate, fmt_ratio, fmt_us,
                      free_port, int_list, machine_info, med, parse_args,
                      print_bars, print_failures, print_machine, print_rows,
                      ratio, resolve_builddir, round_robin, run_ame_load,
                      run_wrk, runner_parser, wait_quiet)
from reactor_bench import Tools

LOW, HIGH = 0.85, 1.15


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
                d, cpu, command = run_ame_load(
                    ame, port, args.threads, args.connections, args.duration,
                    tmpdir)
                errors = d.get("errors", {}).get("total", 0) + sum(
                    n for code, n in d.get("status", {}).items()
                    if not code.startswith("2"))
                out["ame"] = {"rps": d["requests_per_s"],
                              "requests": d["requests"], "errors": errors,
                              "cpu_s": cpu, "command": command}
            srv.check_running("the run")
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
        row["ratio"] = ratio(row["ame"]["rps_median"],
                             row["wrk"]["rps_median"])
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
    """The human-readable form of one run (also for --show FILE)."""
    s = d["settings"]
    print_machine("ame load vs wrk", d["machine"])
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
    print_failures(d["failures"])


def main():
    ap = runner_parser(__doc__, "build-release", results=True,
                       quiet_wait=True)
    add_runs(ap, "1 repetition of 2 s", (5, 1), (5, 2),
             "seconds per client run")
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
    args = parse_args(ap, print_report)
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
    failures = []

    def failed(w, rep, err):
        failures.append({"what": "server -w %d, repetition %d" % (w, rep + 1),
                         "error": err})

    with ServerSession("load_bench") as session:

        def run(w, rep):
            # The clients' order alternates between repetitions.
            order = ("wrk", "ame") if rep % 2 == 0 else ("ame", "wrk")
            return run_pair(tools, ame, w, order, args, session.tmpdir)

        pairs = round_robin(args.workers, args.reps, run,
                            lambda w: "server -w %d" % w, failed, "load")
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    rows = summarize(args.workers, pairs)
    d = {"settings": {"reps": args.reps, "duration_s": args.duration,
                      "threads": args.threads,
                      "connections": args.connections,
                      "workers": args.workers, "quick": args.quick,
                      "builddir": builddir, "command": command_line()},
         "machine": machine, "rows": rows, "bars": evaluate_bars(rows),
         "failures": failures}
    return emit(args, d, print_report)


if __name__ == "__main__":
    sys.exit(main())
