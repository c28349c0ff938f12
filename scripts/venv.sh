#!/usr/bin/env bash
# `make venv` (and so `make fuzz`, `make test`): .venv with blockfuzz and everything it
# uses installed; made again when pyproject.toml is newer than it or the interpreter
# chosen is another.
#
# The interpreter: $PYTHON when given (`make test PYTHON=python3.12`); otherwise the
# system's own CPython when it is 3.11 or newer, can make a venv and has its C headers
# (`make fast` compiles against them; Debian: python3-dev), before python3 from PATH. Distributions build their CPython with profile-guided and link-time
# optimization and link the interpreter statically; an interpreter built from source
# with configure's defaults (what pyenv does unless told otherwise) has neither, and
# runs the model a sixth slower, the same compiled model included (docs/measurements.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP=$VENV/.installed

# 3.11 or newer, with ensurepip (Debian: python3-venv); the system's also with Python.h
RECENT='import sys, ensurepip; sys.exit(sys.version_info < (3, 11))'
HEADERS='import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'

choose() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif /usr/bin/python3 -c "$RECENT" 2>/dev/null && /usr/bin/python3 -c "$HEADERS" 2>/dev/null; then
        echo /usr/bin/python3
    elif python3 -c "$RECENT" 2>/dev/null; then
        echo python3
    else
        echo "make venv: no Python 3.11 or newer that can make a venv (Debian: apt-get install python3-venv); name one with make PYTHON=..." >&2
        exit 2
    fi
}

chosen=$(choose)
python=$(command -v "$chosen") || { echo "make venv: PYTHON=$chosen is not a command" >&2; exit 2; }
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$(cat "$STAMP")" = "$python" ]; then
    exit 0
fi
echo "make venv: $VENV from $python ($("$python" -c 'import platform; print(platform.python_version())'))"
"$python" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# atheris is optional: everything but the atheris engine works without it.
"$VENV/bin/python" -m pip install -q 'atheris>=2.3,<4' || echo "atheris could not be installed: the atheris engine is unavailable"
# Cython is optional too: only `make fast` and its test need it.
"$VENV/bin/python" -m pip install -q 'cython>=3.0,<4' || echo "Cython could not be installed: make fast is unavailable"
echo "$python" > "$STAMP"
