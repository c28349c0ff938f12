"""``blockfuzz replay``: exact output lines and exit codes, in process, on case
files written into ``tmp_path`` and run on the model."""
from __future__ import annotations

import json
import os

import pytest

from harness.backends import reference as reference_backend
from harness.cli import main
from harness.observation import Finding
from reference.bugs import BUGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = ", ".join(sorted(BUGS))


def case_dict(final_chain=("node2",), schedule=None, bugs=(), verdict=None) -> dict:
    """A full stream of node1 and node0 into node2 (the device's node)."""
    expect = {"final-chain": list(final_chain)}
    if verdict:
        expect["verdict"] = verdict
    return {
        "format": "blockfuzz-case/1",
        "images": [{"node-name": "node0", "format": "raw"}, {"node-name": "node1"},
                   {"node-name": "node2"}],
        "bugs": list(bugs),
        "commands": [{"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s"}},
                     {"execute": "x-wait-jobs"}],
        "schedule": schedule or {"policy": "random", "seed": 0},
        "expect": expect,
    }


def write(path, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def replay(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["replay", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_every_case_under_a_directory_in_sorted_order(tmp_path, capsys):
    b = write(tmp_path / "b.json", case_dict())
    a = write(tmp_path / "a" / "z.json", case_dict())
    write(tmp_path / "notes.txt", "not a case")
    write(tmp_path / ".tmp-1234.json", "{")
    write(tmp_path / ".hidden" / "x.json", "{")
    assert replay(capsys, str(tmp_path)) == (
        0, [f"PASS {a} (1 seed)", f"PASS {b} (1 seed)", "2 passed, 0 failed"], "")


def test_one_case_under_n_seeds(tmp_path, capsys):
    path = write(tmp_path / "c.json", case_dict(schedule={"policy": "random", "seed": 7}))
    assert replay(capsys, path, "--seeds", "3") == (0, [f"PASS {path} (3 seeds)", "1 passed, 0 failed"], "")


def test_a_difference_from_expect_fails_from_the_cases_own_seed(tmp_path, capsys):
    path = write(tmp_path / "c.json", case_dict(final_chain=["node2", "node1", "node0"],
                                                schedule={"policy": "random", "seed": 7}))
    assert replay(capsys, path, "--seeds", "3") == (1, [
        f"FAIL {path}: mismatch under 3/3 seeds (first: seed 7): "
        "final-chain: expected node2→node1→node0, observed node2",
        "0 passed, 1 failed"], "")


def test_verbose_prints_every_difference_of_the_first_failing_run(tmp_path, capsys):
    path = write(tmp_path / "c.json", case_dict(final_chain=["node0"], verdict="wrong-backing"))
    assert replay(capsys, path, "--verbose") == (1, [
        f"FAIL {path}: ok under 1/1 seeds (first: seed 0): "
        "verdict: expected wrong-backing, observed ok",
        "    verdict: expected wrong-backing, observed ok",
        "    final-chain: expected node0, observed node2",
        "0 passed, 1 failed"], "")


def test_a_recorded_schedule_replays_once_whatever_the_seeds(tmp_path, capsys):
    path = write(tmp_path / "c.json", case_dict(schedule={"choices": [1, 0, 2]}))
    assert replay(capsys, path, "--seeds", "5") == (
        0, [f"PASS {path} (recorded choices)", "1 passed, 0 failed"], "")


def test_a_finding_under_some_seeds_counts_them_and_names_the_first(tmp_path, capsys, monkeypatch):
    real = reference_backend.run_case

    def run_case(case, source=None, *, bugs=None, trace=False):
        observation = real(case, source, bugs=bugs)
        if source.seed in (4, 6):
            observation.finding = Finding("use-after-free", "node 'node1' was freed", "here", 0)
        return observation

    monkeypatch.setattr(reference_backend, "run_case", run_case)
    path = write(tmp_path / "c.json", case_dict(schedule={"policy": "random", "seed": 3}))
    assert replay(capsys, path, "--seeds", "5") == (1, [
        f"FAIL {path}: use-after-free under 2/5 seeds (first: seed 4): node 'node1' was freed",
        "    verdicts: ok 3 (first: seed 3), use-after-free 2 (first: seed 4)",
        "0 passed, 1 failed"], "")


def test_bugs_replaces_the_cases_bugs(tmp_path, capsys):
    """The seed bug's regression case passes as recorded and fails on the fixed model."""
    source = os.path.join(REPO, "corpus", "regressions", "overlapping_5-stream-prepare-no-drain.json")
    path = write(tmp_path / "uaf.json", open(source).read())
    assert replay(capsys, path) == (0, [f"PASS {path} (recorded choices)", "1 passed, 0 failed"], "")
    assert replay(capsys, path, "--bugs", "") == (1, [
        f"FAIL {path}: ok under the recorded choices: verdict: expected use-after-free, observed ok",
        "0 passed, 1 failed"], "")


def test_pass_and_fail_are_counted_together(tmp_path, capsys):
    good = write(tmp_path / "1.json", case_dict())
    bad = write(tmp_path / "2.json", case_dict(final_chain=["node0"]))
    assert replay(capsys, str(tmp_path)) == (1, [
        f"PASS {good} (1 seed)",
        f"FAIL {bad}: mismatch under 1/1 seeds (first: seed 0): "
        "final-chain: expected node0, observed node2",
        "1 passed, 1 failed"], "")


def test_an_empty_directory_has_nothing_to_fail(tmp_path, capsys):
    assert replay(capsys, str(tmp_path)) == (0, ["0 passed, 0 failed"], "")


# --- bad input: one line on stderr, exit 2, nothing run -------------------------------

def test_a_missing_path(tmp_path, capsys):
    path = str(tmp_path / "nope.json")
    assert replay(capsys, path) == (2, [], f"blockfuzz: error: {path}: no such file or directory\n")


def test_an_unknown_bug_id_names_it_and_the_known_ones(tmp_path, capsys):
    path = write(tmp_path / "c.json", case_dict())
    assert replay(capsys, path, "--bugs", f"{sorted(BUGS)[0]},nope") == (
        2, [], f"blockfuzz: error: --bugs: unknown bug id 'nope'; known: {KNOWN}\n")


def test_a_bad_case_file_stops_everything_before_running(tmp_path, capsys):
    write(tmp_path / "a.json", case_dict())
    bad = write(tmp_path / "b.json", "{")
    code, out, err = replay(capsys, str(tmp_path))
    assert (code, out, err.count("\n")) == (2, [], 1)
    assert err.startswith(f"blockfuzz: error: {bad}: $: expected JSON")


def test_a_case_with_an_unknown_bug_is_bad_input(tmp_path, capsys):
    path = write(tmp_path / "c.json", case_dict(bugs=["nope"]))
    code, out, err = replay(capsys, path)
    assert (code, out) == (2, [])
    assert err.startswith(f"blockfuzz: error: {path}: $.bugs[0]: unknown bug 'nope'")


@pytest.mark.parametrize("seeds", ["0", "-2"])
def test_seeds_must_be_positive(tmp_path, capsys, seeds):
    path = write(tmp_path / "c.json", case_dict())
    assert replay(capsys, path, "--seeds", seeds) == (
        2, [], f"blockfuzz: error: --seeds: expected a positive number of seeds, got {seeds}\n")


def test_every_case_of_the_repositorys_corpus_replays_to_its_expectation(capsys):
    """The regressions pin model fixes (QEMU's replies, letter for letter) and the
    seed bug's verdicts: each one failing here is a fix undone."""
    import glob
    cases = glob.glob(os.path.join(REPO, "corpus", "**", "*.json"), recursive=True)
    code, lines, _ = replay(capsys, os.path.join(REPO, "corpus"), "--seeds", "3")
    assert [line for line in lines if not line.startswith("PASS")] == [f"{len(cases)} passed, 0 failed"]
    assert code == 0
