# Two commands do all set-up on a fresh machine:
#   make demo   synthetic data -> train -> int8 export -> folder scoring, with a report
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# constraints/cpu.txt pins torch to its CPU build (see that file). The serve extra is installed
# for the tests of `edgereg serve`.
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean

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

clean:
	rm -rf $(VENV) demo_out .pytest_cache
