"""Minimization: fewer commands, images and writes, then the shortest schedule, same kind."""
import pytest

from harness import case as case_mod
from harness.backends.reference import run_case
from harness.case import Case, Command, Image, Write
from harness.check import check
from harness.cli import main
from harness.errors import UsageError
from harness.minimize import Run, describe, minimize, preemptions, with_choices

CASE = Case(
    images=tuple(Image(f"node{i}", writes=(Write(0, 65536, i + 1),)) for i in range(4)),
    commands=(Command("x-step", {"count": 4}),
              Command("block-stream", {"device": "node2", "speed": 0, "job-id": "node2"}),
              Command("x-wait-jobs"),
              Command("x-step", {"count": 2})),
    schedule={"choices": [5, 2, 0, 3, 0]})


def fake_run(case):
    """'hang' iff there is an x-wait-jobs, an image node1, and the second choice is 2."""
    choices = list(case.schedule.get("choices", ()))
    hang = (any(c.execute == "x-wait-jobs" for c in case.commands)
            and any(i.node_name == "node1" for i in case.images)
            and len(choices) > 1 and choices[1] == 2)
    return Run("hang" if hang else "ok", tuple(choices) + (0,))


def test_minimize_drops_what_the_finding_does_not_need():
    result = minimize(CASE, run=fake_run)
    assert result.kind == "hang"
    assert result.case.commands == (Command("x-wait-jobs"),)
    assert result.case.images == (Image("node1"),)
    assert result.case.schedule == {"choices": [0, 2]}
    assert result.preemptions == 1
    assert result.runs < 100
    assert describe(result) == (f"hang: 4 -> 1 commands, 4 -> 1 images, 4 -> 0 writes, "
                                f"2 choices (1 preemption), {result.runs} runs")


def test_minimize_drops_optional_arguments_it_does_not_need():
    def run(case):
        stream = [c for c in case.commands if c.execute == "block-stream"]
        return Run("hang" if stream and "job-id" in stream[0].arguments else "ok", ())
    result = minimize(CASE, run=run)
    assert result.case.commands == (Command("block-stream", {"device": "node2", "job-id": "node2"}),)


def test_minimize_stops_at_its_run_budget():
    result = minimize(CASE, run=fake_run, max_runs=3)
    assert result.runs == 3
    assert fake_run(result.case).kind == "hang"


def test_minimize_refuses_a_case_without_a_finding():
    with pytest.raises(UsageError, match="gives verdict 'ok'; minimize needs a case that shows a finding"):
        minimize(CASE, run=lambda c: Run("ok", ()))
    with pytest.raises(UsageError, match="gives verdict 'hang', not the expected 'use-after-free'; "
                                         "correct its expect, or put other bugs back with --bugs"):
        minimize(CASE, kind="use-after-free", run=fake_run)


def test_with_choices_drops_trailing_zeros_and_preemptions_counts_the_rest():
    case = with_choices(CASE, [0, 3, 0, 1, 0, 0])
    assert case.schedule == {"choices": [0, 3, 0, 1]}
    assert preemptions(case) == 2
    assert preemptions(with_choices(CASE, [])) == 0


def test_a_new_schedule_keeps_the_cases_metadata_io_option():
    import dataclasses
    timed = dataclasses.replace(CASE, schedule={"policy": "random", "seed": 4, "metadata-io": True})
    assert with_choices(timed, [2, 0]).schedule == {"choices": [2], "metadata-io": True}


def test_dropped_commands_take_their_x_step_end_times_along_and_later_ones_move_up():
    from harness.minimize import without_commands
    case = case_mod.load("corpus/regressions/qemu-fidelity-slice-ends-when-the-sleep-does.json")
    times = case.schedule["x-step-until"]        # commands 1-4 are x-steps
    shorter = without_commands(case, 2, 4)
    assert [c.execute for c in shorter.commands] == ["block-commit", "x-step", "x-step", "block-commit"]
    assert shorter.schedule == {"choices": [], "x-step-until": {"1": times["1"], "2": times["4"]}}
    assert without_commands(case, 0, 1).schedule["x-step-until"] == {
        str(int(k) - 1): ns for k, ns in times.items()}
    # still a valid case, each time on an x-step (the expected replies are the full case's)
    import dataclasses
    case_mod.from_dict(dataclasses.replace(shorter, expect=None).to_dict())


@pytest.mark.parametrize("bug,kind", [("stream-prepare-no-drain", "use-after-free"),
                                      ("stream-prepare-ref-only", "wrong-backing")])
def test_the_030_regression_minimizes_within_the_seed_scenario(tmp_path, capsys, bug, kind):
    src = f"corpus/regressions/overlapping_5-{bug}.json"
    out = tmp_path / "min.json"
    assert main(["minimize", src, "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{kind}: 4 -> ")
    # a random schedule's dozens of departures come down to the one the race needs:
    # stop the commit before its last copy, so that it completes inside the stream's
    assert lines[0].endswith("choices (needs 1 forced decision: 1 preemption), " + lines[0].split()[-2] + " runs")
    assert lines[1] == "  preemption at 2.35: ran timer:node4 instead of io:drive0"
    assert lines[2] == f"wrote {out}"
    small = case_mod.load(str(out))
    assert len(small.images) <= 6 and len(small.commands) <= 5
    assert small.expect == {"verdict": kind}
    for _ in range(2):
        assert check(small, run_case(small)).kind == kind


def test_bounded_search_names_each_forced_decision_and_where_it_was():
    from harness.minimize import forced_decisions
    case = case_mod.load("corpus/regressions/overlapping_5-stream-prepare-no-drain.json")
    small = minimize(case, max_runs=3000)
    assert [d.describe() for d in small.forced] == ["preemption at 2.35: ran timer:node4 instead of io:drive0"]
    assert [d.describe() for d in forced_decisions(small.case)] == [d.describe() for d in small.forced]
    assert len(forced_decisions(case)) > 10       # the random schedule the regression recorded
    assert check(small.case, run_case(small.case)).kind == "use-after-free"


def test_a_decision_inside_a_wait_says_what_was_awaited_and_whose_completion_ran():
    from harness.choices import PreemptionSource
    case = case_mod.load("corpus/regressions/overlapping_5-stream-prepare-no-drain-stale-header.json")
    source = PreemptionSource(follow=case.schedule["choices"])
    run_case(case, source)
    inside = [d.where for d in source.decisions if "inside the wait for" in d.where]
    assert "inside the wait for bdrv_change_backing_file (stream job 'node4' completion)" in {
        w.split(' ', 1)[1] for w in inside}
    kinds = {d.kind for d in source.forced}
    assert kinds <= {"delay", "preemption", "reorder"} and "preemption" in kinds


def test_minimize_cli_default_output_and_bug_override(tmp_path, capsys):
    src = tmp_path / "case.json"
    case_mod.save(case_mod.load("corpus/regressions/overlapping_5-stream-prepare-ref-only.json"), str(src))
    assert main(["minimize", str(src), "--bugs", "stream-prepare-no-drain", "--max-runs", "50"]) == 0
    assert (tmp_path / "case-min.json").exists()
    assert case_mod.load(str(tmp_path / "case-min.json")).bugs == ("stream-prepare-no-drain",)


def test_minimize_cli_rejects_unknown_bugs_and_ok_cases(capsys):
    assert main(["minimize", "corpus/seeds/030/test_overlapping_5.json", "--bugs", "nope"]) == 2
    assert "unknown bug id 'nope'" in capsys.readouterr().err
    assert main(["minimize", "corpus/seeds/030/test_overlapping_1.json"]) == 2
    assert "gives verdict 'ok'" in capsys.readouterr().err
