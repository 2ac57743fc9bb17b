# A thin wrapper over meson for the README's commands.  Everything is built
# against Debian's /usr/bin/python3 (a pyenv python3 may come first on PATH).
PYTHON  ?= /usr/bin/python3
BUILD   ?= build
# Benchmarks measure a release build (-O3, no asserts); tests use BUILD.
BENCH_BUILD ?= build-release
MESON   ?= meson

.PHONY: all deps deps-bench deps-demo build build-release check demo bench install clean

all: build

deps:
	@sh scripts/install-deps.sh build

deps-bench:
	@sh scripts/install-deps.sh bench

deps-demo:
	@sh scripts/install-deps.sh demo

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

# The demo (bench/demo.py, under two minutes): examples/python/web.py, an
# ordinary twisted.web app, under `ame run --workers auto` (and 1, 2, 4, ...
# workers below that) against Twisted's default reactor in one process,
# loaded with `ame load`; a table and build/demo.png.  DEMO_ARGS go to it.
demo: deps-demo build-release
	$(PYTHON) bench/demo.py --builddir $(BENCH_BUILD) $(DEMO_ARGS)

# The full benchmarks (about twelve minutes).  BENCH_ARGS go to every runner
# (e.g. --json, --quick); STM_BENCH_ARGS, REACTOR_BENCH_ARGS,
# TWISTED_BENCH_ARGS and LOAD_BENCH_ARGS to one each (their other flags differ: --duration is
# ms for the STM runner, seconds for the others).
bench: build-release
	$(PYTHON) bench/stm_bench.py --builddir $(BENCH_BUILD) $(BENCH_ARGS) $(STM_BENCH_ARGS)
	$(PYTHON) bench/reactor_bench.py --builddir $(BENCH_BUILD) $(BENCH_ARGS) $(REACTOR_BENCH_ARGS)
	$(PYTHON) bench/twisted_bench.py --builddir $(BENCH_BUILD) $(BENCH_ARGS) $(TWISTED_BENCH_ARGS)
	$(PYTHON) bench/load_bench.py --builddir $(BENCH_BUILD) $(BENCH_ARGS) $(LOAD_BENCH_ARGS)

install: build
	$(MESON) install -C $(BUILD)

clean:
	rm -rf build build-release build-asan build-tsan build-fuzz
