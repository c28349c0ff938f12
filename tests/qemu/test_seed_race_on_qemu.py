"""The seed race on real QEMU 7.2: the drain-driven case gives it on every run.

030's test_overlapping_5 shows the race on some runs of a QEMU with the bug put
back; its drain-driven form (corpus/regressions/overlapping_5-drain-driven-*)
pins the interleaving with a commit at 1 byte/s that only drained sections
move, and gives it on every run, as the model says it does under every
schedule. The bugged QEMU builds come from ``make qemu-bug``
(scripts/qemu-with-bug.sh); where they are absent those tests skip, saying so.
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from harness.backends.qemu_binaries import TOOLS
from harness.case import load
from harness.corpus import judge

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RUNS = 5
#: bug form -> what the oracle says of QEMU with it put back, on every run
EXPECTED = {
    "stream-prepare-no-drain": "qemu-crash",     # the freed base is attached
    "stream-prepare-ref-only": "wrong-backing",  # the cut-out commit filter is installed again
}

pytestmark = pytest.mark.qemu


def drain_driven(bug: str):
    case = load(os.path.join(ROOT, "corpus", "regressions", f"overlapping_5-drain-driven-{bug}.json"))
    return replace(case, bugs=(), expect=None)


def build_of(bug: str) -> str:
    build = os.path.join(ROOT, ".qemu-bug", bug, "qemu-7.2", "build")
    if not os.path.isfile(os.path.join(build, "blockfuzz-bug")):
        pytest.skip(f"no QEMU with {bug} put back: `make qemu-bug` builds it (root, a few minutes)")
    return os.path.abspath(build)


def kinds_on_qemu(case, runs: int) -> list[str]:
    from harness.backends.qemu import QemuRunner
    with QemuRunner(timeout=10.0) as runner:
        return [judge(case, runner.run(case)).kind for _ in range(runs)]


@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_the_drain_driven_case_is_ok_on_debians_qemu(bug):
    assert kinds_on_qemu(drain_driven(bug), RUNS) == ["ok"] * RUNS


def use_build(monkeypatch, bug: str) -> None:
    monkeypatch.setenv("BLOCKFUZZ_QEMU_BUILD", build_of(bug))
    for variable, _, _ in TOOLS.values():      # iotests' variables would go first
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_the_drain_driven_case_gives_the_bug_on_every_run_of_a_qemu_with_it(bug, monkeypatch):
    use_build(monkeypatch, bug)
    assert kinds_on_qemu(drain_driven(bug), RUNS) == [EXPECTED[bug]] * RUNS


@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_the_pinned_model_finding_gives_the_bug_on_every_run_of_a_qemu_with_it(bug, monkeypatch):
    # the finding as the model recorded it (030's case, one schedule), pinned by
    # `blockfuzz pin`: no hand-made case in between
    from harness.pin import pin
    found = load(os.path.join(ROOT, "corpus", "regressions", f"overlapping_5-{bug}.json"))
    pinned = replace(pin(found).case, bugs=())
    use_build(monkeypatch, bug)
    assert kinds_on_qemu(pinned, RUNS) == [EXPECTED[bug]] * RUNS


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is no package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    return load_script("seed_race_on_qemu")


def test_from_an_empty_corpus_to_the_bug_on_every_qemu_run(monkeypatch, capsys):
    # scripts/seed_race_on_qemu.py: pct campaigns, their seed-bug findings pinned, each
    # pinned case on the bugged QEMU (every run) and on the fixed one (never)
    for bug in EXPECTED:
        build_of(bug)
    monkeypatch.delenv("BLOCKFUZZ_QEMU_BUILD", raising=False)   # the script sets it
    assert _script().main(["--seeds", "2", "--runs", "1000", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "stream-prepare-no-drain: 2/2 campaigns found use-after-free@bdrv_set_backing_hd; 2 of their "
        "findings pinned; 2/2 runs on the bugged QEMU gave qemu-crash; 2/2 runs on the fixed QEMU ok",
        "stream-prepare-ref-only: 2/2 campaigns found wrong-backing@backing:filter-left; 2 of their "
        "findings pinned; 2/2 runs on the bugged QEMU gave wrong-backing; 2/2 runs on the fixed QEMU ok"]


def test_the_script_says_how_to_build_what_it_needs(tmp_path, capsys):
    assert _script().main(["--builds", str(tmp_path)]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"stream-prepare-no-drain: no build in {tmp_path}/stream-prepare-no-drain/qemu-7.2/build: "
        "run `make qemu-bug`"]
