# Vigil: `make run` sets everything up and starts the daemon; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# CPU build of torch from PyTorch's index unless a local copy is found; set TORCH_INDEX= to use PyPI's default.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CONFIG ?= config.toml

.PHONY: install install-test run test lint clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Vigil needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv"; apt-get update -q >/dev/null; apt-get install -y -q python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed: install it with 'sudo apt-get install python3-venv'"; exit 1; fi; }
	$(BIN)/python -m pip install --quiet --upgrade pip

# A torch wheel pip can already find without an index (a local wheelhouse in pip's find-links) is
# used as it is; otherwise the CPU build comes from PyTorch's index.
$(VENV)/.torch: $(BIN)/python
	@probe=$$(mktemp -d); \
	if $(BIN)/python -m pip download --quiet --no-deps --no-index torch==$(TORCH_VERSION) -d "$$probe" >/dev/null 2>&1; then \
	  rm -rf "$$probe"; $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION); \
	else \
	  rm -rf "$$probe"; $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) \
	    $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple); \
	fi
	@touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.test-installed

run: install
	$(BIN)/vigil run --config $(CONFIG)

# The system parts the suite runs against (PostgreSQL, Prometheus, Alertmanager, Chromium, systemd-nspawn): installed
# by tests/setup-system.sh as root with apt, else each missing one is named with the command that installs it.
test: install-test
	bash tests/setup-system.sh
	$(BIN)/ruff check detector training tests $(wildcard bench)
	$(BIN)/mypy detector training
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check detector training tests $(wildcard bench)
	$(BIN)/mypy detector training

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
