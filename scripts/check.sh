#!/bin/sh
# make check: build and run every test in three builds — plain, ASan+UBSan,
# TSan — each in its own meson build dir, then a short fuzz run.  Stops at
# the first failure.
set -eu
cd "$(dirname "$0")/.."

run() { echo "+ $*"; "$@"; }

setup() { # dir [meson options...]
  dir=$1; shift
  [ -f "$dir/build.ninja" ] || run meson setup "$dir" "$@"
  run ninja -C "$dir"
}

setup build
run meson test -C build --print-errorlogs

setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  run meson test -C build-asan --print-errorlogs -t 3

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
asan_py -m twisted.trial --temp-directory build-asan/_trial_temp \
  tests/python/test_reactor.py tests/python/test_timers.py
asan_py tests/python/run_twisted_conformance.py --reactors ame,ame-inline --strict \
  --modules test_tcp,test_tls,test_process,test_core \
  --out build-asan/conformance

setup build-tsan -Db_sanitize=thread -Db_lundef=false
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  run meson test -C build-tsan --print-errorlogs -t 5

# A short libFuzzer run of the HTTP example's request handling.
run sh examples/c/fuzz.sh "${AME_FUZZ_SECONDS:-30}"

# One closing line over the three builds, from meson's JSON logs.
/usr/bin/python3 - build build-asan build-tsan <<'PY'
import json, sys
ok = bad = skip = 0
for d in sys.argv[1:]:
    for line in open(f"{d}/meson-logs/testlog.json"):
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"): ok += 1
        elif r == "SKIP": skip += 1
        else: bad += 1
print(f"check: {ok} passed, {bad} failed, {skip} skipped")
sys.exit(1 if bad else 0)
PY
