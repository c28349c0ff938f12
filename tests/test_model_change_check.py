"""scripts/model_change_check.py: the cases a model change affects, by the model of
another revision run beside this one."""
import importlib.util
import os
import subprocess

import pytest

from harness.case import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the last commit before the unnamed stream filter's filename fix
BEFORE_FIX = "4fb4341"
FIXED_CASE = os.path.join(REPO, "corpus", "regressions",
                          "qemu-fidelity-unnamed-stream-filter-named-by-json-at-insertion.json")


def script():
    spec = importlib.util.spec_from_file_location(
        "model_change_check", os.path.join(REPO, "scripts", "model_change_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has_revision(revision: str) -> bool:
    return subprocess.run(["git", "-C", REPO, "cat-file", "-e", revision + "^{commit}"],
                          capture_output=True).returncode == 0


def test_qemus_side_is_read_at_the_differing_commands_only():
    side = script().side
    now = ["ok", "busy", "ok"]
    then = ["ok", "not found", "ok"]
    assert side(["x", "busy", "y"], now, then, [1]) == "now"
    assert side(["x", "not found"], now, then, [1]) == "then"
    assert side(["ok", "gone", "ok"], now, then, [1]) == "neither"
    assert side(["ok"], now, then, [1]) == "neither"          # QEMU stopped before it


@pytest.mark.skipif(not has_revision(BEFORE_FIX), reason="a clone without the history")
def test_the_other_revisions_model_runs_in_a_child_and_the_fix_shows_where_it_acts():
    m = script()
    case = load(FIXED_CASE)
    theirs = m.other_revision_outcomes(BEFORE_FIX, [case])
    found = m.affected([case], theirs)
    assert [(i, where) for i, _, _, _, where in found] == [(0, [3])]      # command 2
    _, _, now, then, _ = found[0]
    assert now[3] == {"error": {"class": "GenericError", "desc": "Can't find 'node3.qcow2' in the backing chain"}}
    assert then[3]["error"]["desc"].startswith("Node '#block")
    assert m.describe([0, 3]) == "the headers, command 2"


#: the last commit before the backing attach's refresh came before its drain's poll
BEFORE_ATTACH_FIX = "0a6f0e6"
ATTACH_CASE = os.path.join(REPO, "corpus", "regressions",
                           "qemu-fidelity-backing-attach-refreshes-before-the-drain-polls.json")


@pytest.mark.skipif(not has_revision(BEFORE_ATTACH_FIX), reason="a clone without the history")
def test_a_change_that_moves_only_a_header_string_is_found_in_the_headers():
    m = script()
    case = load(ATTACH_CASE)
    found = m.affected([case], m.other_revision_outcomes(BEFORE_ATTACH_FIX, [case]))
    assert [where for _, _, _, _, where in found] == [[0]]
    _, _, now, then, _ = found[0]
    assert now[0]["node7.qcow2"] == "node6.qcow2" and then[0]["node7.qcow2"].startswith("json:")


def test_a_qemu_that_cannot_run_is_one_line_and_exit_2(monkeypatch, capsys):
    import sys

    from harness.backends import qemu
    from harness.errors import QemuError
    m = script()

    class NoQemu:
        def __init__(self, *a, **k):
            raise QemuError("qemu-system-x86_64 not found: run `make qemu`")
    monkeypatch.setattr(qemu, "QemuRunner", NoQemu)
    monkeypatch.setattr(m, "other_revision_outcomes", lambda revision, cases: [[None]] * len(cases))
    monkeypatch.setattr(sys, "argv", ["model_change_check.py", "--against", "HEAD", "--cases", "2"])
    assert m.main() == 2
    err = capsys.readouterr().err
    assert err == "model_change_check: qemu-system-x86_64 not found: run `make qemu`\n"
