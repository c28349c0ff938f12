"""``blockfuzz fuzz --backend qemu`` and ``--differential`` on real QEMU 7.2."""
import itertools
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


def test_directed_differential_campaign_runs_the_cases_the_model_found_rare(tmp_path, capsys,
                                                                            monkeypatch):
    """--engine pct: the cases go to QEMU from a pct campaign on the model, and the
    campaign reports on them as on random ones."""
    from harness import qemu_campaign
    drawn = []

    def stream(seed, engine):
        for case in qemu_campaign.directed_case_stream(seed):
            drawn.append((engine, case))
            yield case
    monkeypatch.setattr(qemu_campaign, "case_stream", stream)
    main(["fuzz", "--differential", "--engine", "pct", "--runs", "4", "--seed", "5",
          "--model-seeds", "2", "--findings", str(tmp_path / "f"),
          "--known", "corpus/known", "--known", "docs/qemu-7.2-findings"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done: differential: 4 cases")
    assert out[1].startswith("agreement: ") and "/4 cases agree with the model" in out[1]
    assert [engine for engine, _ in drawn] == ["pct"] * 4


def test_qemu_backend_campaign_judges_with_the_oracle(tmp_path, capsys):
    main(["fuzz", "--backend", "qemu", "--runs", "5", "--findings", str(tmp_path / "f")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done: qemu: 5 cases") and "oracle ok" in out[0]


@pytest.mark.parametrize("argv,text", [
    (["--engine", "hypothesis"], "draw cases with --engine random or --engine pct"),
    (["--bugs", "stream-prepare-no-drain"], "--bugs cannot be put back into real QEMU"),
])
def test_qemu_campaign_usage_errors(argv, text, capsys):
    assert main(["fuzz", "--differential", "--runs", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


def test_known_qemu_crashes_are_counted_not_reported(tmp_path, monkeypatch, capsys):
    """A differential campaign given --known counts a QEMU 7.2 crash documented there
    and exits 0; the same campaign without it stores the crash and exits 1."""
    from harness import qemu_campaign
    from harness.case import load
    case = load("docs/qemu-7.2-findings/qemu-segv-query-after-concluded-stream.json")
    monkeypatch.setattr(qemu_campaign, "case_stream", lambda seed, engine: itertools.repeat(case))
    argv = ["fuzz", "--differential", "--runs", "2", "--model-seeds", "2"]

    assert main([*argv, "--findings", str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done: differential: 2 cases") and "findings: qemu-crash 2" in out[0]
    assert [l.split(":")[0] for l in out[2:]] == ["  qemu-crash@bdrv_refresh_filename<bdrv_block_device_info",
                                                  "  (1 more with signatures already stored)"]
    assert len(os.listdir(tmp_path / "new")) == 1

    assert main([*argv, "--findings", str(tmp_path / "known"),
                 "--known", "corpus/known", "--known", "docs/qemu-7.2-findings"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "findings: none  known 2" in out[0]
    assert out[1:] == ["agreement: 0/2 cases agree with the model (0.0 %)",
                       "  known, not reported: qemu-crash@bdrv_refresh_filename<bdrv_block_device_info "
                       "(2 cases)"]
    assert not (tmp_path / "known").exists() or not os.listdir(tmp_path / "known")


def test_a_differential_finding_carries_the_model_s_census_of_qemu_s_outcome():
    """A mismatch's message: its first line, then the census (how many of 400 model
    schedules give QEMU's value of each field); other findings keep their first line."""
    from harness.differential import DiffResult
    from harness.observation import Finding
    from harness.qemu_campaign import diff_outcome
    from tests.qemu.test_qemu_differential import PLAIN_STREAM as case, refused_by_qemu
    refused = refused_by_qemu(case)
    outcome = diff_outcome(DiffResult(case, refused, [], Finding("qemu-mismatch", "replies differ\nmore",
                                                                   where="replies:block-stream")))
    assert (outcome.kind, outcome.where) == ("qemu-mismatch", "replies:block-stream")
    assert outcome.message.splitlines() == [
        "replies differ",
        "model census, 400 schedules (half with qcow2 metadata reads): QEMU's whole outcome 0",
        "QEMU's value of each field: finding 400, replies 0, job_statuses 400, job_events 400, "
        "chain 400, backing 400, read_only 400, data 400, on_disk_backing 400",
        "commonest differences: replies 400"]
    crash = diff_outcome(DiffResult(case, refused, [], Finding("qemu-crash", "SIGSEGV\ntrace", where="x")))
    assert crash.message == "SIGSEGV"
