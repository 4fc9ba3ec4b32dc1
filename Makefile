# raygal: `make demo` runs the end-to-end job, `make test` runs the test suite.
# Both create .venv on first use (Python 3.11 or newer: PYTHON=python3.12 to choose another).
# torch is installed first and pinned (TORCH_SPEC); TORCH_INDEX_URL picks its build, e.g.
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu     (CPU only, small)
#   make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128   (CUDA 12.8)
# Left empty, pip takes torch from its configured index. constraints.txt pins the runtime
# dependencies; `make test` and `make bench` add the test extra, pinned by
# constraints-test.txt. `make demo` installs the runtime only.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
TEST_CONSTRAINTS ?= constraints-test.txt
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raygal-installed
TEST_STAMP := $(VENV)/.raygal-test-installed

.PHONY: demo test bench venv test-venv clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and \
		"raygal needs Python 3.11 or newer: run make with PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) $(TEST_CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -c $(TEST_CONSTRAINTS) -e ".[test]"
	touch $(TEST_STAMP)

venv: $(STAMP)

test-venv: $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/raygal demo $(ARGS)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests ran: failing"; exit 1; fi; exit $$rc

bench: $(TEST_STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
