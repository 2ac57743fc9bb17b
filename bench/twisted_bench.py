#!/usr/bin/python3
"""Run Twisted HTTP servers on AMEReactor and EPollReactor side by side and
print a table.

Three sections.  "reactors": the same two programs on each reactor, under the
same wrk load (wrk -t1 -c50), unpinned and pinned (server `taskset -c 0`,
wrk on CPU 1): examples/python/raw_http.py, a plain Twisted Protocol that
answers each request head with a fixed response, and examples/python/web.py,
an ordinary twisted.web Site whose Resource returns b"Hello, world!".
"workers": web.py under `ame run --workers 1` and `--workers 2` (worker
processes sharing the listening socket) against EPollReactor in one
process, unpinned.  "tls": web.py over plain TCP and over TLS (web.py
--tls: reactor.listenSSL with Twisted's CertificateOptions, a self-signed
RSA-2048 certificate made once per run with openssl; wrk on https://),
keep-alive and with "Connection: close" (over TLS, a full handshake per
request), on each reactor, unpinned; it prints where the server's CPU per
request goes with TLS.  Beside them, on the same certificate and load, a
new TLS connection per request to nginx with one worker process (a server
in C; no session resumes, as with Twisted's default): what the machine's
CPUs give a process that spends nothing but TLS and HTTP on a connection,
the same-run peer of the handshake bars.  Every run starts the server as
a child process, waits until it accepts, checks two keep-alive GETs,
warms it up with 1 s of wrk, then runs wrk and reads the server's CPU
time (utime + stime of every process of its tree, all threads, from
/proc) before and after: CPU microseconds per request.  Runs are
interleaved (every configuration once per repetition, the order reversed
on every other one); figures are medians
with the min-max over the repetitions, and ratios are taken against
EPollReactor (same program, same mode), against `--workers 1` and, for a
TLS app, against the same app over plain TCP (same server), from the same
run.  A "bars" section compares the figures the project is held to;
missing a bar never fails the run.  The exit status is 1 if a server fails
to start, to answer, or to complete any request, or crashes.

Default: every section, 3 repetitions of 5 s (22 configurations, about 8
minutes).  --quick: 1 repetition of 2 s (about 90 s; --sections tls
alone, 12 configurations, about 50 s).

Run it with Debian's /usr/bin/python3 from anywhere, after
`ninja -C build-release`.  Servers get PYTHONPATH=BUILDDIR/bindings:bindings
and run with --python (default /usr/bin/python3).  On an error, Ctrl-C or
SIGTERM the runner stops every process it started.
"""

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import (AppServer, BenchError, LoadMeter, REPO, ServerCPU,
                      ServerSession, add_runs, ame_cpus, ame_env,
                      ame_extension_built, ame_run_status, bar_met,
                      check_http, command_line, emit, find_nginx, fmt_cpus,
                      fmt_rate, fmt_ratio, fmt_reads, fmt_us, free_port,
                      int_list, machine_info, make_bar, name_list,
                      nginx_command, parse_args, print_bars, print_failures,
                      print_machine, print_rows, ratio, resolve_builddir,
                      round_robin, run_ame_load, run_wrk, runner_parser,
                      wrk_summary)

SECTIONS = ("reactors", "workers", "tls")
# webclose: web.py with "Connection: close" on every request (a new
# connection per request: accept, set-up and close are the work).
APPS = ("raw", "web", "webclose")
MODES = ("unpinned", "pinned")
# The tls section's apps (unpinned, EPollReactor and AMEReactor): web.py
# over plain TCP and over TLS (web.py --tls, wrk on https://), keep-alive
# and with "Connection: close" (over TLS a full handshake per request: the
# server's certificate options keep no session to resume).
TLS_APPS = ("web", "webtls", "webclose", "webtlsclose",
            "webtlscloseload")
TLS_SERVERS = ("epoll", "ame")
# The C peer of the handshake bars: nginx, one worker process, on the TLS
# apps with a connection per request (the same certificate and load).
TLS_PEER = "nginx"
TLS_PEER_APPS = ("webtlsclose", "webtlscloseload")
TLS = {"webtls": "web", "webtlsclose": "webclose",
       "webtlscloseload": "webclose"}  # -> the plain app
# Apps loaded by `ame load` rather than wrk (the same requests; ame load's
# handshakes cost the machine less CPU than wrk's, which polls through
# them, so the server gets more of the two CPUs).
AME_LOAD_APPS = ("webtlscloseload",)
WEB = os.path.join("examples", "python", "web.py")
APP_FILE = {"raw": os.path.join("examples", "python", "raw_http.py"),
            "web": WEB, "webclose": WEB, "webtls": WEB, "webtlsclose": WEB,
            "webtlscloseload": WEB}
APP_BODY = {"raw": b"Hello, world!\n", "web": b"Hello, world!",
            "webclose": b"Hello, world!", "webtls": b"Hello, world!",
            "webtlsclose": b"Hello, world!",
            "webtlscloseload": b"Hello, world!"}
APP_LABEL = {"raw": "raw Protocol", "web": "twisted.web",
             "webclose": "twisted.web, Connection: close",
             "webtls": "twisted.web over TLS",
             "webtlsclose": "twisted.web over TLS, Connection: close",
             "webtlscloseload": "twisted.web over TLS, Connection: close, "
                                "ame load"}
APP_HEADERS = {"webclose": ("Connection: close",),
               "webtlsclose": ("Connection: close",),
               "webtlscloseload": ("Connection: close",)}
# The server's key and certificate for the TLS apps, made once per run in
# its temporary directory (RSA-2048, self-signed, CN=localhost).
CERT_CMD = ("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-days", "2", "-subj", "/CN=localhost", "-keyout", "k.pem",
            "-out", "c.pem")

# The bars (2-core reference machine): (app, mode or None for every mode,
# server, ratio key, op, target, name or None for one made from the
# others).  rps_vs_epoll and cpu_vs_epoll compare with EPollReactor, same
# program and mode; rps_vs_1w with `ame run --workers 1`; rps_vs_plain a
# TLS app with the same app over plain TCP, same server and mode.
BARS = (
    ("raw", None, "ame", "rps_vs_epoll", ">=", 1.6, None),
    ("raw", None, "ame", "cpu_vs_epoll", "<", 1.0, None),
    ("web", None, "ame", "rps_vs_epoll", ">=", 1.2, None),
    ("web", None, "ame", "cpu_vs_epoll", "<", 1.0, None),
    ("web", "unpinned", "ame-run-2w", "rps_vs_1w", ">=", 1.6, None),
    ("web", "unpinned", "ame-run-1w", "rps_vs_epoll", ">=", 1.2, None),
    ("webtls", "unpinned", "ame", "rps_vs_plain", ">=", 0.9,
     "twisted.web over TLS keep-alive, AMEReactor vs the same app over "
     "plain TCP on AMEReactor"),
    ("webtls", "unpinned", "ame", "rps_vs_epoll", ">=", 1.6,
     "twisted.web over TLS keep-alive, AMEReactor vs EPollReactor"),
    ("webtlsclose", "unpinned", "ame", "rps_vs_epoll", ">=", 1.7,
     "a new TLS connection per request, AMEReactor vs EPollReactor"),
    ("webtlscloseload", "unpinned", "ame", "rps_vs_epoll", ">=", 1.7,
     "a new TLS connection per request (ame load), AMEReactor vs "
     "EPollReactor"),
)
# The row a ratio compares with: (app, mode, server) -> its key.
RATIO_BASE = {
    "rps_vs_epoll": lambda app, mode, server: (app, mode, "epoll"),
    "cpu_vs_epoll": lambda app, mode, server: (app, mode, "epoll"),
    "rps_vs_1w": lambda app, mode, server: (app, mode, "ame-run-1w"),
    "rps_vs_plain": lambda app, mode, server: (TLS.get(app), mode, server),
}


def server_label(server):
    if server == "epoll":
        return "EPollReactor"
    if server == "ame":
        return "AMEReactor"  # io auto: inline when pinned, else thread
    if server == "ame-inline":
        return "AMEReactor, io inline"
    if server == TLS_PEER:
        return "nginx, 1 worker (C)"
    w, io = parse_run(server)
    if io is None:
        return "ame run --workers %d (io %s)" % (w, auto_io(w))
    return "ame run --workers %d --io %s" % (w, io)


def parse_run(server):
    """ame-run-2w -> (2, None: --io auto); ame-run-2w-inline -> (2,
    "inline"); (None, None) for the in-process servers."""
    if not server.startswith("ame-run-"):
        return None, None
    w, _, io = server[len("ame-run-"):].partition("-")
    return int(w[:-1]), io or None


def run_workers(server):
    """ame-run-2w -> 2; None for the in-process servers."""
    return parse_run(server)[0]


def run_server(w, io):
    return "ame-run-%dw" % w + ("" if io == "auto" else "-" + io)


def auto_io(w):
    """What `ame run --io auto` chooses for w workers here."""
    return "inline" if w >= ame_cpus() else "thread"


# ---- servers ----------------------------------------------------------------


def server_cmd(args, builddir, app, mode, server, port, cpus):
    if server == TLS_PEER:
        # Its configuration beside the run's key and certificate.
        d = os.path.dirname(args.tls_pem)
        return nginx_command(args.nginx, d, port, 1,
                             APP_BODY[app].decode(),
                             (os.path.join(d, "c.pem"),
                              os.path.join(d, "k.pem")))
    script = os.path.join(REPO, APP_FILE[app])
    w, io = parse_run(server)
    if server == "ame-inline":
        cmd = ["env", "AME_IO=inline", args.python, script, "--port",
               str(port), "--reactor", "ame"]
    elif w is None:
        cmd = [args.python, script, "--port", str(port),
               "--reactor", server]
    else:
        cmd = [os.path.join(builddir, "cmd", "ame"), "run",
               "--workers", str(w), "--io", io or "auto", "--", script,
               "--port", str(port)]
    if app in TLS:
        cmd += ["--tls", args.tls_pem]
    if mode == "pinned":
        cmd = ["taskset", "-c", str(cpus[0])] + cmd
    return cmd


@contextlib.contextmanager
def affinity(cpu):
    """Run the body with this process (and so the children it starts: wrk)
    on one CPU; cpu None: unchanged."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def load(args, builddir, app, port, duration, tmpdir):
    """Load app's server on port for duration seconds with wrk (or, for
    AME_LOAD_APPS, `ame load` with the same connections and headers):
    (the figures as run_wrk's, the client's CPU seconds, wall seconds)."""
    headers = APP_HEADERS.get(app, ())
    if app not in AME_LOAD_APPS:
        return run_wrk(args.wrk, port, 1, args.connections, duration,
                       tmpdir, headers, app in TLS)
    extra = ["--no-progress"]
    for h in headers:
        extra += ["-H", h]
    start = time.monotonic()
    d, cpu, cmd = run_ame_load(os.path.join(builddir, "cmd", "ame"), port, 1,
                               args.connections, duration, tmpdir, extra,
                               app in TLS)
    wall = time.monotonic() - start
    errors = d["errors"]["total"]
    return ({"requests": d["requests"], "rps": d["requests_per_s"],
             "socket_errors": errors,
             "non2xx": sum(n for code, n in d["status"].items()
                           if not code.startswith("2")),
             "command": cmd}, cpu, wall)


def run_one(args, builddir, key, tmpdir, cpus, check):
    """Start one server, check it, warm it up, measure it with wrk, stop
    it.  Return the measurement dict; raise BenchError on failure."""
    app, mode, server = key
    port = free_port()
    cmd = server_cmd(args, builddir, app, mode, server, port, cpus)
    srv = AppServer(cmd, os.path.join(tmpdir, "%s-%s-%s-%d.log" % (
        app, mode, server, port)))
    wrk_cpu_pin = cpus[1] if mode == "pinned" else None
    try:
        srv.wait_port(port, timeout=30)
        info = check_http(port, APP_BODY[app], app in TLS) if check else None
        srv.remember()
        with affinity(wrk_cpu_pin):
            load(args, builddir, app, port, args.warmup, tmpdir)
        srv.check_running("the warm-up")
        pids = srv.remember()
        window = ServerCPU(pids)
        with affinity(wrk_cpu_pin):
            res, wrk_cpu, wall = load(args, builddir, app, port,
                                      args.duration, tmpdir)
        cpu_s = window.stop()
        srv.check_running("the run")
        after = srv.remember()
        n = res["requests"]
        if n == 0:
            raise BenchError("no request completed: %s" % srv.log_tail())
        res.update({
            "app": app, "mode": mode, "server": server,
            "server_command": " ".join(cmd), "server_pids": len(pids),
            # A process that joined the tree during the run (a restarted
            # worker) is missing from the CPU time.
            "tree_changed": after != pids or window.changed,
            "server_cpu_s": cpu_s, "cpu_us_per_req": cpu_s * 1e6 / n,
            # The same by thread name (ame's C threads: ame-io, ame-worker,
            # ame-tls; Python's carry the interpreter's name).
            "cpu_us_per_req_by_thread": {
                k: v * 1e6 / n for k, v in window.by_thread.items()},
            "server_cpus": cpu_s / wall,
            "wrk_cpu_s": wrk_cpu, "wrk_cpus": wrk_cpu / wall,
            "others_cpus": window.others(wrk_cpu, wall),
            "response": info,
        })
        return res
    finally:
        srv.stop()


# ---- the matrix -------------------------------------------------------------

def configurations(args, skip):
    """The (app, mode, server) keys to run, in table order, without those
    whose server is in skip."""
    keys = []
    if "reactors" in args.sections:
        for app in args.apps:
            for mode in args.modes:
                for server in ("epoll", "ame") + (
                        ("ame-inline",) if "inline" in args.io else ()):
                    keys.append((app, mode, server))
    if "workers" in args.sections:
        for server in ["epoll"] + [run_server(w, io) for w in args.workers
                                   for io in args.io]:
            keys.append(("web", "unpinned", server))
    if "tls" in args.sections:
        # web and webclose unpinned are the reactors section's rows too:
        # measured once, below.
        for app in TLS_APPS:
            for server in TLS_SERVERS + (
                    (TLS_PEER,) if app in TLS_PEER_APPS else ()):
                keys.append((app, "unpinned", server))
    out = []
    for k in keys:
        kind = "ame-run" if k[2].startswith("ame-run") else \
            "ame" if k[2] == "ame-inline" else k[2]
        if k not in out and kind not in skip and not (
                k[0] in TLS and "tls" in skip):
            out.append(k)
    order = {}
    for i, k in enumerate(out):
        order.setdefault(k[:2], i)
    out.sort(key=lambda k: order[k[:2]])  # group rows by app and mode
    return out


def make_certificate(tmpdir):
    """Make the TLS apps' key and certificate with openssl (CERT_CMD) in
    tmpdir and write both to one PEM file, web.py --tls's.  Return (its
    path, None), or (None, why not)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None, "openssl not found (Debian: apt-get install openssl)"
    try:
        p = subprocess.run((openssl,) + CERT_CMD[1:], cwd=tmpdir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, "%s failed: %s" % (" ".join(CERT_CMD), e)
    if p.returncode != 0:
        return None, "%s exited %d: %s" % (
            " ".join(CERT_CMD), p.returncode,
            p.stdout.decode(errors="replace").strip()[-200:])
    pem = os.path.join(tmpdir, "key-cert.pem")
    with open(pem, "wb") as out:
        for name in ("k.pem", "c.pem"):
            with open(os.path.join(tmpdir, name), "rb") as f:
                out.write(f.read())
    return pem, None


def run_matrix(args, builddir, failures, tmpdir, notes):
    skip = {}
    if not ame_extension_built(builddir):
        skip["ame"] = "the ame extension is not built in %s" % builddir
    if "workers" in args.sections:
        ok, why = ame_run_status(builddir)
        if not ok:
            skip["ame-run"] = why
    if "pinned" in args.modes:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            args.modes = [m for m in args.modes if m != "pinned"]
            notes.append("pinned rows skipped: %s" % (
                "taskset not found" if len(cpus) >= 2
                else "fewer than 2 CPUs"))
        cpus = cpus[:2]
    else:
        cpus = None
    if "tls" in args.sections:
        args.tls_pem, why = make_certificate(tmpdir)
        if args.tls_pem is None:
            skip["tls"] = why
        if args.nginx is None:
            skip[TLS_PEER] = "nginx not found (Debian: apt-get install nginx)"
    for kind, why in sorted(skip.items()):
        notes.append("%s rows skipped: %s" % (kind, why))
        print("twisted_bench: %s rows skipped: %s" % (kind, why),
              file=sys.stderr)
    keys = configurations(args, skip)
    responses = {}

    def run(key, rep):
        res = run_one(args, builddir, key, tmpdir, cpus,
                      check=key not in responses)
        if res["response"] is not None:
            responses[key] = res["response"]
        return res

    def failed(key, rep, err):
        command = " ".join(server_cmd(args, builddir, *key, 8080,
                                      cpus or [0, 1]))
        if key[0] in TLS:  # the run's PEM file is gone by then
            command = "%s && cat k.pem c.pem > key-cert.pem && %s" % (
                " ".join(CERT_CMD), command.replace(args.tls_pem,
                                                    "key-cert.pem"))
        failures.append({"what": " ".join(key), "error": err,
                         "command": command})

    results = round_robin(keys, args.reps, run, " ".join, failed, "twisted",
                          args.quiet_wait, alternate=True)
    return summarize(keys, results, responses, notes, cpus)


def by_thread_median(runs):
    """{thread name: median server CPU us per request} over the runs (a
    name missing from a run counts 0 there)."""
    names = sorted({k for r in runs
                    for k in r.get("cpu_us_per_req_by_thread", {})})
    return {k: statistics.median(
        r.get("cpu_us_per_req_by_thread", {}).get(k, 0.0) for r in runs)
        for k in names}


def summarize(keys, results, responses, notes, cpus):
    rows = []
    for key in keys:
        app, mode, server = key
        runs = results.get(key, [])
        rows.append(dict(
            {"app": app, "mode": mode, "server": server,
             "label": server_label(server), "workers": run_workers(server),
             "tree_changed": any(r["tree_changed"] for r in runs),
             "response": responses.get(key),
             "cpu_by_thread_median": by_thread_median(runs)},
            **wrk_summary(runs)))
    by = {(r["app"], r["mode"], r["server"]): r for r in rows}

    for r in rows:
        ep = by.get((r["app"], r["mode"], "epoll"))
        one = by.get((r["app"], r["mode"], "ame-run-1w"))
        if r["server"] == "epoll":
            r["rps_vs_epoll"] = r["cpu_vs_epoll"] = None
        else:
            r["rps_vs_epoll"] = ratio(r["rps_median"],
                                      ep and ep["rps_median"])
            r["cpu_vs_epoll"] = ratio(r["cpu_median"],
                                      ep and ep["cpu_median"])
        r["rps_vs_1w"] = (ratio(r["rps_median"], one and one["rps_median"])
                          if (r["workers"] or 1) > 1 else None)
        # A TLS app against the same app over plain TCP: the ratio, and the
        # server CPU per request that TLS adds (with Connection: close,
        # mostly the handshake).
        plain = by.get((TLS.get(r["app"]), r["mode"], r["server"]))
        r["rps_vs_plain"] = ratio(r["rps_median"],
                                  plain and plain["rps_median"])
        r["tls_cpu_us"] = (r["cpu_median"] - plain["cpu_median"]
                           if plain and r["cpu_median"] is not None
                           and plain["cpu_median"] is not None else None)
    for r in rows:
        if r["errors"]:
            notes.append("ERRORS: %s %s %s: wrk reported %d socket errors "
                         "and %d non-2xx responses; its figures are suspect"
                         % (r["app"], r["mode"], r["label"],
                            r["socket_errors"], r["non2xx"]))
        if r["tree_changed"]:
            notes.append("%s %s %s: the server's process tree changed during "
                         "a run (a worker restarted?): its CPU time is "
                         "incomplete" % (r["app"], r["mode"], r["label"]))
    protocols = negotiated(rows)
    if len(protocols) > 1:
        notes.append("the TLS rows negotiated different protocols (%s): "
                     "their handshakes are not the same work" % "; ".join(
                         "%s: %s" % (k, ", ".join(v))
                         for k, v in sorted(protocols.items())))
    return {"rows": rows, "notes": notes, "cpus_pinned": cpus}


# ---- bars -------------------------------------------------------------------

def bar_of(row, what):
    """The bar (op, target) on this row's ratio what, or None."""
    for app, mode, server, key, op, target, _ in BARS:
        if (row["app"] == app and row["server"] == server and key == what
                and (mode is None or row["mode"] == mode)):
            return op, target
    return None


def evaluate_bars(rows):
    """The bars on the rows measured.  A TLS bar's note gives the server
    CPU us per request of the two rows it compares."""
    by = {(r["app"], r["mode"], r["server"]): r for r in rows}
    bars = []
    for app, mode, server, key, op, target, name in BARS:
        for r in rows:
            if r["app"] != app or r["server"] != server or (
                    mode is not None and r["mode"] != mode):
                continue
            figure = r[key]
            pair = [r, by.get(RATIO_BASE[key](app, r["mode"], server))]
            pair = [x for x in pair if x is not None]
            other = [x["others_cpus"] for x in pair
                     if x["others_cpus"] is not None]
            errs = sum(x["errors"] for x in pair)
            note = []
            if app in TLS and len(pair) == 2:
                names = (("TLS", "plain TCP") if key == "rps_vs_plain"
                         else (pair[0]["label"], pair[1]["label"]))
                note.append("CPU us/req: %s %s, %s %s" % (
                    names[0], fmt_us(pair[0]["cpu_median"]),
                    names[1], fmt_us(pair[1]["cpu_median"])))
            peer = by.get((app, r["mode"], TLS_PEER))
            if key == "rps_vs_epoll" and peer is not None \
                    and peer["rps_vs_epoll"] is not None:
                note.append("same run, %s: %s EPollReactor's req/s, CPU "
                            "us/req %s" % (peer["label"],
                                           fmt_ratio(peer["rps_vs_epoll"]),
                                           fmt_us(peer["cpu_median"])))
            if key == "rps_vs_epoll" and app in TLS_PEER_APPS:
                # The client shares the CPUs: its CPU per request is CPU
                # the server does not get (docs/twisted.md, Figures).
                note.append("client CPU us/req: %s" % ", ".join(
                    "%s %s" % (x["label"], fmt_us(x.get("client_cpu_median")))
                    for x in pair + ([peer] if peer else [])))
                # And the CPUs each server got: under autogroup, a server
                # shares busy CPUs with the client as one group against
                # another, however many threads it has (docs/twisted.md,
                # Limits).
                note.append("server CPUs: %s" % ", ".join(
                    "%s %s" % (x["label"], fmt_cpus(x.get("server_cpus")))
                    for x in pair + ([peer] if peer else [])))
            if key == "rps_vs_epoll" and app in TLS_PEER_APPS \
                    and app not in AME_LOAD_APPS:
                # And wrk's read() calls per request: it retries a
                # handshake that waits for the server on every pass of its
                # event loop (docs/twisted.md, Limits).  (`ame load`
                # receives with recv(), which /proc/PID/io does not count.)
                note.append("wrk read() calls/req: %s" % ", ".join(
                    "%s %s" % (x["label"], fmt_reads(
                        x.get("client_reads_median")))
                    for x in pair + ([peer] if peer else [])))
            if other and max(other) > 0.2:
                note.append("disturbed: other work used up to %.2f CPUs"
                            % max(other))
            if errs:
                note.append("%d wrk errors in these rows" % errs)
            b = make_bar(name or "%s %s, %s: %s %s" % (
                APP_LABEL[app], r["mode"], r["label"],
                "CPU/request" if key.startswith("cpu") else "req/s",
                "vs ame run --workers 1" if key == "rps_vs_1w"
                else "vs EPollReactor"), figure, op, target,
                note="; ".join(note) or None)
            b.update({"app": app, "mode": r["mode"], "server": server,
                      "ratio": key})
            bars.append(b)
    return bars


# ---- output -----------------------------------------------------------------

def ratio_cell(row, key):
    figure = row.get(key)
    if figure is None:
        return "-"
    b = bar_of(row, key)
    if b is None:
        return fmt_ratio(figure)
    op, target = b
    return "%s (bar %s%s %s)" % (fmt_ratio(figure), op, fmt_ratio(target),
                                 "met" if bar_met(figure, op, target)
                                 else "MISSED")


def negotiated(rows):
    """{protocol and cipher: [server labels]} over the TLS rows (from each
    key's check GET)."""
    out = {}
    for r in rows:
        tls = (r.get("response") or {}).get("tls")
        if r["app"] in TLS and tls and r["label"] not in out.get(tls, []):
            out.setdefault(tls, []).append(r["label"])
    return out


def print_tls_cpu(rows):
    """Where the TLS CPU goes: per server, the server CPU us per request
    over plain TCP and over TLS, keep-alive and a connection per request,
    and what TLS adds (with a connection per request, mostly the
    handshake)."""
    by = {(r["app"], r["server"]): r for r in rows if r["mode"] == "unpinned"}
    proto = sorted(negotiated(rows).items())
    print("TLS: web.py --tls (Twisted's CertificateOptions, a self-signed "
          "RSA-2048 certificate%s), unpinned; server CPU us per request:"
          % ("; negotiated " + proto[0][0] if len(proto) == 1 else
             "".join("; %s negotiated %s" % (", ".join(v), k)
                     for k, v in proto)))
    table = []
    for server in TLS_SERVERS:
        cells = []
        for app in ("webtls", "webtlsclose"):
            tls, plain = by.get((app, server)), by.get((TLS[app], server))
            cells += [fmt_us(plain and plain["cpu_median"]),
                      fmt_us(tls and tls["cpu_median"]),
                      fmt_us(tls and tls.get("tls_cpu_us"))]
        if any(c != "-" for c in cells):
            table.append((server_label(server),) + tuple(cells))
    print_rows(("server", "keep-alive: TCP", "TLS", "TLS adds",
                "close: TCP", "TLS", "TLS adds"), table, 1)
    head, body = thread_split(rows, lambda app: app)
    if body:
        print()
        print("AMEReactor (io thread), server CPU us per request by thread:")
        print_rows(head, body, 1)


# ame's C threads, in the order the by-thread tables show them; any other
# name is a thread of the Python program (the interpreter's name).
AME_THREADS = ("ame-io", "ame-worker", "ame-tls")
SPLIT_APPS = ("webclose", "webtlsclose", "webtlscloseload", "web", "webtls")


def thread_split(rows, label):
    """Where AMEReactor's server CPU goes, by thread, on the TLS section's
    apps (unpinned): (head, body) of a table of CPU us per request, the
    program's own threads (Python) first, then ame's C threads, then all.
    label(app) names an app."""
    mine = [r for r in rows if r["server"] == "ame" and r["mode"] ==
            "unpinned" and r["app"] in SPLIT_APPS
            and r.get("cpu_by_thread_median")]
    mine.sort(key=lambda r: SPLIT_APPS.index(r["app"]))
    names = sorted({k for r in mine for k in r["cpu_by_thread_median"]})
    python = [k for k in names if k not in AME_THREADS]
    cols = [k for k in AME_THREADS if k in names]
    head = (["program", "Python (%s)" % ", ".join(python) if python
             else "Python"] + cols + ["all threads"])
    body = []
    for r in mine:
        t = r["cpu_by_thread_median"]
        body.append([label(r["app"]),
                     fmt_us(sum(t.get(k, 0.0) for k in python))]
                    + [fmt_us(t.get(k)) for k in cols]
                    + [fmt_us(r["cpu_median"])])
    return head, body


def print_report(d):
    """The human-readable form of one run (also for --show FILE)."""
    settings, twisted = d["settings"], d["twisted"]
    print_machine("Twisted benchmarks", d["machine"])
    print()
    reps = settings["reps"]
    cpus = twisted.get("cpus_pinned")
    print("wrk -t1 -c%d -d%ds after %ds of warm-up, %d repetition%s; median "
          "(min-max).  pinned: server on CPU %s, wrk on CPU %s."
          % (settings["connections"], settings["duration_s"],
             settings["warmup_s"], reps, "" if reps == 1 else "s",
             cpus[0] if cpus else "-", cpus[1] if cpus else "-"))
    print("CPU us/req: the server's user+system CPU (every thread and "
          "process of it) per request completed; client: the same for the "
          "client (wrk, or ame load on its rows).  srv/wrk/other: CPUs used "
          "by the server, by wrk and by other work on the machine.  x epoll: "
          "against EPollReactor, same program and mode; x 1w: against "
          "ame run --workers 1.  AMEReactor: its default io auto, inline "
          "(no C thread) when pinned to one CPU, else thread.")
    tls = any(r.get("rps_vs_plain") is not None for r in twisted["rows"])
    if tls:
        print("x tcp: a TLS app against the same app over plain TCP, same "
              "server and mode.")
    table = []
    for r in twisted["rows"]:
        if r["rps_median"] is None:
            rps, rspread, cspread = "FAILED", "-", "-"
        else:
            rps = fmt_rate(r["rps_median"])
            rspread = "%s-%s" % (fmt_rate(r["rps_min"]), fmt_rate(r["rps_max"]))
            cspread = "%s-%s" % (fmt_us(r["cpu_min"]), fmt_us(r["cpu_max"]))
        table.append((
            APP_LABEL[r["app"]], r["mode"], r["label"], rps, rspread,
            fmt_us(r["cpu_median"]), cspread,
            fmt_us(r.get("client_cpu_median")),
            "%s/%s/%s" % (fmt_cpus(r["server_cpus"]), fmt_cpus(r["wrk_cpus"]),
                          fmt_cpus(r["others_cpus"])),
            str(r["errors"]) + (" !" if r["errors"] else ""),
            ratio_cell(r, "rps_vs_epoll"), ratio_cell(r, "cpu_vs_epoll"),
            ratio_cell(r, "rps_vs_1w"))
            + ((ratio_cell(r, "rps_vs_plain"),) if tls else ()))
    print_rows(("app", "mode", "server", "req/s", "min-max", "CPU us/req",
                "min-max", "client", "srv/wrk/other", "errors",
                "req/s x epoll",
                "CPU/req x epoll", "req/s x 1w")
               + (("req/s x tcp",) if tls else ()), table, 3,
               group=lambda row: row[:2])
    for n in twisted["notes"]:
        print("note: " + n)
    if tls:
        print()
        print_tls_cpu(twisted["rows"])
    print()
    print_bars(d["bars"])
    print_failures(d["failures"])


# ---- main -------------------------------------------------------------------

def main():
    ap = runner_parser(__doc__, "build-release", results=True,
                       quiet_wait=True)
    add_runs(ap, "1 repetition of 2 s", (3, 1), (5, 2),
             "seconds of wrk per run", reps_flags=("--runs", "--reps"))
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    type=name_list(SECTIONS, "section"),
                    help="comma-separated subset of %s" % ",".join(SECTIONS))
    ap.add_argument("--apps", default=",".join(APPS),
                    type=name_list(APPS, "app"),
                    help="reactors section: subset of %s (the tls section "
                         "runs its own: %s)" % (",".join(APPS),
                                                ",".join(TLS_APPS)))
    ap.add_argument("--modes", default=",".join(MODES),
                    type=name_list(MODES, "mode"),
                    help="reactors section: subset of unpinned,pinned")
    ap.add_argument("--workers", type=int_list, default=[1, 2],
                    metavar="N,..",
                    help="workers section: ame run --workers values "
                         "(default 1,2)")
    ap.add_argument("--io", default=["auto"],
                    type=name_list(("auto", "thread", "inline"), "io mode"),
                    help="workers section: ame run --io values, each run "
                         "at every --workers value (default auto; the "
                         "bars and the x 1w reference use auto); with "
                         "inline, the reactors section adds AMEReactor "
                         "with AME_IO=inline")
    ap.add_argument("--warmup", type=int, default=1, metavar="S",
                    help="seconds of wrk before each measured run "
                         "(default 1)")
    ap.add_argument("--connections", type=int, default=50,
                    help="wrk -c (default 50)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="interpreter of the in-process servers (default "
                         "/usr/bin/python3)")
    ap.add_argument("--wrk", default=None, metavar="PATH",
                    help="wrk binary (default: on PATH)")
    ap.add_argument("--nginx", default=None, metavar="PATH",
                    help="tls section: the nginx of the C peer (default: "
                         "on PATH or /usr/sbin; without one its rows are "
                         "skipped)")
    args = parse_args(ap, print_report)
    args.tls_pem = None  # made by run_matrix for the tls section
    if (args.reps < 1 or args.duration < 1 or args.warmup < 1
            or args.connections < 1 or min(args.workers) < 1):
        ap.error("counts must be positive")
    if 1 not in args.workers:
        args.workers = [1] + args.workers  # the x 1w reference
    builddir = resolve_builddir(args.builddir)
    if builddir is None:
        sys.exit("twisted_bench: %s is not a build directory: build first "
                 "(meson setup %s -Dbuildtype=release && ninja -C %s)"
                 % (args.builddir, args.builddir, args.builddir))
    args.wrk = args.wrk or shutil.which("wrk")
    args.nginx = find_nginx(args.nginx)
    if args.wrk is None or not os.access(args.wrk, os.X_OK):
        sys.exit("twisted_bench: wrk not found (Debian: apt-get install wrk)")
    # The servers import ame from the build tree (the runner does not).
    os.environ.update({"PYTHONPATH": ame_env(builddir)["PYTHONPATH"]})

    machine = machine_info()
    meter = LoadMeter()
    failures, notes = [], []
    with ServerSession("twisted_bench") as session:
        twisted = run_matrix(args, builddir, failures, session.tmpdir,
                             notes)
    if session.interrupted:
        return 130
    machine["other_cpus"] = meter.others()
    bars = evaluate_bars(twisted["rows"])
    settings = {"reps": args.reps, "duration_s": args.duration,
                "warmup_s": args.warmup, "connections": args.connections,
                "wrk_threads": 1, "sections": args.sections,
                "apps": args.apps, "modes": args.modes,
                "workers": args.workers, "io": args.io,
                "tls_certificate": " ".join(CERT_CMD),
                "quick": args.quick,
                "python": args.python, "quiet_wait_s": args.quiet_wait,
                "builddir": builddir, "command": command_line()}
    return emit(args, {"settings": settings, "machine": machine,
                       "twisted": twisted, "bars": bars,
                       "failures": failures}, print_report)


if __name__ == "__main__":
    sys.exit(main())
