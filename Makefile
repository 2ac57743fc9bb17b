# A thin wrapper over meson for the README's commands.  Everything is built
# against Debian's /usr/bin/python3 (a pyenv python3 may come first on PATH).
PYTHON  ?= /usr/bin/python3
BUILD   ?= build
# Benchmarks measure a release build (-O3, no asserts); tests use BUILD.
BENCH_BUILD ?= build-release
MESON   ?= meson

.PHONY: all deps deps-bench build build-release check demo bench install clean

all: build

deps:
	@sh scripts/install-deps.sh build

deps-bench:
	@sh scripts/install-deps.sh bench

build: deps
	@test -f $(BUILD)/build.ninja || $(MESON) setup $(BUILD)
	ninja -C $(BUILD)

build-release: deps-bench
	@test -f $(BENCH_BUILD)/build.ninja || \
	  $(MESON) setup $(BENCH_BUILD) -Dbuildtype=release
	ninja -C $(BENCH_BUILD)

# Every test, in the plain, ASan+UBSan and TSan builds, and a fuzz run.
check: deps
	@sh scripts/check.sh

# The main job until the Twisted side exists: the STM and reactor
# benchmarks' short forms (about a minute).
demo: build-release
	$(PYTHON) bench/stm_bench.py --quick --builddir $(BENCH_BUILD)
	$(PYTHON) bench/reactor_bench.py --quick --builddir $(BENCH_BUILD)

# The full benchmarks (several minutes).  BENCH_ARGS go to both runners
# (e.g. --json); STM_BENCH_ARGS and REACTOR_BENCH_ARGS to one each (their
# other flags differ: --duration is ms for one, seconds for the other).
bench: build-release
	$(PYTHON) bench/stm_bench.py --builddir $(BENCH_BUILD) $(BENCH_ARGS) $(STM_BENCH_ARGS)
	$(PYTHON) bench/reactor_bench.py --builddir $(BENCH_BUILD) $(BENCH_ARGS) $(REACTOR_BENCH_ARGS)

install: build
	$(MESON) install -C $(BUILD)

clean:
	rm -rf build build-release build-asan build-tsan build-fuzz
