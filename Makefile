# Two commands do all set-up on a fresh machine:
#   make demo   synthetic data -> train -> int8 export -> folder scoring, with a report
#   make test   the test suite
#   make mutants  mutation testing of the modules that compute readings (slow; docs/mutants.md)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# constraints/cpu.txt pins torch to its CPU build (see that file). The serve extra is installed
# for the tests of `edgereg serve`.
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench mutants venv clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=23.1" "setuptools>=68" wheel
	$(PIP) install --quiet -c constraints/cpu.txt -e '.[train,serve,dev,cluster,lab,bench]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m edgereg demo --out demo_out

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Mutation testing (docs/mutants.md): hours on 2 cores, so not part of `make test`.
# MUTANTS_ARGS, e.g. "edgereg/core/reduce.py --jobs 2", picks modules and parallelism.
mutants: $(STAMP)
	nice -n 10 $(PY) tools/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mutmut

# ruff on all Python code and mypy on the runtime package (settings in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check edgereg training export tests benchmarks tools firmware_examples
	$(VENV)/bin/mypy
