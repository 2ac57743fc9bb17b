#!/usr/bin/python3
"""make demo: an ordinary twisted.web app on ame's worker processes against
Twisted's default reactor, measured with `ame load`.

It serves examples/python/web.py (a Site whose Resource answers
b"Hello, world!") with `ame run --workers W` for W = 1, 2, 4, ... below the
number of CPUs (3 s of load each) and then `--workers auto` (one worker per
CPU, 10 s), and then the same program with Twisted's default reactor in one
process (`/usr/bin/python3 examples/python/web.py --reactor default`, 10 s).
Each server is loaded with `ame load URL -c 50 -t 1 --json` after 1 s of
warm-up.  It prints a table -- requests/s, p99 latency, the server's CPU
microseconds per request (user + system time of every process of its tree:
the `ame run` supervisor and its workers, from /proc), and the ratio of
requests/s to the default reactor's -- and writes a plot of requests/s
against workers (build/demo.png; python3-matplotlib, Agg backend).

If this build's `ame` has no working `ame run` yet (`ame run --help` fails),
it says so and measures one stand-in instead: web.py --reactor ame in one
process.  Every server runs in its own process group and is stopped (TERM,
then KILL) before the next starts, on errors and on Ctrl-C; nothing is left
running.  Exit status: 0, 1 on an error (a server that does not start or
answer, a port in use, a failed load run), 130 if interrupted.

Run it with Debian's /usr/bin/python3 after `ninja -C build-release` (make
demo does both).
"""

import json
import os
import socket
import sys
import time

from benchlib import (AppServer, BenchError, REPO, ServerCPU, ServerSession,
                      ame_cpus, ame_env, ame_extension_built, ame_run_status,
                      check_http, fmt_rate, fmt_ratio, fmt_us, machine_info,
                      print_rows, resolve_builddir, run_ame_load,
                      runner_parser)

WEB = os.path.join(REPO, "examples", "python", "web.py")
BODY = b"Hello, world!"


def say(*a):
    print(*a, flush=True)


def port_in_use(port):
    """Why port is unusable (something accepts there, or it cannot be
    bound the way Twisted binds), or None if it is free."""
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return "something is listening on 127.0.0.1:%d" % port
    except OSError:
        pass
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        return "cannot bind 127.0.0.1:%d: %s" % (port, e.strerror)
    finally:
        s.close()
    return None


def wait_port_free(port, timeout=5.0):
    end = time.monotonic() + timeout
    while True:
        why = port_in_use(port)
        if why is None or time.monotonic() > end:
            return why
        time.sleep(0.1)


def measure(name, cmd, workers, duration, args, ame, tmpdir):
    """Serve with cmd, warm up, load for duration s; return a result dict.
    Raise BenchError on failure; the server is stopped in every case."""
    why = port_in_use(args.port)
    if why:
        raise BenchError("port %d is not free (%s): pass --port"
                         % (args.port, why))
    say("  %s: %s" % (name, " ".join(cmd)))
    srv = AppServer(cmd, os.path.join(tmpdir, "server-%d.log" % len(
        os.listdir(tmpdir))))
    try:
        srv.wait_port(args.port, timeout=30)
        check_http(args.port, BODY)
        load = (ame, args.port, args.threads, args.connections)
        run_ame_load(*load, args.warmup, tmpdir, ["--no-progress"])
        srv.check_running("the warm-up")
        pids = srv.remember()
        window = ServerCPU(pids)
        t0 = time.monotonic()
        res, load_cpu, _ = run_ame_load(*load, duration, tmpdir,
                                        ["--no-progress"])
        t1 = time.monotonic()
        cpu_s = window.stop()
        srv.check_running("the run")
        changed = srv.remember() != pids
    finally:
        srv.stop()
    others = window.others(load_cpu, t1 - t0)
    n = res["requests"]
    if n == 0:
        raise BenchError("no request completed")
    status = res.get("status", {})
    non200 = sum(v for k, v in status.items() if k != "200")
    errors = res.get("errors", {}).get("total", 0)
    out = {"config": name, "workers": workers, "command": " ".join(cmd),
           "requests": n, "rps": res["requests_per_s"],
           "p99_ms": res["latency_us"]["p99"] / 1000.0,
           "p50_ms": res["latency_us"]["p50"] / 1000.0,
           "server_cpu_s": cpu_s, "cpu_us_per_req": cpu_s * 1e6 / n,
           "server_cpus": cpu_s / res["elapsed_s"],
           "load_cpus": load_cpu / res["elapsed_s"], "others_cpus": others,
           "server_processes": len(pids), "tree_changed": changed,
           "non200": non200, "errors": errors, "status": status,
           "duration_s": duration}
    say("    %s req/s, p99 %.2f ms, %.1f CPU us/request, %d process%s%s" % (
        fmt_rate(out["rps"]), out["p99_ms"], out["cpu_us_per_req"],
        len(pids), "" if len(pids) == 1 else "es",
        "" if not (non200 or errors) else
        "  !! %d non-200 responses, %d socket errors" % (non200, errors)))
    return out


def sweep(ncpu):
    """Worker counts measured before `auto`: 1, 2, 4, ... below ncpu."""
    out, w = [], 1
    while w < ncpu:
        out.append(w)
        w *= 2
    return out


def plot(results, default, path, ncpu, label):
    """Write the req/s-vs-workers plot; return None or why it was not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "python3-matplotlib is not installed"
    pts = sorted((r["workers"], r["rps"]) for r in results
                 if r["workers"] is not None)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    if pts:
        ax.plot([w for w, _ in pts], [r / 1e3 for _, r in pts], "o-",
                color="tab:blue", label=label)
        for w, r in pts:
            ax.annotate("%.1fk" % (r / 1e3), (w, r / 1e3),
                        textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8)
    if default is not None:
        ax.axhline(default["rps"] / 1e3, color="tab:red", linestyle="--",
                   label="Twisted default reactor, 1 process (%.1fk)"
                   % (default["rps"] / 1e3))
    ax.set_xlabel("worker processes")
    ax.set_ylabel("requests/s (thousands)")
    ax.set_title("twisted.web hello world (examples/python/web.py)\n"
                 "ame load -c 50, %d CPUs" % ncpu, fontsize=10)
    xs = sorted({w for w, _ in pts} | {1})
    ax.set_xticks(xs)
    ax.set_xlim(0.5, xs[-1] + 0.5)
    top = max([r for _, r in pts] + [default["rps"] if default else 0])
    ax.set_ylim(0, top / 1e3 * 1.2 or 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None


def main():
    ap = runner_parser(__doc__, "build-release")
    ap.add_argument("--port", type=int, default=8090,
                    help="port the servers listen on (default 8090)")
    ap.add_argument("--duration", type=float, default=10, metavar="S",
                    help="seconds of load for --workers auto and the "
                         "default reactor (default 10)")
    ap.add_argument("--sweep-duration", type=float, default=3, metavar="S",
                    help="seconds of load for the other worker counts "
                         "(default 3)")
    ap.add_argument("--warmup", type=float, default=1, metavar="S",
                    help="seconds of load before each measured run "
                         "(default 1)")
    ap.add_argument("--connections", type=int, default=50,
                    help="ame load -c (default 50)")
    ap.add_argument("--threads", type=int, default=1,
                    help="ame load -t (default 1)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="interpreter for the default reactor's run "
                         "(default /usr/bin/python3)")
    ap.add_argument("--plot", default=os.path.join(REPO, "build", "demo.png"),
                    metavar="PNG", help="where to write the plot (default "
                    "build/demo.png; '' for none)")
    ap.add_argument("--stand-in", action="store_true",
                    help="do not use `ame run`: measure web.py --reactor ame "
                         "in one process instead")
    ap.add_argument("--json", action="store_true",
                    help="also print the results as one JSON object")
    args = ap.parse_args()
    if (args.duration <= 0 or args.sweep_duration <= 0 or args.warmup <= 0
            or args.connections < 1 or args.threads < 1):
        ap.error("durations and counts must be positive")
    builddir = resolve_builddir(args.builddir)
    if builddir is None:
        sys.exit("demo: %s is not a build directory: run `make demo` (or "
                 "meson setup %s -Dbuildtype=release && ninja -C %s)"
                 % (args.builddir, args.builddir, args.builddir))
    ame = os.path.join(builddir, "cmd", "ame")
    if not os.access(ame, os.X_OK):
        sys.exit("demo: %s is not built" % ame)
    if not ame_extension_built(builddir):
        sys.exit("demo: the ame Python extension is not built in %s"
                 % builddir)
    os.environ.update({"PYTHONPATH": ame_env(builddir)["PYTHONPATH"]})
    ncpu = ame_cpus()  # what `--workers auto` will use
    run_ok, why = (False, "--stand-in given") if args.stand_in \
        else ame_run_status(builddir)

    plan = []  # (name, command, workers, duration)
    url_args = ["--port", str(args.port)]
    if run_ok:
        for w in sweep(ncpu):
            plan.append(("ame run --workers %d" % w,
                         [ame, "run", "--workers", str(w), "--", WEB]
                         + url_args, w, args.sweep_duration))
        # --io auto: one thread per worker when the workers fill the CPUs,
        # which --workers auto always does.
        io = "inline"
        plan.append(("ame run --workers auto (%d, io %s)" % (ncpu, io),
                     [ame, "run", "--workers", "auto", "--", WEB] + url_args,
                     ncpu, args.duration))
    else:
        say("demo: WARNING: `ame run` is not available in this build (%s);"
            % why)
        say("demo: measuring a stand-in instead: web.py on AMEReactor in one "
            "process.")
        plan.append(("AMEReactor, 1 process (stand-in)",
                     [args.python, WEB, "--reactor", "ame"] + url_args, 1,
                     args.duration))
    plan.append(("Twisted default reactor, 1 process",
                 [args.python, WEB, "--reactor", "default"] + url_args, None,
                 args.duration))

    m = machine_info()
    say("demo: examples/python/web.py (twisted.web hello world) on %d CPUs "
        "(%s), load average %s" % (ncpu, m["cpu"],
                                   " ".join(m["loadavg_at_start"] or "?")))
    say("demo: load: ame load -c %d -t %d, %gs of warm-up, then %gs "
        "(sweep) / %gs" % (args.connections, args.threads, args.warmup,
                           args.sweep_duration, args.duration))
    results = []
    t0 = time.monotonic()
    with ServerSession("demo") as session:
        try:
            for name, cmd, workers, duration in plan:
                results.append(measure(name, cmd, workers, duration, args,
                                       ame, session.tmpdir))
                why_busy = wait_port_free(args.port)
                if why_busy:
                    raise BenchError("after stopping `%s`, %s"
                                     % (name, why_busy))
        except BenchError as e:
            print("demo: FAILED: %s" % e, file=sys.stderr)
            return 1
    if session.interrupted:
        return 130

    default = results[-1]
    say()
    table = []
    for r in results:
        table.append((r["config"], fmt_rate(r["rps"]), "%.2f" % r["p99_ms"],
                      fmt_us(r["cpu_us_per_req"]),
                      "%d" % r["server_processes"],
                      "%d/%d" % (r["non200"], r["errors"]),
                      "%.2f/%.2f/%s" % (r["server_cpus"], r["load_cpus"],
                                        "-" if r["others_cpus"] is None
                                        else "%.2f" % r["others_cpus"]),
                      fmt_ratio(r["rps"] / default["rps"])
                      if default["rps"] else "-"))
    print_rows(("server (web.py)", "req/s", "p99 ms", "CPU us/req",
                "processes", "non-200/errors", "srv/load/other",
                "x default"), table, 1)
    say("CPU us/req: user+system CPU of the server's processes (supervisor "
        "and workers) per request.  srv/load/other: CPUs used by the "
        "server, by ame load and by other work on the machine (above 0.2 "
        "the figures are disturbed).  x default: req/s against the default "
        "reactor.")
    notes = []
    for r in results:
        if r["non200"] or r["errors"]:
            notes.append("%s: %d non-200 responses and %d socket errors: "
                         "its figures are suspect" % (r["config"], r["non200"],
                                                      r["errors"]))
        if r["others_cpus"] is not None and r["others_cpus"] > 0.2:
            notes.append("%s: other work on the machine used %.2f CPUs "
                         "during its run: its figures are disturbed"
                         % (r["config"], r["others_cpus"]))
        if r["tree_changed"]:
            notes.append("%s: its process tree changed during the run (a "
                         "worker restarted?): CPU time incomplete"
                         % r["config"])
    if not run_ok:
        notes.append("`ame run` is not available in this build (%s): the "
                     "ame row is web.py --reactor ame in one process" % why)
    for n in notes:
        say("note: " + n)
    if args.plot:
        why_not = plot(results[:-1], default, args.plot, ncpu,
                       "ame run --workers W" if run_ok
                       else "AMEReactor, 1 process (stand-in: no ame run)")
        shown = os.path.relpath(args.plot)
        if shown.startswith(".."):
            shown = os.path.abspath(args.plot)
        say("plot: %s" % (shown if why_not is None
                          else "not written: " + why_not))
    say("demo: done in %.0f s; every server stopped." % (time.monotonic() - t0))
    if args.json:
        print(json.dumps({"machine": m, "cpus": ncpu, "ame_run": run_ok,
                          "results": results, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
