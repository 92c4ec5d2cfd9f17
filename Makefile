# The two set-up commands of the README:
#   make demo   - install, then run the demo end to end on the embedded broker
#   make test   - install everything the tests need, then run the full suite
#
# torch: TORCH_SPEC is installed before the package so that a CPU-only machine keeps
# the CPU wheel (on a GPU machine `make TORCH_SPEC=torch` takes the CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The full suite runs in this many pytest-xdist workers, one file per worker at a time (its module
# fixtures stay whole), each with its own embedded broker: most of the suite waits on brokers and roles.
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps lint test test-fast test-unit test-integration test-e2e demo broker bench-quality bench-quality-report bench-quality-away bench-movielens bench-movielens-loop bench-soak bench-stream bench-learner bench-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# Debian's docker-compose validates docker-compose.yml without a Docker engine; Debian's
# prometheus package brings promtool, which checks deploy/prometheus; libjemalloc2 is the malloc
# every role of the demo runs on (stream/ops/allocator.py).
system-deps:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (Debian package) to validate docker-compose.yml"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-compose >/dev/null \
	  || echo "warning: could not install docker-compose; its tests will be skipped"; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (Debian package) for promtool"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus >/dev/null \
	  || echo "warning: could not install prometheus; the promtool tests will be skipped"; }
	@[ -n "$$(find /usr/lib /usr/local/lib -name libjemalloc.so.2 2>/dev/null | head -n 1)" ] || { \
	  echo "installing libjemalloc2 (Debian package): every role of the demo runs on it"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libjemalloc2 >/dev/null \
	  || echo "warning: could not install libjemalloc2; the roles run on glibc's malloc"; }

# Lint, layer contracts (pyproject.toml [tool.importlinter]) and the types of models/.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The full suite: lint first (seconds), then every lane in TEST_WORKERS workers (0: in this one process);
# the 15 slowest tests are listed at the end.
test: install system-deps lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# The broker-free lane: no Kafka, no subprocess roles, nothing slow (under 2 minutes).
test-fast: install
	$(BIN)/python -m pytest -m "unit and not slow" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

test-e2e: install
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

# `make demo DEMO_ARGS="--arms ours,ours_online_only"` compares two agent variants online.
demo: install
	$(BIN)/recsys-stream demo $(DEMO_ARGS)

broker: install
	$(BIN)/recsys-stream broker

# Benchmarks (BENCHMARKS.md): each writes JSON (and a PNG) under bench-results/.
bench-quality: install
	$(BIN)/recsys-stream bench quality --json bench-results/quality.json --plot bench-results/quality.png

# The reported learning-quality run (BENCHMARKS.md): 10 seeds the defaults were not tuned on, long drift.
bench-quality-report: install
	$(BIN)/recsys-stream bench quality --seeds 1-10 --drift 0.2,0.7 --policies random,popularity,vw_squarecb,ours,ours_no_meta,ours_no_anti_forgetting,ours_online_only,ours_retained --json bench-results/quality-report.json --plot bench-results/quality-report.png

# Forgetting where the segment is away (BENCHMARKS.md): segment 0 leaves while the others' tastes move for good.
bench-quality-away: install
	$(BIN)/recsys-stream bench quality --seeds 1-10 --drift 0.2,0.7 --scenario away --policies vw_squarecb,ours,ours_no_anti_forgetting,ours_online_only,ours_retained --json bench-results/quality-away.json --plot bench-results/quality-away.png

MOVIELENS ?= ../shared/data/movielens-small
bench-movielens: install
	$(BIN)/recsys-stream bench movielens --data $(MOVIELENS) --json bench-results/movielens.json

bench-stream: install
	$(BIN)/recsys-stream bench stream --json bench-results/stream.json

bench-movielens-loop: install
	$(BIN)/recsys-stream bench movielens-loop --data $(MOVIELENS) --json bench-results/movielens-loop.json

bench-soak: install
	mkdir -p bench-results && $(BIN)/python -m bench.soak --duration 600 --rate 160 --json > bench-results/soak.json

bench-learner: install
	$(BIN)/recsys-stream bench learner --json bench-results/learner.json

bench-all: install
	$(BIN)/recsys-stream bench all --json bench-results/all.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache recsys-data bench-results
