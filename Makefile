# edgefleet: `make test` runs every check from a clean clone; it sets itself up.
SHELL := /bin/bash
# Python subprocesses in the tests (agents, CLI calls, controllers) start hundreds of
# times: let them cache bytecode even where the environment says not to.
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgefleet-installed
PACKAGES := protocol durable apiclient tensors mqttlink agent controller converters simulator
POSTGRES_TEST_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: test demo lint typecheck imports pytest device-matrix mosquitto nats-server chromium nginx venv format clean

test: lint typecheck imports pytest device-matrix

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

# A device's install beside the development one: the agent extra, numpy < 2 and
# tflite-runtime, no ai_edge_litert and no server package; edgefleet itself as a built
# wheel, not editable, as a device gets it. tests/device runs there on TFLite models that
# tests/device/make_models.py builds in the main venv (a device has no converter).
DEVICE_VENV ?= .venv-device
DEVICE_STAMP := $(DEVICE_VENV)/.edgefleet-deps
DEVICE_MODELS := $(DEVICE_VENV)/models

$(DEVICE_STAMP): pyproject.toml
	@test -x $(DEVICE_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEVICE_VENV)/bin/python -m pip install --quiet '.[agent]' 'numpy<2' \
	  'tflite-runtime>=2.14,<2.15' 'pytest>=8' 'pytest-timeout>=2'
	@touch $@

device-matrix: $(STAMP) $(DEVICE_STAMP)
	$(DEVICE_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	@rm -rf build
	rm -rf $(DEVICE_MODELS) && $(BIN)/python -m tests.device.make_models $(DEVICE_MODELS)
	EDGEFLEET_DEVICE_MODELS=$(abspath $(DEVICE_MODELS)) \
	  $(DEVICE_VENV)/bin/pytest -c tests/device/pytest.ini tests/device

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

# The NATS cluster tests start their own nats-server nodes (Debian's nats-server package).
nats-server:
	@if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "nats-server missing: installing Debian's nats-server package"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q nats-server >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q nats-server >/dev/null; }; \
	else \
	  echo "nats-server missing and not root: NATS cluster tests will be skipped"; \
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

# Artifact mirror tests serve the exported layout with Debian's nginx, which they start on
# a free port; without it they are skipped (with CI=true they fail instead).
nginx:
	@if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "nginx missing: installing Debian's nginx package"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q nginx >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q nginx >/dev/null; }; \
	else \
	  echo "nginx missing and not root: artifact mirror tests will be skipped (apt-get install nginx)"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

imports: $(STAMP)
	$(BIN)/lint-imports

# PostgreSQL tests run when EDGEFLEET_TEST_POSTGRES_URL is set, or when PostgreSQL
# answers on 127.0.0.1:5432 (trust auth, database `test`). Four test processes on 2 cores:
# most tests wait on subprocesses, brokers and probation windows, and the suite keeps both
# cores about 90 % busy. Tests are handed out one at a time, those with the largest
# timeout first (tests/conftest.py), so the long fleet tests do not run last. Measured on
# an idle machine on 2026-12-04: 12:45 (CPU 23 min) before bytecode was cached, 11:57
# (CPU 20 min) after; a clean clone's `CI=true bash .ci/run` then took 13:11 in all,
# pytest 11:44 of it.
pytest: $(STAMP) mosquitto nats-server chromium nginx
	@url="$${EDGEFLEET_TEST_POSTGRES_URL:-}"; \
	if [ -z "$$url" ] && $(BIN)/python -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2).close()' 2>/dev/null; then \
	  url="$(POSTGRES_TEST_URL)"; \
	fi; \
	echo "PostgreSQL for tests: $${url:-none}"; \
	EDGEFLEET_TEST_POSTGRES_URL="$$url" $(BIN)/pytest -n 4 --dist load --maxschedchunk 1 --durations=15

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEVICE_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
