#!/usr/bin/python3
"""The benchmark runners' machine-state rule (bench/benchlib.py: Steady),
driven by a scripted line-transfer cost instead of bench-line-transfer:

    test_steady.py BENCH_DIR

A multi-thread run waits while the cost is dearer than twice the
cheapest, is run again when it became dearer during the run, and the
runs made before the runner learnt what cheap is are taken again at the
end and replaced only by cheap ones (a retake that breaks is reported and
the old run stays); the waiting stops at the budget.  Standard library
only.
"""
import sys

sys.path.insert(0, sys.argv[1])
import benchlib  # noqa: E402


class Script:
    """Costs to hand out in order (the last one over and over); the
    sleeps the runner asked for."""

    def __init__(self, costs):
        self.costs = list(costs)
        self.slept = 0

    def measure(self, builddir):
        return self.costs.pop(0) if len(self.costs) > 1 else self.costs[0]

    def sleep(self, s):
        self.slept += s


def steady_with(costs, calibrate=1):
    script = Script(costs)
    benchlib.line_transfer = script.measure
    benchlib.time.sleep = script.sleep
    st = benchlib.Steady("unused")
    st.CALIBRATE = calibrate
    return st, script


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def test_waits_while_dear():
    # Cheap at first (40), then dear for three measurements, then cheap.
    st, script = steady_with([40, 40, 190, 190, 190, 45, 45])
    res, line = st.run(lambda: "first")
    check(line == [40, 40], "a cheap run kept as it is: %r" % line)
    res, line = st.run(lambda: "second")
    check(script.slept == 3, "waited %r s, want 3" % script.slept)
    check(line == [45, 45] and res == "second", "after the wait: %r" % line)
    check(st.redone == 0, "nothing run again")


def test_runs_again_when_dear_after():
    # Cheap before, dear after: run again; cheap both sides the second time.
    st, script = steady_with([40, 200, 41, 42])
    calls = []
    res, line = st.run(lambda: calls.append(1) or len(calls))
    check(res == 2 and line == [41, 42], "run again: %r %r" % (res, line))
    check(st.redone == 1, "redone %d" % st.redone)


def test_gives_up_when_dear_throughout():
    # Dear before and after, past the wait: kept, not run again.
    st, script = steady_with([40] + [190] * 200)
    st.measure()
    st.WAIT_S = 5
    res, line = st.run(lambda: "x")
    check(line == [190, 190], "kept while dear: %r" % line)
    check(script.slept == 5 and st.redone == 0, "waited %r" % script.slept)


def test_retake_replaces_only_with_cheap():
    # A machine that starts dear (190) learns later that 40 is cheap: the
    # early runs are taken again, and a retake that comes out dear is not
    # kept.
    st, script = steady_with([190])
    lines = {}
    for key in ("a", "b"):
        _, lines[key] = st.run(lambda: key + "-old")
    check(lines == {"a": [190, 190], "b": [190, 190]},
          "cheap for all it knew: %r" % lines)
    # The host moves the vCPUs close (a later run measures 40); a's retake
    # is cheap, b's is dear around it (no wait, no run again).
    script.costs = [40, 40, 40, 200, 200]
    st.measure()
    st.REDO = st.WAIT_S = 0
    kept = {}

    def keep(key, rep, res):
        kept[key] = res

    st.retake([(k, 0, lines[k]) for k in ("a", "b")],
              lambda key, rep: st.run(lambda: key + "-new"), keep, None)
    check(kept == {"a": "a-new"}, "kept %r" % kept)
    check(st.retaken == 1, "retaken %d" % st.retaken)


def test_retake_failure_reported():
    # A retake that breaks (a crash, a failed check) is reported as the
    # round's failures are, and the old run stays.
    st, script = steady_with([40])
    st.measure()
    failures, kept = [], []

    def again(key, rep):
        raise benchlib.BenchError("exit status 1")

    st.retake([("a", 3, [190, 190])], again,
              lambda k, r, res: kept.append(k),
              lambda k, r, err: failures.append((k, r, err)))
    check(failures == [("a", 3, "exit status 1")], "failures %r" % failures)
    check(kept == [] and st.retaken == 0, "kept %r" % kept)


def test_budget_stops_retakes():
    st, script = steady_with([40])
    st.measure()
    st.waited = st.BUDGET_S
    taken = []
    st.retake([("a", 0, [190, 190])], lambda k, r: taken.append(k), None,
              None)
    check(taken == [], "no retake past the budget: %r" % taken)


def main():
    for name, fn in sorted(globals().items()):
        if name.startswith("test_"):
            fn()
    print("ok steady")


if __name__ == "__main__":
    main()
