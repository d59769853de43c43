# Every target brings the virtualenv up to date itself: on a fresh clone with only
# Python 3.11+ installed, `make test` or `make run` does all the set-up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: test lint typecheck pytest venv run bench clean loki-proto

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"

# Re-sync when the lock file changes (uv sync is quick when nothing changed).
$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --all-extras --python $(BIN)/python
	@touch $@

venv: $(VENV)/.synced

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

# The test command: lint, strict type check, then every test.
test: lint typecheck pytest

# The whole system on this machine: Redis, the load balancer on :8080, 3 Log API instances and
# the web page on :8000 (`aygolog up`); Ctrl-C stops it all. The logs are kept in
# ~/.local/share/aygolog (or $AYGOLOG_DATA_DIR; see the README). Options go in ARGS, e.g.
# make run ARGS="--instances 5 --lb-port 9080 --ui-port 9000", or ARGS="--ephemeral".
run: venv
	exec $(BIN)/aygolog up $(ARGS)

bench: venv
	$(BIN)/python benchmarks/store_ingest.py
	$(BIN)/python benchmarks/store_query.py

# Loki's push messages (no PyPI package ships them): regenerate the checked-in module after
# editing src/aygolog/ingest/proto/loki_push.proto.
loki-proto: venv
	$(BIN)/python -m grpc_tools.protoc -Isrc/aygolog/ingest/proto \
		--python_out=src/aygolog/ingest --pyi_out=src/aygolog/ingest \
		src/aygolog/ingest/proto/loki_push.proto

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
