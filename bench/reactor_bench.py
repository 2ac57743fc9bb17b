#!/usr/bin/python3
"""Run ame's reactor benchmarks against their baselines and print tables.

Two sections.  "scaling" (no network): bench-reactor-scaling runs M
independent events, each a reactor task doing W units of CPU work and a few
transactional reads and writes, at conflict rates 0, 1, 10 and 50% (the
share of events that write one shared hot word), at 1..cores workers, and
once per repetition the same events in a plain loop without reactor or STM;
the table gives events/s, the speedup over 1 worker and aborts per commit.
"http": the ame HTTP example (examples/c/http.c) at 1 and 2 workers, a plain
single-threaded libuv server (bench/plain_libuv_http.c) and nginx at 1 and 2
worker processes, all answering GET / with "Hello, world!\\n" on keep-alive
connections, driven by wrk -t1 -c50; the table gives requests/s and the
servers' CPU microseconds per request (from /proc/PID/stat), with ratios
against plain libuv and nginx.  Runs are interleaved round-robin and
repeated; figures are medians with the min-max over the repetitions.  A
"bars" section compares the figures the project is held to; missing a bar
never fails the run.  The exit status is 1 only if a benchmark reports a
broken invariant, crashes, hangs, or a server fails to start or to answer.

Default: both sections, 3 repetitions; scaling: 100000 events of 10 work
units (about 6.5 us of work each on the reference machine) for the plain
loop and 1 and 2 workers at 4 conflict rates, about 30 s; http: 5 servers
x 3 repetitions x 5 s of wrk, about 1.5 minutes.  --quick: 1 repetition, 20000 events, 2 s
of wrk (about 20 s in all).

Run it with Debian's /usr/bin/python3 from the repository root, after
`ninja -C build`.  It starts and stops every server itself; on error or
Ctrl-C it kills the process groups it started.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (CLK_TCK, LoadMeter, fmt_rate, machine_busy, machine_info,
                      runner_parser)

SECTIONS = ("scaling", "http")
SERVERS = ("ame-1w", "ame-2w", "plain", "nginx-1w", "nginx-2w")
HELLO = b"Hello, world!\n"


class BenchError(Exception):
    """A run that failed (not a missed bar)."""


# ---- machine load -----------------------------------------------------------

def wait_quiet(max_wait):
    """Wait, up to max_wait seconds, until other work on the machine uses
    under 0.15 CPUs (sampled over 0.5 s while we run nothing).  Return the
    seconds waited."""
    t0 = time.monotonic()
    while max_wait > 0:
        b0, s0 = machine_busy(), time.monotonic()
        time.sleep(0.5)
        b1, s1 = machine_busy(), time.monotonic()
        if b0 is None or b1 is None or (b1 - b0) / (s1 - s0) < 0.15:
            break
        if s1 - t0 >= max_wait:
            break
    return time.monotonic() - t0


# ---- formatting -------------------------------------------------------------

def fmt_ratio(x):
    return "-" if x is None else "%.2fx" % x


def fmt_apc(x):
    if x is None:
        return "-"
    return "%.4f" % x if x < 10 else "%.1f" % x


def fmt_us(x):
    return "-" if x is None else "%.2f" % x


def fmt_cpus(x):
    return "-" if x is None else "%.2f" % x


def med(xs):
    return statistics.median(xs) if xs else None


def wrk_summary(runs):
    """
    The per-configuration summary of repeated wrk runs (each a dict with
    rps, cpu_us_per_req, server_cpus, wrk_cpus, others_cpus, socket_errors
    and non2xx): medians, min-max, error counts, and the runs themselves.
    """
    rps = [r["rps"] for r in runs]
    cpr = [r["cpu_us_per_req"] for r in runs]
    return {
        "runs": len(runs),
        "rps": rps, "rps_median": med(rps),
        "rps_min": min(rps) if rps else None,
        "rps_max": max(rps) if rps else None,
        "cpu_us_per_req": cpr, "cpu_median": med(cpr),
        "cpu_min": min(cpr) if cpr else None,
        "cpu_max": max(cpr) if cpr else None,
        "server_cpus": med([r["server_cpus"] for r in runs]),
        "wrk_cpus": med([r["wrk_cpus"] for r in runs]),
        "others_cpus": med([r["others_cpus"] for r in runs
                            if r["others_cpus"] is not None]),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "errors": sum(r["socket_errors"] + r["non2xx"] for r in runs),
        "runs_detail": runs,
    }


def print_rows(head, table, right_from, group=None):
    """Print an aligned table; columns from right_from on are right-aligned.
    group(row) -> key: a blank line between groups."""
    rows = [head] + table
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    prev = None
    for n, row in enumerate(rows):
        if group and n > 1 and group(row) != prev:
            print()
        if group and n > 0:
            prev = group(row)
        cells = [row[i].ljust(widths[i]) if i < right_from
                 else row[i].rjust(widths[i]) for i in range(len(head))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


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
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        return None, "timed out after %.0f s (hang or livelock?)" % timeout
    except OSError as e:
        return None, "cannot run: %s" % e
    wall = time.monotonic() - t0
    busy1 = machine_busy()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    result = None
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    if result is not None:
        result["others_cpus"] = (
            None if busy0 is None or busy1 is None or wall <= 0
            else max(0.0, (busy1 - busy0 - own) / wall))
    if p.returncode != 0:
        if p.returncode < 0:
            why = "killed by signal %d" % -p.returncode
        elif result is not None and not result.get("valid", True):
            why = "invariant failure"
        else:
            why = "exit status %d" % p.returncode
        err = p.stderr.strip().splitlines()
        return result, why + (": " + err[-1] if err else "")
    if result is None:
        return None, "no result line in its output"
    return result, None


def scaling_section(args, builddir, progress, failures):
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
    results = {}
    total, done = len(configs) * args.reps, 0
    for rep in range(args.reps):
        for key in configs:
            c, mode, w = key
            cmd = scaling_cmd(builddir, mode, w, c, args, args.seed + rep)
            done += 1
            if progress:
                print("\r[scaling %d/%d] p=%g%% %s w=%d   " % (
                    done, total, c, mode, w), end="", file=sys.stderr,
                    flush=True)
            wait_quiet(args.quiet_wait)
            res, err = run_scaling_one(cmd, timeout)
            if err is not None:
                failures.append({"section": "scaling",
                                 "what": "p=%g%% %s w=%d" % (c, mode, w),
                                 "error": err, "command": " ".join(cmd)})
                continue
            results.setdefault(key, []).append(res)
    if progress:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)

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

    def ratio(a, b):
        return a / b if a is not None and b else None

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

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_stat(pid):
    """(ppid, utime+stime ticks) of pid, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    rest = data.rsplit(")", 1)[1].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def descendants(pid):
    """pid and every process below it (nginx: master and workers)."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids):
    """{pid: utime+stime ticks} for the pids still alive."""
    out = {}
    for p in pids:
        st = proc_stat(p)
        if st is not None:
            out[p] = st[1]
    return out


def nginx_conf(tmpdir, port, workers):
    """Write an nginx configuration for the hello-world into tmpdir."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    path = os.path.join(tmpdir, "nginx-%d.conf" % port)
    with open(path, "w") as f:
        f.write("""%(user)sworker_processes %(workers)d;
pid %(d)s/nginx-%(port)d.pid;
error_log %(d)s/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(d)s/client_body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            default_type text/plain;
            return 200 "Hello, world!\\n";
        }
    }
}
""" % {"user": user, "workers": workers, "d": tmpdir, "port": port})
    return path


class Tools:
    """Where the servers and wrk are, and which are missing."""

    def __init__(self, args, builddir):
        self.ame = args.ame_http or os.path.join(builddir, "examples", "c",
                                                 "http")
        self.plain = os.path.join(builddir, "bench", "plain-libuv-http")
        self.nginx = args.nginx or shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
            else None)
        self.wrk = args.wrk or shutil.which("wrk")
        if self.wrk is not None and not os.access(self.wrk, os.X_OK):
            self.wrk = None
        self.missing = {}
        if not os.access(self.ame, os.X_OK):
            self.missing["ame"] = "%s not built" % self.ame
        if not os.access(self.plain, os.X_OK):
            self.missing["plain"] = "%s not built" % self.plain
        if self.nginx is None or not os.access(self.nginx, os.X_OK):
            self.missing["nginx"] = "nginx not found"

    def command(self, server, port, tmpdir):
        kind, _, w = server.partition("-")
        workers = int(w[:-1]) if w else 1
        if kind == "ame":
            return [self.ame, "-p", str(port), "-w", str(workers),
                    "--host", "127.0.0.1"]
        if kind == "plain":
            return [self.plain, str(port), "127.0.0.1"]
        conf = nginx_conf(tmpdir, port, workers)
        return [self.nginx, "-p", tmpdir, "-c", conf,
                "-e", os.path.join(tmpdir, "nginx-error.log"),
                "-g", "daemon off;"]


class Server:
    """One server process in its own process group.  Every server started
    is in LIVE until stopped, so that main() can stop what an interruption
    left running."""

    LIVE = []

    def __init__(self, cmd, log_path):
        self.cmd = cmd
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        Server.LIVE.append(self)

    def log_tail(self, n=5):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def wait_port(self, port, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError("exited with status %s before accepting: %s"
                                 % (self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise BenchError("did not accept on port %d within %.0f s"
                         % (port, timeout))

    def stop(self):
        """Kill the whole process group: TERM, then KILL after 3 s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (workers whose master died, ...).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()
        if self in Server.LIVE:
            Server.LIVE.remove(self)


class ServerSession:
    """A runner's servers and scratch files:

        with ServerSession("load_bench") as session:
            ... session.tmpdir ...
        if session.interrupted:
            return 130

    On leaving the block, however it is left, every server still running
    is stopped and tmpdir removed; a Ctrl-C (KeyboardInterrupt) ends the
    block with "NAME: interrupted; servers stopped" on stderr and
    interrupted set."""

    def __init__(self, name):
        self.name = name
        self.interrupted = False
        self.tmpdir = None

    def __enter__(self):
        self.tmpdir = tempfile.mkdtemp(
            prefix="ame-%s-" % self.name.replace("_", "-"))
        return self

    def __exit__(self, kind, value, tb):
        for srv in list(Server.LIVE):
            srv.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        if kind is KeyboardInterrupt:
            print("\n%s: interrupted; servers stopped" % self.name,
                  file=sys.stderr)
            self.interrupted = True
            return True
        return False


def probe(port):
    """GET / twice on one connection.  Return a dict describing the second
    response (status line, header names, bytes), or raise BenchError."""
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.settimeout(5)
    try:
        buf = b""
        out = None
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"User-Agent: reactor_bench\r\n\r\n")
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise BenchError("connection closed before a response "
                                     "(keep-alive broken?)")
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "-1"))
            if n < 0:
                raise BenchError("no Content-Length in %r" % head)
            while len(buf) < n:
                chunk = s.recv(4096)
                if not chunk:
                    raise BenchError("connection closed inside the body")
                buf += chunk
            body, buf = buf[:n], buf[n:]
            out = {"status": lines[0], "headers": [l.split(":")[0]
                                                   for l in lines[1:]],
                   "bytes": len(head) + 4 + n, "body_ok": body == HELLO}
            if not lines[0].startswith("HTTP/1.1 200"):
                raise BenchError("status %r" % lines[0])
            if body != HELLO:
                raise BenchError("body %r" % body)
        return out
    except socket.timeout:
        raise BenchError("no response within 5 s")
    finally:
        s.close()


WRK_RE = {
    "requests": re.compile(r"(\d+) requests in ([\d.]+)(\w+)"),
    "rps": re.compile(r"Requests/sec:\s*([\d.]+)"),
    "socket_errors": re.compile(r"Socket errors: connect (\d+), read (\d+), "
                                r"write (\d+), timeout (\d+)"),
    "non2xx": re.compile(r"Non-2xx or 3xx responses: (\d+)"),
}


def wait_client(p, timeout, what):
    """Wait for client process p (a Popen) for at most timeout seconds;
    return (exit status, rusage).  Past the limit, kill it and raise
    BenchError.  Ctrl-C kills it too."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid != 0:
                p.returncode = os.waitstatus_to_exitcode(status)
                return p.returncode, ru
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9
                raise BenchError("%s did not finish (server hung?)" % what)
            time.sleep(0.05)
    except BaseException:
        if p.returncode is None:
            p.kill()
            p.wait()
        raise


def run_wrk(wrk, port, threads, conns, duration, tmpdir, headers=()):
    """Run wrk (with extra request headers, e.g. "Connection: close");
    return (parsed dict, wrk's CPU seconds, wall seconds)."""
    out_path = os.path.join(tmpdir, "wrk.out")
    cmd = [wrk, "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration]
    for h in headers:
        cmd += ["-H", h]
    cmd.append("http://127.0.0.1:%d/" % port)
    with open(out_path, "wb") as out:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT)
        _, ru = wait_client(p, duration + 30, "wrk")
        wall = time.monotonic() - t0
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if p.returncode != 0:
        raise BenchError("wrk exit status %d: %s" % (p.returncode,
                                                      text.strip()[-200:]))
    m = WRK_RE["requests"].search(text)
    r = WRK_RE["rps"].search(text)
    if not m or not r:
        raise BenchError("cannot parse wrk output: %s" % text.strip()[-200:])
    res = {"requests": int(m.group(1)), "rps": float(r.group(1)),
           "socket_errors": 0, "non2xx": 0, "command": " ".join(cmd)}
    e = WRK_RE["socket_errors"].search(text)
    if e:
        res["socket_errors"] = sum(int(x) for x in e.groups())
    n = WRK_RE["non2xx"].search(text)
    if n:
        res["non2xx"] = int(n.group(1))
    return res, ru.ru_utime + ru.ru_stime, wall


def run_http_one(tools, server, wrk_threads, args, tmpdir, do_probe):
    """Start server, optionally probe it, drive it with wrk, stop it.
    Return the measurement dict; raise BenchError on failure."""
    port = free_port()
    cmd = tools.command(server, port, tmpdir)
    srv = Server(cmd, os.path.join(tmpdir, "%s-%d.log" % (server, port)))
    try:
        srv.wait_port(port)
        info = probe(port) if do_probe else None
        # nginx starts its workers after it listens: give them a moment.
        time.sleep(0.2)
        pids = descendants(srv.proc.pid)
        busy0 = machine_busy()
        cpu0 = cpu_ticks(pids)
        res, wrk_cpu, wall = run_wrk(tools.wrk, port, wrk_threads,
                                     args.connections, args.duration, tmpdir)
        cpu1 = cpu_ticks(pids)
        busy1 = machine_busy()
        if srv.proc.poll() is not None:
            raise BenchError("server exited during the run (status %s): %s"
                             % (srv.proc.returncode, srv.log_tail()))
        ticks = sum(cpu1.get(p, cpu0[p]) - cpu0[p] for p in cpu0)
        cpu_s = ticks / float(CLK_TCK)
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
            "others_cpus": (None if busy0 is None or busy1 is None else
                            max(0.0, (busy1 - busy0 - cpu_s - wrk_cpu)
                                / wall)),
            "response": info,
        })
        return res
    finally:
        srv.stop()


def http_section(args, builddir, progress, failures, tmpdir):
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
    results, responses = {}, {}
    total, done = len(configs) * args.reps, 0
    for rep in range(args.reps):
        for key in configs:
            s, t = key
            done += 1
            if progress:
                print("\r[http %d/%d] %s wrk -t%d   " % (done, total, s, t),
                      end="", file=sys.stderr, flush=True)
            wait_quiet(args.quiet_wait)
            try:
                res = run_http_one(tools, s, t, args, tmpdir,
                                   do_probe=s not in responses)
            except BenchError as e:
                failures.append({"section": "http",
                                 "what": "%s wrk -t%d" % (s, t),
                                 "error": str(e),
                                 "command": " ".join(tools.command(
                                     s, 8080, "TMPDIR"))})
                if progress:
                    print("\n  FAILED: %s" % e, file=sys.stderr)
                continue
            if res["response"] is not None:
                responses[s] = res["response"]
            results.setdefault(key, []).append(res)
    if progress:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)

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

    def ratio(a, b):
        return a / b if a is not None and b else None

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

    def bar(name, figure, op, target, rows, fmt=fmt_ratio):
        if figure is None:
            status, shown = "n/a", "not measured"
        else:
            ok = figure >= target if op == ">=" else figure <= target
            status, shown = ("PASS" if ok else "MISS"), fmt(figure)
        other = [r["others_cpus"] for r in rows
                 if r and r.get("others_cpus") is not None]
        note = None
        if figure is not None and other and max(other) > 0.2:
            note = "disturbed: other work used up to %.2f CPUs" % max(other)
        bars.append({"bar": name, "target": "%s %s" % (op, fmt(target)),
                     "measured": figure, "shown": shown, "status": status,
                     "note": note})

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


def print_bars(bars):
    print("bars:")
    if not bars:
        return
    w = max(len(b["bar"]) for b in bars)
    for b in bars:
        print("  %-4s  %s  %-12s (target %s)%s" % (
            b["status"], b["bar"].ljust(w), b["shown"], b["target"],
            "  [%s]" % b["note"] if b["note"] else ""))


# ---- main -------------------------------------------------------------------

def int_list(text):
    return sorted({int(x) for x in text.split(",") if x.strip()})


def float_list(text):
    return sorted({float(x) for x in text.split(",") if x.strip()})


def name_list(allowed, what):
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        for x in items:
            if x not in allowed:
                raise argparse.ArgumentTypeError(
                    "unknown %s '%s' (choose from %s)" % (
                        what, x, ", ".join(allowed)))
        return items
    return parse


def main():
    ap = runner_parser(__doc__, "build", epilog_from=2, results=True)
    ap.add_argument("--quick", action="store_true",
                    help="short form: 1 repetition, 20000 events, 2 s of wrk")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    type=name_list(SECTIONS, "section"),
                    help="comma-separated subset of %s" % ",".join(SECTIONS))
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions of every run (default 3; quick 1)")
    ap.add_argument("--duration", type=int, default=None, metavar="S",
                    help="seconds of wrk per http run (default 5; quick 2)")
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
    args = ap.parse_args()
    if args.show:
        with open(args.show) as f:
            d = json.load(f)
        print_report(d["settings"], d["machine"], d["scaling"], d["http"],
                     d["bars"], d["failures"])
        return 1 if d["failures"] else 0
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 2 if args.quick else 5
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

    builddir = args.builddir
    if not os.path.isdir(os.path.join(builddir, "bench")):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        alt = os.path.join(here, builddir)
        if os.path.isdir(os.path.join(alt, "bench")):
            builddir = alt
        else:
            sys.exit("reactor_bench: no %s/bench: build first (ninja -C %s)"
                     % (builddir, builddir))
    builddir = os.path.abspath(builddir)

    machine = machine_info()
    meter = LoadMeter()
    progress = sys.stderr.isatty()
    failures = []
    scaling = http = None
    with ServerSession("reactor_bench") as session:
        if "scaling" in args.sections:
            scaling = scaling_section(args, builddir, progress, failures)
        if "http" in args.sections:
            http = http_section(args, builddir, progress, failures,
                                session.tmpdir)
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
                "builddir": builddir, "seed": args.seed}
    if args.json:
        json.dump({"settings": settings, "machine": machine,
                   "scaling": scaling, "http": http, "bars": bars,
                   "failures": failures}, sys.stdout, indent=1)
        print()
    else:
        print_report(settings, machine, scaling, http, bars, failures)
    return 1 if failures else 0


def print_report(settings, machine, scaling, http, bars, failures):
    """The human-readable form of one run (also for --show FILE)."""
    print("ame reactor benchmarks: %s CPUs (%s), load average %s at the "
          "start" % (machine["cpus"], machine["cpu"],
                     " ".join(machine["loadavg_at_start"] or ["?"])))
    other = machine["other_cpus"]
    if other is not None:
        print("Other work on the machine used %.2f CPUs on average during "
              "the run%s" % (other, " -- figures are disturbed, above all "
                             "at 2 workers" if other > 0.2 else "."))
    if scaling:
        print()
        print_scaling(scaling, settings["reps"])
    if http:
        print()
        print_http(http, settings["reps"])
    print()
    print_bars(bars)
    if failures:
        print()
        print("FAILURES (%d):" % len(failures))
        for f in failures:
            print("  %s %s: %s" % (f["section"], f["what"], f["error"]))
            print("    reproduce: %s" % f["command"])


if __name__ == "__main__":
    sys.exit(main())
