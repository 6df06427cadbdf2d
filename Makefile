# The two quickstart commands (README): `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install demo test test-slow lint docs bench

install:
	$(PIP_INSTALL) -e ".[dev]"

demo: install
	$(PYTHON) examples/finetune_rgbt.py

test: install
	$(PYTHON) -m ruff check .
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --quiet --site-dir /tmp/srft_peft_site
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

bench: install
	$(PYTHON) benchmarks/bench_overhead.py
