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
