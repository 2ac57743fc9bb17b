#!/usr/bin/python3
"""Run ame's reactor benchmarks against their baselines and print tables.

Two sections.  "scaling" (no network): bench-reactor-scaling runs M
independent events, each a reactor task doing W units of CPU work and a few
transactional reads and writes, at conflict rates 0, 1, 10 and 50% (the
share of events that write one shared hot word), at 1..cores workers, and
once per repetition the same events in a plain loop without reactor or STM;
the table gives events/s, the speedup over 1 worker and aborts per commit.
"http": the ame HTTP example (examples/c/http.c) at 1 and 2 workers, a plain
single-threaded libuv server (bench/plain_libuv_http.c), the same server
over uv_poll with its own output buffer ("poll", bench/plain_poll_http.c:
the way ame's streams, the reactor's and the Python binding's, buffer a
TCP stream, against libuv's uv_tcp_t in "plain") and nginx at 1 and 2 worker processes, all answering GET / with "Hello, world!\\n" on keep-alive
connections, driven by wrk -t1 -c50; the table gives requests/s and the
servers' CPU microseconds per request (from /proc/PID/stat), with ratios
against plain libuv and nginx.  Runs are interleaved round-robin and
repeated; figures are medians with the min-max over the repetitions.  A
"bars" section compares the figures the project is held to; missing a bar
never fails the run.  The exit status is 1 only if a benchmark reports a
broken invariant, crashes, hangs, or a server fails to start or to answer.

Default: both sections, 3 repetitions; scaling: 100000 events of 10 work
units (about 6.5 us of work each on the reference machine) for the plain
loop and 1 and 2 workers at 4 conflict rates, about 30 s; http: 6 servers
x 3 repetitions x 5 s of wrk, about 2 minutes.  --quick: 1 repetition, 20000 events, 2 s
of wrk (about 20 s in all).

Run it with Debian's /usr/bin/python3 from the repository root, after
`ninja -C build`.  It starts and stops every server itself; on error or
Ctrl-C it kills the process groups it started.
"""

import os
import resource
import shutil
import sys
import time

from benchlib import (BenchError, LoadMeter, Server, ServerCPU, ServerSession,
                      add_runs, check_http, command_line, descendants, emit,
                      find_nginx, float_list, fmt_apc, fmt_cpus, fmt_rate,
                      fmt_ratio, fmt_us, free_port, int_list, machine_busy,
                      machine_info, make_bar, med, name_list, nginx_command,
                      parse_args, print_bars,
                      print_failures, print_machine, print_rows, ratio,
                      resolve_builddir, round_robin, run_json, run_wrk,
                      runner_parser, wrk_summary)

SECTIONS = ("scaling", "http")
SERVERS = ("ame-1w", "ame-2w", "plain", "poll", "nginx-1w", "nginx-2w")
HELLO = b"Hello, world!\n"


# ---- the scaling section ----------------------------------------------------

def scaling_cmd(builddir, mode, workers, conflict, args, seed):
    cmd = [os.path.join(builddir, "bench", "bench-reactor-scaling"),
           "-n", str(args.events), "-w", str(args.work_units),
           "-p", "%g" % conflict, "-S", str(seed)]
    if args.access == "early":
        cmd += ["-e"]
    if mode == "plain":
        cmd += ["-m", "plain"]
    else:
        cmd += ["-t", str(workers)]
    return cmd


def run_scaling_one(cmd, timeout):
    """Run one scaling binary: (result dict or None, error text or None).
    The result gains "others_cpus": CPUs that other work on the machine used
    during the run (its busy time less the binary's own CPU time)."""
    busy0 = machine_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    result, err = run_json(cmd, timeout)
    wall = time.monotonic() - t0
    busy1 = machine_busy()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if result is not None:
        result["others_cpus"] = (
            None if busy0 is None or busy1 is None or wall <= 0
            else max(0.0, (busy1 - busy0 - own) / wall))
    return result, err


def scaling_section(args, builddir, failures):
    binary = os.path.join(builddir, "bench", "bench-reactor-scaling")
    if not os.access(binary, os.X_OK):
        print("reactor_bench: %s not built: scaling section skipped" % binary,
              file=sys.stderr)
        return None
    # Configurations: (conflict, mode, workers); plain first in each group.
    configs = []
    for c in args.conflicts:
        configs.append((c, "plain", 1))
        for w in args.workers:
            configs.append((c, "reactor", w))
    # A generous limit: the 1-worker run at its slowest, 20 times over.
    timeout = 60 + 20 * args.events * args.work_units * 1.5e-6

    def cmd(key, rep):
        c, mode, w = key
        return scaling_cmd(builddir, mode, w, c, args, args.seed + rep)

    def run(key, rep):
        res, err = run_scaling_one(cmd(key, rep), timeout)
        if err is not None:
            raise BenchError(err)
        return res

    def describe(key):
        return "p=%g%% %s w=%d" % key

    def failed(key, rep, err):
        failures.append({"section": "scaling", "what": describe(key),
                         "error": err, "command": " ".join(cmd(key, rep))})

    results = round_robin(configs, args.reps, run, describe, failed,
                          "scaling", args.quiet_wait)

    rows = []
    medians = {}
    for key in configs:
        c, mode, w = key
        runs = results.get(key, [])
        rates = [r["events_per_s"] for r in runs]
        row = {
            "conflict_pct": c, "mode": mode, "workers": w, "runs": len(runs),
            "events_per_s": rates, "median": med(rates),
            "min": min(rates) if rates else None,
            "max": max(rates) if rates else None,
            "aborts_per_commit": med([r["aborts_per_commit"] for r in runs]),
            "aborts": med([r["aborts"] for r in runs]),
            "irrevocable": med([r["irrevocable"] for r in runs]),
            "stolen": med([r["stolen"] for r in runs]),
            "event_work_us": med([r["event_work_us"] for r in runs]),
            "hot_events": runs[0]["hot_events"] if runs else None,
            "cpus_used": med([r["cpus_used"] for r in runs]),
            "cpu_us_per_event": med([r["cpu_us_per_event"] for r in runs]),
            "others_cpus": med([r["others_cpus"] for r in runs
                                if r.get("others_cpus") is not None]),
            "runs_detail": runs,
        }
        medians[key] = row["median"]
        rows.append(row)

    for row in rows:
        c, w = row["conflict_pct"], row["workers"]
        if row["mode"] == "reactor":
            row["speedup"] = ratio(row["median"], medians.get((c, "reactor", 1)))
            row["vs_plain"] = ratio(row["median"], medians.get((c, "plain", 1)))
        else:
            row["speedup"] = row["vs_plain"] = None
    work = [r["event_work_us"] for r in rows if r["event_work_us"]]
    return {"rows": rows, "event_work_us": med(work),
            "events": args.events, "work_units": args.work_units,
            "access": args.access}


def print_scaling(sec, reps):
    print("Reactor scaling: %d events as reactor tasks, %d work units each "
          "(%.1f us of work per event, measured), hot word accessed %s, "
          "%d repetition%s; median (min-max)" % (
              sec["events"], sec["work_units"], sec["event_work_us"] or 0,
              "after the work" if sec.get("access", "late") == "late"
              else "before and after the work (-e)", reps,
              "" if reps == 1 else "s"))
    print("speedup: events/s against the reactor at 1 worker, same conflict "
          "rate; x plain: against the plain loop (no reactor, no STM, "
          "1 thread).  CPUs: CPU time / wall time of the timed part; "
          "CPU us/ev: CPU time per event; other: CPUs used by other work on "
          "the machine during the run (above 0.2 the figures are disturbed).")
    table = []
    for r in sec["rows"]:
        spread = ("-" if r["median"] is None else
                  "%s-%s" % (fmt_rate(r["min"]), fmt_rate(r["max"])))
        table.append(("%g%%" % r["conflict_pct"],
                      "plain" if r["mode"] == "plain" else "reactor",
                      str(r["workers"]), fmt_rate(r["median"]), spread,
                      fmt_cpus(r["cpus_used"]), fmt_us(r["cpu_us_per_event"]),
                      fmt_apc(r["aborts_per_commit"]) if r["mode"] != "plain"
                      else "-",
                      fmt_ratio(r["speedup"]), fmt_ratio(r["vs_plain"]),
                      fmt_cpus(r["others_cpus"])))
    print_rows(("conflict", "mode", "workers", "events/s", "min-max", "CPUs",
                "CPU us/ev", "aborts/commit", "speedup", "x plain", "other"),
               table, 3, group=lambda row: row[0])


# ---- the http section -------------------------------------------------------


class Tools:
    """Where the servers and wrk are, and which are missing."""

    def __init__(self, args, builddir):
        self.ame = args.ame_http or os.path.join(builddir, "examples", "c",
                                                 "http")
        self.plain = os.path.join(builddir, "bench", "plain-libuv-http")
        self.poll = os.path.join(builddir, "bench", "plain-poll-http")
        self.nginx = find_nginx(args.nginx)
        self.wrk = args.wrk or shutil.which("wrk")
        if self.wrk is not None and not os.access(self.wrk, os.X_OK):
            self.wrk = None
        self.missing = {}
        if not os.access(self.ame, os.X_OK):
            self.missing["ame"] = "%s not built" % self.ame
        if not os.access(self.plain, os.X_OK):
            self.missing["plain"] = "%s not built" % self.plain
        if not os.access(self.poll, os.X_OK):
            self.missing["poll"] = "%s not built" % self.poll
        if self.nginx is None:
            self.missing["nginx"] = "nginx not found"

    def command(self, server, port, tmpdir):
        kind, _, w = server.partition("-")
        workers = int(w[:-1]) if w else 1
        if kind == "ame":
            return [self.ame, "-p", str(port), "-w", str(workers),
                    "--host", "127.0.0.1"]
        if kind == "plain":
            return [self.plain, str(port), "127.0.0.1"]
        if kind == "poll":
            return [self.poll, str(port), "127.0.0.1"]
        return nginx_command(self.nginx, tmpdir, port, workers,
                             "Hello, world!\n")


def run_http_one(tools, server, wrk_threads, args, tmpdir, do_probe):
    """Start server, optionally probe it, drive it with wrk, stop it.
    Return the measurement dict; raise BenchError on failure."""
    port = free_port()
    cmd = tools.command(server, port, tmpdir)
    srv = Server(cmd, os.path.join(tmpdir, "%s-%d.log" % (server, port)))
    try:
        srv.wait_port(port)
        info = check_http(port, HELLO) if do_probe else None
        # nginx starts its workers after it listens: give them a moment.
        time.sleep(0.2)
        pids = descendants(srv.proc.pid)
        window = ServerCPU(pids)
        res, wrk_cpu, wall = run_wrk(tools.wrk, port, wrk_threads,
                                     args.connections, args.duration, tmpdir)
        cpu_s = window.stop()
        srv.check_running("the run")
        n = res["requests"]
        if n == 0:
            raise BenchError("no request completed: %s" % srv.log_tail())
        res.update({
            "server": server, "wrk_threads": wrk_threads,
            "server_command": " ".join(cmd), "server_pids": len(pids),
            "server_cpu_s": cpu_s,
            "cpu_us_per_req": cpu_s * 1e6 / n,
            "server_cpus": cpu_s / wall,
            "wrk_cpu_s": wrk_cpu, "wrk_cpus": wrk_cpu / wall,
            "wrk_cpu_us_per_req": wrk_cpu * 1e6 / n,
            "others_cpus": window.others(wrk_cpu, wall),
            "response": info,
        })
        return res
    finally:
        srv.stop()


def http_section(args, builddir, failures, tmpdir):
    tools = Tools(args, builddir)
    if tools.wrk is None:
        print("reactor_bench: wrk not installed: http section skipped",
              file=sys.stderr)
        return {"skipped": "wrk not installed", "rows": [], "notes": []}
    notes = []
    servers = []
    for s in args.servers:
        kind = s.split("-")[0]
        if kind in tools.missing:
            continue
        servers.append(s)
    for kind, why in sorted(tools.missing.items()):
        notes.append("%s rows skipped: %s" % (kind, why))
        print("reactor_bench: %s rows skipped: %s" % (kind, why),
              file=sys.stderr)
    configs = [(s, t) for t in args.wrk_threads for s in servers]
    responses = {}

    def run(key, rep):
        s, t = key
        res = run_http_one(tools, s, t, args, tmpdir,
                           do_probe=s not in responses)
        if res["response"] is not None:
            responses[s] = res["response"]
        return res

    def describe(key):
        return "%s wrk -t%d" % key

    def failed(key, rep, err):
        failures.append({"section": "http", "what": describe(key),
                         "error": err, "command": " ".join(tools.command(
                             key[0], 8080, "TMPDIR"))})

    results = round_robin(configs, args.reps, run, describe, failed,
                          "http", args.quiet_wait)

    rows = []
    for key in configs:
        s, t = key
        runs = results.get(key, [])
        rows.append(dict(
            {"server": s, "wrk_threads": t,
             "workers": int(s.split("-")[1][:-1]) if "-" in s else 1,
             "response": responses.get(s)},
            **wrk_summary(runs)))
    by = {(r["server"], r["wrk_threads"]): r for r in rows}

    for r in rows:
        t = r["wrk_threads"]
        plain = by.get(("plain", t))
        ngx = by.get(("nginx-1w", t))
        r["cpu_vs_plain"] = ratio(r["cpu_median"],
                                  plain and plain["cpu_median"])
        r["rps_vs_nginx1"] = ratio(r["rps_median"], ngx and ngx["rps_median"])
    for s, info in sorted(responses.items()):
        notes.append("%s answers %d bytes: %s, headers %s" % (
            s, info["bytes"], info["status"], ", ".join(info["headers"])))
    return {"rows": rows, "notes": notes, "duration_s": args.duration,
            "connections": args.connections}


def print_http(sec, reps):
    if sec.get("skipped"):
        print("HTTP hello-world: skipped (%s)" % sec["skipped"])
        return
    print("HTTP hello-world: wrk -c%d -d%ds, %d repetition%s; median "
          "(min-max)" % (sec["connections"], sec["duration_s"], reps,
                         "" if reps == 1 else "s"))
    print("CPU us/req: the server's user+system CPU (all its threads and "
          "processes) per request completed; x plain: CPU/req against plain "
          "libuv; x nginx-1w: req/s against nginx with 1 worker (same wrk "
          "threads).  srv/wrk/other: CPUs used by the server, by wrk and by "
          "other work on the machine during the run.")
    table = []
    for r in sec["rows"]:
        if r["rps_median"] is None:
            rps = "FAILED"
            rspread = cspread = "-"
        else:
            rps = fmt_rate(r["rps_median"])
            rspread = "%s-%s" % (fmt_rate(r["rps_min"]), fmt_rate(r["rps_max"]))
            cspread = "%s-%s" % (fmt_us(r["cpu_min"]), fmt_us(r["cpu_max"]))
        table.append((r["server"], str(r["workers"]), "-t%d" % r["wrk_threads"],
                      rps, rspread, fmt_us(r["cpu_median"]), cspread,
                      "%.2f/%.2f/%.2f" % (r["server_cpus"] or 0,
                                          r["wrk_cpus"] or 0,
                                          r["others_cpus"] or 0),
                      str(r["errors"]),
                      fmt_ratio(r["cpu_vs_plain"]),
                      fmt_ratio(r["rps_vs_nginx1"])))
    print_rows(("server", "workers", "wrk", "req/s", "min-max", "CPU us/req",
                "min-max", "srv/wrk/other", "errors", "x plain",
                "x nginx-1w"), table, 3, group=lambda row: row[2])
    for n in sec["notes"]:
        print("note: " + n)


# ---- bars -------------------------------------------------------------------

def evaluate_bars(scaling, http):
    """The figures the project is held to.  Each bar says, when the rows
    behind it were measured while other work used more than 0.2 CPUs, how
    much (a MISS is then no verdict on ame)."""
    bars = []

    def bar(name, figure, op, target, rows):
        other = [r["others_cpus"] for r in rows
                 if r and r.get("others_cpus") is not None]
        note = None
        if other and max(other) > 0.2:
            note = "disturbed: other work used up to %.2f CPUs" % max(other)
        bars.append(make_bar(name, figure, op, target, note=note))

    def srow(c, w):
        if scaling is None:
            return None
        for r in scaling["rows"]:
            if (r["conflict_pct"] == c and r["mode"] == "reactor"
                    and r["workers"] == w):
                return r
        return None

    def hrow(server):
        for r in (http or {}).get("rows", []):
            if r["server"] == server and r["wrk_threads"] == 1:
                return r
        return None

    for c, target in ((0, 1.85), (1, 1.5)):
        r1, r2 = srow(c, 1), srow(c, 2)
        bar("scaling %d%% conflicts: 2 workers / 1 worker" % c,
            r2 and r2["speedup"], ">=", target, [r1, r2])
    ame1, plain, ngx1 = hrow("ame-1w"), hrow("plain"), hrow("nginx-1w")
    bar("http: ame 1 worker CPU/request vs plain libuv",
        ame1 and ame1["cpu_vs_plain"], "<=", 1.2, [ame1, plain])
    bar("http: ame 1 worker req/s vs nginx 1 worker",
        ame1 and ame1["rps_vs_nginx1"], ">=", 0.9, [ame1, ngx1])
    return bars


# ---- main -------------------------------------------------------------------


def main():
    ap = runner_parser(__doc__, "build", epilog_from=2, results=True,
                       quiet_wait=True)
    add_runs(ap, "1 repetition, 20000 events, 2 s of wrk", (3, 1), (5, 2),
             "seconds of wrk per http run")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    type=name_list(SECTIONS, "section"),
                    help="comma-separated subset of %s" % ",".join(SECTIONS))
    ap.add_argument("--events", type=int, default=None,
                    help="events per scaling run (default 100000; "
                         "quick 20000)")
    ap.add_argument("--work-units", type=int, default=10,
                    help="CPU work units per event (default 10)")
    ap.add_argument("--conflicts", type=float_list, default=[0, 1, 10, 50],
                    metavar="PCTS",
                    help="conflict rates in %% (default 0,1,10,50)")
    ap.add_argument("--access", choices=("late", "early"), default="late",
                    help="scaling: read the counter after the work (late, "
                         "the default) or before it (early: the whole event "
                         "is the conflict window; bench-reactor-scaling -e)")
    ap.add_argument("--workers", type=int_list, default=None,
                    help="scaling worker counts (default 1..cores)")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    type=name_list(SERVERS, "server"),
                    help="comma-separated subset of %s" % ",".join(SERVERS))
    ap.add_argument("--wrk-threads", type=int_list, default=[1],
                    metavar="N,..", help="wrk -t values (default 1)")
    ap.add_argument("--connections", type=int, default=50,
                    help="wrk -c (default 50)")
    ap.add_argument("--ame-http", default=None, metavar="PATH",
                    help="the ame HTTP example (default "
                         "BUILDDIR/examples/c/http), run as PATH -p PORT "
                         "-w WORKERS --host 127.0.0.1")
    ap.add_argument("--nginx", default=None, metavar="PATH",
                    help="nginx binary (default: on PATH or /usr/sbin)")
    ap.add_argument("--wrk", default=None, metavar="PATH",
                    help="wrk binary (default: on PATH)")
    ap.add_argument("--seed", type=int, default=1,
                    help="seed of the first scaling repetition (default 1)")
    args = parse_args(ap, print_report)
    if args.events is None:
        args.events = 20000 if args.quick else 100000
    if args.workers is None:
        args.workers = list(range(1, (os.cpu_count() or 1) + 1))
    if 1 not in args.workers:
        args.workers = [1] + args.workers  # the speedup's reference
    if (args.reps < 1 or args.duration < 1 or args.events < 1
            or args.work_units < 0 or args.connections < 1
            or min(args.workers) < 1 or min(args.wrk_threads) < 1):
        ap.error("counts must be positive")

    builddir = resolve_builddir(args.builddir, need="bench")
    if builddir is None:
        sys.exit("reactor_bench: no %s/bench: build first (ninja -C %s)"
                 % (args.builddir, args.builddir))

    machine = machine_info()
    meter = LoadMeter()
    failures = []
    scaling = http = None
    with ServerSession("reactor_bench") as session:
        if "scaling" in args.sections:
            scaling = scaling_section(args, builddir, failures)
        if "http" in args.sections:
            http = http_section(args, builddir, failures, session.tmpdir)
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    bars = evaluate_bars(scaling, http)
    settings = {"reps": args.reps, "duration_s": args.duration,
                "events": args.events, "work_units": args.work_units,
                "conflicts": args.conflicts, "workers": args.workers,
                "access": args.access,
                "servers": args.servers, "wrk_threads": args.wrk_threads,
                "connections": args.connections, "quick": args.quick,
                "quiet_wait_s": args.quiet_wait,
                "builddir": builddir, "seed": args.seed,
                "command": command_line()}
    return emit(args, {"settings": settings, "machine": machine,
                       "scaling": scaling, "http": http, "bars": bars,
                       "failures": failures}, print_report)


def print_report(d):
    """The human-readable form of one run (also for --show FILE)."""
    print_machine("ame reactor benchmarks", d["machine"], worst="2 workers")
    reps = d["settings"]["reps"]
    if d["scaling"]:
        print()
        print_scaling(d["scaling"], reps)
    if d["http"]:
        print()
        print_http(d["http"], reps)
    print()
    print_bars(d["bars"])
    print_failures(d["failures"], what=lambda f: "%s %s" % (f["section"],
                                                            f["what"]))


if __name__ == "__main__":
    sys.exit(main())
