# Two commands on a fresh machine: `make demo` and `make test`.
# Both build .venv by themselves; it is rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck pytest bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[sim,dev]'
	@touch $(STAMP)

# The whole loop on the example against the virtual board `demo` (its flash
# persists in ~/.cache/fbuild-watch/sim/demo.flash). Edit
# examples/blink-c3/src/version.h while it runs; q quits.
demo: $(STAMP)
	$(BIN)/fbuild watch examples/blink-c3 --port sim://demo

lint: $(STAMP)
	$(BIN)/ruff check fbuild_watch tests bench
	$(BIN)/ruff format --check fbuild_watch tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
