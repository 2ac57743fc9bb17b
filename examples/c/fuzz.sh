#!/bin/sh
# examples/c/fuzz.sh [SECONDS] — build the HTTP example's libFuzzer target
# (fuzz_http.c) with clang, ASan and UBSan, and run it for SECONDS (default
# 30) from the seed corpus.  Needs clang and libclang-rt-14-dev (Debian 12)
# and libhttp-parser-dev.  Exit status 0: no crash, leak or failed check.
#
#   examples/c/fuzz.sh 30                    # what `make check` runs
#   FUZZ_DIR=/tmp/f examples/c/fuzz.sh 600   # longer, elsewhere
#
# The build and the growing corpus go to $FUZZ_DIR (default build-fuzz/ at
# the top of the tree); a crashing input is left there as crash-*.
set -eu
secs=${1:-30}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${FUZZ_DIR:-$root/build-fuzz}
cc=${FUZZ_CC:-clang}

if ! command -v "$cc" >/dev/null 2>&1; then
  echo "fuzz.sh: $cc not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
mkdir -p "$out/obj" "$out/corpus"

# The STM core is built with the sanitizers but without coverage
# instrumentation (we fuzz the example, not the STM); the example and the
# target get both.
flags="-std=c11 -g -O1 -D_GNU_SOURCE -DAME_STM_INLINE -pthread -I$root/stm/include"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
objs=
for src in "$root"/stm/src/*.c; do
  obj="$out/obj/$(basename "$src" .c).o"
  $cc $flags $san -DAME_BUILDING_LIBRARY -c "$src" -o "$obj"
  objs="$objs $obj"
done
$cc $flags $san -fsanitize=fuzzer -Wall -Wextra -Werror \
  "$here/fuzz_http.c" "$here/http_app.c" $objs -lhttp_parser \
  -o "$out/fuzz-http"

cp "$here"/fuzz_http_corpus/* "$out/corpus/"
cd "$out"
echo "fuzz.sh: running fuzz-http for $secs s (corpus: $out/corpus)"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
  ./fuzz-http -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=16384 -dict="$here/fuzz_http.dict" -print_final_stats=1 \
    corpus
