# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow setup clean postgres

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@bash scripts/install_torch.sh $(PY)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -e ".[dev,gpu]"; else $(PY) -m pip install -q -e ".[dev]"; fi
	@touch $(STAMP)

run: $(STAMP)
	@$(VENV)/bin/guildtune up

# The tests run the storage suite on PostgreSQL too: its server comes from Debian's package.
postgres:
	@bash scripts/install_postgres.sh

test: $(STAMP) postgres
	@$(PY) -m pytest -q

test-slow: $(STAMP)
	@$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV)
