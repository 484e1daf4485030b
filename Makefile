# The only place project commands are spelled out. `scripts/test.sh` is what CI runs.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install format lint typecheck test test-slow serve bench all

install:
	bash scripts/setup.sh

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy model/tracker service

test:
	bash scripts/test.sh

test-slow:
	bash scripts/test.sh -m slow

serve:
	bash scripts/serve.sh

bench: install
	$(BIN)/python bench/bench_tracker.py
	$(BIN)/python bench/bench_model.py

all: lint typecheck test
