#!/bin/sh
# make check: build and run every test in three builds — plain, ASan+UBSan,
# TSan — each in its own meson build dir (the Python extension's tests in
# the sanitizer builds too), then a short fuzz run.  Stops at the first
# failure.
set -eu
cd "$(dirname "$0")/.."

# Each command is echoed with the seconds since the start, so that a log
# shows where the time went.
start=$(date +%s)
run() { echo "+ [$(( $(date +%s) - start ))s] $*"; "$@"; }

# Tests at twice the CPUs at once: many of them wait on children, sockets
# and timers rather than compute (on 2 CPUs the plain suite takes about 130 s
# this way against 205 s at one per CPU).
jobs=${AME_TEST_JOBS:-$(( $(nproc) * 2 ))}

setup() { # dir [meson options...]
  dir=$1; shift
  [ -f "$dir/build.ninja" ] || run meson setup "$dir" "$@"
  run ninja -C "$dir"
}

setup build
run meson test -C build --print-errorlogs --num-processes "$jobs"

setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  run meson test -C build-asan --print-errorlogs -t 3 --num-processes "$jobs"

# The Python extension built with ASan+UBSan, loaded into Debian's python
# (not built with them) by preloading the runtimes: the project's Python
# tests and Twisted's TCP/TLS/process reactor tests over it.  Leak checking
# is off: CPython keeps memory alive until exit by design.
asan_py() {
  run env \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    PYTHONPATH="$PWD/build-asan/bindings:$PWD/bindings" \
    /usr/bin/python3 "$@"
}
# py_tests RUNNER SAN MODULES: the trial tests, then Twisted's reactor
# suites MODULES (for ame and ame-inline), under RUNNER over build-SAN's
# extension.  The trial output is kept for the closing summary (and shown).
py_tests() {
  if $1 -m twisted.trial --temp-directory "build-$2/_trial_temp" \
      tests/python/test_reactor.py tests/python/test_timers.py \
      tests/python/test_shared.py tests/python/test_tasks.py \
      tests/python/test_tls.py \
      > "build-$2/trial-$2.log" 2>&1
  then cat "build-$2/trial-$2.log"
  else cat "build-$2/trial-$2.log"; exit 1
  fi
  $1 tests/python/run_twisted_conformance.py --reactors ame,ame-inline \
    --strict --modules "$3" --out "build-$2/conformance" \
    --json "build-$2/conformance/summary.json"
}
py_tests asan_py asan test_tcp,test_tls,test_newtls,test_process,test_core

setup build-tsan -Db_sanitize=thread -Db_lundef=false
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  run meson test -C build-tsan --print-errorlogs -t 5 \
    --num-processes "$jobs"

# The Python extension built with TSan, in Debian's python by preloading
# the runtime, as for ASan above: its threads (the Python thread, the C
# worker, the TLS handshake pool) over the same trial tests and Twisted's
# TCP/TLS reactor suites.  CPython's GIL is pthread mutexes and condition
# variables, which the runtime sees.  Under this runtime a child that runs
# Python before exec() dies (test_reactor skips those tests; test_process
# is not run here; die_after_fork=0 lets the other forked children start
# threads), and a named heap's address hint is dropped (test_shared skips
# the tests whose unrelated processes open one named heap).
tsan_py() {
  run env \
    LD_PRELOAD="$(gcc -print-file-name=libtsan.so)" \
    TSAN_OPTIONS=halt_on_error=1:die_after_fork=0:second_deadlock_stack=1 \
    PYTHONPATH="$PWD/build-tsan/bindings:$PWD/bindings" \
    /usr/bin/python3 "$@"
}
py_tests tsan_py tsan test_tcp,test_tls,test_newtls,test_core

# A short libFuzzer run of the HTTP example's request handling.
run sh examples/c/fuzz.sh "${AME_FUZZ_SECONDS:-30}"

# The closing summary: a line per part (each build's meson tests, the trial
# and Twisted conformance runs inside and outside meson, the fuzz run), a
# total, and every skipped test with its reason.
/usr/bin/python3 scripts/check_summary.py \
  meson:plain:build \
  meson:asan:build-asan \
  trial:"asan trial (reactor, timers, shared, tasks, tls)":build-asan/trial-asan.log \
  conformance:"asan twisted reactor suite":build-asan/conformance/summary.json \
  meson:tsan:build-tsan \
  trial:"tsan trial (reactor, timers, shared, tasks, tls)":build-tsan/trial-tsan.log \
  conformance:"tsan twisted reactor suite":build-tsan/conformance/summary.json \
  ran:fuzz:"examples/c/fuzz.sh, ${AME_FUZZ_SECONDS:-30} s"
