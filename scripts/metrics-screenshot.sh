#!/bin/sh
# Make docs/img/metrics-page.png: the live page of `ame run --metrics`
# in headless chromium, about a minute into a run of
# examples/python/web.py with 2 workers under `ame load`: a fixed rate,
# then as fast as it goes with a reload (SIGHUP) in the middle, a pause,
# and a fixed rate again while the picture is taken.
# Usage: scripts/metrics-screenshot.sh [BUILDDIR]   (default: build)
set -eu
cd "$(dirname "$0")/.."
B=${1:-build}
case $B in /*) ;; *) B=$PWD/$B ;; esac
AME="$B/cmd/ame"
MPORT=${MPORT:-19100}
export PYTHONPATH="$B/bindings:$PWD/bindings"
tmp=$(mktemp -d /tmp/ame-shot.XXXXXX)

"$AME" run --workers 2 --metrics 127.0.0.1:$MPORT examples/python/web.py \
  --port 0 >"$tmp/out" 2>"$tmp/err" &
sup=$!
trap 'kill $sup 2>/dev/null || true; wait $sup 2>/dev/null || true; rm -rf "$tmp"' EXIT
i=0
until grep -q '2 worker(s) serving' "$tmp/err"; do
  i=$((i + 1)); [ $i -lt 300 ] || { cat "$tmp/err" >&2; exit 1; }
  sleep 0.1
done
url=http://127.0.0.1:$(sed -n 's|.*http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$tmp/out")/
load() { "$AME" load "$url" -t 1 --no-progress "$@" >/dev/null; }

load -c 4 -r 400 -d 15s
load -c 8 -d 16s &
sleep 8
kill -HUP $sup
wait $!
sleep 8
load -c 8 -r 1200 -d 25s &
sleep 12
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$tmp/profile" --virtual-time-budget=2500 \
  --window-size=1200,800 --screenshot=docs/img/metrics-page.png \
  http://127.0.0.1:$MPORT/ 2>/dev/null
wait $!
ls -l docs/img/metrics-page.png
