"""``blockfuzz diff``: normalising, comparing with the model's set of outcomes, the
side-by-side report, and the command line (exact lines, exit codes)."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from harness.backends.qemu_core import cores_possible

from harness.case import Case, Command, Image, from_dict
from harness.case import load as load_case
from harness.cli import main
from harness.differential import (Differ, Gaps, compare, differing_fields, gap_schedules, search_seeds,
                                  search_long_gaps,
                                  model_outcomes, normalise, report, search_gaps)
from harness.observation import ChainNode, Finding, Observation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(REPO, "corpus", "seeds", "030")
OK = {"return": {}}

CASE = Case(images=(Image("n0"), Image("n1"), Image("n2")),
            commands=(Command("block-stream", {"device": "n1", "job-id": "s"}),
                      Command("x-wait-jobs")),
            path="c.json")


def obs(reply1=OK, chain=("n2", "n0"), statuses=None, data=((0, 1 << 20, 0),), **extra) -> Observation:
    nodes = {"n2": ChainNode("n2", "qcow2", "n2.qcow2", "n1.qcow2", False),
             "cor": ChainNode("#block123", "copy-on-read", "n1.qcow2", None, False),
             "n1": ChainNode("n1", "qcow2", "n1.qcow2", "n0.qcow2", True),
             "n0": ChainNode("n0", "qcow2", "n0.qcow2", None, True)}
    return Observation(replies=[reply1, OK],
                       job_statuses=statuses or {"s": ["created", "running", "paused", "running",
                                                       "waiting", "pending", "concluded", "null"]},
                       chain=[nodes[n] for n in chain], data=[list(r) for r in data], extra=extra)


# -- normalising and comparing -------------------------------------------------------------

def test_normalise_keeps_what_both_sides_can_show_alike():
    o = obs(reply1={"return": {"x": 1}}, chain=("n2", "cor", "n1", "n0"),
            data=((0, 10, 0), (10, 20, 0), (30, 0, 5), (30, 5, 7)),
            on_disk_backing={"n2.qcow2": "n1.qcow2"})
    o.replies.append({"error": {"class": "GenericError", "desc": "Node '#block042' is busy"}})
    assert normalise(o) == {
        "finding": None,
        "replies": [OK, OK, {"error": {"class": "GenericError", "desc": "Node '#block*' is busy"}}],
        "job_statuses": {"s": ["created", "running", "waiting", "pending", "concluded", "null"]},
        "job_events": {},
        "chain": ["n2", "n1", "n0"],
        "backing": [["n2", "n1.qcow2"], ["n1", "n0.qcow2"], ["n0", None]],
        "read_only": [["n2", False], ["n1", True], ["n0", True]],
        "data": [[0, 30, 0], [30, 5, 7]],
        "on_disk_backing": {"n2.qcow2": "n1.qcow2"},
    }


def job_event(name: str, job: str, length: int, **data) -> dict:
    return {"event": name, "data": {"device": job, "len": length, "offset": length, **data}}


def test_job_events_compare_the_progress_total_and_the_error_of_each_end():
    """An active commit's ``len`` is what it copied plus what is still dirty: READY and a
    successful COMPLETED carry it. A failed job's error text is compared, its ``len`` not;
    a cancelled job's numbers stop wherever the wall clock stopped them, so its event is
    left out."""
    a = obs()
    a.events = [job_event("BLOCK_JOB_READY", "c", 196608),
                job_event("BLOCK_JOB_COMPLETED", "s", 4096, error="Operation not permitted"),
                job_event("BLOCK_JOB_CANCELLED", "t", 4096),
                job_event("BLOCK_JOB_COMPLETED", "c", 262144)]
    assert normalise(a)["job_events"] == {
        "c": [["BLOCK_JOB_READY", 196608, None], ["BLOCK_JOB_COMPLETED", 262144, None]],
        "s": [["BLOCK_JOB_COMPLETED", None, "Operation not permitted"]]}
    b = obs()
    b.events = [job_event("BLOCK_JOB_READY", "c", 196608),
                job_event("BLOCK_JOB_COMPLETED", "s", 1 << 20, error="Operation not permitted"),
                job_event("BLOCK_JOB_CANCELLED", "t", 8192),
                job_event("BLOCK_JOB_COMPLETED", "c", 1 << 20)]
    assert differing_fields(normalise(a), normalise(b)) == ["job_events"]
    b.events[-1] = job_event("BLOCK_JOB_COMPLETED", "c", 262144)
    assert differing_fields(normalise(a), normalise(b)) == []
    b.events[1] = job_event("BLOCK_JOB_COMPLETED", "s", 4096, error="Invalid argument")
    assert differing_fields(normalise(a), normalise(b)) == ["job_events"]


def test_on_disk_strings_count_only_when_both_sides_report_them():
    a, b = normalise(obs(on_disk_backing={"n2.qcow2": "x"})), normalise(obs())
    assert differing_fields(a, b) == []
    c = normalise(obs(on_disk_backing={"n2.qcow2": "y"}))
    assert differing_fields(a, c) == ["on_disk_backing"]


def test_a_node_left_writable_on_one_side_only_is_a_difference():
    a = obs()
    b = obs()
    b.chain[1] = dataclasses.replace(b.chain[1], read_only=False)
    assert differing_fields(normalise(a), normalise(b)) == ["read_only"]


def test_agreement_with_any_model_outcome_is_agreement():
    busy = {"error": {"class": "GenericError", "desc": "Node 'n1' is busy"}}
    model = [("seed 0", obs(reply1=busy, chain=("n2", "n1", "n0"))), ("seed 1", obs())]
    assert compare(CASE, obs(), model, seeds=2) is None


def test_a_qemu_crash_is_reported_as_it_is():
    crashed = obs()
    crashed.finding = Finding("qemu-crash", "qemu died", "x-wait-jobs", 1)
    assert compare(CASE, crashed, [("seed 0", obs())], seeds=1) is crashed.finding


def test_a_mismatch_reports_each_command_side_by_side_and_each_differing_field():
    busy = {"error": {"class": "GenericError", "desc": "Node 'n1' is busy"}}
    model = [("the case's schedule", obs()), ("seed 3", obs(reply1=busy, chain=("n2", "n1", "n0")))]
    qemu = obs(reply1={"error": {"class": "GenericError", "desc": "Job ID 's' already in use"}},
               chain=("n2", "n1", "n0"))
    finding = compare(CASE, qemu, model, seeds=20)
    assert finding is not None
    assert (finding.kind, finding.where, finding.step) == ("qemu-mismatch", "replies:block-stream", 0)
    assert finding.message == report(CASE, qemu, model, 20)
    lines = finding.message.splitlines()
    assert lines[0] == ("qemu-mismatch: command 0 (block-stream): model error GenericError: "
                        "Node 'n1' is busy / qemu error GenericError: Job ID 's' already in use")
    assert lines[1] == ("QEMU differs from all 2 model outcome(s) over 20 seeds; the closest "
                        "(seed 3) differ in: replies")
    assert lines[3].split() == ["0", "block-stream", '{"device":', '"n1",', '"job-id":', '"s"}',
                                "error", "GenericError:", "Node", "'n1'", "is", "busy", "error",
                                "GenericError:", "Job", "ID", "'s'", "already", "in", "use", "<<"]
    assert lines[4:6] == ["       model: error GenericError: Node 'n1' is busy",
                          "       qemu:  error GenericError: Job ID 's' already in use"]
    assert lines[6].split() == ["1", "x-wait-jobs", "ok", "ok"]


def test_a_report_shows_other_fields_and_qemus_own_finding():
    qemu = obs(chain=("n2", "n1", "n0"), data=((0, 1 << 20, 9),))
    qemu.finding = Finding("hang", "command 1 (x-wait-jobs): jobs did not settle", "x-wait-jobs", 1)
    text = report(CASE, qemu, [("seed 0", obs())], 1).splitlines()
    assert text[:3] == [
        "qemu-mismatch: finding: model none / qemu hang",
        "QEMU differs from all 1 model outcome(s) over 1 seeds; the closest (seed 0) differ in: "
        "finding, chain, backing, read_only, data",
        "QEMU finding: hang: command 1 (x-wait-jobs): jobs did not settle"]
    assert text[6:] == [
        "finding:", "  model (seed 0): none", "  qemu: hang",
        "chain:", "  model (seed 0): n2 → n0", "  qemu: n2 → n1 → n0",
        "backing:", '  model (seed 0): [["n2", "n1.qcow2"], ["n0", null]]',
        '  qemu: [["n2", "n1.qcow2"], ["n1", "n0.qcow2"], ["n0", null]]',
        "read_only:", '  model (seed 0): [["n2", false], ["n0", true]]',
        '  qemu: [["n2", false], ["n1", true], ["n0", true]]',
        "data:", "  model (seed 0): [[0, 1048576, 0]]", "  qemu: [[0, 1048576, 9]]"]


def test_model_outcomes_are_distinct_and_labelled():
    seen = []

    def fake_model(case: Case, seed):
        seen.append(seed)
        return obs() if seed in (None, 1) else obs(chain=("n2", "n1", "n0"))

    outcomes = model_outcomes(CASE, 3, fake_model)
    assert seen == [None, 0, 1, 2]
    assert [label for label, _ in outcomes] == ["the case's schedule", "seed 0"]


def test_gap_schedules_bound_the_gaps_between_back_to_back_commands():
    three = Case(images=CASE.images, commands=(Command("x-wait-jobs"),) * 3)
    schedules = list(gap_schedules(three, bound=2))
    # 2 positions x 4 lengths with one gap, then 4 x 4 lengths with both
    assert schedules[:5] == [{0: 1}, {0: 2}, {0: 3}, {0: 4}, {1: 1}]
    assert len(schedules) == 8 + 16 and schedules[-1] == {0: 4, 1: 4}


def test_a_gaps_source_gives_its_gaps_in_order_and_asks_the_inner_one_for_the_rest():
    from harness.choices import RecordedSource
    source = Gaps(RecordedSource([3, 1]), {1: 2})
    assert [source.choose(5, "between"), source.choose(4, "poll", ["a"] * 4),
            source.choose(5, "between"), source.choose(2, "gen:x"), source.choose(5, "between")] \
        == [0, 3, 2, 1, 0]


def test_a_mismatch_some_gap_schedule_shows_is_agreement():
    def gapped(case, seed, gaps):
        tried.append((seed, dict(gaps)))
        return obs(chain=("n2", "n1", "n0")) if gaps == {0: 3} and seed == 1 else obs()

    tried: list = []
    assert search_gaps(CASE, obs(chain=("n2", "n1", "n0")), gapped) == (
        "back to back but 3 before command 1 (seed 1)", obs(chain=("n2", "n1", "n0")))
    assert tried == [(0, {0: 1}), (1, {0: 1}), (0, {0: 2}), (1, {0: 2}), (0, {0: 3}), (1, {0: 3})]
    tried.clear()
    assert search_gaps(CASE, obs(chain=("n1", "n0")), gapped) is None and len(tried) == 8


def test_gap_schedules_go_up_to_three_gaps_by_default():
    four = Case(images=CASE.images, commands=(Command("x-wait-jobs"),) * 4)
    schedules = list(gap_schedules(four))
    # 3 positions: 3 x 4 with one gap, 3 x 16 with two, 1 x 64 with all three
    assert len(schedules) == 12 + 48 + 64 and schedules[-1] == {0: 4, 1: 4, 2: 4}


def test_the_deep_seed_search_stops_at_qemus_outcome_and_keeps_the_distinct_ones_before_it():
    def run(case, seed):
        tried.append(seed)
        return obs(chain=("n2", "n1", "n0")) if seed == 23 else obs(chain=("n2", "n0") if seed % 2 else ("n1", "n0"))

    tried: list = []
    outcomes, matched = search_seeds(CASE, obs(chain=("n2", "n1", "n0")), [(run, " (note)")], 20)
    assert matched and tried == [20, 21, 22, 23]
    assert [label for label, _ in outcomes] == ["seed 20 (note)", "seed 21 (note)", "seed 23 (note)"]
    tried.clear()
    outcomes, matched = search_seeds(CASE, obs(chain=("n0",)), [(run, "")], 20, count=10)
    assert not matched and tried == list(range(20, 30)) and len(outcomes) == 3


def test_a_search_from_no_gap_tries_the_commands_all_back_to_back_first():
    from harness.differential import gap_count
    assert list(gap_schedules(CASE, fewest=0))[:2] == [{}, {0: 1}]
    assert gap_count(CASE, fewest=0) == gap_count(CASE) + 2        # {} under each of 2 seeds

    def gapped(case, seed, gaps):
        tried.append(dict(gaps))
        return obs(chain=("n2", "n1", "n0")) if not gaps else obs()

    tried: list = []
    assert search_gaps(CASE, obs(chain=("n2", "n1", "n0")), gapped, note=", x", fewest=0) == (
        "back to back (seed 0), x", obs(chain=("n2", "n1", "n0")))
    assert tried == [{}]


def test_an_active_commit_of_an_empty_top_can_pause_before_ready_only_with_metadata_reads():
    """corpus/regressions/qemu-fidelity-active-commit-metadata-read-before-ready.json: QEMU's
    'running' at job-finalize and then 'paused', never 'ready', needs the read and no gap."""
    import dataclasses
    from harness.case import load
    from harness.differential import gapped_model
    case = dataclasses.replace(load(os.path.join(REPO, "corpus", "regressions",
                                                 "qemu-fidelity-active-commit-metadata-read-before-ready.json")),
                               schedule={"choices": []})

    def outcome(gaps, metadata_io):
        o = gapped_model(case, 0, gaps, metadata_io=metadata_io)
        return o.replies[2]["error"]["desc"].split("'")[3], o.job_statuses["drive0"]
    qemus = ("running", ["created", "running", "paused"])
    assert outcome({}, True) == qemus
    assert qemus not in [outcome(g, False) for g in ({}, {0: 1}, {1: 1}, {0: 1, 1: 1})]
    assert qemus not in [outcome(g, True) for g in ({0: 1}, {1: 1})]


@pytest.mark.qemu
def test_the_differ_searches_gap_schedules_only_on_a_mismatch_and_says_so():
    from harness.differential import gapped_model
    calls: list = []

    def counted(case, seed, gaps):
        calls.append(gaps)
        return gapped_model(case, seed, gaps)

    wrong = lambda case, seed: obs(chain=("n2", "n1", "n0"))       # never QEMU's outcome
    with Differ(seeds=1, run_model=wrong, run_gapped=counted) as differ:
        agreed = differ.diff(CASE)
    assert agreed.ok and calls == [{0: 1}]
    assert agreed.model[-1][0] == "back to back but 1 before command 1 (seed 0)"
    with Differ(seeds=1, run_model=wrong, run_gapped=lambda case, seed, gaps: wrong(case, seed)) as differ:
        failed = differ.diff(CASE)
    assert failed.finding.kind == "qemu-mismatch"
    assert "over 1 seeds and 8 schedules with at most 3 gaps between back-to-back commands; " \
        "the closest" in failed.finding.message


def test_the_model_side_alone_needs_no_qemu():
    with Differ(only="model", run_model=lambda case, seed: obs()) as differ:
        result = differ.diff(CASE)
    assert result.ok and result.model[0][0] == "the case's schedule"


# -- the command line, on real QEMU and the model ---------------------------------------------

def diff(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["diff", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.qemu
def test_seeds_agree_with_qemu(capsys):
    a, b = (os.path.join(SEEDS, f"test_overlapping_{n}.json") for n in (5, 3))
    assert diff(capsys, a, b, "--seeds", "3") == (0, [f"PASS {a}", f"PASS {b}", "2 passed, 0 failed"], "")


@pytest.mark.qemu
def test_two_workers_give_the_same_lines_in_the_same_order(capsys):
    paths = [os.path.join(SEEDS, f"test_overlapping_{n}.json") for n in (1, 2, 4)]
    assert diff(capsys, *paths, "--seeds", "2", "--jobs", "2") == (
        0, [f"PASS {p}" for p in paths] + ["3 passed, 0 failed"], "")


@pytest.mark.qemu
def test_a_qemu_crash_fails_the_case(tmp_path, capsys):
    # QEMU 7.2 (Debian 7.2.22) dies with SIGSEGV on a guest read through the copy-on-read
    # filter of a stream that had nothing to copy and waits in 'pending' for job-finalize.
    path = str(tmp_path / "crash.json")
    with open(path, "w") as f:
        json.dump({"format": "blockfuzz-case/1",
                   "images": [{"node-name": "node0"}, {"node-name": "node1"}],
                   "commands": [{"execute": "block-stream",
                                 "arguments": {"device": "drive0", "base-node": "node0",
                                               "auto-finalize": False}}]}, f)
    code, lines, err = diff(capsys, path, "--seeds", "1", "--verbose")
    assert (code, err) == (1, "")
    # where core files reach gdb (core_pattern a file name, gdb installed: make test
    # installs it), the crash says where it happened
    crashed_in = " in bdrv_getlength" if cores_possible() else ""
    assert re.fullmatch(rf"FAIL {re.escape(path)}: qemu-crash: qemu-system-x86_64 \(pid \d+\) "
                        rf"died with signal SIGSEGV \(11\){crashed_in} at the end of the case", lines[0])
    if cores_possible():
        frames = lines[lines.index("    backtrace (gdb, from its core file):") + 1:
                       lines.index("    commands so far:")]
        named = [f.split(" ", 1)[1] for f in map(str.strip, frames) if not f.endswith("??")]
        # a guest read through the copy-on-read filter asks whether its range is allocated
        # below the filter's bottom node, and the walk down the chain runs off its end
        assert named[named.index("bdrv_co_common_block_status_above"):][:2] == [
            "bdrv_co_common_block_status_above", "bdrv_is_allocated_above"]
        assert "blk_co_pread" in named
    assert lines[-3:] == ["    commands so far:",
                          '      0: {"execute": "block-stream", "arguments": {"device": "drive0", '
                          '"base-node": "node0", "auto-finalize": false}}',
                          "0 passed, 1 failed"]


@pytest.mark.qemu
def test_one_side_alone_reports_its_speed(capsys):
    path = os.path.join(SEEDS, "test_overlapping_5.json")
    code, lines, err = diff(capsys, path, "--only", "qemu", "--repeat", "2")
    assert (code, err, lines[:3]) == (0, "", [f"PASS {path}", f"PASS {path}", "2 passed, 0 failed"])
    assert re.fullmatch(r"2 cases in \d+\.\d\d s: \d+\.\d cases/s \(qemu, 1 worker\)", lines[3])


@pytest.mark.qemu
def test_qemu_alone_is_judged_by_the_oracle(capsys):
    # corpus/known: QEMU 7.2 keeps node2's old backing when the header update fails
    # after the graph change; no crash or hang, so only the oracle sees it
    path = os.path.join(REPO, "corpus", "known", "stream-header-update-fails-after-the-graph-change.json")
    code, lines, err = diff(capsys, path, "--only", "qemu")
    assert (code, err, lines[:2]) == (1, "", [f"FAIL {path}: wrong-backing: node2's backing is node0, "
                                              "expected node1", "0 passed, 1 failed"])


def test_bad_input_exits_2(tmp_path, capsys):
    assert diff(capsys, str(tmp_path / "nope.json")) == (
        2, [], f"blockfuzz: error: {tmp_path / 'nope.json'}: no such file or directory\n")
    assert diff(capsys, str(tmp_path)) == (
        2, [], f"blockfuzz: error: {tmp_path}: no *.json case files there\n")
    assert diff(capsys, str(tmp_path), "--jobs", "0") == (
        2, [], "blockfuzz: error: blockfuzz diff: --seeds and --census must be >= 0, --jobs and "
               "--repeat >= 1, --timeout > 0\n")
    assert diff(capsys, str(tmp_path), "--census", "-1") == (
        2, [], "blockfuzz: error: blockfuzz diff: --seeds and --census must be >= 0, --jobs and "
               "--repeat >= 1, --timeout > 0\n")
    assert diff(capsys, str(tmp_path), "--census", "10", "--only", "qemu") == (
        2, [], "blockfuzz: error: blockfuzz diff: --census compares the model with QEMU: drop --only\n")


def test_qemu_trace_on_the_command_line_of_either_binary():
    from harness.backends.qemu_process import STORAGE_DAEMON, SYSTEM, trace_arguments
    assert trace_arguments(SYSTEM, ("job_*", "stream_one_iteration")) == [
        "-trace", "job_*", "-trace", "stream_one_iteration", "-msg", "timestamp=on"]
    assert trace_arguments(STORAGE_DAEMON, ("job_*",)) == ["--trace", "job_*"]
    assert trace_arguments(SYSTEM, ()) == []


@pytest.mark.qemu
def test_qemu_trace_prints_each_cases_trace_lines_under_it(capsys):
    path = os.path.join(REPO, "corpus", "regressions", "qemu-fidelity-blk-unref-drains.json")
    code, lines, err = diff(capsys, path, "--only", "qemu", "--qemu-trace", "job_state_transition")
    assert (code, err, lines[:2]) == (0, "", [f"PASS {path}", "    qemu trace:"])
    traced = [l for l in lines if "job_state_transition" in l]
    # the commit, the stream and (timing) the last commit: each from undefined to null
    created = sum("(undefined-->created)" in l for l in traced)
    assert created in (2, 3) and sum("(concluded-->null)" in l for l in traced) == created
    assert all(l.startswith("      ") for l in traced)
    code, lines, _ = diff(capsys, path, "--only", "qemu", "--qemu-trace", "no_such_event")
    assert lines[:2] == [f"PASS {path}",
                         "    qemu trace: no lines (does the pattern name an event of this QEMU?)"]


def test_qemu_trace_without_qemu_is_a_usage_error(capsys):
    path = os.path.join(SEEDS, "test_overlapping_5.json")
    assert diff(capsys, path, "--only", "model", "--qemu-trace", "job_*") == (
        2, [], "blockfuzz: error: blockfuzz diff: --qemu-trace needs QEMU: drop --only model\n")


def test_when_both_sides_hang_only_the_finding_and_replies_count():
    model = obs(chain=("n2", "n0"))
    model.finding = Finding("hang", "a guest write on a drained device", "x-guest-write", 2)
    qemu = obs()
    qemu.chain = []
    qemu.finding = Finding("hang", "QEMU did not answer", "human-monitor-command", 2)
    assert differing_fields(normalise(model), normalise(qemu)) == []
    qemu.replies = [{"error": {"class": "GenericError", "desc": "x"}}]
    assert differing_fields(normalise(model), normalise(qemu)) == ["replies"]


UNTHROTTLE = os.path.join(REPO, "corpus", "regressions", "qemu-fidelity-unthrottle-order.json")


def test_the_speed_limits_qemu_had_lifted_are_keyed_by_the_models_command_index():
    from harness.differential import unthrottled
    lifted = obs(unthrottled=[[1, "s"], [-1, "b"], [-1, "a"]])
    assert unthrottled(CASE, lifted) == {1: ["s"], 2: ["b", "a"]}
    assert unthrottled(CASE, obs()) == {}


def test_the_model_lifts_speed_limits_as_qemu_did_and_reaches_qemus_order():
    """The regression's outcome on QEMU (node5's header names node2 by a json: filename:
    node5's stream completed while node1's filter was still there) needs the limits
    lifted newest first; without that, no schedule of the model reaches it."""
    from harness.backends.reference import run_case
    from harness.case import load
    from harness.choices import RandomSource
    case = load(UNTHROTTLE)
    last = len(case.commands)

    on_qemu = 'json:{"backing": {"driver": "copy-on-read", "file": {"driver": "qcow2", "file": {"driver": '

    def headers(**kw):
        return {run_case(case, RandomSource(seed), **kw).chain[0].backing_file[:len(on_qemu)]
                for seed in range(40)}
    assert on_qemu not in headers()
    assert on_qemu in headers(unthrottle={last: ["node5", "node1"]})
    # a job that is gone or refuses set-speed is left alone, as on QEMU
    assert headers(unthrottle={last: ["nonexistent"]}) == headers()


@pytest.mark.qemu
def test_the_differ_runs_the_model_with_qemus_lifted_speed_limits_too(capsys):
    code, lines, err = diff(capsys, UNTHROTTLE)
    assert (code, lines, err) == (0, [f"PASS {UNTHROTTLE}", "1 passed, 0 failed"], "")


SLICE_END = os.path.join(REPO, "corpus", "regressions", "qemu-fidelity-slice-ends-when-the-sleep-does.json")


@pytest.mark.qemu
def test_a_commit_that_slept_to_its_slices_end_completes_in_time_on_both(capsys):
    """Differential seed 95's mismatch: QEMU's commit completes at about 125 ms, within the
    third x-step, so the last block-commit finds node1 gone; the model, given those x-steps'
    end times, must too (it slept until 187.5 ms while a slice ending exactly now was kept
    open, and refused the command with 'Need a root block node' under every schedule)."""
    code, lines, err = diff(capsys, SLICE_END, "-v")
    assert (code, lines, err) == (0, [f"PASS {SLICE_END}", "1 passed, 0 failed"], "")


METADATA = os.path.join(REPO, "corpus", "regressions",
                        "qemu-fidelity-qcow2-metadata-read-keeps-a-job-busy.json")


@pytest.mark.qemu
def test_the_gap_search_ends_with_qcow2_metadata_reads_and_says_so():
    """QEMU finds the stream 'running' after block-job-pause (its first iteration reads
    each image's L2 table); the model reaches that only with metadata reads as I/O, so
    the case without the option agrees through the last part of the search."""
    import dataclasses
    from harness.case import load
    case = load(METADATA)
    plain = dataclasses.replace(case, schedule={"choices": [1]})

    def diff_while_qemu_reads(differ):
        """At most 3 tries: on a loaded machine QEMU may reach the pause point first."""
        for _ in range(3):
            result = differ.diff(plain)
            if result.qemu.replies[2] == case.expect["replies"]["2"]:
                return result
        pytest.skip("QEMU reached the pause point before its metadata reads 3 times")

    with Differ(seeds=2) as differ:
        result = diff_while_qemu_reads(differ)
    assert result.ok, result.finding
    assert result.model[-1][0] == ("back to back but 1 before command 1 (seed 0), "
                                   "qcow2 metadata reads as I/O (schedule metadata-io)")
    with Differ(seeds=2, run_gapped=None) as differ:       # no gap search: no agreement
        assert diff_while_qemu_reads(differ).finding.kind == "qemu-mismatch"


def test_a_mismatch_the_model_reaches_with_x_steps_ending_when_qemus_did_is_agreement():
    """QEMU's rate limits run in real time while its x-steps wait; the differ gives the
    model's x-steps QEMU's end times (``x_step_until_ns``) before it calls a mismatch."""
    from harness.backends.reference import run_case
    from tests.model.conftest import chain_case
    case = chain_case(4, [("block-commit", {"device": "drive0", "top-node": "node2",
                                             "base-node": "node0", "speed": 1 << 20, "job-id": "c"}),
                          ("x-step", {"count": 32}), ("job-pause", {"id": "c"})])
    later = {1: 2_000_000_000}
    on_qemu = run_case(case, x_step_until=later)        # the job done when the x-step ended

    class Runner:
        extra: dict = {}

        def run(self, case):
            on_qemu.extra = dict(self.extra)
            return on_qemu

        def close(self):
            pass

    with Differ(seeds=2, only="model", run_gapped=None) as differ:
        differ.only, differ.runner = None, Runner()
        assert differ.diff(case).finding.kind == "qemu-mismatch"   # no end times: 50 ms
        Runner.extra = {"x_step_until_ns": later}
        agreed = differ.diff(case)
    assert agreed.ok
    assert agreed.model[-1][0].endswith(", x-steps ending when QEMU's did")


STREAM_OUTLIVES = os.path.join(REPO, "corpus", "regressions",
                               "qemu-fidelity-stream-outlives-the-commit-it-started-during.json")


@pytest.mark.qemu
def test_the_differ_finds_the_rarer_orders_of_two_completions_qemu_shows(capsys):
    """QEMU orders the commit's and the stream's completions three ways on this case; two
    need schedules the first 20 seeds and two gaps did not reach (each once a flaky
    mismatch of a differential campaign). Six runs: before the deeper search most
    failed."""
    code, lines, err = diff(capsys, STREAM_OUTLIVES, "--repeat", "6")
    assert (code, lines[-2], err) == (0, "6 passed, 0 failed", "")


PAUSE_AFTER_RETURN = os.path.join(REPO, "corpus", "regressions",
                                  "qemu-fidelity-pause-between-a-jobs-return-and-its-completion.json")
#: QEMU 7.2's replies to it, under load (a differential campaign with --jobs 2)
ON_QEMU = [OK, OK, {"error": {"class": "DeviceNotActive", "desc": "Block job 'node8' not found"}},
           {"error": {"class": "GenericError", "desc": "Job not found"}},
           {"error": {"class": "GenericError", "desc": "'backing-file' specified, but 'top' is the active layer"}},
           {"error": {"class": "GenericError", "desc": "Cannot find device='node7' nor node-name='node7'"}},
           {"error": {"class": "GenericError", "desc": "Cannot find device='node7' nor node-name='node7'"}}]


def test_a_client_gap_of_exact_steps_stops_anywhere_in_a_jobs_run_and_says_when_it_went_idle():
    from harness.backends.reference import run_case
    from harness.case import load
    from harness.choices import RandomSource
    case = load(PAUSE_AFTER_RETURN)

    def replies(gaps, steps=None):
        obs = run_case(case, Gaps(RandomSource(0), gaps), gap_steps=steps)
        return [r.get("error", {}).get("desc", "ok")[:24] for r in obs.replies[1:3]], obs.extra.get("gap_idle")
    # a choice names 0-3 steps (the stream still runs: paused, so not completed) or idle (gone)
    assert replies({0: 3}) == (["ok", "Job 'node8' in state 'pa"], None)
    assert replies({0: 4}) == (["Block job 'node8' not fo"] * 2, None)
    # 11 steps: the stream's coroutine has returned, its completion not run; the pause
    # only counts, and one step later the completion has run regardless
    assert replies({1: 1}, {0: 11}) == (["ok", "Block job 'node8' not fo"], False)
    assert replies({}, {0: 11}) == (["ok", "Job 'node8' in state 'ru"], False)
    assert replies({}, {0: 500})[1] is True


def test_the_long_gap_search_reaches_qemus_replies_the_choices_cannot():
    from harness.case import load
    case = load(PAUSE_AFTER_RETURN)
    qemu = Observation(replies=ON_QEMU)
    calls: list = []
    found, tried = search_long_gaps(case, qemu, _gapped_keeping("replies", calls))
    assert found[0] == "back to back but exactly 11 steps before command 1, 1 before command 2 (seed 0)"
    assert found[1].replies == ON_QEMU and tried == len(calls)
    # each position's lengths stop where the loop went idle, well short of LONG_GAP
    steps = [gap_steps for _, gap_steps in calls]
    assert steps[0] == {0: 4} and max(s[0] for s in steps if 0 in s) < 20


def _gapped_keeping(field: str, calls: list):
    """gapped_model, noting each call's (gaps, gap_steps), its observation cut down to
    ``field`` (and whether the loop went idle): what the search compares is that field."""
    from harness.differential import gapped_model

    def run(case, seed, gaps, gap_steps=None):
        calls.append((gaps, gap_steps))
        obs = gapped_model(case, seed, gaps, gap_steps=gap_steps)
        return Observation(**{field: getattr(obs, field)}, extra={"gap_idle": obs.extra["gap_idle"]})
    return run


EXACT_GAP_THEN_IDLE = os.path.join(REPO, "corpus", "regressions", "qemu-timing-exact-gap-then-idle-loop.json")


def test_the_long_gap_search_lets_the_loop_run_idle_at_the_later_gaps():
    """QEMU on a busy machine: the commit's cancel 5 loop steps after its start (during
    its flush: ready, then aborting), and the loop idle before the last two commands (all
    of node1's and job3's streams run). One exact gap with one short one cannot give it."""
    from harness.case import load
    case = load(EXACT_GAP_THEN_IDLE)
    done = ["created", "running", "waiting", "pending", "concluded", "null"]
    qemu = Observation(job_statuses={"drive0": ["created", "running", "ready", "aborting", "concluded"],
                                     "node1": done + done, "job3": done})
    calls: list = []
    found, tried = search_long_gaps(case, qemu, _gapped_keeping("job_statuses", calls))
    assert found is not None and found[0].startswith("back to back but exactly 5 steps before command 1, ")
    assert found[1].job_statuses == qemu.job_statuses
    gaps = [g for g, _ in calls]
    assert gaps[-1] == {o: 4 for o in range(1, 7)}      # idle at every gap after the first
    assert all(len(g) <= 1 for g in gaps[:-1] if g != gaps[-1])


def test_model_change_check_asks_the_differential_before_it_blames_a_change():
    """scripts/model_change_check.py compares each model under the case's own schedule;
    where QEMU sided with the other revision it asks ``blockfuzz diff`` whether the model
    as it is reaches QEMU's outcome under another schedule: this regression case's does."""
    import importlib.util
    from harness.case import load
    spec = importlib.util.spec_from_file_location(
        "model_change_check", os.path.join(REPO, "scripts", "model_change_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    case = load(os.path.join(REPO, "corpus", "regressions",
                             "qemu-fidelity-backing-attach-refreshes-before-the-drain-polls.json"))
    assert module.reachable_now(case) is True


@pytest.mark.qemu
def test_qemu_s_active_commit_ready_after_a_forced_cancel_is_an_outcome_of_the_model():
    """corpus/regressions/qemu-fidelity-mirror-dirty-init-pauses-per-extent.json, without its
    schedule: whichever outcome QEMU's timing gives this time (READY after the forced cancel
    in 4 runs of 6), the differential finds a model schedule that gives it too. Before the
    model queried the dirty bitmap extent by extent, 2 runs of 4 failed."""
    from harness.case import DEFAULT_SCHEDULE, load
    case = dataclasses.replace(load(os.path.join(REPO, "corpus", "regressions",
                                                 "qemu-fidelity-mirror-dirty-init-pauses-per-extent.json")),
                               schedule=dict(DEFAULT_SCHEDULE), expect=None)
    with Differ() as differ:
        result = differ.diff(case)
    assert result.finding is None, result.finding


#: a stream on a plain chain: one outcome under every schedule
PLAIN_STREAM = Case((Image("node0", 1 << 20, 65536), Image("node1", 1 << 20, 65536)),
                    (Command("block-stream", {"device": "drive0"}),))


def refused_by_qemu(case: Case) -> Observation:
    """The model's own outcome of ``case``, but with its one command refused: a mismatch."""
    from harness.backends.reference import run_case
    return dataclasses.replace(run_case(case), replies=[{"error": {"class": "GenericError", "desc": "x"}}])


def test_the_census_counts_the_model_schedules_that_give_each_field_of_qemu_s_outcome():
    """``diff --census N``: a stream on a plain chain ends one way under every schedule;
    told that QEMU refused it, the census finds the refusal under none, every other
    field under all, and says which field differs."""
    from harness.backends.reference import run_case
    from harness.differential import census
    case = PLAIN_STREAM
    qemu = run_case(case)
    assert census(case, qemu, 10) == [
        "    model census, 10 schedules (half with qcow2 metadata reads): QEMU's whole outcome 10",
        "      QEMU's value of each field: finding 10, replies 10, job_statuses 10, job_events 10, chain 10, "
        "backing 10, read_only 10, data 10, on_disk_backing 10"]
    assert census(case, refused_by_qemu(case), 10) == [
        "    model census, 10 schedules (half with qcow2 metadata reads): QEMU's whole outcome 0",
        "      QEMU's value of each field: finding 10, replies 0, job_statuses 10, job_events 10, chain 10, "
        "backing 10, read_only 10, data 10, on_disk_backing 10",
        "      commonest differences: replies 10"]


def test_diff_prints_the_census_under_a_failing_case_only(monkeypatch, capsys, tmp_path):
    from harness import differential
    from harness.backends.reference import run_case
    from harness.case import save
    from harness.differential import DiffResult
    case = PLAIN_STREAM
    path = str(tmp_path / "c.json")
    save(case, path)
    qemu = run_case(case)
    refused = refused_by_qemu(case)
    results = [DiffResult(load_case(path), qemu),
               DiffResult(load_case(path), refused, [], Finding("qemu-mismatch", "replies differ"))]
    monkeypatch.setattr(differential, "run_all", lambda cases, **kw: iter(results))
    code, lines, _ = diff(capsys, path, path, "--census", "4")
    assert code == 1
    assert lines == [f"PASS {path}", f"FAIL {path}: qemu-mismatch: replies differ",
                     "    model census, 4 schedules (half with qcow2 metadata reads): QEMU's whole outcome 0",
                     "      QEMU's value of each field: finding 4, replies 0, job_statuses 4, job_events 4, chain 4, "
                     "backing 4, read_only 4, data 4, on_disk_backing 4",
                     "      commonest differences: replies 4", "1 passed, 1 failed"]


def test_a_random_schedule_with_one_exact_gap_reaches_what_neither_search_alone_does():
    """Differential seed 128: an active commit cancelled in its flush before READY needs
    earlier gaps from a random schedule and exactly 5 steps after the commit. The long-gap
    search (back to back but for its exact gap) and 2,000 random seeds miss it; the seeded
    gap search finds it, and the Differ asks it last."""
    from functools import partial
    from harness.backends.reference import run_case
    from harness.case import load
    from harness.choices import RandomSource
    from harness.differential import search_long_gaps, search_seeded_gaps, gapped_model, reference_model
    case = load(os.path.join(REPO, "tests", "model", "cases", "active-commit-cancelled-in-its-flush.json"))
    qemu = run_case(case, RandomSource(12), bugs=(), metadata_io=True, gap_steps={5: 5})
    assert qemu.job_statuses["drive0"] == ["created", "running", "ready", "aborting", "concluded", "null"]
    for reads in (False, True):
        assert search_long_gaps(case, qemu, partial(gapped_model, metadata_io=reads))[0] is None
    assert search_seeds(case, qemu, [(reference_model, "")], 20)[1] is False
    found, tried = search_seeded_gaps(case, qemu)
    label = "seed 12 but exactly 5 steps before command 6, qcow2 metadata reads as I/O (schedule metadata-io)"
    assert (found[0], tried) == (label, 889)

    class Runner:       # QEMU's outcome, as if QEMU's timing had given it
        def run(self, case):
            return qemu

        def close(self):
            pass
    differ = Differ(only="model")
    differ.only, differ.runner = None, Runner()
    result = differ.diff(case)
    assert result.finding is None and result.model[-1][0] == label
