"""``blockfuzz fuzz --backend qemu`` and ``--differential`` on real QEMU 7.2."""
import json
import os

import pytest

from harness.cli import main

pytestmark = pytest.mark.qemu


def test_differential_campaign_counts_and_agrees(tmp_path, capsys):
    rc = main(["fuzz", "--differential", "--runs", "12", "--seed", "3",
               "--model-seeds", "6", "--findings", str(tmp_path / "f")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done: differential: 12 cases")
    agree = [l for l in out if l.startswith("agreement: ")]
    assert len(agree) == 1 and "/12 cases agree with the model" in agree[0]
    if rc == 0:
        assert agree[0] == "agreement: 12/12 cases agree with the model (100.0 %)"
        assert not (tmp_path / "f").exists() or not os.listdir(tmp_path / "f")
    else:       # a disagreement or a QEMU crash: it must be on disk, replayable
        files = os.listdir(tmp_path / "f")
        assert files and all(json.load(open(tmp_path / "f" / n))["expect"]["verdict"]
                             in ("qemu-mismatch", "qemu-crash") for n in files)


def test_qemu_backend_campaign_judges_with_the_oracle(tmp_path, capsys):
    main(["fuzz", "--backend", "qemu", "--runs", "5", "--findings", str(tmp_path / "f")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done: qemu: 5 cases") and "oracle ok" in out[0]


@pytest.mark.parametrize("argv,text", [
    (["--engine", "pct"], "draw cases with --engine random"),
    (["--bugs", "stream-prepare-no-drain"], "--bugs cannot be put back into real QEMU"),
])
def test_qemu_campaign_usage_errors(argv, text, capsys):
    assert main(["fuzz", "--differential", "--runs", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err
