#!/usr/bin/python3
"""Render bench/RESULTS.md from the JSON that the benchmark runners wrote.

`make bench` runs stm_bench.py, reactor_bench.py, twisted_bench.py,
load_bench.py, supervisor_bench.py, shared_bench.py, tasks_bench.py and
stamp_bench.py,
each with --json-out BUILDDIR/bench-NAME.json, and then this
script, which writes one Markdown file: when and how the figures were taken
(the date, the command, the commit), the machine (CPU model, CPUs, kernel,
load average, the CPUs other work used, the cache-line transfer cost that
stm_bench measures), every bar with its figure, met or missed, and for each
benchmark a table of the figures with the baselines of the same run and
the ratios to them.  A run in which any runner used --quick is marked as
a quick run.

The exit status is 1 when a runner's JSON is missing (the file is then
written with what there is, and says so) or reports failed runs, 2 when
there is nothing to render.

Run it with Debian's /usr/bin/python3; by hand, after `make bench`:
bench/results.py --builddir build-release [-o bench/RESULTS.md].
"""

import argparse
import calendar
import os
import subprocess
import sys
import time

from benchlib import (REPO, fmt_apc, fmt_rate, fmt_ratio, fmt_same_round,
                      fmt_us, load_saved, same_round, scheduling_note,
                      steady_note)
from twisted_bench import thread_split

# The runners, in the order make bench runs them: (name, script, title).
RUNNERS = (
    ("stm", "stm_bench.py", "STM"),
    ("reactor", "reactor_bench.py", "Reactor"),
    ("twisted", "twisted_bench.py", "Twisted"),
    ("load", "load_bench.py", "`ame load` against wrk"),
    ("supervisor", "supervisor_bench.py", "The `ame run` supervisor"),
    ("shared", "shared_bench.py", "ame.shared"),
    ("tasks", "tasks_bench.py", "ame.tasks"),
    ("stamp", "stamp_bench.py", "STAMP against TinySTM"),
)


# ---- Markdown ---------------------------------------------------------------

def table(head, rows, right_from=1):
    """A Markdown table; columns from right_from on are right-aligned."""
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i < right_from else "---:"
                          for i in range(len(head))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r)
                   + " |")
    return "\n".join(out)


def spread(lo, hi, fmt=fmt_rate):
    return "-" if lo is None else "%s-%s" % (fmt(lo), fmt(hi))


def cpus3(r, client="wrk_cpus"):
    return "%s / %s / %s" % tuple(
        "-" if r.get(k) is None else "%.2f" % r[k]
        for k in ("server_cpus", client, "others_cpus"))


def verdict(b):
    return {"PASS": "met", "MISS": "**missed**"}.get(b["status"],
                                                      "not measured")


def run_line(d):
    """How a runner was run: its command, repetitions and the other work
    on the machine during it."""
    s, m = d["settings"], d["machine"]
    parts = ["`%s`" % s.get("command", "?")]
    if "reps" in s:
        parts.append("1 repetition" if s["reps"] == 1 else
                     "%d repetitions, medians" % s["reps"])
    other = m.get("other_cpus")
    if other is not None:
        parts.append("other work on the machine: %.2f CPUs%s" % (
            other, " (figures disturbed)" if other > 0.2 else ""))
    return "; ".join(parts) + "."


def failures_text(d):
    out = []
    for f in d.get("failures", []):
        what = f.get("what") or "%s %s t=%s" % (
            f.get("variant"), f.get("config"), f.get("threads"))
        out.append("- FAILED: %s: %s%s" % (
            what, f["error"],
            " (reproduce: `%s`)" % f["command"] if f.get("command") else ""))
    return out


# ---- the sections -------------------------------------------------------------

def stm_section(d):
    out = []
    rows = d["results"]
    by = {}
    configs = []
    for r in rows:
        key = (r["config"], r["threads"])
        if key not in by:
            configs.append(key)
        by.setdefault(key, {})[r["variant"]] = r
    variants = [v for v in ("ame", "itm", "itm-stm", "ame-itm", "tinystm",
                            "tinystm-itm", "mutex", "seq")
                if any(v in by[k] for k in configs)]
    head = (["configuration", "threads"] + ["%s ops/s" % v for v in variants]
            + ["ame x seq", "ame x itm", "ame 2t/1t", "ame aborts/commit"])
    with_is = "itm-stm" in variants
    if with_is:
        head += ["ame x itm-stm"]
    with_ai = "ame-itm" in variants
    if with_ai:
        head += ["ame-itm x itm", "ame-itm x ame"]
        if with_is:
            head += ["ame-itm x itm-stm"]
    with_tiny = "tinystm" in variants
    if with_tiny:
        head += ["ame x tinystm", "tinystm aborts/commit"]
    with_ti = "tinystm-itm" in variants and with_ai and with_tiny
    if with_ti:
        head += ["tinystm-itm x tinystm", "ame-itm x tinystm-itm"]
    body = []
    for key in configs:
        vs = by[key]
        ame = vs.get("ame", {})
        body.append([key[0], str(key[1])]
                    + [fmt_rate(vs[v]["median"]) if v in vs else ""
                       for v in variants]
                    + [fmt_ratio(ame.get("vs_seq")),
                       fmt_ratio(ame.get("vs_itm")),
                       fmt_ratio(ame.get("vs_1t")),
                       fmt_apc(ame.get("aborts_per_commit"))]
                    + ([fmt_ratio(ame.get("vs_itm_stm"))] if with_is else [])
                    + ([fmt_ratio(vs.get("ame-itm", {}).get("vs_itm")),
                        fmt_ratio(vs.get("ame-itm", {}).get("vs_ame"))]
                       if with_ai else [])
                    + ([fmt_ratio(vs.get("ame-itm", {}).get("vs_itm_stm"))]
                       if with_ai and with_is else [])
                    + ([fmt_ratio(ame.get("vs_tinystm")),
                        fmt_apc(vs.get("tinystm", {}).get(
                            "aborts_per_commit"))]
                       if with_tiny else [])
                    + ([fmt_ratio(vs.get("tinystm-itm", {}).get(
                        "vs_tinystm")),
                        fmt_ratio(vs.get("ame-itm", {}).get(
                            "vs_tinystm_itm"))]
                       if with_ti else []))
    out.append(table(head, body, right_from=2))
    out.append("")
    out.append("ops/s: operations per second over all threads; x seq: "
               "against seq at 1 thread; x itm: against libitm at the same "
               "thread count; 2t/1t: against ame at 1 thread; ame-itm: "
               "the itm variant's -fgnu-tm code linked against libame-itm "
               "(x ame: against ame's own API at the same thread count)"
               + ("; itm-stm: the itm binary on libitm's own STM "
                  "(ITM_DEFAULT_METHOD=ml_wt), where itm is libitm's "
                  "default%s" % (
                      ", which on this CPU (it has Intel RTM) runs each "
                      "transaction first as a hardware transaction, "
                      "uninstrumented, with serial-mode fallback"
                      if d["machine"].get("rtm") else "")
                  if with_is else "")
               + ("; tinystm: TinySTM's own API on the same source, its "
                  "default build (x tinystm: ame against it at the same "
                  "thread count, above 1 when ame is ahead)"
                  if with_tiny else "")
               + ("; tinystm-itm: the same -fgnu-tm code as itm on "
                  "TinySTM's own implementation of GCC's ABI (its abi/gcc "
                  "library, default build; x tinystm: what the ABI costs "
                  "TinySTM against its own API, as ame-itm x ame does ame)"
                  if with_ti else "") + ".")
    pl = d["settings"].get("placements", [])
    if len(pl) > 1:
        out[-1] += (" Each repetition runs ame and TinySTM linked with "
                    "another code placement (%s bytes of code between the "
                    "benchmark and its STM library, in turn)."
                    % ", ".join(str(k) for k in pl))
    lt = d["machine"].get("line_transfer_ns")
    near = [r for r in rows if r["variant"] == "ame" and r.get("near_runs")]
    if lt:
        out.append("")
        st = steady_note(d["machine"].get("steady"))
        out.append("Moving a cache line between the two CPUs cost %.0f-%.0f "
                   "ns around the multi-thread runs (`bench-line-transfer`, "
                   "before and after each); the figures at 2 threads move "
                   "with it.  %sThe runs made while it was at most %.0f ns "
                   "(twice the cheapest)%s" % (
                       lt["min"], lt["max"], st + " " if st else "",
                       2 * lt["min"],
                       " gave, for ame:" if near else ": none."))
    if lt and near:
        out.append("")
        for r in near:
            out.append("- %s, %d threads: %d of %d runs, %s%s" % (
                r["config"], r["threads"], r.get("near_runs", 0),
                len(r["line_ns"]),
                fmt_rate(r.get("near_median")) if r.get("near_median")
                else "-",
                ", %s its 1-thread figure" % fmt_ratio(r["near_vs_1t"])
                if r.get("near_vs_1t") else ""))
    compare = [(name, a, b) for name, a, b in (
        ("ame x tinystm", "ame", "tinystm"),
        ("ame-itm x ame", "ame-itm", "ame"))
        if any(same_round(by[k].get(a), by[k].get(b)) for k in configs)]
    if compare:
        out.append("")
        out.append("Each repetition runs the variants of a configuration one "
                   "after another, so a ratio within one repetition compares "
                   "them at the same moment.  The median of those ratios, "
                   "with their range, moves less with the machine's state "
                   "than the ratio of the medians in the table above:")
        out.append("")
        body = [[k[0], str(k[1])]
                + [fmt_same_round(same_round(by[k].get(a), by[k].get(b)))
                   for _, a, b in compare] for k in configs]
        out.append(table(["configuration", "threads"]
                         + [name for name, _, _ in compare], body,
                         right_from=2))
    return out


def reactor_section(d):
    out = []
    sc = d.get("scaling")
    if sc and sc.get("rows"):
        workers = sorted({r["workers"] for r in sc["rows"]
                          if r["mode"] == "reactor"})
        conflicts = []
        for r in sc["rows"]:
            if r["conflict_pct"] not in conflicts:
                conflicts.append(r["conflict_pct"])
        cell = {(r["conflict_pct"], r["mode"], r["workers"]): r
                for r in sc["rows"]}
        top = workers[-1]
        head = (["conflicts", "plain loop"]
                + ["%d worker%s" % (w, "" if w == 1 else "s")
                   for w in workers]
                + ["%dw / 1w" % top, "1w x plain", "aborts/commit (%dw)" % top])
        body = []
        for c in conflicts:
            plain = cell.get((c, "plain", 1), {})
            rs = [cell.get((c, "reactor", w), {}) for w in workers]
            body.append(["%g %%" % c, fmt_rate(plain.get("median"))]
                        + [fmt_rate(r.get("median")) for r in rs]
                        + [fmt_ratio(rs[-1].get("speedup")),
                           fmt_ratio(rs[0].get("vs_plain")),
                           fmt_apc(rs[-1].get("aborts_per_commit"))])
        out.append("Scaling: %d events as reactor tasks, each %.1f us of "
                   "work and a transactional update (events/s):"
                   % (sc["events"], sc.get("event_work_us") or 0))
        out.append("")
        out.append(table(head, body))
    http = d.get("http")
    if http and http.get("rows"):
        out.append("")
        out.append("HTTP hello-world, `wrk -c%d -d%ds`:"
                   % (http["connections"], http["duration_s"]))
        out.append("")
        body = []
        for r in http["rows"]:
            body.append([r["server"], "-t%d" % r["wrk_threads"],
                         fmt_rate(r["rps_median"]),
                         spread(r["rps_min"], r["rps_max"]),
                         fmt_us(r["cpu_median"]),
                         fmt_ratio(r["cpu_vs_plain"]),
                         fmt_ratio(r["rps_vs_nginx1"]), cpus3(r),
                         str(r["errors"])])
        out.append(table(["server", "wrk", "req/s", "min-max",
                          "CPU us/req", "CPU x plain", "req/s x nginx-1w",
                          "CPUs srv / wrk / other", "errors"], body,
                         right_from=2))
        out.append("")
        out.append("CPU us/req: the server's user+system CPU per request; "
                   "plain: a single-threaded libuv server "
                   "(bench/plain_libuv_http.c); poll: the same over uv_poll "
                   "with its own output buffer, the way ame's streams buffer "
                   "(bench/plain_poll_http.c).")
    elif http and http.get("skipped"):
        out.append("")
        out.append("HTTP hello-world: skipped (%s)." % http["skipped"])
    return out


def twisted_section(d):
    out = []
    tw = d["twisted"]
    labels = {"raw": "raw Protocol", "web": "twisted.web",
              "webclose": "twisted.web, Connection: close",
              "webtls": "twisted.web over TLS",
              "webtlsclose": "twisted.web over TLS, Connection: close",
              "webtlscloseload": "twisted.web over TLS, Connection: close, "
                                 "ame load"}
    body = []
    for r in tw["rows"]:
        body.append([labels.get(r["app"], r["app"]), r["mode"], r["label"],
                     fmt_rate(r["rps_median"]),
                     spread(r["rps_min"], r["rps_max"]),
                     fmt_us(r["cpu_median"]),
                     fmt_us(r.get("client_cpu_median")),
                     fmt_ratio(r.get("rps_vs_epoll")),
                     fmt_ratio(r.get("cpu_vs_epoll")),
                     fmt_ratio(r.get("rps_vs_1w")), cpus3(r),
                     str(r["errors"])])
    s = d["settings"]
    out.append("`wrk -t1 -c%d -d%ds` after %ds of warm-up; pinned: server "
               "on one CPU, wrk on another:" % (
                   s["connections"], s["duration_s"], s["warmup_s"]))
    out.append("")
    out.append(table(["program", "mode", "server", "req/s", "min-max",
                      "CPU us/req", "client CPU us/req", "req/s x epoll",
                      "CPU x epoll",
                      "req/s x 1 worker", "CPUs srv / wrk / other",
                      "errors"], body, right_from=3))
    head, split = thread_split(tw["rows"], lambda a: labels.get(a, a))
    if split:
        out += ["", "Where AMEReactor's server CPU goes (unpinned, "
                "`io=\"thread\"`), CPU us per request by thread: the "
                "program's Python thread; ame-io, the C reactor; ame-tls, "
                "the handshake pool (its public-key steps); medians over "
                "the repetitions (threads that ended during a run are "
                "missing from the split, not from the total):", "",
                table(head, split)]
    for n in tw.get("notes", []):
        out.append("")
        out.append("Note: " + n)
    return out


def load_section(d):
    s = d["settings"]
    body = []
    for r in d["rows"]:
        body.append([str(r["workers"]), fmt_rate(r["wrk"]["rps_median"]),
                     fmt_rate(r["ame"]["rps_median"]),
                     fmt_ratio(r["ratio"]),
                     spread(r["pair_ratio_min"], r["pair_ratio_max"],
                            fmt_ratio),
                     "%s / %s" % (fmt_us(r["wrk"]["cpu_us_per_req"]),
                                  fmt_us(r["ame"]["cpu_us_per_req"])),
                     "%d / %d" % (r["wrk"]["errors"], r["ame"]["errors"])])
    return ["One server (`examples/c/http -w W`), loaded by `wrk` and by "
            "`ame load`, each `-t%d -c%d -d%ds` after 1 s of warm-up, back "
            "to back:" % (s["threads"], s["connections"], s["duration_s"]),
            "", table(["server workers", "wrk req/s", "ame load req/s",
                       "ame load / wrk", "per pair", "client CPU us/req, "
                       "wrk / ame load", "errors wrk / ame load"], body)]


def supervisor_section(d):
    s = d["settings"]
    body = []
    for r in d["rows"]:
        body.append([r["config"], fmt_rate(r["rps_median"]),
                     spread(r["rps_min"], r["rps_max"]),
                     fmt_ratio(r["rps_vs_plain"]),
                     fmt_us(r["p99_median_us"] / 1000.0),
                     fmt_ratio(r["p99_vs_plain"]),
                     "%d / %d" % (r["errors"], r["non2xx"]),
                     str(r["reloads"] or r["recycled"] or "-")])
    out = ["examples/python/web.py under `ame run --workers %d`, `ame load "
           "-t%d -c%d -d%ds`: plain; --metrics (with /metrics fetched every "
           "second); a SIGHUP reload a third of the way in; "
           "--max-requests %d (recycling all through the run):"
           % (s["workers"], s["threads"], s["connections"],
              s["duration_s"], s["max_requests"]),
           "", table(["config", "req/s", "min-max", "req/s x plain",
                      "p99 ms (whole run)", "p99 x plain",
                      "errors / non-2xx", "reloads / recycled"], body)]
    for r in d["rows"]:
        if r.get("p99_reload_median_us") is not None:
            out += ["", "Reload: p99 %s ms in the reload window (%.1f s, "
                    "from just before the SIGHUP until the old workers had "
                    "exited) against %s ms in the steady part before it, "
                    "same run: %s (medians; the table's reload p99 is the "
                    "larger of the two)."
                    % (fmt_us(r["p99_reload_median_us"] / 1000.0),
                       r["reload_window_median_s"],
                       fmt_us(r["p99_steady_median_us"] / 1000.0),
                       fmt_ratio(r["p99_reload_median_us"] /
                                 r["p99_steady_median_us"]
                                 if r["p99_steady_median_us"] else None))]
    return out


def shared_section(d):
    out = []
    ops = d.get("ops")
    if ops:
        out.append("Single-key operations from Python, each one "
                   "transaction (%d keys, values of %d bytes; Redis on a "
                   "Unix socket, %s parser; LMDB with writemap, no sync, a "
                   "write transaction per put), one process:"
                   % (ops["keys"], ops["value_bytes"],
                      "hiredis" if ops["hiredis"] else "Python"))
        out.append("")
        out.append(table(
            ["operation", "store", "calls/s", "min-max", "us/call",
             "ame.shared x it"],
            [[r["case"], r["store"], fmt_rate(r["median"]),
              spread(r["min"], r["max"]), fmt_us(r["us_per_call"]),
              "" if r["store"] == "ame.shared" else fmt_ratio(r["ame_vs"])]
             for r in ops["rows"]], right_from=2))
        for name, why in sorted(ops.get("skipped", {}).items()):
            out += ["", "%s: skipped (%s)." % (name, why)]
        out += ["", "Two processes at once, each on its own keys (LMDB's "
                "writers take turns; dict: each process its own copy, "
                "nothing shared, the machine's ceiling):", ""]
        out.append(table(
            ["operation", "store", "calls/s", "min-max", "x one process",
             "per CPU-second x one process"],
            [[r["case"], r["store"], fmt_rate(r["median"]),
              spread(r["min"], r["max"]), fmt_ratio(r["vs_one"]),
              fmt_ratio(r["per_cpu_vs_one"])] for r in ops["two"]],
            right_from=2))
        out += ["", "One hot key, two processes:", ""]
        out.append(table(
            ["operation", "increments/s", "min-max", "aborts/commit"],
            [["`ame.atomic(d[k] = d[k] + 1)`" if r["case"] == "hot key"
              else "`counter.add(1)`", fmt_rate(r["median"]),
              spread(r["min"], r["max"]), fmt_apc(r["aborts_per_commit"])]
             for r in ops["hot"]]))
    web = d.get("web")
    if web and web.get("rows"):
        out += ["", "bench/counter_web.py (twisted.web) under `ame run "
                "--workers %d`, `ame load -t%d -c%d -d%ds`, with and without "
                "a shared counter add per request (counted: the requests "
                "the counter saw, which must be those served):"
                % (web["workers"], web["threads"], web["connections"],
                   web["duration_s"]), ""]
        out.append(table(
            ["config", "req/s", "min-max", "req/s x plain", "p99 ms",
             "errors / non-2xx", "counted"],
            [[r["config"], fmt_rate(r["rps_median"]),
              spread(r["rps_min"], r["rps_max"]),
              fmt_ratio(r["rps_vs_plain"]),
              fmt_us(r["p99_median_us"] / 1000.0),
              "%d / %d" % (r["errors"], r["non2xx"]), str(r["counted"])]
             for r in web["rows"]]))
    elif web and web.get("skipped"):
        out += ["", "Web: skipped (%s)." % web["skipped"]]
    crash = d.get("crash")
    if crash and crash.get("runs"):
        out += ["", "Crash injection (tests/stm/test_heap_crash.c, as `make "
                "stress`): worker processes SIGKILLed at random moments and "
                "in each phase of a commit, recovered by the test "
                "(heap_crash) or by the surviving workers (heap_crash_peer); "
                "survived: kills after which every invariant held:", ""]
        out.append(table(
            ["test", "kills", "survived", "recovery ms p50", "p99", "max",
             "recovered by a survivor", "transfers acknowledged"],
            [[r["test"], str(r["kills"]), str(r["survived"]),
              fmt_us(r["p50_ms"]), fmt_us(r["p99_ms"]), fmt_us(r["max_ms"]),
              "-" if r["by_survivor"] is None else str(r["by_survivor"]),
              fmt_rate(r.get("acknowledged"))] for r in crash["runs"]]))
    elif crash and crash.get("skipped"):
        out += ["", "Crash injection: skipped (%s)." % crash["skipped"]]
    return out[1:] if out and out[0] == "" else out


def tasks_section(d):
    out = []
    wc = d.get("wordcount")
    if wc:
        out.append("wordcount (examples/python/wordcount.py's task) over %d "
                   "files of %d KiB (%d words, %d distinct), counts read out "
                   "as one dict; seconds, processes started included:"
                   % (wc["files"], wc["kib"], wc["words"], wc["distinct"]))
        out.append("")
        out.append(table(
            ["config", "seconds", "min-max", "MiB/s", "speed x plain loop",
             "speed x ame.tasks 1w", "CPU s", "CPU x ame.tasks 1w",
             "re-runs"],
            [[r["config"], "%.3f" % r["median_s"],
              "%.3f-%.3f" % (r["min_s"], r["max_s"]),
              "%.2f" % r["mib_per_s"], fmt_ratio(r["x_plain"]),
              fmt_ratio(r["x_ame_1w"]),
              "-" if r.get("cpu_s") is None else "%.3f" % r["cpu_s"],
              fmt_ratio(r.get("cpu_x_ame_1w")),
              str(r["reruns"]) if "reruns" in r else "-"]
             for r in wc["rows"]]))
    ov = d.get("overhead")
    if ov:
        if out:
            out.append("")
        out.append("The cost of an empty task on 2 worker processes, "
                   "(time for N - time for 1) / (N - 1):")
        out.append("")
        out.append(table(
            ["config", "N", "us/task", "min-max", "x ame.tasks",
             "start+stop ms"],
            [[r["config"], str(r["tasks"]), fmt_us(r["median_us"]),
              spread(r["min_us"], r["max_us"], fmt_us),
              fmt_ratio(r["x_ame"]), "%.1f" % r["startup_ms"]]
             for r in ov["rows"]]))
    return out


def stamp_section(d):
    if d.get("skipped"):
        return ["Skipped: %s." % d["skipped"]]
    by = {(r["app"], r["threads"], r["variant"]): r for r in d["results"]}
    s = d["settings"]

    def sec(r):
        return "-" if r is None or r["median"] is None else \
            "%.3f" % r["median"]

    body = []
    for app in s["apps"]:
        for t in s["threads"]:
            a = by.get((app, t, "ame"), {})
            # Speed within each repetition: TinySTM's time over ame's.
            rounds = same_round(by.get((app, t, "tinystm")),
                                by.get((app, t, "ame")), key="seconds")
            body.append([app, str(t), sec(by.get((app, t, "ame"))),
                         sec(by.get((app, t, "tinystm"))),
                         sec(by.get((app, t, "seq"))) if t == 1 else "",
                         fmt_ratio(a.get("vs_tinystm")),
                         fmt_same_round(rounds),
                         fmt_ratio(a.get("vs_seq")),
                         fmt_ratio(a.get("vs_1t")),
                         fmt_ratio(a.get("tinystm_vs_1t"))])
    out = [table(["application", "threads", "ame s", "tinystm s", "seq s",
                  "ame x tinystm", "same round", "ame x seq", "ame 2t/1t",
                  "tinystm 2t/1t"], body, right_from=2), ""]
    out.append("Seconds: the median of the time each application prints "
               "for its parallel phase; x tinystm, x seq: ame's speed "
               "(inverse time) against TinySTM at the same thread count "
               "and against the sequential build, above 1 when ame is "
               "faster; same round: ame x tinystm within each repetition "
               "(which runs the variants one after another), median and "
               "range; 2t/1t: each STM's speed-up from 1 to 2 threads.")
    if s.get("placements"):
        out[-1] += (" Each repetition runs ame and TinySTM linked with "
                    "another code placement (%s bytes of padding between "
                    "the application and its STM library, in turn)."
                    % ", ".join(str(k) for k in s["placements"]))
    st = steady_note(d["machine"].get("steady"))
    if st:
        out.append("")
        out.append(st)
    g = d.get("geomean_vs_tinystm", {})
    if g:
        out.append("")
        out.append("ame x tinystm, geometric mean over the applications: "
                   + ", ".join("%s at %s thread%s" % (
                       fmt_ratio(v), t, "s" if int(t) > 1 else "")
                       for t, v in sorted(g.items(),
                                          key=lambda kv: int(kv[0]))) + ".")
    return out


SECTIONS = {"stm": stm_section, "reactor": reactor_section,
            "twisted": twisted_section, "load": load_section,
            "supervisor": supervisor_section, "shared": shared_section,
            "tasks": tasks_section, "stamp": stamp_section}


# ---- the file -----------------------------------------------------------------

def git_state():
    """'commit abc1234' (plus ', with uncommitted changes'), or None."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short",
                               "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    # RESULTS.md itself does not make the tree dirty.
    changed = [l for l in dirty.stdout.splitlines()
               if not l.endswith("bench/RESULTS.md")]
    return "commit %s%s" % (head.stdout.strip(),
                            ", with uncommitted changes" if changed else "")


def render(found, missing, command, when_done, runners=RUNNERS, tree=None):
    first = min((d["machine"] for d in found.values()),
                key=lambda m: m.get("started", ""))
    quick = [name for name, d in found.items() if d["settings"].get("quick")]
    out = ["# Benchmark results" + (
        "" if runners is RUNNERS else
        ": %s" % ", ".join(r[2] for r in runners)), ""]
    if runners is RUNNERS:
        out.append("Written by `make bench` (bench/results.py, from the "
                   "runners' `--json-out` files); every ratio is against a "
                   "baseline measured in the same run, on the machine below. "
                   "bench/README.md says what each benchmark does.")
    else:
        out.append("Written by bench/results.py from the `--json-out` files "
                   "of %s alone, run by the command below; every ratio is "
                   "against a baseline measured in the same run, on the "
                   "machine below. bench/README.md says what each benchmark "
                   "does." % ", ".join("`bench/%s`" % r[1] for r in runners))
    out.append("")
    if quick:
        out.append("**Quick run** (`--quick`: one short repetition of each "
                   "configuration, in %s): indicative figures, not the "
                   "project's." % ", ".join(quick))
        out.append("")
    if missing:
        out.append("**Incomplete**: no results from %s (the runner failed "
                   "or was not run)." % ", ".join(missing))
        out.append("")
    started = first.get("started")
    date = "-"
    if started:
        t0 = calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ"))
        date = "%s UTC" % started.replace("T", " ")[:16]
        if when_done and when_done > t0:
            date += " (%.1f minutes to the last runner's end)" % (
                (when_done - t0) / 60.0)
    load = " ".join(first.get("loadavg_at_start") or ["?"])
    others = ", ".join(
        "%s %.2f" % (name, d["machine"]["other_cpus"])
        for name, d in found.items()
        if d["machine"].get("other_cpus") is not None)
    info = [("date", date),
            ("command", "`%s`" % command if command else
             "the runners' commands, below")]
    tree = tree or git_state()
    if tree:
        info.append(("tree", tree))
    info += [("CPU", "%s, %s CPUs" % (first.get("cpu") or "?",
                                      first.get("cpus"))),
             ("kernel", "Linux %s" % first.get("kernel", "?")),
             ("scheduling", scheduling_note(first.get("autogroup"))
              or "not recorded"),
             ("load average at the start", load),
             ("CPUs used by other work during each runner", others or "-")]
    lt = found.get("stm", {}).get("machine", {}).get("line_transfer_ns")
    if lt:
        info.append(("moving a cache line between two CPUs",
                     "%.0f-%.0f ns (`bench-line-transfer`, before and after "
                     "each multi-thread STM run)" % (lt["min"], lt["max"])))
    out += ["- %s: %s" % kv for kv in info]
    out.append("")
    out.append("Above 0.2 CPUs of other work the figures are disturbed, "
               "those of 2 threads and of req/s first.")

    out += ["", "## Bars", ""]
    body = []
    for name, _, title in runners:
        d = found.get(name, {})
        other = d.get("machine", {}).get("other_cpus")
        for b in d.get("bars", []):
            notes = [b["note"]] if b.get("note") else []
            if other is not None and other > 0.2 and b["status"] != "n/a":
                notes.append("disturbed: other work used %.2f CPUs during "
                             "the runner" % other)
            note = "; ".join(notes)
            body.append([title, b["bar"], b["target"], b["shown"],
                         verdict(b) + (" (%s)" % note if note else "")])
    out.append(table(["benchmark", "bar", "target", "figure", "verdict"],
                     body, right_from=5))

    for name, script, title in runners:
        out += ["", "## %s (`bench/%s`)" % (title, script), ""]
        if name not in found:
            out.append("No results (the runner failed or was not run).")
            continue
        d = found[name]
        out.append(run_line(d))
        out.append("")
        out += SECTIONS[name](d)
        fails = failures_text(d)
        if fails:
            out += [""] + fails
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builddir", default="build-release",
                    help="where the runners wrote bench-*.json (default: "
                         "build-release)")
    ap.add_argument("--command", default=None,
                    help="the command that ran the benchmarks (make bench "
                         "passes its own)")
    ap.add_argument("-o", "--output",
                    default=os.path.join(REPO, "bench", "RESULTS.md"),
                    help="the file to write, '-' for stdout (default: "
                         "bench/RESULTS.md)")
    ap.add_argument("--tree", default=None,
                    help="the tree the figures were taken from, when it is "
                         "not this checkout as it is now (a run on another "
                         "machine); default: this checkout's commit")
    ap.add_argument("--runners", default=None,
                    help="comma-separated runners to render, of %s "
                         "(default: all; a file of some of them says so, "
                         "e.g. a scaling run on a larger machine)"
                         % ",".join(r[0] for r in RUNNERS))
    args = ap.parse_args()
    runners = RUNNERS
    if args.runners:
        names = args.runners.split(",")
        unknown = [n for n in names if n not in [r[0] for r in RUNNERS]]
        if unknown:
            ap.error("unknown runner: %s" % ", ".join(unknown))
        runners = tuple(r for r in RUNNERS if r[0] in names)
    builddir = args.builddir
    if not os.path.isdir(builddir) and os.path.isdir(
            os.path.join(REPO, builddir)):
        builddir = os.path.join(REPO, builddir)
    found, missing, done = {}, [], None
    for name, _, _ in runners:
        path = os.path.join(builddir, "bench-%s.json" % name)
        try:
            found[name] = load_saved(path)
            done = max(done or 0, os.path.getmtime(path))
        except (OSError, ValueError):
            missing.append(name)
    if not found:
        print("results: no bench-*.json in %s: run make bench" % builddir,
              file=sys.stderr)
        return 2
    text = render(found, missing, args.command, done, runners, args.tree)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
        shown = os.path.relpath(args.output)
        print("results: %s written%s" % (
            shown if not shown.startswith("..") else
            os.path.abspath(args.output),
            " (incomplete: no %s)" % ", ".join(missing) if missing else ""))
    failed = [n for n, d in found.items() if d.get("failures")]
    if failed:
        print("results: failed runs in %s" % ", ".join(failed),
              file=sys.stderr)
    return 1 if missing or failed else 0


if __name__ == "__main__":
    sys.exit(main())
