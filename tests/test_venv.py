"""`make venv` (scripts/venv.sh): which interpreter .venv comes from, and when it is
made again. Each test runs a copy of the script in a scratch tree, never the
checkout's own .venv."""
from __future__ import annotations

import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scratch(tmp_path, stamp: str | None) -> str:
    """A tree with the script, a pyproject.toml, and a .venv stamped ``stamp`` after it."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(REPO, "scripts", "venv.sh"), tmp_path / "scripts" / "venv.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    if stamp is not None:
        (tmp_path / ".venv").mkdir()
        (tmp_path / ".venv" / ".installed").write_text(stamp + "\n")
        later = os.path.getmtime(tmp_path / "pyproject.toml") + 10
        os.utime(tmp_path / ".venv" / ".installed", (later, later))
    return str(tmp_path / "scripts" / "venv.sh")


def run(script: str, python: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=120)


def system_python_qualifies() -> bool:
    """The rule, stated apart from the script: Debian's own CPython, 3.11 or newer, with
    ensurepip and with the C headers that `make fast` compiles against."""
    probe = ("import os, sys, sysconfig, ensurepip; print(sys.version_info >= (3, 11) and "
             "os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))")
    try:
        out = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True)
    except OSError:
        return False
    return out.stdout.strip() == "True"


def test_a_venv_of_the_chosen_interpreter_newer_than_pyproject_is_left_alone(tmp_path):
    expected = "/usr/bin/python3" if system_python_qualifies() else shutil.which("python3")
    script = scratch(tmp_path, expected)
    done = run(script, None)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert sorted(os.listdir(tmp_path / ".venv")) == [".installed"]


def test_python_names_the_interpreter_and_wins(tmp_path):
    """A venv of the interpreter ``PYTHON`` names is current, though the rule alone
    would never pick that path (a link of the scratch tree's own)."""
    own = tmp_path / "bin" / "python3-mine"
    own.parent.mkdir()
    own.symlink_to(shutil.which("python3"))
    script = scratch(tmp_path, str(own))
    done = run(script, str(own))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_an_unknown_python_is_one_line_and_exit_2(tmp_path):
    script = scratch(tmp_path, None)
    done = run(script, "python3.99-not-here")
    assert done.returncode == 2
    assert done.stderr == "make venv: PYTHON=python3.99-not-here is not a command\n"
    assert not (tmp_path / ".venv").exists()


def test_the_checkouts_venv_records_its_interpreter():
    """The .venv this suite runs in, when `make venv` made it, names the interpreter it
    was made from: the one under this very process."""
    import sys

    import pytest
    stamp = os.path.join(REPO, ".venv", ".installed")
    if sys.prefix == sys.base_prefix or not os.path.exists(stamp):
        pytest.skip("not running in a .venv that `make venv` made")
    recorded = open(stamp).read().strip()
    assert os.path.realpath(recorded) == os.path.realpath(sys._base_executable)
