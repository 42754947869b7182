# Two commands on a fresh machine: `make demo` and `make test`.
# Both build .venv by themselves; it is rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv venv-labgrid demo test test-labgrid lint typecheck pytest bench clean

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
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest test-labgrid

# The labgrid extra in a venv of its own: labgrid brings pyserial-labgrid, a
# fork installed as `serial` over pyserial, which must never reach .venv. Its
# tests run here, with a few of ours that deploy over RFC 2217 on the fork.
LG_VENV := .venv-labgrid
LG_STAMP := $(LG_VENV)/.installed
LABGRID_TESTS := tests/test_labgrid.py tests/test_remote_watch.py \
	tests/test_sim_serve.py::test_rfc2217_carries_resets_and_the_baud \
	tests/test_port_lending.py::test_second_client_of_an_rfc2217_server_is_port_busy

venv-labgrid: $(LG_STAMP)

$(LG_STAMP): pyproject.toml
	@test -x $(LG_VENV)/bin/python || $(PYTHON) -m venv $(LG_VENV)
	$(LG_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LG_VENV)/bin/python -m pip install --quiet -e '.[sim,dev,labgrid]'
	@# pip writes pyserial's and the fork's files in no fixed order: test on the fork's
	$(LG_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps pyserial-labgrid
	@touch $(LG_STAMP)

test-labgrid: $(LG_STAMP)
	$(LG_VENV)/bin/pytest -q -p no:labgrid $(LABGRID_TESTS)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(LG_VENV) .mypy_cache .ruff_cache .pytest_cache
