"""scripts/qemu_bisect_run.py: one step of ``git bisect run`` over a QEMU tree, its
exit codes as git reads them (0 good, 1 bad, 125 skip, 255 stop)."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.qemu.test_seed_race_on_qemu import ROOT, build_of, load_script

CASE = os.path.join(ROOT, "corpus", "regressions",
                    "overlapping_5-drain-driven-stream-prepare-no-drain.json")


def script():
    return load_script("qemu_bisect_run")


def test_a_commit_without_a_meson_build_is_skipped(tmp_path, capsys):
    assert script().main(["--build", str(tmp_path), CASE]) == 125
    assert capsys.readouterr().err == (
        f"qemu_bisect_run: skipping this commit: {tmp_path}: no build.ninja (configure the tree "
        "with meson first; QEMU < 5.2 is not supported)\n")


def test_a_commit_that_does_not_build_is_skipped(tmp_path, capsys):
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    (tmp_path / "build.ninja").write_text(
        "rule fail\n  command = false\n"
        "build qemu-system-x86_64: fail\nbuild qemu-img: fail\nbuild qemu-io: fail\n")
    assert script().main(["--build", str(tmp_path), CASE]) == 125
    log = tmp_path / "blockfuzz-bisect-build.log"
    assert capsys.readouterr().err == f"qemu_bisect_run: skipping this commit: the build failed: see {log}\n"
    assert "FAILED: qemu-" in log.read_text()


def test_a_wrong_case_stops_the_bisection(tmp_path, capsys):
    assert script().main(["--build", str(tmp_path), str(tmp_path / "none.json")]) == 255
    assert capsys.readouterr().err == f"qemu_bisect_run: {tmp_path / 'none.json'}: no such case file\n"


@pytest.mark.qemu
def test_the_seed_race_makes_a_qemu_with_it_bad_and_with_fixed_good(monkeypatch):
    build = build_of("stream-prepare-no-drain")
    # --qemu-build sets the variable for the whole process: set here, it is undone after
    monkeypatch.setenv("BLOCKFUZZ_QEMU_BUILD", build)
    assert script().main(["--build", build, CASE, "--repeat", "2"]) == 1
    assert script().main(["--build", build, CASE, "--repeat", "2", "--fixed"]) == 0


def test_a_blockfuzz_that_cannot_run_stops_the_bisection_rather_than_calling_the_commit_bad(
        tmp_path, capsys, monkeypatch):
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    (tmp_path / "build.ninja").write_text("rule ok\n  command = true\nbuild qemu-img: ok\n")
    module = script()

    def broken(argv):
        raise ModuleNotFoundError("No module named 'qemu'")
    monkeypatch.setattr(module, "blockfuzz_main", lambda: broken)
    assert module.main(["--build", str(tmp_path), CASE]) == 255
    assert capsys.readouterr().err == ("qemu_bisect_run: blockfuzz failed: ModuleNotFoundError: "
                                       "No module named 'qemu': stopping the bisection\n")
    monkeypatch.setattr(module, "blockfuzz_main", lambda: None)
    assert module.main(["--build", str(tmp_path), CASE]) == 255
    assert "cannot import blockfuzz: run the script with " in capsys.readouterr().err
