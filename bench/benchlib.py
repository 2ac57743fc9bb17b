"""bench/benchlib.py — what the benchmark runners share: how busy the
machine was (so a table can say how much other work disturbed it), what
the machine is, and how rates are printed.  Standard library only; run with
Debian's /usr/bin/python3."""

import os
import platform
import resource
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def machine_info():
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "cpu": model,
            "kernel": platform.release(), "loadavg_at_start": load}


def fmt_rate(x):
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return "%.2f%s" % (x / div, unit)
    return "%.0f" % x


# ---- Python servers from a build tree (twisted_bench.py, demo.py) ----------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_builddir(builddir):
    """builddir as given, or relative to the repository root; absolute.
    None if neither holds a build (no build.ninja)."""
    for d in (builddir, os.path.join(REPO, builddir)):
        if os.path.isfile(os.path.join(d, "build.ninja")):
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
        import subprocess
        import sys
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
    import subprocess
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


def proc_start_time(pid):
    """The start time of pid (ticks since boot, /proc/PID/stat field 22),
    which tells a process from a later one with the same pid; None if
    gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_leftovers(idents):
    """SIGKILL each (pid, start time) still alive as that same process (a
    worker that left its parent's process group); return the pids
    killed."""
    import signal
    killed = []
    for pid, start in idents:
        if start is not None and proc_start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def runner_parser(doc, builddir, epilog_from=1, results=False):
    """
    What every runner does first: quiet under `| head` (SIGPIPE), clean up
    on SIGTERM as on Ctrl-C, and take Ctrl-C even when the shell started it
    with SIGINT ignored (a background job); then return an ArgumentParser
    made of the module's docstring (first paragraph: description; from
    paragraph epilog_from on: epilog) with --builddir (default builddir);
    with results, also --quiet-wait, --json and --show (the benchmark
    runners' common options).
    """
    import argparse
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    paras = doc.split("\n\n")
    ap = argparse.ArgumentParser(
        description=paras[0], epilog="\n\n".join(paras[epilog_from:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builddir", default=builddir,
                    help="meson build directory (default: %s)" % builddir)
    if results:
        ap.add_argument("--quiet-wait", type=float, default=0, metavar="S",
                        help="before each run, wait up to S seconds for "
                             "other work on the machine to fall under 0.15 "
                             "CPUs (default 0: do not wait)")
        ap.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of the "
                             "tables")
        ap.add_argument("--show", default=None, metavar="FILE",
                        help="run nothing: print the tables of a saved "
                             "--json output")
    return ap
