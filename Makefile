# meshctl: `make demo` (main job) and `make test` (the suite) do all the set-up themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system demo lab lab-down serve test test-fast lint bench clean

system:
	bash scripts/setup-system.sh

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev,stacks]'
	@if [ -f stacks/package.json ]; then npm ci --prefix stacks --no-audit --no-fund --loglevel=error; fi
	touch $@

setup: system $(BIN)/.installed

# the main job: a real mesh in network namespaces measures itself, reroutes, drains a dead region
# (needs root); KEEP=1 leaves it running to explore with meshctl
demo: setup
	$(BIN)/meshctl lab demo $(if $(KEEP),--keep)

lab: setup
	$(BIN)/meshctl lab up

lab-down: setup
	$(BIN)/meshctl lab down

serve: setup
	$(BIN)/meshctl serve

test: setup
	bash scripts/setup-system.sh --test
	bash scripts/ensure-postgres.sh
	@# two workers for what runs on loopback; then the network-namespace labs, alone (their timings matter)
	$(BIN)/pytest -q -p no:cacheprovider -m "not lab" -n 2
	$(BIN)/pytest -q -p no:cacheprovider -m lab

test-fast: setup
	MESH_TEST_BACKENDS=sqlite $(BIN)/pytest -q -x -m "not lab"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check meshctl probes tests bench
	$(BIN)/mypy
	$(BIN)/mypy stacks/meshstack stacks/policy/rules.py
	$(BIN)/lint-imports

bench: setup
	bash scripts/setup-system.sh --bench
	$(BIN)/python -m bench.bench_routes
	$(BIN)/python -m bench.bench_queries
	$(BIN)/python -m bench.bench_ingest

# the agent's release artifacts (stacks/README.md): the wheel of this repository, the wheelhouse of
# its `agent` extra's dependencies for Ubuntu 24.04 (CPython 3.12, x86_64 and aarch64) with
# requirements-agent.txt (--hash lines), and dist/SHA256SUMS
.PHONY: agent-wheel
agent-wheel: $(BIN)/.installed
	rm -f dist/meshctl-*.whl dist/meshctl-agent-wheelhouse-*.tar.gz
	$(BIN)/pip wheel -q --no-deps . -w dist/
	$(BIN)/python stacks/tools/agent_wheelhouse.py --wheel dist/meshctl-*.whl --out dist --python 3.12 --arch x86_64 --arch aarch64

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
