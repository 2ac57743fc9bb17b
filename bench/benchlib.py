"""bench/benchlib.py — what the benchmark runners (stm_bench.py,
reactor_bench.py, twisted_bench.py, load_bench.py, supervisor_bench.py,
shared_bench.py, tasks_bench.py, demo.py) share, so that each mechanism
exists once:

- the machine: what it is (machine_info), how busy other work kept it
  (LoadMeter, wait_quiet), and the CPU time of a server's processes over
  a client's run (ServerCPU);
- running programs: a benchmark binary that prints one JSON line
  (run_json), the HTTP clients wrk (run_wrk) and `ame load --json`
  (run_ame_load), the shared heap's crash-injection test (run_heap_crash),
  with limits, and their output parsed in one place;
- servers: each in its own process group (Server, AppServer), a program
  under `ame run` (start_ame_run), all stopped however a runner ends
  (ServerSession), checked with two keep-alive GETs (check_http);
- the command line (runner_parser and the list parsers), the JSON a runner
  writes and prints (emit, load_saved), and the text tables (fmt_*,
  print_rows, print_bars, print_failures).

Standard library only; run with Debian's /usr/bin/python3.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Code placements: bytes of code (bench/pad.c) linked between a benchmark's
# objects and the STM library it links statically, one per repetition in
# turn (stm_bench.py, stamp_bench.py; bench/meson.build builds the STM
# drivers at the same ones).
PLACEMENTS = (0, 80, 160, 240)


class BenchError(Exception):
    """A run that failed (not a missed bar)."""


# ---- the machine ------------------------------------------------------------

def machine_busy():
    """Seconds of CPU the whole machine has been busy (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: busy excludes
        # idle and iowait.
        return (sum(fields[:8]) - fields[3] - fields[4]) / float(CLK_TCK)
    except (OSError, ValueError, IndexError):
        return None


class LoadMeter:
    """How much CPU time other work on the machine used while we ran:
    the machine's busy time less our (reaped) children's CPU time, plus
    what we measured ourselves of children not reaped by us."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return (time.monotonic(), machine_busy(),
                ru.ru_utime + ru.ru_stime + me.ru_utime + me.ru_stime)

    def others(self):
        """Average CPUs used by other work since the start, or None."""
        t0, b0, c0 = self.start
        t1, b1, c1 = self._sample()
        if b0 is None or b1 is None or t1 <= t0:
            return None
        return max(0.0, ((b1 - b0) - (c1 - c0)) / (t1 - t0))


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


def autogroup():
    """Whether the kernel's autogroup scheduling is on (True, False; None
    if unknown).  Then busy CPUs are shared between sessions before
    threads: each server, in a session of its own (Server), gets as much as
    the client in the runner's session, however many threads it runs."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except (OSError, ValueError):
        return None


def scheduling_note(autogroup_on):
    """What autogroup() (True, False or None) means for the figures, in
    one sentence for a report's header, or None if it is unknown."""
    return {True: "autogroup on: each server runs in a session of its own "
                  "and shares busy CPUs with the client as one group "
                  "against another",
            False: "autogroup off: busy CPUs are shared between "
                   "threads"}.get(autogroup_on)


def machine_info():
    """The CPU model, CPU count, whether the CPU has Intel RTM (None if
    unknown), kernel, autogroup scheduling (autogroup()), load average and
    the time (UTC) at the start of a run."""
    model = platform.processor() or ""
    rtm = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    rtm = "rtm" in line.split(":", 1)[1].split()
                if rtm is not None and model:
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "cpu": model, "rtm": rtm,
            "kernel": platform.release(), "autogroup": autogroup(),
            "loadavg_at_start": load,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_stat(path):
    """(name, fields after the name) of a /proc .../stat file, or None if
    it is gone.  The name is the one in parentheses, which may itself hold
    spaces or parentheses."""
    try:
        with open(path) as f:
            data = f.read()
    except OSError:
        return None
    head, rest = data.rsplit(")", 1)
    return head.split("(", 1)[1], rest.split()


def proc_stat(pid):
    """(ppid, utime+stime ticks) of pid, or None if it is gone."""
    st = read_stat("/proc/%d/stat" % pid)
    if st is None:
        return None
    rest = st[1]
    return int(rest[1]), int(rest[11]) + int(rest[12])


def proc_start_time(pid):
    """The start time of pid (ticks since boot, /proc/PID/stat field 22),
    which tells a process from a later one with the same pid; None if
    gone."""
    st = read_stat("/proc/%d/stat" % pid)
    try:
        return int(st[1][19]) if st is not None else None
    except (ValueError, IndexError):
        return None


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


def thread_ticks(pids):
    """{(pid, tid): (thread name, utime+stime ticks)} for every thread of
    the pids still alive (/proc/PID/task/TID/stat)."""
    out = {}
    for p in pids:
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tids:
            st = read_stat("/proc/%d/task/%s/stat" % (p, t))
            if st is not None:
                out[(p, int(t))] = (st[0], int(st[1][11]) + int(st[1][12]))
    return out


class ServerCPU:
    """The CPU time a server's processes use while a client runs, and what
    other work on the machine used meanwhile:

        window = ServerCPU(pids)
        ... run the client ...
        window.stop()
        window.seconds, window.changed, window.others(client_cpu_s, wall_s)

    seconds counts every thread of the pids (utime + stime from /proc); a
    pid gone by stop() counts up to its last sample; changed says whether
    any was gone.  by_thread: the same seconds by thread name (ame's C
    threads are named: ame-io, ame-worker, ame-tls; a Python program's own
    threads carry the interpreter's name), threads started during the
    window counted from zero, threads that ended during it missing."""

    def __init__(self, pids):
        self.busy0 = machine_busy()
        self.ticks0 = cpu_ticks(pids)
        self.threads0 = thread_ticks(pids)
        self.pids = pids

    def stop(self):
        threads1 = thread_ticks(self.pids)
        ticks1 = cpu_ticks(self.pids)
        self.busy1 = machine_busy()
        self.changed = len(ticks1) != len(self.ticks0)
        self.seconds = sum(ticks1.get(p, t) - t
                           for p, t in self.ticks0.items()) / float(CLK_TCK)
        self.by_thread = {}
        for key, (name, t1) in threads1.items():
            t0 = self.threads0.get(key, (name, 0))[1]
            self.by_thread[name] = (self.by_thread.get(name, 0.0)
                                    + (t1 - t0) / float(CLK_TCK))
        return self.seconds

    def others(self, client_cpu, wall):
        """CPUs other work used over wall seconds: the machine's busy time
        less the server's and the client's."""
        if self.busy0 is None or self.busy1 is None or wall <= 0:
            return None
        return max(0.0, (self.busy1 - self.busy0 - self.seconds - client_cpu)
                   / wall)


# ---- running programs -------------------------------------------------------

def run_json(cmd, timeout):
    """Run a benchmark binary that prints one JSON line (its last line
    starting with "{").  Return (result dict or None, error text or None):
    the error says why it failed -- a timeout, a signal, an invariant
    failure ("valid": false), an exit status, no result line -- with the
    last line of its stderr."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        return None, "timed out after %.0f s (hang or livelock?)" % timeout
    except OSError as e:
        return None, "cannot run: %s" % e
    result = None
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
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


def read_calls(pid):
    """The read-family system calls (read, readv, pread: syscr in
    /proc/PID/io) that process pid has made, or None if unreadable."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("syscr:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def wait_client(p, timeout, what):
    """Wait for client process p (a Popen) for at most timeout seconds;
    return (exit status, rusage, its read-family system calls as last seen
    while it ran, at most one poll (50 ms) before it ended, or None).  Past
    the limit, kill it and raise BenchError.  Ctrl-C kills it too."""
    deadline = time.monotonic() + timeout
    reads = None
    try:
        while True:
            seen = read_calls(p.pid)
            if seen is not None:
                reads = seen
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid != 0:
                p.returncode = os.waitstatus_to_exitcode(status)
                return p.returncode, ru, reads
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


def run_client(cmd, what, timeout, tmpdir, stderr_too=True):
    """Run a load client with its output in a file of tmpdir (stderr in
    the same file, or with stderr_too false in a file of its own); return
    (exit status, its output, its stderr or "", its CPU seconds, wall
    seconds, its read-family system calls or None: wait_client)."""
    base = os.path.join(tmpdir, what.replace(" ", "-"))
    with open(base + ".out", "wb") as out, open(base + ".err", "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT if stderr_too else err)
        rc, ru, reads = wait_client(p, timeout, what)
        wall = time.monotonic() - t0
    texts = []
    for path in (base + ".out", base + ".err"):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return rc, texts[0], texts[1], ru.ru_utime + ru.ru_stime, wall, reads


WRK_RE = {
    "requests": re.compile(r"(\d+) requests in ([\d.]+)(\w+)"),
    "rps": re.compile(r"Requests/sec:\s*([\d.]+)"),
    "socket_errors": re.compile(r"Socket errors: connect (\d+), read (\d+), "
                                r"write (\d+), timeout (\d+)"),
    "non2xx": re.compile(r"Non-2xx or 3xx responses: (\d+)"),
}


def run_wrk(wrk, port, threads, conns, duration, tmpdir, headers=(),
            tls=False):
    """Run wrk (with extra request headers, e.g. "Connection: close"; tls:
    on https://, which wrk speaks without verifying the certificate);
    return (parsed dict, wrk's CPU seconds, wall seconds); the dict's
    client_read_calls: wrk's read-family system calls (wait_client)."""
    cmd = [wrk, "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration]
    for h in headers:
        cmd += ["-H", h]
    cmd.append("%s://127.0.0.1:%d/" % ("https" if tls else "http", port))
    rc, text, _, cpu, wall, reads = run_client(cmd, "wrk", duration + 30,
                                               tmpdir)
    if rc != 0:
        raise BenchError("wrk exit status %d: %s" % (rc, text.strip()[-200:]))
    m = WRK_RE["requests"].search(text)
    r = WRK_RE["rps"].search(text)
    if not m or not r:
        raise BenchError("cannot parse wrk output: %s" % text.strip()[-200:])
    res = {"requests": int(m.group(1)), "rps": float(r.group(1)),
           "socket_errors": 0, "non2xx": 0, "command": " ".join(cmd),
           "client_read_calls": reads}
    e = WRK_RE["socket_errors"].search(text)
    if e:
        res["socket_errors"] = sum(int(x) for x in e.groups())
    n = WRK_RE["non2xx"].search(text)
    if n:
        res["non2xx"] = int(n.group(1))
    return res, cpu, wall


def run_ame_load(ame, port, threads, conns, duration, tmpdir, extra=(),
                 tls=False):
    """Run `ame load http://127.0.0.1:PORT/ -t -c -d --json` (plus extra
    arguments; tls: https://); return (its JSON, its CPU seconds, the
    command).  Raise BenchError if it fails, hangs or prints no JSON."""
    cmd = [ame, "load", "%s://127.0.0.1:%d/" % ("https" if tls else "http",
                                                port), "-t", str(threads),
           "-c", str(conns), "-d", "%gs" % duration, "--json"] + list(extra)
    rc, text, err, cpu, _, _ = run_client(cmd, "ame load", duration + 30,
                                          tmpdir, stderr_too=False)
    if rc != 0:
        raise BenchError("`%s` exited %d: %s" % (" ".join(cmd), rc,
                                                 err.strip()[-300:]))
    try:
        d = json.loads(text)
    except ValueError:
        raise BenchError("cannot parse the output of `%s`: %s"
                         % (" ".join(cmd), text.strip()[-300:]))
    return d, cpu, " ".join(cmd)


HEAP_CRASH_RE = {
    "kills": re.compile(r"^(heap_crash\w*): (\d+) kills \(random (\d+), "
                        r"locked (\d+), validated (\d+), writeback (\d+), "
                        r"released (\d+)\), (\d+) transfers acknowledged, "
                        r"(\d+) recoveries \((\d+) finished a commit\)",
                        re.M),
    "peer": re.compile(r"^recovered by a surviving worker: (\d+) of", re.M),
    "times": re.compile(r"^recovery time, ms: p50 ([\d.]+) p99 ([\d.]+) "
                        r"max ([\d.]+)", re.M),
    "check": re.compile(r"^  check ", re.M),
}


def run_heap_crash(runner, test, kills, timeout):
    """
    Run the shared heap's crash-injection test (tests/stm/test_heap_crash.c:
    `run-stm-tests heap_crash` or `heap_crash_peer`) with AME_HEAP_KILLS=
    kills, verbose (a "  check" line each time the invariants held after a
    kill and its recovery).  Return a dict: kills, survived (kills after
    which the invariants held), the kills per phase, transfers
    acknowledged, recoveries, recovered_commits, by_survivor (peer only),
    recovery p50/p99/max in ms, seconds, command, and error (None, or why
    the test failed: a broken invariant, a hang, a crash).  Raise BenchError
    only when it cannot run.
    """
    env = dict(os.environ, AME_HEAP_KILLS=str(kills),
               AME_HEAP_CRASH_VERBOSE="1")
    command = "AME_HEAP_KILLS=%d %s %s" % (kills, runner, test)
    t0 = time.monotonic()
    try:
        p = subprocess.run([runner, test], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env, timeout=timeout, text=True,
                           errors="replace")
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(
            e.stdout, bytes) else (e.stdout or "")
        err, rc = "timed out after %.0f s" % timeout, None
    except OSError as e:
        raise BenchError("cannot run %s: %s" % (runner, e))
    res = {"test": test, "kills": kills,
           "survived": len(HEAP_CRASH_RE["check"].findall(out)),
           "seconds": time.monotonic() - t0, "command": command,
           "error": None}
    m = HEAP_CRASH_RE["kills"].search(out)
    if m:
        res["by_phase"] = dict(zip(("random", "locked", "validated",
                                    "writeback", "released"),
                                   (int(x) for x in m.groups()[2:7])))
        res["acknowledged"] = int(m.group(8))
        res["recoveries"] = int(m.group(9))
        res["recovered_commits"] = int(m.group(10))
    m = HEAP_CRASH_RE["peer"].search(out)
    res["by_survivor"] = int(m.group(1)) if m else None
    m = HEAP_CRASH_RE["times"].search(out)
    res["p50_ms"], res["p99_ms"], res["max_ms"] = (
        [float(x) for x in m.groups()] if m else (None, None, None))
    if rc != 0 or m is None:
        lines = (err or "").strip().splitlines() or out.strip().splitlines()
        why = ("killed by signal %d" % -rc if rc is not None and rc < 0
               else "exit status %s" % rc if rc is not None else "")
        res["error"] = "; ".join(x for x in (why, lines[-1] if lines else "")
                                 if x) or "no summary in its output"
    return res


def line_transfer(builddir):
    """What moving a cache line between the first two CPUs costs now, in ns
    (bench-line-transfer's median), or None if it cannot be measured."""
    exe = os.path.join(builddir, "bench", "bench-line-transfer")
    if not os.access(exe, os.X_OK):
        return None
    res, err = run_json([exe], 30)
    return res.get("ns_per_transfer") if err is None else None


class Steady:
    """Take each multi-thread run while moving a cache line between the two
    CPUs costs at most twice the cheapest measured so far.  Under a
    hypervisor that cost changes with where the host puts the vCPUs (here
    about 40 ns or about 190 ns, for seconds to minutes), every figure at 2
    threads halves with it, and two variants of one repetition that run on
    either side of such a change compare the host, not the STMs.  First,
    measure CALIBRATE times a second apart, so that a machine that starts
    dear is known to be.  Before a run: measure, and while it is dearer,
    wait and measure again (up to WAIT_S seconds).  After it: measure, and
    run it again (up to REDO times) if it had become dearer.  At the end
    (retake): take again what ran while it was dear.  BUDGET_S bounds the
    waiting of a whole invocation, so a machine that stays dear runs on as
    before.  The same rule holds for every variant."""

    CALIBRATE = 5
    WAIT_S = 60
    REDO = 2
    BUDGET_S = 480

    def __init__(self, builddir):
        self.builddir = builddir
        self.fastest = self.dearest = None
        self.waited = 0.0   # seconds spent waiting, in all
        self.redone = 0     # runs taken again at once
        self.retaken = 0    # runs taken again at the end (retake)

    def measure(self):
        ns = line_transfer(self.builddir)
        if ns is not None and (self.fastest is None or ns < self.fastest):
            self.fastest = ns
        if ns is not None and (self.dearest is None or ns > self.dearest):
            self.dearest = ns
        return ns

    def cheap(self, ns):
        return ns is None or self.fastest is None or ns <= 2 * self.fastest

    def spent(self):
        return self.waited >= self.BUDGET_S

    def settle(self):
        """Measure; wait while dear.  Return the last measurement."""
        if self.fastest is None:
            for _ in range(self.CALIBRATE - 1):
                self.measure()
                time.sleep(1)
        ns = self.measure()
        waited = 0
        while (not self.cheap(ns) and not self.spent()
               and waited < self.WAIT_S):
            time.sleep(1)
            waited += 1
            self.waited += 1
            ns = self.measure()
        return ns

    def run(self, fn):
        """fn() once the cost is cheap, again if it was not cheap after.
        Return (fn's result, [before, after] or None)."""
        for attempt in range(self.REDO + 1):
            before = self.settle()
            res = fn()
            after = self.measure()
            if before is None or after is None:
                return res, None
            if (self.cheap(before) and self.cheap(after)
                    or not self.cheap(before) or attempt == self.REDO
                    or self.spent()):
                break
            self.redone += 1
        return res, [before, after]

    def retake(self, runs, again, keep, on_failure):
        """Once every repetition has run: take again, in the order given,
        each run measured while the cost was dearer than twice the cheapest
        seen in the end (a machine that started dear learns only later what
        cheap is), and keep the new one where it was cheap around it.
        runs: (key, rep, [before, after] or None) of each multi-thread run
        in the order run; again(key, rep): run it again, return (result,
        [before, after] or None), or raise BenchError, which goes to
        on_failure(key, rep, error) as in round_robin; keep(key, rep,
        result): put it in the old one's place."""
        for key, rep, line_ns in runs:
            if line_ns is None or self.cheap(max(line_ns)):
                continue
            if self.spent():
                return
            try:
                res, new = again(key, rep)
            except BenchError as e:
                on_failure(key, rep, str(e))
                continue
            if new and self.cheap(max(new)):
                keep(key, rep, res)
                self.retaken += 1

    def summary(self):
        return {"waited_s": self.waited, "redone": self.redone,
                "retaken": self.retaken, "measured_ns": [self.fastest,
                                                         self.dearest],
                "wait_s": self.WAIT_S, "redo": self.REDO,
                "budget_s": self.BUDGET_S}


def steady_note(st):
    """One sentence on what Steady did, from its summary (None: nothing)."""
    if not st:
        return None
    return ("Each multi-thread run waited for the cost of moving a cache "
            "line between the two CPUs to be at most twice the cheapest (up "
            "to %d s a run, %d s in all), was run again if "
            "it was dearer after (up to %d times), and once every "
            "repetition had run, a run made while it was dearer than twice "
            "the cheapest seen in the end was taken again: %.0f s of "
            "waiting, %d runs again at once, %d at the end%s."
            % (st["wait_s"], st["budget_s"], st["redo"], st["waited_s"],
               st["redone"], st.get("retaken", 0),
               " (the cost measured %.0f-%.0f ns in all)"
               % tuple(st["measured_ns"]) if st.get("measured_ns") else ""))


def round_robin(keys, reps, run, describe, on_failure, label="",
                quiet_wait=0, alternate=False):
    """Run run(key, rep) for every key once per repetition, so that a slow
    patch of the machine does not land on one configuration (with
    alternate, the order is reversed on every other repetition), each run
    after wait_quiet(quiet_wait), with a progress line on stderr when it is
    a terminal ("[LABEL 3/12] describe(key)").  Return {key: [run's
    results]}; a run that raises BenchError is left out and passed to
    on_failure(key, rep, error)."""
    results = {}
    total, done, width = len(keys) * reps, 0, 0
    tty = sys.stderr.isatty()
    for rep in range(reps):
        for key in (keys[::-1] if alternate and rep % 2 else keys):
            done += 1
            if tty:
                line = "[%s%d/%d] %s" % (label + " " if label else "", done,
                                         total, describe(key))
                width = max(width, len(line))
                print("\r" + line.ljust(width), end="", file=sys.stderr,
                      flush=True)
            wait_quiet(quiet_wait)
            try:
                res = run(key, rep)
            except BenchError as e:
                on_failure(key, rep, str(e))
                if tty:
                    print("\n  FAILED: %s" % e, file=sys.stderr)
                continue
            results.setdefault(key, []).append(res)
    if tty:
        print("\r" + " " * width + "\r", end="", file=sys.stderr)
    return results


# ---- servers ----------------------------------------------------------------

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One server process in its own process group.  Every server started
    is in LIVE until stopped, so that a ServerSession can stop what an
    interruption left running."""

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

    def check_running(self, during):
        """Raise BenchError if the server has exited (during: "the run",
        "the warm-up")."""
        if self.proc.poll() is not None:
            raise BenchError("the server exited during %s (status %s): %s"
                             % (during, self.proc.returncode,
                                self.log_tail()))

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


def kill_leftovers(idents):
    """SIGKILL each (pid, start time) still alive as that same process (a
    worker that left its parent's process group); return the pids
    killed."""
    killed = []
    for pid, start in idents:
        if start is not None and proc_start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


class AppServer(Server):
    """A Server (own process group, stopped TERM then KILL) that also
    remembers every process seen in its tree (an `ame run` supervisor and
    its workers), and kills any of them still alive after the group is
    gone (a worker that left the group)."""

    def __init__(self, cmd, log_path):
        super().__init__(cmd, log_path)
        self.seen = {}

    def remember(self):
        if self.proc.poll() is None:
            for p in descendants(self.proc.pid):
                self.seen.setdefault(p, proc_start_time(p))
        return sorted(self.seen)

    def stop(self):
        self.remember()
        super().stop()
        kill_leftovers(self.seen.items())


def start_ame_run(builddir, program, workers, port, log, options=()):
    """
    Start `BUILDDIR/cmd/ame run --workers W [options] PROGRAM...` (program:
    the Python program and its arguments) as an AppServer, with the
    PYTHONPATH of ame_env(builddir); wait until it accepts on port and the
    supervisor says that every worker serves.  Raise BenchError if it does
    not within 30 s or exits.
    """
    ame = os.path.join(builddir, "cmd", "ame")
    cmd = (["env", "PYTHONPATH=" + ame_env(builddir)["PYTHONPATH"], ame,
            "run", "--workers", str(workers)] + list(options) + list(program))
    srv = AppServer(cmd, log)
    srv.wait_port(port, 30)
    serving = re.compile(r"%d worker\(s\) serving" % workers)
    end = time.monotonic() + 30
    while True:
        with open(log, errors="replace") as f:
            if serving.search(f.read()):
                return srv
        srv.check_running("the start")
        if time.monotonic() > end:
            raise BenchError("`ame run` did not say that %d workers serve "
                             "within 30 s: %s" % (workers, srv.log_tail()))
        time.sleep(0.05)


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


def find_nginx(path=None):
    """The nginx binary: path if given, else on PATH or /usr/sbin (Debian
    puts it there, off a user's PATH); None if not executable."""
    path = path or shutil.which("nginx") or "/usr/sbin/nginx"
    return path if os.access(path, os.X_OK) else None


def nginx_command(nginx, tmpdir, port, workers, body, tls=None):
    """The command line of an nginx serving GET / with 200 and body (text/
    plain) on 127.0.0.1:port, keep-alive without limit, with workers worker
    processes, its configuration and files in tmpdir.  tls: (certificate
    file, key file) to serve HTTPS instead, every connection a full
    handshake (no session cache and no session tickets: no session
    resumes, as with Twisted's CertificateOptions by default), TLS 1.3
    allowed (Debian 12's nginx 1.22 offers only TLS 1.0-1.2 by default,
    whose handshake costs less CPU than the TLS 1.3 one that Twisted's
    servers negotiate with the same clients)."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    tls_conf = ""
    if tls:
        tls_conf = ("        ssl_certificate %s;\n"
                    "        ssl_certificate_key %s;\n"
                    "        ssl_session_cache off;\n"
                    "        ssl_session_tickets off;\n"
                    "        ssl_protocols TLSv1.2 TLSv1.3;\n" % tls)
    conf = os.path.join(tmpdir, "nginx-%d.conf" % port)
    with open(conf, "w") as f:
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
        listen 127.0.0.1:%(port)d%(listen)s;
%(ssl)s        location / {
            default_type text/plain;
            return 200 "%(body)s";
        }
    }
}
""" % {"user": user, "workers": workers, "d": tmpdir, "port": port,
       "listen": " ssl" if tls else "", "ssl": tls_conf,
       "body": body.replace("\\", "\\\\").replace('"', '\\"')
       .replace("\n", "\\n")})
    return [nginx, "-p", tmpdir, "-c", conf,
            "-e", os.path.join(tmpdir, "nginx-error.log"), "-g", "daemon off;"]


def check_http(port, body, tls=False):
    """GET / twice on one keep-alive connection: each must answer 200 with
    a Content-Length and exactly body, and not close.  tls: over TLS, the
    server's certificate not verified (the benchmarks' is self-signed).
    Return a dict describing the second response (status line, header
    names, bytes; with tls, the protocol and cipher), or raise
    BenchError."""
    try:
        s = socket.create_connection(("127.0.0.1", port), 5)
    except OSError as e:
        raise BenchError("GET / failed: %s" % e)
    s.settimeout(5)
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s)  # the handshake (an SSLError: OSError)
        buf = b""
        out = None
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"User-Agent: ame-bench\r\n\r\n")
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
            data, buf = buf[:n], buf[n:]
            out = {"status": lines[0], "headers": [l.split(":")[0]
                                                   for l in lines[1:]],
                   "bytes": len(head) + 4 + n, "body_ok": data == body}
            if not lines[0].startswith("HTTP/1.1 200"):
                raise BenchError("GET / answered %r" % lines[0])
            if data != body:
                raise BenchError("GET / body %r, expected %r" % (data, body))
            if headers.get("connection", "").lower() == "close":
                raise BenchError("the server closed a keep-alive connection")
        if tls:
            out["tls"] = "%s %s" % (s.version(), s.cipher()[0])
        return out
    except socket.timeout:
        raise BenchError("no response within 5 s")
    except OSError as e:
        raise BenchError("GET / failed: %s" % e)
    finally:
        s.close()


# ---- Python servers from a build tree (twisted_bench.py, demo.py) ----------

def resolve_builddir(builddir, need="build.ninja"):
    """builddir as given, or relative to the repository root; absolute.
    None if neither holds need (a build: build.ninja; the benchmarks'
    binaries: "bench")."""
    for d in (builddir, os.path.join(REPO, builddir)):
        if os.path.exists(os.path.join(d, need)):
            return os.path.abspath(d)
    return None


def ame_env(builddir):
    """The environment a Python program needs to import ame from the build
    tree: PYTHONPATH=BUILDDIR/bindings:REPO/bindings (before any already
    set)."""
    env = dict(os.environ)
    paths = [os.path.join(builddir, "bindings"), os.path.join(REPO, "bindings")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = ":".join(paths)
    return env


def use_ame_here(name, builddir):
    """Resolve builddir (exit naming the runner if it holds no build) and
    import ame from it in this process and in the children it forks
    (PYTHONPATH and sys.path).  Return the build directory, absolute."""
    b = resolve_builddir(builddir)
    if b is None:
        sys.exit("%s: no build in %s" % (name, builddir))
    os.environ["PYTHONPATH"] = ame_env(b)["PYTHONPATH"]
    sys.path[:0] = os.environ["PYTHONPATH"].split(":")[:2]
    return b


def ame_extension_built(builddir):
    d = os.path.join(builddir, "bindings", "ame")
    try:
        return any(n.startswith("_ame") and n.endswith(".so")
                   for n in os.listdir(d))
    except OSError:
        return False


_CPUS = None


def ame_cpus():
    """What ame counts as the CPUs it may use (ame._ame.cpu_count(): the
    affinity mask lowered to the cgroup CPU quota), asked of the ame found
    on PYTHONPATH in a child; the affinity mask where that fails."""
    global _CPUS
    if _CPUS is None:
        try:
            out = subprocess.run(
                [sys.executable, "-c",
                 "import ame._ame as a; print(a.cpu_count())"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, timeout=30).stdout
            _CPUS = int(out)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            _CPUS = len(os.sched_getaffinity(0))
    return _CPUS


def ame_run_status(builddir):
    """(True, None) if BUILDDIR/cmd/ame has a working `ame run`
    (`ame run --help` exits 0), else (False, why)."""
    ame = os.path.join(builddir, "cmd", "ame")
    if not os.access(ame, os.X_OK):
        return False, "%s not built" % ame
    try:
        p = subprocess.run([ame, "run", "--help"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=ame_env(builddir), timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, "`ame run --help` failed: %s" % e
    if p.returncode != 0:
        out = p.stdout.decode("utf-8", "replace").strip().splitlines()
        return False, "`ame run --help` exits %d%s" % (
            p.returncode, (": " + out[-1]) if out else "")
    return True, None


# ---- the command line -------------------------------------------------------

def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def runner_parser(doc, builddir, epilog_from=1, results=False,
                  quiet_wait=False):
    """
    What every runner does first: quiet under `| head` (SIGPIPE), clean up
    on SIGTERM as on Ctrl-C, and take Ctrl-C even when the shell started it
    with SIGINT ignored (a background job); then return an ArgumentParser
    made of the module's docstring (first paragraph: description; from
    paragraph epilog_from on: epilog) with --builddir (default builddir);
    with results, also --json, --json-out and --show (see emit()); with
    quiet_wait, --quiet-wait.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    paras = doc.split("\n\n")
    ap = argparse.ArgumentParser(
        description=paras[0], epilog="\n\n".join(paras[epilog_from:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builddir", default=builddir,
                    help="meson build directory (default: %s)" % builddir)
    if quiet_wait:
        ap.add_argument("--quiet-wait", type=float, default=0, metavar="S",
                        help="before each run, wait up to S seconds for "
                             "other work on the machine to fall under 0.15 "
                             "CPUs (default 0: do not wait)")
    if results:
        ap.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of the "
                             "tables")
        ap.add_argument("--json-out", default=None, metavar="FILE",
                        help="also write the results as JSON to FILE "
                             "(make bench: BUILDDIR/bench-*.json, which "
                             "bench/results.py renders as bench/RESULTS.md)")
        ap.add_argument("--show", default=None, metavar="FILE",
                        help="run nothing: print the tables of a saved "
                             "--json output")
    return ap


def add_runs(ap, quick, reps, duration, duration_help, metavar="S",
             reps_flags=("--reps",)):
    """Add --quick (help: "short form: " + quick), --reps and --duration,
    whose defaults are (full run, --quick) pairs: reps, duration.
    parse_args() fills them in."""
    ap.add_argument("--quick", action="store_true",
                    help="short form: " + quick)
    ap.add_argument(*reps_flags, dest="reps", type=int, default=None,
                    help="repetitions of every run (default %d; quick %d)"
                    % reps)
    ap.add_argument("--duration", type=int, default=None, metavar=metavar,
                    help="%s (default %d; quick %d)"
                    % ((duration_help,) + duration))
    ap.set_defaults(run_defaults=(reps, duration))


def parse_args(ap, report=None):
    """ap.parse_args(), with the defaults of add_runs() filled in.  With
    --show FILE, print report(the saved results) instead and exit: 1 if
    they hold failures."""
    args = ap.parse_args()
    if getattr(args, "show", None):
        d = load_saved(args.show)
        report(d)
        sys.exit(1 if d["failures"] else 0)
    if getattr(args, "run_defaults", None):
        (reps, quick_reps), (dur, quick_dur) = args.run_defaults
        if args.reps is None:
            args.reps = quick_reps if args.quick else reps
        if args.duration is None:
            args.duration = quick_dur if args.quick else dur
        del args.run_defaults
    return args


def command_line():
    """How this runner was started, as one shell-like line."""
    argv = [os.path.relpath(sys.argv[0], REPO)
            if os.path.isabs(sys.argv[0]) else sys.argv[0]] + sys.argv[1:]
    return " ".join(a if a and not set(a) & set(" '\"$\\|&;<>()*?")
                    else "'%s'" % a.replace("'", "'\\''") for a in argv)


def int_list(text):
    return sorted({int(x) for x in text.split(",") if x.strip()})


def float_list(text):
    return sorted({float(x) for x in text.split(",") if x.strip()})


def name_list(allowed, what):
    """An argparse type: a comma-separated subset of allowed."""
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        for x in items:
            if x not in allowed:
                raise argparse.ArgumentTypeError(
                    "unknown %s '%s' (choose from %s)" % (
                        what, x, ", ".join(allowed)))
        return items
    return parse


# ---- results ----------------------------------------------------------------

def load_saved(path):
    """The results of a run saved with --json or --json-out."""
    with open(path) as f:
        return json.load(f)


def emit(args, results, report):
    """The end of a runner: write results (a dict, with "failures") to
    --json-out FILE if given, then print them as JSON (--json) or as
    report(results).  Return the exit status: 1 if anything failed."""
    text = json.dumps(results, indent=1) + "\n"
    if getattr(args, "json_out", None):
        d = os.path.dirname(os.path.abspath(args.json_out))
        os.makedirs(d, exist_ok=True)
        with open(args.json_out, "w") as f:
            f.write(text)
    if args.json:
        sys.stdout.write(text)
    else:
        report(results)
    return 1 if results.get("failures") else 0


# ---- text tables ------------------------------------------------------------

def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    """a / b, or None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def same_round(a, b, key="ops_per_s"):
    """The ratios a / b of two result rows run back to back in each
    repetition (round_robin runs every variant of a configuration in turn),
    one per repetition that both completed: a comparison at the same
    moment, which a change in the machine's state between repetitions (on
    a shared or virtual machine, the cost of moving a cache line between
    CPUs can change severalfold from one minute to the next) moves less
    than a ratio of medians does.  Rows name their repetitions in "reps";
    rows without that (an older file) pair by position when neither lost a
    run.  [] when the rows cannot be paired."""
    if a is None or b is None:
        return []
    xs, ys = a.get(key) or [], b.get(key) or []
    ra, rb = a.get("reps"), b.get("reps")
    if ra is not None and rb is not None:
        by = dict(zip(rb, ys))
        return [x / by[r] for r, x in zip(ra, xs) if by.get(r)]
    if a.get("failed") or b.get("failed") or len(xs) != len(ys):
        return []
    return [x / y for x, y in zip(xs, ys) if y]


def fmt_same_round(ratios):
    """A same_round() list as its median and range, "-" when empty."""
    if not ratios:
        return "-"
    return "%.2fx (%.2f-%.2f)" % (statistics.median(ratios), min(ratios),
                                  max(ratios))


def fmt_rate(x):
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return "%.2f%s" % (x / div, unit)
    return "%.0f" % x


def fmt_ratio(x):
    return "-" if x is None else "%.2fx" % x


def fmt_apc(x, none="-"):
    """Aborts per commit."""
    if x is None:
        return none
    return "%.4f" % x if x < 10 else "%.1f" % x


def fmt_us(x):
    return "-" if x is None else "%.2f" % x


fmt_cpus = fmt_us


def fmt_reads(x):
    return "-" if x is None else "%.1f" % x


def wrk_summary(runs):
    """
    The per-configuration summary of repeated wrk runs (each a dict with
    rps, cpu_us_per_req, server_cpus, wrk_cpus, others_cpus, socket_errors
    and non2xx, and wrk_cpu_s and requests where the client's CPU was
    measured): medians, min-max, error counts, and the runs themselves.
    """
    rps = [r["rps"] for r in runs]
    cpr = [r["cpu_us_per_req"] for r in runs]
    # The client's CPU per request: on a machine the client shares with
    # the server, what it spends is CPU the server does not get.
    client = [r["wrk_cpu_s"] * 1e6 / r["requests"] for r in runs
              if r.get("wrk_cpu_s") is not None and r.get("requests")]
    # Its read-family system calls per request (where run_wrk counted
    # them): a client that polls, as wrk through a TLS handshake, shows.
    reads = [r["client_read_calls"] / r["requests"] for r in runs
             if r.get("client_read_calls") is not None and r.get("requests")]
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
        "client_cpu_median": med(client),
        "client_reads_median": med(reads),
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


def print_machine(title, machine, worst=None):
    """The header of a report: the machine, the load average at the start
    and the CPUs other work used during the run (and, when that disturbed
    the figures, which are worst hit: "2 threads").  title None: only the
    latter."""
    if title is not None:
        print("%s: %s CPUs (%s), load average %s at the start"
              % (title, machine["cpus"], machine["cpu"],
                 " ".join(machine["loadavg_at_start"] or ["?"])))
        note = scheduling_note(machine.get("autogroup"))
        if note:
            print("Scheduling: %s." % note)
    other = machine.get("other_cpus")
    if other is not None:
        print("Other work on the machine used %.2f CPUs on average during "
              "the run%s" % (other, (" -- figures are disturbed" + (
                  ", above all at " + worst if worst else ""))
                  if other > 0.2 else "."))


def print_bars(bars, width=12):
    """The bars section: PASS/MISS, the bar, the figure, the target, and a
    note (runs disturbed by other work, errors)."""
    print("bars:")
    if not bars:
        return
    w = max(len(b["bar"]) for b in bars)
    for b in bars:
        print("  %-4s  %s  %-*s (target %s)%s" % (
            b["status"], b["bar"].ljust(w), width, b["shown"], b["target"],
            "  [%s]" % b["note"] if b.get("note") else ""))


def print_failures(failures, what=lambda f: f["what"]):
    """The failed runs, each with the command that reproduces it."""
    if not failures:
        return
    print()
    print("FAILURES (%d):" % len(failures))
    for f in failures:
        print("  %s: %s" % (what(f), f["error"]))
        if f.get("command"):
            print("    reproduce: %s" % f["command"])


def bar_met(figure, op, target):
    """Whether figure meets a bar: op is ">=", "<=" or "<"."""
    return (figure >= target if op == ">=" else
            figure <= target if op == "<=" else figure < target)


def make_bar(name, figure, op, target, fmt=fmt_ratio, note=None):
    """One bar: status PASS/MISS (n/a when not measured), the figure as
    shown, the target, a note (ignored when not measured)."""
    if figure is None:
        status, shown = "n/a", "not measured"
    else:
        status = "PASS" if bar_met(figure, op, target) else "MISS"
        shown = fmt(figure)
    return {"bar": name, "target": "%s %s" % (op, fmt(target)),
            "measured": figure, "shown": shown, "status": status,
            "note": note if figure is not None else None}
