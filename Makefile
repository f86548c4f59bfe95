# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo simulate test test-slow bench

install:
	$(PIP) install torch==2.13.0 torchvision==0.28.0
	$(PIP) install -e .

install-test: install
	$(PIP) install -e ".[test]"

simulate: install
	$(PYTHON) main.py --mode simulate --lens face-deid --out results/psf

demo: install
	$(PYTHON) main.py --mode demo --out results/demo

test: install-test
	$(PYTHON) -m pytest -q

test-slow: install-test
	$(PYTHON) -m pytest -q -m slow

bench: install
	for b in benchmarks/bench_*.py; do $(PYTHON) $$b || exit 1; done
