# blockfuzz: `make fuzz` and `make test` each set up .venv on a fresh machine.
PYTHON ?=
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: fuzz test venv qemu qemu-bug bench fast clean

# .venv, made (again) when missing, older than pyproject.toml, or of another interpreter:
# the system's own CPython 3.11+ when it can make one and has its headers (built with
# PGO and LTO), else python3; `make PYTHON=...` names another (scripts/venv.sh says why).
venv:
	@PYTHON='$(PYTHON)' bash scripts/venv.sh

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

# The model and the harness's hot modules compiled with Cython, profile-guided with gcc
# (about 4x the runs/s);
# used while current, ignored (with a warning) once a source changes.
fast: venv
	$(PY) -m pip install -q 'cython>=3.0,<4'
	$(PY) -m blockfuzz_fast

bench: venv
	$(VENV)/bin/blockfuzz bench
	$(PY) -m pytest benchmarks --benchmark-columns=min,median,iqr,ops,rounds

clean:
	rm -rf $(VENV) .fast .coverage htmlcov .hypothesis .benchmarks findings
