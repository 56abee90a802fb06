# edgefleet: `make test` runs every check from a clean clone; it sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgefleet-installed
PACKAGES := protocol durable apiclient tensors mqttlink agent controller converters simulator
POSTGRES_TEST_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: test demo lint typecheck imports pytest mosquitto chromium venv format clean

test: lint typecheck imports pytest

# The whole system on this machine: controller, embedded broker, SQLite, 50 simulated
# devices, two rollouts; then the dashboard until Ctrl-C.
demo: $(STAMP)
	$(BIN)/edgefleet demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $@

# Tests start their own Mosquitto; make sure the binary exists.
mosquitto:
	@if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "mosquitto missing: installing Debian's mosquitto package"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q mosquitto >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q mosquitto >/dev/null; }; \
	else \
	  echo "mosquitto missing and not root: broker tests will be skipped (apt-get install mosquitto)"; \
	fi

# Dashboard tests drive Debian's chromium headless; without it they are skipped.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "chromium missing: installing Debian's chromium package"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	else \
	  echo "chromium missing and not root: dashboard browser tests will be skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

imports: $(STAMP)
	$(BIN)/lint-imports

# PostgreSQL tests run when EDGEFLEET_TEST_POSTGRES_URL is set, or when PostgreSQL
# answers on 127.0.0.1:5432 (trust auth, database `test`). Two test processes: many tests
# wait on subprocesses, brokers and probation windows, so two at a time fit on 2 cores.
pytest: $(STAMP) mosquitto chromium
	@url="$${EDGEFLEET_TEST_POSTGRES_URL:-}"; \
	if [ -z "$$url" ] && $(BIN)/python -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2).close()' 2>/dev/null; then \
	  url="$(POSTGRES_TEST_URL)"; \
	fi; \
	echo "PostgreSQL for tests: $${url:-none}"; \
	EDGEFLEET_TEST_POSTGRES_URL="$$url" $(BIN)/pytest -n 2 --dist worksteal --durations=15

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
