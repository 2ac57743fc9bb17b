#!/usr/bin/python3
"""
Run Twisted's own reactor test suite against ame.reactor.AMEReactor and,
for comparison, EPollReactor, and print what passes on each.

Usage (Debian's python, with the extension built)::

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 tests/python/run_twisted_conformance.py [options]

Each (module, reactor) pair runs in a child process of its own (a crash or
hang in one cannot take the others down).  In the child,
C{ReactorBuilder._reactors} is set to the one reactor before the test
module is imported (C{makeTestCaseClasses} reads it at import time), and
the same reactor is installed as the global reactor, so modules that test
the global reactor (test_posixbase, test_sigchld) test it too.  Results are
written one JSON line per test as they happen, so a child that dies still
reports what it ran and the test it died in.

Options::

    --modules a,b,...   modules of twisted.internet.test (default: all
                        the ReactorBuilder modules listed in MODULES)
    --reactors ame,epoll  (also ame-inline: AMEReactor with AME_IO=inline,
                        its C reactor stepped on the Python thread)
    --timeout SECONDS   per child (default 1800)
    --out DIR           logs and per-test results (default
                        /tmp/ame-conformance)
    --json FILE         write the summary as JSON
    --strict            exit 1 if any test fails, errors or crashes (for
                        runs of one reactor, where nothing is compared)
    --web               also run `trial --reactor=X twisted.web.test` for
                        both reactors and report the counts
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

MODULES = [
    "test_core",
    "test_time",
    "test_fdset",
    "test_threads",
    "test_tcp",
    "test_udp",
    "test_unix",
    "test_socket",
    "test_process",
    "test_sigchld",
    "test_stdio",
    "test_tls",
    "test_newtls",
    "test_posixbase",
]

REACTORS = {
    "ame": ("ame.reactor.AMEReactor", "ame.reactor"),
    "epoll": (
        "twisted.internet.epollreactor.EPollReactor",
        "twisted.internet.epollreactor",
    ),
    "ame-inline": ("ame.reactor.AMEReactor", "ame.reactor"),
}

# Environment of a reactor's children, and its name for trial --reactor.
REACTOR_ENV = {"ame-inline": {"AME_IO": "inline"}}
TRIAL_NAME = {"ame-inline": "ame"}


def reactorEnv(env, reactorKey):
    return dict(env, **REACTOR_ENV.get(reactorKey, {}))

# Outcomes, worst first: a test that both errored and failed is an error.
ORDER = ["crash", "error", "failure", "unexpected-success", "skip",
         "expected-failure", "success"]


# ---------------------------------------------------------------------------
# The child: run one module against one reactor.

def child(module, reactorKey, outPath):
    fqpn, installModule = REACTORS[reactorKey]
    from twisted.python.reflect import namedAny

    namedAny(installModule).install()

    from twisted.internet.test.reactormixins import ReactorBuilder

    ReactorBuilder._reactors = [fqpn]

    from twisted.trial import reporter, runner

    short = fqpn.rsplit(".", 1)[-1]
    out = open(outPath, "w", buffering=1)

    def name(test):
        # One id for both reactors: the class carries the reactor's name.
        return test.id().replace(short, "<R>")

    def emit(test, outcome, detail=""):
        out.write(json.dumps({"test": name(test), "outcome": outcome,
                              "detail": detail}) + "\n")

    def brief(err):
        try:
            if hasattr(err, "getErrorMessage"):
                return "%s: %s" % (err.type.__name__, err.getErrorMessage())
            return "%s: %s" % (err[0].__name__, err[1])
        except Exception:
            return repr(err)[:300]

    class Recorder(reporter.Reporter):
        def startTest(self, test):
            super().startTest(test)
            emit(test, "start")

        def addSuccess(self, test):
            super().addSuccess(test)
            emit(test, "success")

        def addError(self, test, err):
            super().addError(test, err)
            emit(test, "error", brief(err))

        def addFailure(self, test, err):
            super().addFailure(test, err)
            emit(test, "failure", brief(err))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            emit(test, "skip", str(reason))

        def addExpectedFailure(self, test, err, todo=None):
            super().addExpectedFailure(test, err, todo)
            emit(test, "expected-failure", brief(err))

        def addUnexpectedSuccess(self, test, todo=None):
            super().addUnexpectedSuccess(test, todo)
            emit(test, "unexpected-success")

    workdir = os.path.join(os.path.dirname(outPath),
                           "_trial_temp-%s-%s" % (module, reactorKey))
    trialRunner = runner.TrialRunner(
        Recorder, stream=sys.stdout, workingDirectory=workdir)
    suite = runner.TestLoader().loadByName(
        "twisted.internet.test." + module, recurse=True)
    result = trialRunner.run(suite)
    out.close()
    return 0 if result.wasSuccessful() else 1


# ---------------------------------------------------------------------------
# The parent.

def readResults(path):
    """
    Return {test: (outcome, detail)} from a child's JSON lines; a test that
    started and never finished is a crash.
    """
    results = {}
    if not os.path.exists(path):
        return results
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            t, o, d = rec["test"], rec["outcome"], rec["detail"]
            if o == "start":
                results.setdefault(t, ("crash", "started, never finished"))
                if results[t][0] == "crash":
                    continue
            old = results.get(t)
            if old is None or old[0] == "crash" or \
                    ORDER.index(o) < ORDER.index(old[0]):
                results[t] = (o, d)
    return results


def runChild(module, reactorKey, args, env):
    outPath = os.path.join(args.out, "%s-%s.jsonl" % (module, reactorKey))
    logPath = os.path.join(args.out, "%s-%s.log" % (module, reactorKey))
    if os.path.exists(outPath):
        os.unlink(outPath)
    start = time.time()
    with open(logPath, "w") as log:
        p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", module,
             reactorKey, outPath],
            stdout=log, stderr=subprocess.STDOUT,
            env=reactorEnv(env, reactorKey), cwd=args.out,
            start_new_session=True)
        try:
            rc = p.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            rc = "timeout"
    results = readResults(outPath)
    if rc not in (0, 1):
        # Died (signal, abort) or timed out: the test running then is the
        # culprit; mark it.
        for t, (o, d) in results.items():
            if o == "crash":
                results[t] = ("crash", "child %s while running it" % (rc,))
    return results, rc, time.time() - start


def counts(results):
    c = dict.fromkeys(["pass", "fail", "error", "skip", "xfail", "crash"], 0)
    for o, _ in results.values():
        key = {"success": "pass", "failure": "fail", "error": "error",
               "skip": "skip", "expected-failure": "xfail",
               "unexpected-success": "fail", "crash": "crash"}[o]
        c[key] += 1
    return c


def runWeb(reactorKey, args, env):
    """Run trial --reactor=X twisted.web.test; return its summary line."""
    logPath = os.path.join(args.out, "web-%s.log" % reactorKey)
    start = time.monotonic()
    with open(logPath, "w") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "twisted.trial",
             "--reactor=" + TRIAL_NAME.get(reactorKey, reactorKey),
             "--temp-directory",
             os.path.join(args.out, "_trial_temp-web-" + reactorKey),
             "twisted.web.test"],
            stdout=log, stderr=subprocess.STDOUT,
            env=reactorEnv(env, reactorKey), cwd=args.out,
            start_new_session=True)
        try:
            p.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            return "timeout"
    text = open(logPath, errors="replace").read()
    m = re.findall(r"^(PASSED|FAILED) \((.*)\)$", text, re.M)
    ran = re.findall(r"^Ran (\d+) tests", text, re.M)
    if not m:
        return "no summary (see %s)" % logPath
    return "%s tests: %s (%s) in %.1f s" % (
        ran[-1] if ran else "?", m[-1][0], m[-1][1], time.monotonic() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--reactors", default="ame,epoll")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="/tmp/ame-conformance")
    ap.add_argument("--json")
    ap.add_argument("--web", action="store_true")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if any test of any reactor fails, errors "
                         "or crashes (default: only if one that passes on "
                         "epoll does not pass on ame)")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)  # the children run in it
    if args.child:
        return child(*args.child)

    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    bindings = os.path.join(os.path.dirname(os.path.dirname(here)), "bindings")
    path = env.get("PYTHONPATH", "").split(os.pathsep)
    if bindings not in path:
        path.append(bindings)
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)

    modules = args.modules.split(",")
    reactors = args.reactors.split(",")
    summary = {"modules": {}, "missing": [], "web": {}}
    allResults = {r: {} for r in reactors}
    print("%-16s %-10s %5s %5s %5s %5s %5s %5s %8s" % (
        "module", "react", "pass", "fail", "error", "skip", "xfail",
        "crash", "seconds"))
    for module in modules:
        for r in reactors:
            results, rc, secs = runChild(module, r, args, env)
            allResults[r].update(results)
            c = counts(results)
            summary["modules"].setdefault(module, {})[r] = dict(
                c, rc=rc, seconds=round(secs, 1))
            print("%-16s %-10s %5d %5d %5d %5d %5d %5d %8.1f%s" % (
                module, r, c["pass"], c["fail"], c["error"], c["skip"],
                c["xfail"], c["crash"], secs,
                "" if rc in (0, 1) else "  (child: %s)" % rc), flush=True)

    totals = {r: counts(allResults[r]) for r in reactors}
    for r in reactors:
        t = totals[r]
        print("%-16s %-10s %5d %5d %5d %5d %5d %5d" % (
            "TOTAL", r, t["pass"], t["fail"], t["error"], t["skip"],
            t["xfail"], t["crash"]))
    summary["totals"] = totals

    if "ame" in reactors and "epoll" in reactors:
        ame, ep = allResults["ame"], allResults["epoll"]
        missing = sorted(
            t for t, (o, _) in ep.items()
            if o == "success" and ame.get(t, ("absent",))[0] != "success")
        print("\nPass on epoll but not on ame: %d" % len(missing))
        for t in missing:
            o, d = ame.get(t, ("absent", ""))
            print("  %s: %s %s" % (t, o, d[:200]))
            summary["missing"].append({"test": t, "outcome": o,
                                       "detail": d})
        extra = sorted(t for t, (o, _) in ame.items()
                       if o == "success" and ep.get(t, ("",))[0] != "success")
        if extra:
            print("\nPass on ame but not on epoll: %d" % len(extra))
            for t in extra:
                print("  %s (epoll: %s)" % (t, ep.get(t, ("absent",))[0]))
        summary["extra"] = extra
        notPass = sorted((t, o, d) for t, (o, d) in ame.items()
                         if o != "success")
        print("\nEvery ame test that did not pass: %d" % len(notPass))
        for t, o, d in notPass:
            print("  %-12s %s %s" % (o, t, d[:160]))

    if args.web:
        for r in reactors:
            s = runWeb(r, args, env)
            summary["web"][r] = s
            print("twisted.web.test --reactor=%s: %s" % (r, s), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.strict and (
            any(t["fail"] or t["error"] or t["crash"]
                for t in totals.values())
            or any(sum(c[k] for k in ("pass", "fail", "error", "skip",
                                      "xfail", "crash")) == 0
                   for m in summary["modules"].values()
                   for c in m.values())):
        return 1
    return 0 if not summary["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
