#!/usr/bin/python3
"""
make check's closing summary (scripts/check.sh): one line per part that
ran, a total, and every skipped test with its reason.

    check_summary.py PART...

where PART is one of

    meson:LABEL:BUILDDIR     meson's testlog.json of BUILDDIR; the trial
                             runs among its tests (python-*) and the
                             conformance runs (their summary.json under
                             BUILDDIR/tests/python/) are parts of their own
    trial:LABEL:LOGFILE      the output of a trial run
    conformance:LABEL:JSON   run_twisted_conformance.py's --json summary
    ran:LABEL:WHAT           one step that passed (set -e got us here)

Exit status 1 if any part has a failure.  A conformance run that had
EPollReactor as its baseline counts as failures only the tests that did not
fail there: a test that fails on Twisted's own reactor too (its expectations
against this platform's OpenSSL, say) is listed by name with its error, as
"fails on epoll too", and not counted.
"""

import glob
import json
import os
import re
import sys


class Part:
    def __init__(self, label):
        self.label = label
        self.passed = self.failed = self.skipped = 0
        self.skips = []  # (name, reason)
        self.failures = []
        self.baseline = []  # (name, detail): fail on epoll too

    def line(self):
        return "%-34s %6d passed, %d failed, %d skipped" % (
            self.label, self.passed, self.failed, self.skipped) + (
            ", %d fail on epoll too" % len(self.baseline)
            if self.baseline else "")


def trialCounts(text):
    """Counts and skips from trial's output, or None if it has no summary."""
    m = re.findall(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.M)
    if not m:
        return None
    kv = dict((k, int(v)) for k, v in
              re.findall(r"(\w+)=(\d+)", m[-1][1]))
    passed = kv.get("successes", 0) + kv.get("expectedFailures", 0)
    failed = (kv.get("failures", 0) + kv.get("errors", 0) +
              kv.get("unexpectedSuccesses", 0))
    skips = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "[SKIPPED]":
            i += 1
            reason = []
            while i < len(lines) and lines[i].strip():
                reason.append(lines[i].strip())
                i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            while i < len(lines) and lines[i].strip() and \
                    not lines[i].startswith(("===", "---", "[")):
                skips.append((lines[i].strip(), " ".join(reason)))
                i += 1
        else:
            i += 1
    return passed, failed, kv.get("skips", 0), skips


def fromTrial(label, text):
    p = Part(label)
    c = trialCounts(text)
    if c is None:
        p.failed = 1
        p.failures.append("no trial summary")
        return p
    p.passed, p.failed, p.skipped, p.skips = c
    return p


def fromConformance(label, path):
    p = Part(label)
    try:
        s = json.load(open(path))
    except (OSError, ValueError) as e:
        p.failed = 1
        p.failures.append("%s: %s" % (path, e))
        return p
    failing = s.get("failing", {})
    onEpoll = dict((t, d) for t, _, d in failing.get("epoll", []))
    for r, t in s.get("totals", {}).items():
        p.passed += t["pass"] + t["xfail"]
        p.skipped += t["skip"]
        if r not in failing:  # a summary without the list: counts only
            p.failed += t["fail"] + t["error"] + t["crash"]
    base = {}  # test: the reactors it failed on (epoll among them)
    for r, tests in failing.items():
        for t, o, d in tests:
            if t in onEpoll:
                base.setdefault(t, []).append(r)
            else:
                p.failed += 1
                p.failures.append("%s [%s]: %s %s" % (t, r, o, d[:160]))
    p.baseline = [("%s [%s]" % (t, ", ".join(sorted(rs))), onEpoll[t])
                  for t, rs in sorted(base.items())]
    on = {}  # (test, reason): the reactors it was skipped on
    for r, skips in s.get("skips", {}).items():
        for t, d in skips:
            on.setdefault((t, d), []).append(r)
    p.skips += [("%s [%s]" % (t, ", ".join(sorted(rs))), d)
                for (t, d), rs in on.items()]
    return p


def fromMeson(label, builddir):
    parts = []
    p = Part(label + " meson")
    parts.append(p)
    log = os.path.join(builddir, "meson-logs", "testlog.json")
    for line in open(log):
        r = json.loads(line)
        res, name = r["result"], r["name"]
        if res in ("OK", "EXPECTEDFAIL"):
            p.passed += 1
        elif res == "SKIP":
            p.skipped += 1
            out = [x for x in (r.get("stdout") or "").splitlines()
                   if x.strip()]
            p.skips.append((name, out[-1].strip() if out else "(no reason)"))
        else:
            p.failed += 1
            p.failures.append(name)
        short = name.split(" / ")[-1]
        if short.startswith("python-") and r.get("stdout"):
            c = trialCounts(r["stdout"])
            if c is not None:
                t = Part("%s trial %s" % (label, short))
                t.passed, t.failed, t.skipped, t.skips = c
                parts.append(t)
    for js in sorted(glob.glob(os.path.join(
            builddir, "tests", "python", "*", "summary.json"))):
        sub = os.path.basename(os.path.dirname(js))
        parts.append(fromConformance("%s twisted %s" % (label, sub), js))
    return parts


def main(argv):
    parts = []
    for spec in argv:
        kind, label, arg = spec.split(":", 2)
        if kind == "meson":
            parts += fromMeson(label, arg)
        elif kind == "trial":
            parts.append(fromTrial(label, open(arg, errors="replace").read()))
        elif kind == "conformance":
            parts.append(fromConformance(label, arg))
        elif kind == "ran":
            p = Part("%s (%s)" % (label, arg))
            p.passed = 1
            parts.append(p)
        else:
            raise SystemExit("check_summary.py: unknown part %r" % spec)
    print("\ncheck summary:")
    for p in parts:
        print("  " + p.line())
    ok = sum(p.passed for p in parts)
    bad = sum(p.failed for p in parts)
    skip = sum(p.skipped for p in parts)
    skips = [(p.label, n, r) for p in parts for n, r in p.skips]
    if skips:
        print("skipped, by reason:")
        byReason = {}
        for label, n, r in skips:
            byReason.setdefault((label, r), []).append(n)
        for (label, r), names in sorted(byReason.items()):
            print("  %s: %s" % (label, r[:200]))
            for n in sorted(names):
                print("      " + n)
    base = [(p.label, n, d) for p in parts for n, d in p.baseline]
    if base:
        print("fail on epoll too (Twisted's reactor; not counted):")
        for label, n, d in base:
            print("  %s: %s\n      %s" % (
                label, n, " ".join(d.split())[:200]))
    for p in parts:
        for f in p.failures:
            print("  FAILED %s: %s" % (p.label, f))
    print("check: %d passed, %d failed, %d skipped" % (ok, bad, skip) + (
        ", %d failing on epoll too" % len(base) if base else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
