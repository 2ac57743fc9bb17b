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

Application suites (C{--apps}): Twisted's other test packages (web,
words, mail, names, conch, protocols, spread, the old top-level
twisted.test, ...) run the same way, one child per (suite, reactor), with
the reactor installed as the global reactor, as C{trial --reactor=X}
would.  Every reactor other than epoll is compared with epoll: the tests
that pass on epoll and not on it are listed, and make the exit status 1.

Options::

    --modules a,b,...   modules of twisted.internet.test (default: all
                        the ReactorBuilder modules listed in MODULES);
                        a dotted name is taken as it is; "none": no
                        reactor suite (with --apps); "default": MODULES
    --apps a,b,...      also run these application suites (dotted names;
                        "default": those listed in APPS; "check": the
                        fast TCP-heavy subset in CHECK_APPS)
    --reactors ame,epoll  (also ame-inline: AMEReactor with AME_IO=inline,
                        its C reactor stepped on the Python thread; ame
                        is AMEReactor with AME_IO=thread)
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

# Twisted's application test suites (what Debian's python3-twisted ships
# besides the reactor suite), for --apps default.  twisted.test is the old
# top-level suite (test_tcp, test_ftp, test_loopback, ...).
APPS = [
    "twisted.test",
    "twisted.web.test",
    "twisted.words.test",
    "twisted.mail.test",
    "twisted.names.test",
    "twisted.conch.test",
    "twisted.protocols.test",
    "twisted.spread.test",
    "twisted.application.test",
    "twisted.runner.test",
]

# A fast TCP-heavy subset (--apps check; make check runs it): connects,
# closes, resets, half-closes, TLS (listenSSL, connectSSL), HTTP and FTP
# data connections; about half a minute over three reactors.
CHECK_APPS = [
    "twisted.test.test_tcp",
    "twisted.test.test_ssl",
    "twisted.test.test_loopback",
    "twisted.web.test.test_http",
    "twisted.test.test_ftp",
    "twisted.web.test.test_webclient",
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
REACTOR_ENV = {"ame": {"AME_IO": "thread"}, "ame-inline": {"AME_IO": "inline"}}
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
    if "." not in module:
        module = "twisted.internet.test." + module
    suite = runner.TestLoader().loadByName(module, recurse=True)
    result = trialRunner.run(suite)
    # How many TLS connections each side ran (AMEReactor: C or Twisted's).
    tls = sys.modules.get("ame._tls")
    if tls is not None:
        out.write(json.dumps({"stats": {"tls_c": tls.TOTALS["c"],
                                        "tls_python": tls.TOTALS["python"]}})
                  + "\n")
    out.close()
    return 0 if result.wasSuccessful() else 1


# ---------------------------------------------------------------------------
# The parent.

def jsonLines(path):
    """The records of a child's JSON lines file (none if it is missing;
    a torn line skipped)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def readResults(path):
    """
    Return {test: (outcome, detail)} from a child's JSON lines; a test that
    started and never finished is a crash.
    """
    results = {}
    running = set()
    for rec in jsonLines(path):
        if "test" not in rec:
            continue
        t, o, d = rec["test"], rec["outcome"], rec["detail"]
        if o == "start":
            # A suite may run two tests of one id: each must finish.
            running.add(t)
            continue
        running.discard(t)
        old = results.get(t)
        if old is None or ORDER.index(o) < ORDER.index(old[0]):
            results[t] = (o, d)
    for t in running:
        results[t] = ("crash", "started, never finished")
    return results


def readStats(path):
    """The child's counters (its last "stats" line), or {}."""
    stats = {}
    for rec in jsonLines(path):
        stats = rec.get("stats", stats)
    return stats


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
    results_stats[(module, reactorKey)] = readStats(outPath)
    if rc not in (0, 1):
        # Died (signal, abort) or timed out: the test running then is the
        # culprit; mark it.
        for t, (o, d) in results.items():
            if o == "crash":
                results[t] = ("crash", "child %s while running it" % (rc,))
    return results, rc, time.time() - start


# (module, reactor) -> the child's counters (readStats).
results_stats = {}

# Suites whose TLS connections AMEReactor must run in C (at least one):
# each uses listenSSL/connectSSL, startTLS or the ssl: endpoints on the
# reactor.
TLS_SUITES = ("test_tls", "twisted.internet.test.test_tls", "test_newtls",
              "twisted.internet.test.test_newtls",
              "twisted.test.test_ssl")


def counts(results):
    c = dict.fromkeys(["pass", "fail", "error", "skip", "xfail", "crash"], 0)
    for o, _ in results.values():
        key = {"success": "pass", "failure": "fail", "error": "error",
               "skip": "skip", "expected-failure": "xfail",
               "unexpected-success": "fail", "crash": "crash"}[o]
        c[key] += 1
    return c


def notOn(base, other):
    """The tests that pass in base and not in other, sorted."""
    return sorted(t for t, (o, _) in base.items()
                  if o == "success" and
                  other.get(t, ("absent",))[0] != "success")


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
    ap.add_argument("--apps")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="/tmp/ame-conformance")
    ap.add_argument("--json")
    ap.add_argument("--web", action="store_true")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if any test of any reactor fails, errors "
                         "or crashes (default: only if one that passes on "
                         "epoll does not pass on another reactor)")
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

    modules = [] if args.modules == "none" else \
        MODULES if args.modules == "default" else \
        [m for m in args.modules.split(",") if m]
    if args.apps:
        modules += {"default": APPS, "check": CHECK_APPS}.get(
            args.apps, [m for m in args.apps.split(",") if m])
    reactors = args.reactors.split(",")
    if "epoll" in reactors:  # the baseline first: its column is compared
        reactors.remove("epoll")
        reactors.insert(0, "epoll")
    others = [r for r in reactors if r != "epoll"] if "epoll" in reactors \
        else []
    summary = {"modules": {}, "missing": [], "web": {}, "skips": {},
               "tls_not_in_c": []}
    allResults = {r: {} for r in reactors}
    width = max([16] + [len(m) for m in modules])
    row = "%-*s %-10s %5s %5s %5s %5s %5s %5s %5s %8s"
    print(row % (width, "suite", "reactor", "pass", "fail", "error", "skip",
                 "xfail", "crash", "!ep", "seconds"))
    for module in modules:
        byReactor = {}
        for r in reactors:
            results, rc, secs = runChild(module, r, args, env)
            byReactor[r] = results
            allResults[r].update(results)
            c = counts(results)
            # Tests of this suite that pass on epoll and not on r.
            worse = "-" if r not in others else len(notOn(
                byReactor["epoll"], results))
            summary["modules"].setdefault(module, {})[r] = dict(
                c, rc=rc, seconds=round(secs, 1))
            print(row % (
                width, module, r, c["pass"], c["fail"], c["error"],
                c["skip"], c["xfail"], c["crash"], worse, "%.1f" % secs) +
                ("" if rc in (0, 1) else "  (child: %s)" % rc), flush=True)
            stats = results_stats.get((module, r), {})
            if r != "epoll" and "tls_c" in stats and (
                    stats["tls_c"] or stats["tls_python"]):
                print("%-*s %-10s TLS connections in C: %d, Twisted's: %d" % (
                    width, "", "", stats["tls_c"], stats["tls_python"]))
            summary["modules"][module][r]["tls"] = stats
            if r != "epoll" and module in TLS_SUITES and not stats.get(
                    "tls_c"):
                summary["tls_not_in_c"].append([module, r])

    totals = {r: counts(allResults[r]) for r in reactors}
    for r in reactors:
        t = totals[r]
        worse = "-" if r not in others else len(notOn(
            allResults["epoll"], allResults[r]))
        print(row % (width, "TOTAL", r, t["pass"], t["fail"], t["error"],
                     t["skip"], t["xfail"], t["crash"], worse, ""))
    summary["totals"] = totals
    for r in reactors:
        summary["skips"][r] = sorted(
            [t, d] for t, (o, d) in allResults[r].items() if o == "skip")
    # Every test that failed, errored or crashed, by reactor: the closing
    # summary of make check tells those that fail on epoll too apart.
    summary["failing"] = {r: sorted(
        [t, o, d] for t, (o, d) in allResults[r].items()
        if o not in ("success", "skip", "expected-failure"))
        for r in reactors}

    for r in others:
        ep, mine = allResults["epoll"], allResults[r]
        missing = notOn(ep, mine)
        print("\nPass on epoll but not on %s: %d" % (r, len(missing)))
        for t in missing:
            o, d = mine.get(t, ("absent", ""))
            print("  %s: %s %s" % (t, o, d[:200]))
            summary["missing"].append({"reactor": r, "test": t, "outcome": o,
                                       "detail": d})
        extra = notOn(mine, ep)
        if extra:
            print("\nPass on %s but not on epoll: %d" % (r, len(extra)))
            for t in extra:
                print("  %s (epoll: %s)" % (t, ep.get(t, ("absent",))[0]))
        summary.setdefault("extra", {})[r] = extra
        notPass = sorted((t, o, d) for t, (o, d) in mine.items()
                         if o not in ("success", "skip"))
        print("\nEvery %s test that did not pass (skips aside): %d" % (
            r, len(notPass)))
        for t, o, d in notPass:
            print("  %-12s %s %s" % (o, t, d[:160]))

    if args.web:
        for r in reactors:
            s = runWeb(r, args, env)
            summary["web"][r] = s
            print("twisted.web.test --reactor=%s: %s" % (r, s), flush=True)

    for module, r in summary["tls_not_in_c"]:
        print("\n%s on %s: no TLS connection ran in C" % (module, r))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if summary["tls_not_in_c"]:
        return 1
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
