#!/usr/bin/python3
"""What the supervisor of `ame run` costs and keeps: examples/python/web.py
(an ordinary twisted.web Site) under `ame run --workers W`, loaded by
`ame load -c C -d D` (keep-alive connections), in four configurations:

  plain     no option beyond --workers
  metrics   --metrics 127.0.0.1:PORT, with /metrics fetched once a second
            during the run (the counters' cost on the serving path)
  reload    a SIGHUP a third of the way into the run: the program runs
            again and a new generation of workers takes over.  The load
            runs in two parts on the same server: steady (the first
            third), then the reload window, from just before the SIGHUP
            until the old workers have exited (at least the rest of the
            run); the figures are the two parts together, and the p99 of
            each part is given apart (reload window against steady)
  recycle   --max-requests N (default 2000, jitter N/10): workers replaced
            gracefully all through the run

Runs are interleaved (every configuration once per repetition, the order
reversed on every other one); figures are medians with the min-max over the
repetitions.  For each: req/s, the p99 latency of the whole run, socket
errors and non-2xx responses (the bar for reload and recycle: none), and
the ratios of req/s and p99 to plain in the same run; for reload, the p99
of the reload window against the steady part before it.  A "bars" section
compares the figures the issue holds the supervisor to (--metrics within
3 % of plain; no error, no non-2xx through a reload or recycling); missing
a bar never fails the run.  The exit status is 1 if a server fails to start
or to answer, or a run fails.

Default: 3 repetitions of 6 s (about 2 minutes).  --quick: 1 of 3 s.
Run it with Debian's /usr/bin/python3 after `ninja -C build-release`.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from benchlib import (BenchError, LoadMeter, REPO, ServerSession,
                      add_runs, ame_cpus, ame_run_status,
                      check_http, command_line, emit, fmt_rate, fmt_ratio,
                      fmt_us, free_port, machine_info, make_bar, med,
                      parse_args, print_bars, print_failures, print_machine,
                      print_rows, ratio, resolve_builddir, round_robin,
                      run_ame_load, runner_parser, start_ame_run)

CONFIGS = ("plain", "metrics", "reload", "recycle")
WEB = os.path.join(REPO, "examples", "python", "web.py")
BODY = b"Hello, world!"


def serve(args, config, tmpdir, rep):
    """Start web.py under `ame run` for config; return (server, port,
    metrics port or None)."""
    port = free_port()
    options = []
    mport = None
    if config == "metrics":
        mport = free_port()
        options += ["--metrics", "127.0.0.1:%d" % mport]
    if config == "recycle":
        options += ["--max-requests", str(args.max_requests)]
    log = os.path.join(tmpdir, "%s-%d.log" % (config, rep))
    srv = start_ame_run(args.builddir, [WEB, "--port", str(port)],
                        args.workers, port, log, options)
    check_http(port, BODY)
    return srv, port, mport


def poll_metrics(mport, stop):
    """Fetch /metrics once a second until stop is set; return the count."""
    n = 0
    while not stop.wait(1.0):
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                   timeout=5).read()
            n += 1
        except OSError:
            pass
    return n


def reload_window(args, srv, port, ame):
    """The reload's part of a reload run: `ame load` started, the SIGHUP
    0.2 s later, the load ended (SIGINT: it reports as at its deadline)
    0.2 s after the old workers have all exited, and not before two
    thirds of the run's duration.  Return (its JSON, its seconds)."""
    cmd = [ame, "load", "http://127.0.0.1:%d/" % port, "-t",
           str(args.threads), "-c", str(args.conns), "-d", "120s",
           "--json", "--no-progress"]
    t0 = time.monotonic()
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        os.kill(srv.proc.pid, signal.SIGHUP)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            log = open(srv.log_path, errors="replace").read()
            if (re.search(r"reload: generation \d+ serves", log) and
                    len(re.findall(r"replaced\) exited", log)) >=
                    args.workers):
                break
            if load.poll() is not None:
                break
            time.sleep(0.05)
        else:
            raise BenchError("the reload did not end in 60 s: %s"
                             % srv.log_tail())
        time.sleep(max(0.2, t0 + args.duration * 2 / 3.0 -
                       time.monotonic()))
        load.send_signal(signal.SIGINT)
        out, err = load.communicate(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate()
    if load.returncode != 0:
        raise BenchError("`%s` exited %d: %s" % (" ".join(cmd),
                                                 load.returncode,
                                                 err.strip()[-300:]))
    try:
        return json.loads(out), time.monotonic() - t0
    except ValueError:
        raise BenchError("cannot parse the output of `%s`: %s"
                         % (" ".join(cmd), out.strip()[-300:]))


def one_run(args, config, rep, tmpdir):
    srv, port, mport = serve(args, config, tmpdir, rep)
    try:
        stop = threading.Event()
        helper = None
        if config == "metrics":
            helper = threading.Thread(target=poll_metrics,
                                      args=(mport, stop), daemon=True)
        ame = os.path.join(args.builddir, "cmd", "ame")
        meter = LoadMeter()
        if helper:
            helper.start()
        d, cpu, command = run_ame_load(
            ame, port, args.threads, args.conns,
            args.duration / 3.0 if config == "reload" else args.duration,
            tmpdir)
        extra = {}
        if config == "reload":
            # Steady, then the reload window: both together are the run.
            w, secs = reload_window(args, srv, port, ame)
            extra = {"p99_steady_us": d["latency_us"]["p99"],
                     "p99_reload_us": w["latency_us"]["p99"],
                     "reload_window_s": secs}
            steady_s = d["requests"] / d["requests_per_s"] \
                if d["requests_per_s"] else args.duration / 3.0
            d = {"requests": d["requests"] + w["requests"],
                 "requests_per_s": (d["requests"] + w["requests"]) /
                 (steady_s + secs),
                 # The run's p99: the larger of the two parts' is an
                 # upper bound (no histogram is merged).
                 "latency_us": {"p99": max(d["latency_us"]["p99"],
                                           w["latency_us"]["p99"])},
                 "errors": {"total": d["errors"]["total"] +
                            w["errors"]["total"]},
                 "status": {k: d["status"].get(k, 0) + w["status"].get(k, 0)
                            for k in set(d["status"]) | set(w["status"])}}
        stop.set()
        if helper:
            helper.join(10)
        srv.check_running("the run")
        log = open(srv.log_path, errors="replace").read()
        res = {"rps": d["requests_per_s"], "requests": d["requests"],
               "p99_us": d["latency_us"]["p99"],
               "errors": d["errors"]["total"],
               "non2xx": sum(v for k, v in d["status"].items()
                             if not k.startswith("2")),
               "reloads": len(re.findall(r"reload: generation \d+ serves",
                                         log)),
               "recycled": len(re.findall(r"\(--max-requests\): replacing",
                                          log)),
               "others_cpus": meter.others(), "command": command}
        res.update(extra)
        if config == "reload" and res["reloads"] != 1:
            raise BenchError("the reload did not complete: %s"
                             % srv.log_tail())
        return res
    finally:
        srv.stop()


def summarize(runs):
    rps = [r["rps"] for r in runs]
    p99 = [r["p99_us"] for r in runs]
    return {"runs": len(runs), "rps_median": med(rps),
            "rps_min": min(rps), "rps_max": max(rps),
            "p99_median_us": med(p99), "p99_min_us": min(p99),
            "p99_max_us": max(p99),
            "errors": sum(r["errors"] for r in runs),
            "non2xx": sum(r["non2xx"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
            "reloads": sum(r["reloads"] for r in runs),
            "recycled": sum(r["recycled"] for r in runs),
            "others_cpus": med([r["others_cpus"] for r in runs
                                if r["others_cpus"] is not None]),
            "p99_steady_median_us": med([r["p99_steady_us"] for r in runs
                                         if "p99_steady_us" in r]),
            "p99_reload_median_us": med([r["p99_reload_us"] for r in runs
                                         if "p99_reload_us" in r]),
            "reload_window_median_s": med([r["reload_window_s"]
                                           for r in runs
                                           if "reload_window_s" in r]),
            "runs_detail": runs}


def report(d):
    print_machine("supervisor_bench", d["machine"])
    s = d["settings"]
    print("web.py under `ame run --workers %d`, `ame load -t%d -c%d -d%ds`; "
          "%d repetition(s)" % (s["workers"], s["threads"], s["connections"],
                                s["duration_s"], s["reps"]))
    print()
    body = []
    for r in d["rows"]:
        body.append([r["config"], fmt_rate(r["rps_median"]),
                     "%s-%s" % (fmt_rate(r["rps_min"]),
                                fmt_rate(r["rps_max"])),
                     fmt_ratio(r["rps_vs_plain"]),
                     fmt_us(r["p99_median_us"] / 1000.0),
                     fmt_ratio(r["p99_vs_plain"]),
                     "%d / %d" % (r["errors"], r["non2xx"]),
                     str(r["reloads"] or r["recycled"] or "-")])
    print_rows(["config", "req/s", "min-max", "req/s x plain", "p99 ms",
                "p99 x plain", "errors / non-2xx", "reloads/recycled"],
               body, right_from=1)
    for r in d["rows"]:
        if r.get("p99_reload_median_us") is not None:
            print()
            print("reload: p99 %s ms in the reload window (%.1f s, from "
                  "just before the SIGHUP until the old workers exited) "
                  "against %s ms steady before it in the same run: %s"
                  % (fmt_us(r["p99_reload_median_us"] / 1000.0),
                     r["reload_window_median_s"],
                     fmt_us(r["p99_steady_median_us"] / 1000.0),
                     fmt_ratio(ratio(r["p99_reload_median_us"],
                                     r["p99_steady_median_us"]))))
    print()
    print_bars(d["bars"])
    print_failures(d["failures"])


def main():
    ap = runner_parser(__doc__, "build-release", results=True)
    add_runs(ap, "1 repetition of 3 s", (3, 1), (6, 3), "seconds per run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = parse_args(ap, report)
    b = resolve_builddir(args.builddir)
    if b is None:
        sys.exit("supervisor_bench: no build in %s" % args.builddir)
    args.builddir = b
    ok, why = ame_run_status(args.builddir)
    if not ok:
        sys.exit("supervisor_bench: %s" % why)
    configs = [c for c in args.configs.split(",") if c in CONFIGS]
    failures = []
    machine = machine_info()
    meter = LoadMeter()
    with ServerSession("supervisor_bench") as session:
        results = round_robin(
            configs, args.reps,
            lambda c, rep: one_run(args, c, rep, session.tmpdir),
            lambda c: c,
            lambda c, rep, e: failures.append(
                {"what": "%s rep %d" % (c, rep), "error": e}),
            label="supervisor", alternate=True)
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    rows = []
    plain = summarize(results["plain"]) if results.get("plain") else None
    for c in configs:
        if not results.get(c):
            continue
        r = summarize(results[c])
        r["config"] = c
        r["rps_vs_plain"] = ratio(r["rps_median"],
                                  plain and plain["rps_median"])
        r["p99_vs_plain"] = ratio(r["p99_median_us"],
                                  plain and plain["p99_median_us"])
        rows.append(r)
    by = {r["config"]: r for r in rows}
    bars = [
        make_bar("req/s with --metrics / without",
                 by.get("metrics", {}).get("rps_vs_plain"), ">=", 0.97),
        make_bar("errors + non-2xx through a reload",
                 (by["reload"]["errors"] + by["reload"]["non2xx"])
                 if "reload" in by else None, "<=", 0,
                 fmt=lambda x: "%d" % x),
        make_bar("errors + non-2xx with recycling",
                 (by["recycle"]["errors"] + by["recycle"]["non2xx"])
                 if "recycle" in by else None, "<=", 0,
                 fmt=lambda x: "%d" % x),
    ]
    out = {"machine": machine,
           "settings": {"command": command_line(), "workers": args.workers,
                        "threads": args.threads,
                        "connections": args.conns,
                        "duration_s": args.duration, "reps": args.reps,
                        "max_requests": args.max_requests,
                        "quick": args.quick, "cpus": ame_cpus()},
           "rows": rows, "bars": bars, "failures": failures}
    return emit(args, out, report)


if __name__ == "__main__":
    sys.exit(main())
