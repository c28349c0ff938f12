"""The QEMU a developer is changing: iotests' variables, a build directory, PATH."""
from __future__ import annotations

import os
import shutil

import pytest

from harness import cli
from harness.backends import qemu_binaries
from harness.backends.qemu_binaries import BUILD_ENV, TOOLS, find_binary, version_note
from harness.errors import QemuError

SEED = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "030",
                    "test_overlapping_5.json")
VARIABLES = [variable for variable, _, _ in TOOLS.values()]

pytestmark = pytest.mark.qemu


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No iotests variable or build directory from outside, and none left behind
    (``--qemu-build`` sets the build directory for the workers)."""
    for name in VARIABLES + [BUILD_ENV]:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def wrapper(path, real: str, log, version: str | None = None) -> str:
    """A tool that logs its name and runs the real one (``--version``: ``version``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fake = (f'if [ "$1" = --version ]; then echo "QEMU emulator version {version}"; exit 0; fi\n'
            if version else "")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\necho {os.path.basename(path)} >> {log}\n{fake}exec {real} "$@"\n')
    os.chmod(path, 0o755)
    return str(path)


def build_dir(tmp_path, version: str | None = None):
    """A QEMU build directory laid out as meson builds it, of wrappers."""
    build, log = tmp_path / "build", tmp_path / "ran.log"
    for name, (_, in_build, _) in TOOLS.items():
        wrapper(build / in_build, shutil.which(name), log, version)
    return build, log


def test_diff_runs_the_qemu_of_the_build_directory_it_is_given(tmp_path, capsys):
    build, log = build_dir(tmp_path)
    assert cli.main(["diff", SEED, "--qemu-build", str(build)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"QEMU: {build}/qemu-system-x86_64 (7.2, from --qemu-build)"
    assert out[-1] == "1 passed, 0 failed"
    ran = set(log.read_text().split())
    assert {"qemu-system-x86_64", "qemu-img", "qemu-io"} <= ran     # 030 has a drive


def test_the_iotests_variables_go_before_the_build_directory_and_path(tmp_path, monkeypatch):
    build, _ = build_dir(tmp_path)
    own = wrapper(tmp_path / "own" / "qemu-img", shutil.which("qemu-img"), tmp_path / "own.log")
    monkeypatch.setenv(BUILD_ENV, str(build))
    monkeypatch.setenv("QEMU_IMG_PROG", own)
    assert find_binary("qemu-img") == own
    assert find_binary("qemu-io") == str(build / "qemu-io")
    assert find_binary("qemu-storage-daemon") == str(build / "storage-daemon" / "qemu-storage-daemon")
    monkeypatch.delenv(BUILD_ENV)
    assert find_binary("qemu-io") == shutil.which("qemu-io")


def test_another_version_than_the_models_is_named_beside_the_results(tmp_path, monkeypatch):
    monkeypatch.setenv("QEMU_PROG", wrapper(tmp_path / "qemu-system-x86_64", shutil.which(
        "qemu-system-x86_64"), tmp_path / "ran.log", version="8.2.0"))
    assert version_note() == (f"QEMU: {tmp_path}/qemu-system-x86_64 (8.2, from QEMU_PROG); the model "
                              "is QEMU 7.2's, so a difference may be the versions' rather than a bug")
    monkeypatch.delenv("QEMU_PROG")
    assert version_note() is None       # Debian's 7.2 on PATH: nothing to say


@pytest.mark.parametrize("argv, env, message", [
    (["diff", SEED, "--qemu-build", "/nonexistent"], {},
     "blockfuzz: error: --qemu-build /nonexistent: not a directory"),
    (["diff", SEED], {"QEMU_PROG": "{tmp}/notes.txt"},
     "blockfuzz: error: QEMU_PROG={tmp}/notes.txt: not an executable file; point it at "
     "qemu-system-x86_64 or unset it"),
    (["fuzz", "--runs", "1", "--qemu-build", "."], {},
     "blockfuzz: error: --qemu-build needs QEMU: add --backend qemu or --differential"),
    (["diff", SEED, "--only", "model", "--qemu-build", "."], {},
     "blockfuzz: error: blockfuzz diff: --qemu-build needs QEMU: drop --only model"),
])
def test_a_wrong_qemu_is_one_line_and_exit_2(argv, env, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("not a program\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("{tmp}", str(tmp_path)))
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [message.replace("{tmp}", str(tmp_path))]


def test_a_build_directory_without_a_tool_says_which(tmp_path, monkeypatch):
    build, _ = build_dir(tmp_path)
    os.remove(build / "storage-daemon" / "qemu-storage-daemon")
    qemu_binaries.use_build(str(build))
    with pytest.raises(QemuError, match=r"^QEMU build directory .*/build: no "
                                        r"storage-daemon/qemu-storage-daemon in it; build it there "
                                        r"or set QSD_PROG$"):
        find_binary("qemu-storage-daemon")
    with pytest.raises(Exception, match="no QEMU tool in it"):
        qemu_binaries.use_build(str(tmp_path))
