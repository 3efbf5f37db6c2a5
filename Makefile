# The two commands a new user needs: `make demo` and `make test` (both run setup first).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(BIN)/polymae run examples/image_mae.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not integration"

bench: setup
	$(BIN)/python bench/mae_step.py
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/points_tokenize.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs mlruns mlartifacts mlflow.db .pytest_cache
