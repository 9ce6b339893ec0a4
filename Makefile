# MobileNet Forge. The two commands a new user needs: `make conformance` and `make test`.
# Both set up .venv on first use (idempotent: a stamp file records the inputs it was built from).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PIP_VERSION := 26.3
# PyTorch's LiteRT exporter, litert-torch, in an environment of its own: it cannot be installed beside
# constraints.txt (README: LiteRT). The PyTorch worker starts it for each export.
LITERT_TORCH_VENV := .venv-litert-torch
LITERT_TORCH_STAMP := $(LITERT_TORCH_VENV)/.setup-stamp

.PHONY: setup generate check-generated test test-all conformance conformance-quick bench clean

setup: $(STAMP) $(LITERT_TORCH_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(LITERT_TORCH_STAMP): constraints-litert-torch.txt
	test -x $(LITERT_TORCH_VENV)/bin/python || $(PYTHON) -m venv $(LITERT_TORCH_VENV)
	$(LITERT_TORCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(LITERT_TORCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r constraints-litert-torch.txt
	touch $(LITERT_TORCH_STAMP)

generate: $(STAMP)
	$(PY) -m generators.generate

check-generated: $(STAMP)
	$(PY) -m generators.generate --check

# No pytest-xdist `-n 2` here: measured on the 2-core machine it did not shorten a run (most tests start a
# framework worker per core themselves), and each xdist worker would repeat the session fixtures' big runs.
test: check-generated $(LITERT_TORCH_STAMP)
	$(PY) -m pytest

test-all: check-generated $(LITERT_TORCH_STAMP)
	$(PY) -m pytest -m "slow or not slow"

# --litert: every variant in float, int8 for one variant per architecture (README: LiteRT); int8 for every
# variant is in `make test-all`.
conformance: $(STAMP) $(LITERT_TORCH_STAMP)
	$(VENV)/bin/mnforge conform --all --onnx --train --litert --report reports/

conformance-quick: $(STAMP) $(LITERT_TORCH_STAMP)
	$(VENV)/bin/mnforge conform --quick

bench: $(STAMP)
	$(PY) -m bench --json reports/bench.json $(BENCH_ARGS)

# Property-based fuzzing (README: Fuzzing): N random families through every framework; SHARD=K/S runs the
# K-th of S disjoint shards (a CI matrix). Minimal failing specs and summary.{json,md} go to reports/fuzz/.
N ?= 1000
SHARD ?= 1/1
SEED ?= 0
.PHONY: fuzz
fuzz: $(STAMP)
	$(PY) -m conformance.fuzz --n $(N) --shard $(SHARD) --seed $(SEED) --out reports/fuzz

clean:
	rm -rf $(VENV) $(LITERT_TORCH_VENV) reports .pytest_cache
