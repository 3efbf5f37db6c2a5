# The two commands a new user needs: `make demo` and `make test` (both run setup first).
VENV ?= .venv
BIN := $(VENV)/bin
UV = $(shell ls -d .tools/uv-*/bin/uv 2>/dev/null | tail -1)

.PHONY: setup lock lock-upgrade demo test test-fast learning bench lint clean

# Idempotent and quick when nothing changed: apt packages, uv, `uv sync --locked`, `polymae doctor`.
setup:
	bash scripts/setup.sh

# Regenerate uv.lock from pyproject.toml's ranges, keeping locked versions that still fit.
lock: setup
	$(UV) lock

# The same, moving every package to the newest version the ranges allow.
lock-upgrade: setup
	$(UV) lock --upgrade

demo: setup
	$(BIN)/polymae run examples/image_mae.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15 tests -m "not learning"

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not integration and not learning"

# The examples' full schedules, judged on held-out data (minutes each; results in bench/RESULTS.md).
learning: setup
	$(BIN)/python -m pytest -q -s tests -m learning

bench: setup
	$(BIN)/python bench/mae_step.py
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/points_tokenize.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs mlruns mlartifacts mlflow.db .pytest_cache
