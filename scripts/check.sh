#!/bin/sh
# make check: build and run every test in three builds — plain, ASan+UBSan,
# TSan — each in its own meson build dir.  Stops at the first failure.
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

setup build-tsan -Db_sanitize=thread -Db_lundef=false
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  run meson test -C build-tsan --print-errorlogs -t 5

echo "make check: all three builds passed"
