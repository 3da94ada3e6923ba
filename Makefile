# The only commands a newcomer needs. Everything is installed into .venv by these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-browser test-brokers test-contract lint format schema bench bench-growth bench-console bench-reports bench-reprocess faults lock audit clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.run-deps

## run: serve on http://127.0.0.1:8080 (embedded Postgres under ./.data/ unless DATABASE_URL is set)
run: $(VENV)/.run-deps
	WEBHOOK_ALLOWED_NETWORKS=$${WEBHOOK_ALLOWED_NETWORKS:-127.0.0.0/8,::1} API_AUTH=$${API_AUTH:-false} \
		SPOOL_DIR=$${SPOOL_DIR:-.data/spool} SILENCE_TIMEOUT_S=$${SILENCE_TIMEOUT_S:-30} \
		$(BIN)/sms-receiver serve --sandbox

## test: the whole suite against a real Postgres (embedded unless TEST_DATABASE_URL is set)
test: $(VENV)/.dev-deps
	$(BIN)/python -m pytest -q

## test-browser: the console in Debian's Chromium (installed if missing), against a real serve
test-browser: $(VENV)/.dev-deps
	@command -v chromium >/dev/null || apt-get install -y chromium \
		|| { apt-get update && apt-get install -y chromium; } || sudo apt-get install -y chromium
	$(BIN)/python -m pytest -q -m browser tests/browser

## test-brokers: event destinations against real NATS JetStream and RabbitMQ servers (Debian's,
## installed if missing), each started on loopback ports of its own for the run, then stopped
test-brokers: $(VENV)/.dev-deps
	@{ command -v nats-server >/dev/null && command -v rabbitmq-server >/dev/null; } \
		|| apt-get install -y nats-server rabbitmq-server \
		|| { apt-get update && apt-get install -y nats-server rabbitmq-server; } \
		|| sudo apt-get install -y nats-server rabbitmq-server
	$(BIN)/python -m pytest -q -m brokers tests/brokers

## test-contract: schemathesis (every check, seeded ids, its stateful phase) and a client generated
## from /openapi.json, against a real serve --sandbox with API keys on (CONTRACT_EXAMPLES: 100)
test-contract: $(VENV)/.dev-deps
	$(BIN)/python -m pytest -q -m contract tests/contract

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev-deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## schema: write migrations/schema.sql, the schema as the migrations leave it (pg_dump)
schema: $(VENV)/.dev-deps
	$(BIN)/python -m tests.schema

## lock: pin the runtime dependencies (requirements.lock) from a fresh install of the project
lock: | $(BIN)/python
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet .
	{ echo "# Runtime dependencies as installed from pyproject.toml: make lock writes this."; \
	  .venv-lock/bin/python -m pip freeze --exclude sms-receiver; } > requirements.lock
	rm -rf .venv-lock

## audit: known vulnerabilities of the locked dependencies (pip-audit, in a venv of its own)
audit:
	test -x .venv-audit/bin/pip-audit || \
		{ $(PYTHON) -m venv .venv-audit && .venv-audit/bin/python -m pip install --quiet pip-audit; }
	.venv-audit/bin/pip-audit --strict --no-deps --disable-pip -r requirements.lock

## bench: the callback path against its ceilings (wrk, ~5 minutes); results in bench/results/
## (BENCH_BEFORE=REV also runs C on that revision's code, interleaved: a change's cost)
bench: $(VENV)/.dev-deps
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	@{ command -v nats-server >/dev/null && command -v rabbitmq-server >/dev/null; } \
		|| apt-get install -y nats-server rabbitmq-server \
		|| sudo apt-get install -y nats-server rabbitmq-server
	$(BIN)/python bench/run.py $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE))

## bench-growth: C against an empty database and against 10M events (G); status query at size (~8 minutes)
bench-growth: $(VENV)/.dev-deps
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	$(BIN)/python bench/growth.py $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE))

## bench-reports: the database's time per report of a message and per orphan, this revision and
## the one before tenants (BENCH_BEFORE=REV for another), interleaved (~1 minute)
bench-reports: $(VENV)/.dev-deps
	$(BIN)/python bench/report_cost.py $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE))

## bench-reprocess: correction runs (dry run, apply) over 100,000 raw callbacks of its own fill,
## and F's p99 beside an apply (~4 minutes)
bench-reprocess: $(VENV)/.dev-deps
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	$(BIN)/python bench/reprocess.py

## bench-console: the console's pages with 100,000 messages stored, one request at a time (~2 minutes)
bench-console: $(VENV)/.dev-deps
	$(BIN)/python bench/console.py

## faults: one fault at a time under load; acknowledged = stored = delivered (~3 minutes)
faults: $(VENV)/.dev-deps
	@{ command -v nats-server >/dev/null && command -v rabbitmq-server >/dev/null; } \
		|| apt-get install -y nats-server rabbitmq-server \
		|| { apt-get update && apt-get install -y nats-server rabbitmq-server; } \
		|| sudo apt-get install -y nats-server rabbitmq-server
	$(BIN)/python faults/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
