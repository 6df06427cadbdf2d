# The two quickstart commands (README): `make demo` and `make test`. Each does its own set-up.
# `install` takes the dev extra, which includes every optional extra (tracking toolkit, integrations, plots).
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install demo test test-extra lint docs bench

install:
	$(PIP_INSTALL) -e ".[dev]"

demo: install
	$(PYTHON) examples/finetune_rgbt.py

test: install
	$(PYTHON) -m ruff check .
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --quiet --site-dir /tmp/srft_peft_site
	$(PYTHON) -m pytest -q

# what `make test` leaves out: slow checks, multi-process runs (accelerate launch / torchrun) and child processes
test-extra: install
	$(PYTHON) -m pytest -q -m "slow or distributed or subprocess"

bench: install
	$(PYTHON) benchmarks/bench_overhead.py
