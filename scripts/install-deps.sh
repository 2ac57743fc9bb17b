#!/bin/sh
# Install the Debian packages ame needs to build, test and benchmark, if
# any is missing.  Runs apt-get when root; otherwise says what to install.
# Usage: scripts/install-deps.sh [build|bench|demo]   (default: build)
set -eu

# chromium: tests/cmd/test_supervisor.py's 'page' case renders the live
# page of `ame run --metrics` in it (headless).
BUILD_PKGS="gcc g++ make meson ninja-build pkg-config python3 python3-dev python3-twisted python3-openssl python3-service-identity libgcc-12-dev libuv1-dev libhttp-parser-dev libssl-dev openssl clang libclang-rt-14-dev chromium"
# bench/shared_bench.py's baselines: Redis (server, client, C parser), LMDB.
BENCH_PKGS="$BUILD_PKGS wrk nginx-light redis-server python3-redis python3-hiredis python3-lmdb"
# make demo: the plot (bench/demo.py) needs matplotlib.
DEMO_PKGS="$BUILD_PKGS python3-matplotlib"

case "${1:-build}" in
  build) want="$BUILD_PKGS" ;;
  bench) want="$BENCH_PKGS" ;;
  demo) want="$DEMO_PKGS" ;;
  *) echo "usage: $0 [build|bench|demo]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "ame: missing Debian packages:$missing" >&2
  echo "ame: install them with: sudo apt-get install$missing" >&2
  exit 1
fi
echo "ame: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
