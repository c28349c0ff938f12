"""``blockfuzz pin``: a finding made to show under every schedule."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from harness import pin
from harness.backends.reference import run_case
from harness.case import Command, Image, Write, load
from harness.choices import RandomSource
from harness.cli import main
from harness.corpus import judge
from tests.model.conftest import chain_case

REGRESSIONS = os.path.join(os.path.dirname(__file__), "..", "corpus", "regressions")
SEED_BUG = {  # the recorded finding of 030's test_overlapping_5, each form of the seed bug
    "stream-prepare-no-drain": "use-after-free@bdrv_set_backing_hd",
    "stream-prepare-ref-only": "wrong-backing@backing:filter-left",
}


def signatures(case, bugs, seeds):
    return {judge(case, run_case(case, RandomSource(s), bugs=bugs)).signature for s in range(seeds)}


def test_a_drain_driven_case_throttles_the_jobs_asked_and_idles_after_each_command():
    case = chain_case(4, [("block-commit", {"device": "drive0", "top-node": "node2", "speed": 1048576}),
                          ("block-stream", {"device": "node3", "speed": 5}),
                          ("block-job-set-speed", {"device": "drive0", "speed": 0}),
                          ("x-guest-write", {"offset": 0, "length": 512, "pattern": 1}),
                          ("x-wait-jobs",), ("x-step", {"count": 2})])
    assert pin.drain_driven(case, {0}).commands == (
        Command("block-commit", {"device": "drive0", "top-node": "node2", "speed": 1}), pin.STEP,
        Command("block-stream", {"device": "node3"}), pin.STEP,
        Command("x-guest-write", {"offset": 0, "length": 512, "pattern": 1}), pin.STEP)
    assert pin.drain_driven(case).commands == (        # every job, as scripts/drain_diff.py has it
        Command("block-commit", {"device": "drive0", "top-node": "node2", "speed": 1}), pin.STEP,
        Command("block-stream", {"device": "node3", "speed": 1}), pin.STEP,
        Command("x-guest-write", {"offset": 0, "length": 512, "pattern": 1}), pin.STEP)


def test_scaling_multiplies_images_writes_and_guest_writes_not_clusters():
    case = chain_case(2, [("x-guest-write", {"offset": 512, "length": 1024, "pattern": 7})])
    case = replace(case, images=(Image("node0", 1 << 20, 65536, (Write(65536, 131072, 3),)),
                                 Image("node1", 1 << 20)))
    big = pin.scaled(case, 4)
    assert [(i.size, i.cluster_size, i.writes) for i in big.images] == [
        (4 << 20, 65536, (Write(262144, 524288, 3),)), (4 << 20, 65536, ())]
    assert big.commands[0].arguments == {"offset": 2048, "length": 4096, "pattern": 7}


@pytest.mark.parametrize("bug", sorted(SEED_BUG))
def test_the_seed_bugs_recorded_finding_is_pinned_under_every_schedule(bug):
    found = load(os.path.join(REGRESSIONS, f"overlapping_5-{bug}.json"))
    result = pin.pin(found)
    assert result is not None
    assert (result.signature, result.throttled, result.change) == (
        SEED_BUG[bug], (0,), "data x1, node1's write 1638400 bytes at 15138816")
    # the commit at 1 byte/s with 1.56 MiB that ends where the image does; the stream free
    assert [c.execute for c in result.case.commands] == ["block-commit", "x-step", "block-stream", "x-step"]
    assert result.case.commands[0].arguments["speed"] == 1 and "speed" not in result.case.commands[2].arguments
    assert signatures(result.case, (bug,), 30) == {SEED_BUG[bug]}
    assert signatures(result.case, (), 30) == {"ok"}


def test_pin_writes_the_pinned_case_and_says_how_to_run_it_on_qemu(tmp_path, capsys):
    out = tmp_path / "pinned.json"
    assert main(["pin", os.path.join(REGRESSIONS, "overlapping_5-stream-prepare-no-drain.json"),
                 "-o", str(out), "--seeds", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "use-after-free@bdrv_set_backing_hd under all 5 schedules of the model, from variant 89: "
        "commands 0 (block-commit) at 1 byte/s, data x1, node1's write 1638400 bytes at 15138816, "
        "the loop idle after each command",
        f"wrote {out}",
        f"on QEMU: blockfuzz diff {out} --only qemu --repeat 20 [--qemu-build DIR]"]
    saved = json.loads(out.read_text())
    assert (saved["bugs"], saved["expect"]) == (["stream-prepare-no-drain"], {"verdict": "use-after-free"})
    assert saved["description"].startswith("pinned from overlapping_5-stream-prepare-no-drain.json: ")
    assert main(["replay", str(out), "--seeds", "20"]) == 0


def test_pin_says_when_no_variant_holds(capsys):
    # the stale header of the no-drain form needs a schedule the drains do not give
    path = os.path.join(REGRESSIONS, "overlapping_5-stream-prepare-no-drain-stale-header.json")
    assert main(["pin", path, "--max-variants", "3"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: no drain-driven variant gives its finding under every schedule (tried at most 3)"]


def test_pin_refuses_a_case_with_nothing_to_pin(capsys):
    path = os.path.join(REGRESSIONS, "overlapping_5-stream-prepare-no-drain.json")
    assert main(["pin", path, "--bugs", ""]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"blockfuzz: error: {path}: its run is ok; nothing to pin (give a finding, or --bugs "
        "to put its bug back)"]
    assert main(["pin", path, "--seeds", "0"]) == 2


def test_a_variant_holds_only_when_the_fixed_model_does_not_show_it_too():
    # QEMU 7.2's own commit use-after-free: no bug needed, so with a bug put back the
    # finding is not the bug's, and a variant showing it does not hold
    known = load(os.path.join(REGRESSIONS, "..", "known",
                              "commit-backing-file-too-long-frees-the-commit-filter.json"))
    signature = "use-after-free@commit_abort"
    assert pin.outcome(known, None, ("stream-prepare-no-drain",)).signature == signature
    assert pin.outcome(known, None, ()).signature == signature
    assert pin.holds(known, signature, (), 3)
    assert not pin.holds(known, signature, ("stream-prepare-no-drain",), 3)
