# A thin wrapper over meson for the README's commands.  Everything is built
# against Debian's /usr/bin/python3 (a pyenv python3 may come first on PATH).
PYTHON  ?= /usr/bin/python3
BUILD   ?= build
# Benchmarks measure a release build (-O3, no asserts); tests use BUILD.
BENCH_BUILD ?= build-release
MESON   ?= meson

.PHONY: all deps deps-bench deps-demo build build-release check conformance demo bench stress install clean

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

# TinySTM, the STM baseline beyond libitm (bench/README.md): TINYSTM=DIR, a
# TinySTM tree built outside this repository (`make -C DIR`: DIR/lib/libstm.a),
# or, without it, such a tree at ../tinystm beside this checkout if it is
# built.  The benchmarks then have a tinystm variant; without one they build
# and run as ever.  Where TinySTM's own GCC ABI layer is built there too
# (`make -C DIR/abi/gcc`: DIR/abi/gcc/libitm.so), the STM runner also runs
# the -fgnu-tm binaries on it (tinystm-itm), beside libame-itm.
TINYSTM ?= $(patsubst %/lib/libstm.a,%,$(wildcard $(abspath ../tinystm)/lib/libstm.a))
TINYSTM_ABI = $(if $(TINYSTM),$(wildcard $(abspath $(TINYSTM))/abi/gcc/libitm.so))
# STAMP's applications (bench/stamp_bench.py): STAMP=DIR, a STAMP source
# tree fetched outside this repository, or ../stamp beside this checkout.
# Run against TinySTM when both trees are there; skipped otherwise.
STAMP ?= $(patsubst %/lib/tm.h,%,$(wildcard $(abspath ../stamp)/lib/tm.h))

build-release: deps-bench
	@test -f $(BENCH_BUILD)/build.ninja || \
	  $(MESON) setup $(BENCH_BUILD) -Dbuildtype=release
	@$(MESON) configure $(BENCH_BUILD) -Dtinystm=$(if $(TINYSTM),$(abspath $(TINYSTM)))
	ninja -C $(BENCH_BUILD)

# Every test, in the plain, ASan+UBSan and TSan builds, and a fuzz run.
check: deps
	@sh scripts/check.sh

# Twisted's application test suites (twisted.test, web, words, mail, names,
# conch, protocols, spread, application, runner) on EPollReactor, AMEReactor
# with io=thread and with io=inline, in one run: a per-suite table of
# passes, failures, errors and skips per reactor, and the tests that pass on
# epoll and not on ame (then it fails).  docs/twisted.md.  CONFORMANCE_ARGS
# go to the runner (e.g. --apps twisted.web.test, or --modules default to
# add the reactor suite; tests/python/run_twisted_conformance.py --help).
conformance: build
	PYTHONPATH=$(BUILD)/bindings:bindings $(PYTHON) \
	  tests/python/run_twisted_conformance.py --reactors epoll,ame,ame-inline \
	  --modules none --apps default --timeout 900 --out $(BUILD)/conformance-apps \
	  --json $(BUILD)/conformance-apps/summary.json $(CONFORMANCE_ARGS)

# The demo (bench/demo.py, under two minutes): examples/python/web.py, an
# ordinary twisted.web app, under `ame run --workers auto` (and 1, 2, 4, ...
# workers below that) against Twisted's default reactor in one process,
# loaded with `ame load`; a table and build/demo.png.  DEMO_ARGS go to it.
demo: deps-demo build-release
	$(PYTHON) bench/demo.py --builddir $(BENCH_BUILD) $(DEMO_ARGS)

# The benchmarks, each against its baselines in the same run (about 25
# minutes; BENCH_ARGS=--quick about 3; bench/README.md).  Each runner prints
# its tables and writes its results to $(BENCH_BUILD)/bench-NAME.json;
# bench/results.py then renders them all as bench/RESULTS.md, the one file
# of measured figures (date, machine, command, tables, bars).  A runner that
# fails does not stop the others; make bench then fails at the end.
# BENCH_ARGS go to every runner (e.g. --quick, which RESULTS.md marks as a
# quick run); STM_BENCH_ARGS, REACTOR_BENCH_ARGS, TWISTED_BENCH_ARGS,
# LOAD_BENCH_ARGS, SUPERVISOR_BENCH_ARGS, SHARED_BENCH_ARGS,
# TASKS_BENCH_ARGS and STAMP_BENCH_ARGS to one each (their other flags
# differ: --duration is ms for the STM runner, seconds for the others, and
# the STAMP runner has none: each application runs to its end).
BENCH_VARS = TINYSTM BENCH_ARGS STM_BENCH_ARGS REACTOR_BENCH_ARGS TWISTED_BENCH_ARGS \
	     LOAD_BENCH_ARGS SUPERVISOR_BENCH_ARGS SHARED_BENCH_ARGS \
	     TASKS_BENCH_ARGS STAMP STAMP_BENCH_ARGS
BENCH_CMD = $(strip make bench $(foreach v,$(BENCH_VARS),$(if $($(v)),$(v)='$($(v))')))
BENCH_OUT = --builddir $(BENCH_BUILD) --json-out $(BENCH_BUILD)/bench
bench: build-release
	@rm -f $(BENCH_BUILD)/bench-*.json
	-$(PYTHON) bench/stm_bench.py $(BENCH_OUT)-stm.json $(BENCH_ARGS) \
	  $(if $(TINYSTM_ABI),--tinystm $(abspath $(TINYSTM))) $(STM_BENCH_ARGS)
	-$(PYTHON) bench/reactor_bench.py $(BENCH_OUT)-reactor.json $(BENCH_ARGS) $(REACTOR_BENCH_ARGS)
	-$(PYTHON) bench/twisted_bench.py $(BENCH_OUT)-twisted.json $(BENCH_ARGS) $(TWISTED_BENCH_ARGS)
	-$(PYTHON) bench/load_bench.py $(BENCH_OUT)-load.json $(BENCH_ARGS) $(LOAD_BENCH_ARGS)
	-$(PYTHON) bench/supervisor_bench.py $(BENCH_OUT)-supervisor.json $(BENCH_ARGS) $(SUPERVISOR_BENCH_ARGS)
	-$(PYTHON) bench/shared_bench.py $(BENCH_OUT)-shared.json $(BENCH_ARGS) $(SHARED_BENCH_ARGS)
	-$(PYTHON) bench/tasks_bench.py $(BENCH_OUT)-tasks.json $(BENCH_ARGS) $(TASKS_BENCH_ARGS)
	-$(PYTHON) bench/stamp_bench.py $(BENCH_OUT)-stamp.json $(BENCH_ARGS) \
	  $(if $(STAMP),--stamp $(abspath $(STAMP))) \
	  $(if $(TINYSTM),--tinystm $(abspath $(TINYSTM))) $(STAMP_BENCH_ARGS)
	$(PYTHON) bench/results.py --builddir $(BENCH_BUILD) --command "$(BENCH_CMD)"

# Crash injection on the shared heap at length: 10,000 SIGKILLs of worker
# processes in the middle of transactions, recovered by the test and by the
# surviving workers (tests/stm/test_heap_crash.c; make check runs 200 of
# each).  AME_HEAP_KILLS=N to choose.
AME_HEAP_KILLS ?= 10000
stress: build
	AME_HEAP_KILLS=$(AME_HEAP_KILLS) $(BUILD)/tests/stm/run-stm-tests heap_crash
	AME_HEAP_KILLS=$(AME_HEAP_KILLS) $(BUILD)/tests/stm/run-stm-tests heap_crash_peer

install: build
	$(MESON) install -C $(BUILD)

clean:
	rm -rf build build-release build-asan build-tsan build-fuzz
