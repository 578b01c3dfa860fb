# Every target sets up .venv itself, so a fresh clone needs only Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
# The torch requirement installed before the package. The default is the CPU wheel this
# project is developed against; elsewhere use e.g. `make test TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# pytest-xdist workers for `make test` and `make test-fast`: most tests wait on a child
# interpreter, a lock or a signal, so a third worker keeps both cores busy; tests on
# the one SLURM cluster run on one worker (tests/conftest.py). `make test WORKERS=0`
# runs them all in one process.
WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup
# Two stamps: the runtime (torch + the package, all the demo needs) and, on top of it,
# the test and dev tools that only `make test` / `make lint` and friends need.
RUNTIME_STAMP := $(VENV)/.orchestrator-fsm-runtime
STAMP := $(VENV)/.orchestrator-fsm-installed
# The benchmarks' own baseline (Sacred), on top of the dev tools; only `make bench`.
BENCH_STAMP := $(VENV)/.orchestrator-fsm-bench

.PHONY: install demo test test-fast lint unit diagrams bench graphviz chromium slurm clean

$(RUNTIME_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,dev,mlflow,tensorboard,report]"
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/orchestrator-fsm run

SOURCES := orchestrator_fsm tests examples benchmarks
MYPY := $(BIN)/mypy --strict orchestrator_fsm
# The report page's tests keep their screenshots in test-artifacts/ (git-ignored).
UNIT := ORCHESTRATOR_FSM_TEST_ARTIFACTS=$(CURDIR)/test-artifacts $(PYTEST) --durations=40

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(MYPY)

unit: $(STAMP) graphviz chromium slurm
	$(UNIT)

# ruff and mypy first (half a minute, and a type error shows before the tests start),
# then the tests. Running mypy beside them gains nothing: the tests keep both cores busy
# from start to end (2.00 cores in every minute of a run sampled from /proc/stat).
test: lint unit

# The quick loop while editing: ruff and every test not marked slow (no mypy, no
# multi-process fault matrix, fuzzers or benchmarks); `make test` still runs them all.
test-fast: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(PYTEST) -m "not slow"

# Graphviz renders the SVG diagram; installed when missing and apt-get is usable.
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) \
	      || echo "note: could not install graphviz; SVG tests will be skipped"; \
	  else echo "note: graphviz 'dot' not found; SVG tests will be skipped"; fi; }

# Headless Chromium opens the report pages in tests/test_report_page.py; installed when
# missing and apt-get is usable (Debian's package is `chromium`).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the report page tests will be skipped"; \
	  else echo "note: chromium not found; the report page tests will be skipped"; fi; }

# A real SLURM on localhost (munge, slurmctld, two slurmd emulating nodes n1 and n2) for
# tests/slurm; installed and started when root and apt-get allow, else the tests skip.
slurm:
	@bash tests/slurm/cluster.sh start

diagrams: $(STAMP)
	$(BIN)/orchestrator-fsm diagram --format mermaid --output diagrams/lifecycle.mmd
	$(BIN)/orchestrator-fsm diagram --format dot --output diagrams/lifecycle.dot
	@if command -v dot >/dev/null 2>&1; then \
	  $(BIN)/orchestrator-fsm diagram --format svg --output diagrams/lifecycle.svg; fi

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --json benchmarks/results.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info test-artifacts
