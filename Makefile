# rest: Reinforced Self-Training as a Prefect pipeline. `make run` and `make test` set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/numbers.yaml
RUN ?= runs/numbers
ARGS ?=

# Offline and quiet by default: no Prefect analytics, no hub or comet calls unless the user asks for them.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export COMET_AUTO_LOG_ENV_DETAILS ?= false
export COMET_ERROR_TRACKING_ENABLE ?= false

.PHONY: setup run grow improve eval inspect test test-unit data clean

setup: $(VENV)/.installed

# Re-installs when the pins change. torch==2.13.0 is pinned so pip takes the local CPU wheel (see constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

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

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration" $(ARGS)

data: setup  ## rebuild data/numbers/*.parquet (deterministic; the result is committed)
	$(BIN)/python data/build_numbers.py

clean:
	rm -rf $(VENV) .prefect runs *.egg-info
