# blockfuzz: `make fuzz` and `make test` each set up .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: fuzz test venv qemu qemu-bug bench fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# atheris is optional: everything but the atheris engine works without it.
	-$(PY) -m pip install -q 'atheris>=2.3,<4' || echo "atheris could not be installed: the atheris engine is unavailable"
	@# Cython is optional too: only `make fast` and its test need it.
	-$(PY) -m pip install -q 'cython>=3.0,<4' || echo "Cython could not be installed: make fast is unavailable"
	touch $@

venv: $(STAMP)

# Real QEMU 7.2 from Debian's packages, installed when missing and we are root.
qemu:
	@bash scripts/ensure-qemu.sh

# QEMU 7.2 built twice with the seed bug put back (scripts/qemu-with-bug.sh; root,
# about 3 minutes a form): tests/qemu/test_seed_race_on_qemu.py runs on them when present.
QEMU_BUG_FORMS := stream-prepare-no-drain stream-prepare-ref-only
qemu-bug:
	@for bug in $(QEMU_BUG_FORMS); do bash scripts/qemu-with-bug.sh $$bug .qemu-bug/$$bug || exit 1; done

fuzz: venv
	$(VENV)/bin/blockfuzz fuzz --engine pct --runs 30000 --corpus corpus --known corpus/known --findings findings

test: venv qemu
	$(PY) -m pytest --cov --cov-branch --cov-report=term --cov-fail-under=90 tests

# The model and the harness's hot modules compiled with Cython (about 1.6x the runs/s);
# used while current, ignored (with a warning) once a source changes.
fast: venv
	$(PY) -m pip install -q 'cython>=3.0,<4'
	$(PY) -m blockfuzz_fast

bench: venv
	$(VENV)/bin/blockfuzz bench
	$(PY) -m pytest benchmarks --benchmark-columns=min,median,iqr,ops,rounds

clean:
	rm -rf $(VENV) .fast .coverage htmlcov .hypothesis .benchmarks findings
