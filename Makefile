# brain — developer entry points. `make run` and `make test` work on a fresh clone: they create
# .venv on first use (torch is held to the local CPU build by constraints.txt).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt
PREFIX ?= /opt/brain
DESTDIR ?=
PURGE ?= 0
SECONDS_BENCH ?= 30

.PHONY: run test test-unit test-interop bench lint seed demo install uninstall clean help

help:
	@echo "make run           the daemon on the simulated robot (http://127.0.0.1:8080/)"
	@echo "make test          the whole test suite (unit, integration, interop, browser)"
	@echo "make bench         every benchmark in bench/, then one table (SECONDS_BENCH=$(SECONDS_BENCH))"
	@echo "make demo          the whole field plan on the simulator, with its report (out/)"
	@echo "make lint          ruff + mypy"
	@echo "make seed          retrain the seed policy in brain/models/seed (torch)"
	@echo "make install       install on a robot (root; DESTDIR and PREFIX honoured)"
	@echo "make uninstall     remove it again (data kept unless PURGE=1)"

$(STAMP): pyproject.toml tools/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[pi,train,dev]' -e ./tools
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/brain run --sim

test: test-interop test-unit  # pytest last: its summary closes the run

test-unit: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test-interop: $(STAMP)
	bash tests/interop/run.sh

bench: $(STAMP)
	$(BIN)/python bench/all.py --seconds $(SECONDS_BENCH)

demo: $(STAMP)
	$(BIN)/brain cycle --sim --out out/cycle-$$(date +%Y%m%dT%H%M%S)

lint: $(STAMP)
	$(BIN)/ruff check brain tools tests bench
	$(BIN)/mypy brain tools/brain_cloud

seed: $(STAMP)
	$(BIN)/python tools/train_seed.py --out brain/models/seed

install:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" bash scripts/install.sh

uninstall:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" PURGE="$(PURGE)" bash scripts/uninstall.sh

clean:
	rm -rf $(VENV) .venv-interop var build *.egg-info
