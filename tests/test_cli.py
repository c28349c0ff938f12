"""The command line as a whole: what every subcommand's parser shares."""
from __future__ import annotations

import os

import pytest

from harness.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE = os.path.join(REPO, "corpus", "seeds", "030", "test_overlapping_5.json")
HINT = " (options are spelt out in full: `blockfuzz COMMAND --help` lists them)"


@pytest.mark.parametrize("argv, unrecognized", [
    # --qemu is not --qemu-trace: taken as it, diff would run whatever QEMU is on PATH
    (["diff", CASE, "--qemu", "/opt/qemu/bin"], "--qemu /opt/qemu/bin"),
    (["replay", CASE, "--seed", "3"], "--seed 3"),          # --seeds
    (["fuzz", "--engine", "random", "--run", "5"], "--run 5"),   # --runs
    (["bench", "--rep", "2"], "--rep 2"),                   # --repeat
])
def test_an_abbreviated_option_is_bad_input_not_another_option(capsys, argv, unrecognized):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "", f"blockfuzz: error: blockfuzz: unrecognized arguments: {unrecognized}{HINT}\n")


def test_options_spelt_out_in_full_still_parse(capsys):
    assert main(["replay", CASE, "--seeds", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 0 failed"
