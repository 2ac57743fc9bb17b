# A thin wrapper over meson for the README's commands.  Everything is built
# against Debian's /usr/bin/python3 (a pyenv python3 may come first on PATH).
PYTHON  ?= /usr/bin/python3
BUILD   ?= build
MESON   ?= meson
SETUP    = $(MESON) setup --python.install-env=auto

.PHONY: all deps build check check-plain check-asan check-tsan demo bench install clean

all: build

deps:
	@sh scripts/install-deps.sh build

# Configure a build dir once ($(1): dir, $(2): extra options).
define configure
	@test -f $(1)/build.ninja || $(MESON) setup $(1) $(2)
endef

build: deps
	$(call configure,$(BUILD),)
	ninja -C $(BUILD)

check: deps
	@sh scripts/check.sh

demo: build
	$(PYTHON) bench/stm_bench.py --quick --builddir $(BUILD)

bench: build
	$(PYTHON) bench/stm_bench.py --builddir $(BUILD) $(BENCH_ARGS)

install: build
	$(MESON) install -C $(BUILD)

clean:
	rm -rf build build-asan build-tsan
