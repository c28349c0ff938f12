"""``blockfuzz fuzz``: engines, budgets, findings, the live status and the summary."""
import io
import json
import os
import subprocess
import sys
import tempfile

import pytest

from harness import campaign
from harness import case as case_mod
from harness.campaign import (
    Budget, ByteTarget, Campaign, Config, FuzzFinding, LiveStatus, Stats, merge_message, run_seed,
    status_line, summary, time_to_first_finding,
)
from harness.choices import RandomSource
from harness.cli import main
from harness.corpus import Outcome
from harness.generate import run_generated
from harness.learning import RecentShares

NO_DRAIN = "stream-prepare-no-drain"
REF_ONLY = "stream-prepare-ref-only"
needs_atheris = pytest.mark.skipif(not campaign.atheris_available(), reason="atheris is not installed")


def fuzz(capsys, *args):
    rc = main(["fuzz", *args])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def test_run_seed_keeps_campaign_seeds_apart():
    assert run_seed(0, 5) == 5 and run_seed(1, 5) == (1 << 32) + 5


def test_budget_by_runs_or_seconds():
    assert Budget(runs=3).spent(3, 0.0) and not Budget(runs=3).spent(2, 99.0)
    assert Budget(seconds=1.0).spent(0, 1.0) and not Budget(seconds=1.0).spent(10**9, 0.5)
    assert not Budget().spent(10**9, 10**9)


def test_a_random_campaign_on_the_fixed_model(capsys, tmp_path):
    rc, lines, _ = fuzz(capsys, "--runs", "150", "--findings", str(tmp_path / "f"))
    assert rc == 0
    assert lines[0] == "done: engine random, bugs none (the fixed model), seed 0"
    assert lines[1].startswith("runs 150 in ")
    assert lines[2].startswith("cells reached: ")
    assert lines[-1] == "findings: none (duplicates 0)"
    assert not (tmp_path / "f").exists()


def test_a_campaign_keeps_minimized_findings_that_replay(capsys, tmp_path):
    findings = tmp_path / "f"
    rc, lines, _ = fuzz(capsys, "--runs", "4000", "--bugs", NO_DRAIN, "--findings", str(findings))
    assert rc == 1
    assert any(line.startswith(("first finding: use-after-free at run ",
                                "first finding: wrong-backing at run ")) for line in lines)
    files = sorted(findings.iterdir())
    assert files and all(f.name.startswith(("use-after-free-", "wrong-backing-")) for f in files)
    # each kept finding says what its schedule needs beyond a non-preemptive one
    listed = [i for i, line in enumerate(lines) if line.startswith(("  use-after-free@", "  wrong-backing@"))]
    assert len(listed) == len(files)
    assert all(lines[i + 1].startswith("    needs ") for i in listed)
    for f in files:
        small = case_mod.load(str(f))
        assert len(small.images) <= 6 and len(small.commands) <= 5
        assert small.bugs == (NO_DRAIN,)
        assert small.description.startswith("signature: ")
    assert main(["replay", str(findings)]) == 0
    # a second campaign knows them: duplicates only
    rc, lines, _ = fuzz(capsys, "--runs", "4000", "--bugs", NO_DRAIN, "--findings", str(findings))
    assert sorted(findings.iterdir()) == files


def test_a_pct_campaign_prints_its_bound(capsys, tmp_path):
    rc, lines, _ = fuzz(capsys, "--engine", "pct", "--runs", "300", "--findings", str(tmp_path))
    assert rc == 0
    pct = lines[-1]
    assert pct.startswith("PCT: at most n = ")
    assert "depths 1..3; per run of a case, a depth-d bug is hit with p >= 1/(3*n*k^(d-1)): d=1: " in pct
    assert pct.endswith(" of the 300 runs were focus runs")


def test_pct_focus_spends_more_runs_on_rarer_cells():
    c = Campaign(Config(engine="pct"))
    recent = c.recent = RecentShares(half_life=1e12)       # every run weighs the same
    for i in range(1000):
        recent.add(["common"] * (i % 2 == 0) + ["rare"] * (i < 5) + ["less rare"] * (i < 50))
    energy = lambda cells: c.focus_energy(c.rarest_share(type("O", (), {"extra": {"cells": cells}})()))  # noqa: E731
    assert energy([]) == 0
    assert energy(["common"]) == 0
    assert energy(["common", "rare"]) == campaign.FOCUS_MAX
    assert energy(["less rare"]) == 4


def test_a_rare_pair_of_common_cells_makes_a_run_rare():
    """pct learns from and focuses on runs whose rarest cell *or pair of cells* is rare:
    the seed bug's precursor is two cells that each become common once learned."""
    assert campaign.scenarios(["b", "a", "c"]) == ["a", "b", "c", ("a", "b"), ("a", "c"), ("b", "c")]
    c = Campaign(Config(engine="pct"))
    run = lambda cells: type("O", (), {"extra": {"cells": cells}})()  # noqa: E731
    for cells in (["a"], ["b"], ["a", "b"], ["a"], ["b"]):
        c.observe(None, run(cells), Outcome("ok", "", ""))
    assert c.recent.reached.keys() == {"a", "b", ("a", "b")}
    assert c.rarest_share(run(["b", "a"])) == pytest.approx(1 / 5, rel=0.01)
    assert c.rarest_share(run(["a"])) == pytest.approx(3 / 5, rel=0.01)


def test_pct_calls_rare_what_recent_runs_rarely_reached():
    """What the grammar has learned to reach stops being rare, however rare it was
    early in the campaign: shares weigh runs by age (half-life HALF_LIFE runs)."""
    c = Campaign(Config(engine="pct"))
    run = lambda cells: type("O", (), {"extra": {"cells": cells}})()  # noqa: E731
    learned = 0
    for i in range(3000):                # "learned" reached by one run in 100, then every other
        cells = ["learned"] if (i % 100 == 0 if i < 1000 else i % 2 == 0) else ["other"]
        learned += cells == ["learned"]
        c.observe(None, run(cells), Outcome("ok", "", ""))
    assert learned / c.stats.runs < 0.35          # its share counted since the start
    assert c.rarest_share(run(["learned"])) == pytest.approx(0.5, abs=0.05)
    assert c.focus_energy(c.rarest_share(run(["learned"]))) == 0
    shares = RecentShares(half_life=10)
    for i in range(100_000):              # weights are rescaled before they overflow
        shares.add(["x"] if i % 4 == 0 else [])
    assert shares.rarest(["x"]) == pytest.approx(0.25, abs=0.05)
    assert shares.rarest([]) is None and RecentShares().rarest(["x"]) is None


def test_cell_feedback_gives_each_cell_and_pair_a_counter_of_its_own():
    class Atheris:                      # atheris's counter interface, recorded
        def __init__(self):
            self.next, self.hits = 7, []

        def _reserve_counter(self):
            self.next += 1
            return self.next - 1

        def _trace_branch(self, index):
            self.hits.append(index)

    atheris = Atheris()
    feedback = campaign.CellFeedback(atheris)
    assert feedback.pool[:2] == [7, 8] and len(feedback.pool) == campaign.CellFeedback.POOL
    nothing = case_mod.Case(images=(), commands=())
    run = lambda cells: type("O", (), {"extra": {"cells": cells}, "replies": [], "job_statuses": {}})()  # noqa: E731
    feedback.signal(nothing, run(["b", "a"]))        # a, b, (a, b)
    feedback.signal(nothing, run(["a"]))
    feedback.signal(nothing, run(["c", "a"]))        # a, c, (a, c)
    assert atheris.hits == [7, 8, 9, 7, 7, 10, 11]
    later = []                                       # atheris.Setup replaces its functions
    atheris._trace_branch = later.append
    feedback.signal(nothing, run(["c"]))
    assert later == [10] and len(atheris.hits) == 7


def test_outcomes_are_what_each_command_and_job_did_with_names_masked():
    from harness.case import Command
    case = case_mod.Case(images=(), commands=(Command("block-stream", {"device": "node3"}),
                                              Command("block-commit", {"device": "drive0"}),
                                              Command("x-wait-jobs")))
    observation = type("O", (), {
        "replies": [{"return": {}}, {"error": {"class": "GenericError",
                                              "desc": "Node 'node3' is busy: block device is in use by block job: stream"}}],
        "job_statuses": {"node3": ["created", "running", "concluded"]}})()
    assert campaign.outcomes(case, observation) == [
        ("block-stream", "ok"),
        ("block-commit", "Node '*' is busy: block device is in use by block job: stream"),
        ("job", ("created", "running", "concluded"))]


def test_feedback_is_cells_or_code(capsys):
    assert main(["fuzz", "--engine", "atheris", "--feedback", "lines"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--feedback" in err and "'cells', 'code'" in err


def test_a_hypothesis_campaign_shrinks_and_keeps_a_finding(capsys, tmp_path):
    rc, lines, _ = fuzz(capsys, "--engine", "hypothesis", "--runs", "4000", "--bugs", NO_DRAIN,
                        "--findings", str(tmp_path), "--seed", "5")
    assert rc == 1
    assert lines[0] == f"done: engine hypothesis, bugs {NO_DRAIN}, seed 5"
    stored = [case_mod.load(str(f)) for f in tmp_path.iterdir()]
    assert stored and all(c.expect["verdict"] in ("use-after-free", "wrong-backing") for c in stored)


def _count_hypothesis_cases(monkeypatch):
    """Wrap the hypothesis engine's per-case step: per example (its ``st.data()``),
    how many cases ran; and every finding, as (case, outcome, choice blocks)."""
    per_example: dict[object, int] = {}      # keyed by the example's data object itself
    found: list = []
    real = campaign._hypothesis_case

    def counted(c, data, out, *signature):
        per_example[data] = per_example.get(data, 0) + 1
        try:
            real(c, data, out, *signature)
        except campaign._Interesting:
            found.append(tuple(out))
            raise
    monkeypatch.setattr(campaign, "_hypothesis_case", counted)
    return per_example, found


def test_each_hypothesis_example_runs_a_batch_of_fresh_cases(monkeypatch):
    per_example, _ = _count_hypothesis_cases(monkeypatch)
    c = Campaign(Config(engine="hypothesis", budget=Budget(runs=3 * campaign.HYPOTHESIS_BATCH)))
    campaign.run_hypothesis(c)
    assert sorted(per_example.values()) == [campaign.HYPOTHESIS_BATCH] * 3
    assert c.stats.runs == 3 * campaign.HYPOTHESIS_BATCH


@pytest.mark.parametrize("runs", [1, 7, 13, 60])
def test_a_hypothesis_run_budget_is_met_exactly(capsys, runs):
    rc, lines, _ = fuzz(capsys, "--engine", "hypothesis", "--runs", str(runs))
    assert rc == 0 and lines[1].startswith(f"runs {runs} in ")


def test_hypothesis_campaigns_draw_their_blocks_whole(monkeypatch):
    """Each example's bytes come from harness.blocks's provider, in generation and while
    a finding is shrunk; outside a campaign hypothesis has its own again."""
    from hypothesis.internal.conjecture.providers import AVAILABLE_PROVIDERS, HypothesisProvider

    from harness.blocks import SUPPORTED, WholeBlockProvider
    if not SUPPORTED:
        pytest.skip("this hypothesis draws bytes in another form")
    providers = []
    real = campaign._hypothesis_case

    def seen(c, data, out, *signature):
        providers.append(type(data.conjecture_data.provider))
        real(c, data, out, *signature)
    monkeypatch.setattr(campaign, "_hypothesis_case", seen)
    c = Campaign(Config(engine="hypothesis", bugs=(NO_DRAIN,), seed=5, budget=Budget(runs=600),
                        minimize=False))
    campaign.run_hypothesis(c)
    assert c.signatures                            # it found, and shrank, something
    assert WholeBlockProvider in providers and set(providers) <= {WholeBlockProvider, HypothesisProvider}
    assert AVAILABLE_PROVIDERS["hypothesis"] is not WholeBlockProvider


def test_a_failing_case_is_shrunk_alone_by_hypothesis(monkeypatch):
    """The case that failed inside a batch is replayed on its own from an example
    database and shrunk there: every shrink example is one case, the result is
    simpler (shortlex) in hypothesis's choices, and it keeps the verdict."""
    from harness.backends.reference import run_case
    from harness.corpus import judge
    per_example, found = _count_hypothesis_cases(monkeypatch)
    before_shrink: list = []
    real_shrink = campaign._hypothesis_shrink

    def shrink(*args):
        before_shrink.append(len(per_example))
        return real_shrink(*args)
    monkeypatch.setattr(campaign, "_hypothesis_shrink", shrink)
    c = Campaign(Config(engine="hypothesis", bugs=(NO_DRAIN,), seed=4, budget=Budget(), minimize=False))
    result = None
    for chunk in range(20):
        result = campaign._hypothesis_chunk(c, run_seed(4, chunk))
        if result is not None:
            break
    assert result is not None
    first_blocks, last_blocks = found[0][2], found[-1][2]
    shrinking = list(per_example.values())[before_shrink[0]:]
    assert 1 <= list(per_example.values())[before_shrink[0] - 1] <= campaign.HYPOTHESIS_BATCH
    assert len(found) > 1 and len(shrinking) >= len(found) - 1 and set(shrinking) == {1}
    assert (len(last_blocks), last_blocks) < (len(first_blocks), first_blocks)
    case, outcome = result
    kind = found[0][1].kind
    assert kind in ("use-after-free", "wrong-backing")
    assert case == found[-1][0] and outcome.kind == kind
    assert judge(case, run_case(case)).kind == kind


def test_the_ci_profile_is_used_when_ci_is_set(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CI", "1")
    rc, lines, _ = fuzz(capsys, "--engine", "hypothesis", "--runs", "60", "--findings", str(tmp_path))
    assert rc == 0 and lines[1].startswith("runs ")


def test_jobs_fan_out_over_processes(capsys, tmp_path):
    rc, lines, _ = fuzz(capsys, "--engine", "pct", "--runs", "200", "--jobs", "2", "--bugs", REF_ONLY,
                        "--findings", str(tmp_path))
    assert lines[1].startswith("runs 200 in ")


def test_merge_message_accounts_for_worker_reports(tmp_path):
    c = Campaign(Config())
    assert merge_message(c, ("runs", 7, 3, 12)) == 0
    assert merge_message(c, ("cells", ["stream_prepare ran"])) == 0
    case, _, _ = run_generated(RandomSource(0))
    assert merge_message(c, ("finding", case.to_json(), "hang", "x", "m")) == 0
    assert merge_message(c, ("done",)) == 1
    assert (c.stats.runs, c.stats.pct_threads, c.stats.pct_steps) == (7, 3, 12)
    assert c.stats.cells.first == {"stream_prepare ran": 7}
    assert c.stats.kinds == {"hang": 1} and c.stats.first.kind == "hang"


def test_a_max_time_budget_stops_the_campaign(capsys, tmp_path):
    rc, lines, _ = fuzz(capsys, "--max-time", "0.3", "--findings", str(tmp_path))
    assert rc == 0 and lines[1].startswith("runs ")


def test_the_corpus_is_replayed_first(capsys, tmp_path):
    rc, lines, _ = fuzz(capsys, "--runs", "5", "--corpus", "corpus/seeds", "--findings", str(tmp_path))
    assert rc == 0
    assert lines[1].endswith(", after 9 corpus cases")


def test_a_corpus_case_that_shows_a_finding_is_kept(capsys, tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    src = case_mod.load("corpus/regressions/overlapping_5-stream-prepare-no-drain.json")
    case_mod.save(src, str(corpus / "x.json"))
    rc, lines, _ = fuzz(capsys, "--runs", "1", "--corpus", str(corpus), "--bugs", NO_DRAIN,
                        "--findings", str(tmp_path / "f"), "--no-minimize")
    assert rc == 1
    assert any(line.startswith("  use-after-free@bdrv_set_backing_hd: ") for line in lines)


def test_ctrl_c_keeps_what_was_written_and_prints_the_summary(monkeypatch, capsys, tmp_path):
    def interrupted(c, work_dir="."):
        campaign.run_random(c) if c.stats.runs else None
        raise KeyboardInterrupt
    monkeypatch.setattr(campaign, "run_campaign", interrupted)
    rc, lines, _ = fuzz(capsys, "--runs", "10", "--findings", str(tmp_path))
    assert rc == 130
    assert lines[0] == "interrupted: engine random, bugs none (the fixed model), seed 0"


@pytest.mark.parametrize("args,message", [
    (["--bugs", "nope"], "unknown bug id 'nope'; `blockfuzz bugs` lists them"),
    (["--jobs", "0"], "--jobs, --depth and --runs must be at least 1"),
    (["--max-time", "0"], "--max-time must be positive"),
    (["--corpus", "no/such/dir"], "--corpus no/such/dir: not a directory"),
    (["--runs", "5", "--max-time", "1"], "not allowed with argument"),
])
def test_bad_usage_is_one_line_and_exit_2(capsys, args, message):
    rc, _, err = fuzz(capsys, *args)
    assert rc == 2 and message in err and err.count("\n") == 1


def test_the_atheris_engine_needs_atheris(monkeypatch, capsys):
    monkeypatch.setattr(campaign, "atheris_available", lambda: False)
    rc, _, err = fuzz(capsys, "--engine", "atheris", "--runs", "5")
    assert rc == 2
    assert "the atheris engine needs atheris" in err and "the hypothesis, random and pct engines work" in err


@needs_atheris
def test_the_atheris_engine_runs_the_target_in_a_subprocess(capsys, tmp_path, monkeypatch):
    # the mechanics only: whether 300 runs find the bug depends on libFuzzer's own
    # randomness; tests/quality gives atheris the budget to find it
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rc, lines, _ = fuzz(capsys, "--engine", "atheris", "--runs", "300", "--bugs", NO_DRAIN,
                        "--findings", str(tmp_path / "f"))
    assert lines[1].startswith("runs 300 in ")
    assert rc in (0, 1)
    found = [f.name for f in (tmp_path / "f").iterdir() if f.suffix == ".json"]
    assert (rc == 1) == bool(found)
    assert len(os.listdir(tmp_path / "f" / "atheris-corpus")) >= campaign.ATHERIS_SEEDS
    assert os.listdir(tmp_path / "tmp") == []      # the workers' staging went with them


def test_an_atheris_worker_that_fails_stops_the_campaign_and_keeps_its_log(capsys, tmp_path, monkeypatch):
    # a worker that dies as libFuzzer does on an uncaught exception in the target
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(campaign, "atheris_available", lambda: True)
    monkeypatch.setattr(campaign, "atheris_command", lambda config, corpus, w: [
        sys.executable, "-c", "import sys; print('==1== ERROR: libFuzzer: deadly signal', file=sys.stderr); "
                              "sys.exit(77)"])
    rc, _, err = fuzz(capsys, "--engine", "atheris", "--runs", "10", "--findings", str(tmp_path / "f"))
    assert rc == 2 and err.count("\n") == 1
    assert "atheris worker 0 exited with code 77 (==1== ERROR: libFuzzer: deadly signal); " \
           "libFuzzer's output is in " in err
    log = err.rstrip().rsplit(" ", 1)[1]
    assert os.path.dirname(os.path.dirname(log)) == str(tmp_path)
    with open(log) as f:
        assert "deadly signal" in f.read()


@needs_atheris
def test_the_fuzz_target_runs_directly_with_libfuzzer_flags(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run([sys.executable, campaign.TARGET, str(corpus), "-atheris_runs=40"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, BLOCKFUZZ_FINDINGS=str(tmp_path / "f")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Done 40 " in proc.stderr


def test_atheris_command_line():
    config = Config(engine="atheris", seed=2, budget=Budget(runs=101, seconds=9.5), jobs=2)
    assert campaign.atheris_command(config, "cdir", 1)[1:] == [
        campaign.TARGET, "cdir", f"-seed={run_seed(2, 1) % (1 << 31) + 1}", "-max_len=1024",
        "-print_final_stats=0", "-atheris_runs=50", "-max_total_time=9"]


# -- the atheris target's in-process half ---------------------------------------------

def finding_input(bug: str, kind: str = "use-after-free") -> bytes:
    """Bytes whose case shows a ``kind`` finding with ``bug`` put back."""
    rng = RandomSource(0).rng
    while True:
        data = bytes(rng.randrange(256) for _ in range(200))
        target = ByteTarget((bug,), "/nonexistent", keep_going=True)
        target.findings_dir = None
        from harness.choices import BytesSource
        if run_generated(BytesSource(data), (bug,))[2].kind == kind:
            return data


def test_byte_target_writes_a_finding_and_raises_for_libfuzzer(tmp_path):
    data = finding_input(NO_DRAIN)
    out = io.StringIO()
    target = ByteTarget((NO_DRAIN,), str(tmp_path), status=True, out=out)
    with pytest.raises(FuzzFinding, match="^use-after-free"):
        target(data)
    status = json.loads(out.getvalue().splitlines()[-1][len(campaign.STATUS_PREFIX):])
    assert status["runs"] == 1 and status["finding"]["kind"] == "use-after-free"
    saved = case_mod.load(status["finding"]["path"])
    assert saved.expect == {"verdict": "use-after-free"} and saved.bugs == (NO_DRAIN,)


def test_byte_target_keeps_going_and_writes_each_signature_once(tmp_path):
    data = finding_input(NO_DRAIN)
    target = ByteTarget((NO_DRAIN,), str(tmp_path), keep_going=True)
    target(data)
    target(data)
    target(b"")
    assert target.runs == 3 and len(os.listdir(tmp_path)) == 1


def test_byte_target_counts_only_the_signature_it_is_told(tmp_path):
    target = ByteTarget((NO_DRAIN,), str(tmp_path), only="wrong-backing@nowhere")
    target(finding_input(NO_DRAIN))          # not raised: another signature
    assert os.listdir(tmp_path) == []


def test_byte_target_runs_past_a_documented_behaviour(tmp_path):
    """BLOCKFUZZ_KNOWN: a known signature is neither written nor raised, so a campaign
    timing the seed bug does not stop at QEMU 7.2's own commit use-after-free."""
    from harness.choices import BytesSource
    data = finding_input(NO_DRAIN)
    signature = run_generated(BytesSource(data), (NO_DRAIN,))[2].signature
    target = ByteTarget((NO_DRAIN,), str(tmp_path), known=frozenset({signature}))
    target(data)
    assert os.listdir(tmp_path) == [] and target.runs == 1


def test_time_to_first_finding_runs_past_documented_behaviours():
    """A random campaign on the fixed model meets the commit use-after-free of
    corpus/known at run 1,152 (seed 1); timing a bug, it is run past."""
    assert time_to_first_finding("random", "", 1, 1200, known=frozenset())[2] == "use-after-free"
    assert time_to_first_finding("random", "", 1, 1200)[0::2] == (1200, "ok")


# -- timing and status ---------------------------------------------------------------

def test_time_to_first_finding():
    runs, seconds, verdict = time_to_first_finding("random", NO_DRAIN, 0, 2000)
    assert verdict == "use-after-free" and 1 <= runs <= 2000 and seconds > 0
    assert time_to_first_finding("random", NO_DRAIN, 0, 3, signature="hang@nowhere")[0::2] == (3, "ok")


def test_random_runs_in_batches_but_counts_and_stops_run_by_run(monkeypatch):
    """The random engine runs RANDOM_BATCH cases at a time; its run budget is still met
    exactly, with no case run past it, and its first finding is the run the one-by-one
    loop would find first."""
    batches = []
    real = campaign.run_generated_batch
    monkeypatch.setattr(campaign, "run_generated_batch",
                        lambda sources, bugs: (batches.append(len(sources)), real(sources, bugs))[1])
    for runs in (1, campaign.RANDOM_BATCH + 1, 2 * campaign.RANDOM_BATCH - 1):
        batches.clear()
        c = Campaign(Config(seed=3, budget=Budget(runs=runs), minimize=False))
        campaign.run_random(c)
        assert c.stats.runs == sum(batches) == runs
        assert max(batches) <= campaign.RANDOM_BATCH
    seed = 2
    first = next(i for i in range(1000)
                 if run_generated(RandomSource(run_seed(seed, i)), (REF_ONLY,))[2].kind != "ok")
    assert first > campaign.RANDOM_BATCH                       # not in the first batch
    runs, _, verdict = time_to_first_finding("random", REF_ONLY, seed, 1000)
    assert (runs, verdict != "ok") == (first + 1, True)
    c = Campaign(Config(bugs=(REF_ONLY,), seed=seed, budget=Budget(runs=1000), minimize=False,
                        stop_at_first=True))
    campaign.run_random(c)
    assert c.stats.runs == first + 1                           # none of its batch after it


@pytest.mark.parametrize("runs", [40, 301])
def test_pct_focus_runs_replay_and_meet_the_run_budget(monkeypatch, runs):
    """Focus runs all run before any is judged: each kept run's case must still replay,
    from its recorded schedule alone, to the observation it was counted with, and a
    run budget that ends inside a focus batch is met exactly."""
    from harness.backends.reference import run_case
    from harness.corpus import judge
    c = Campaign(Config(engine="pct", bugs=(NO_DRAIN,), seed=1, budget=Budget(runs=runs), minimize=False))
    seen = []
    real = c.observe
    monkeypatch.setattr(c, "observe", lambda case, obs, outcome: (seen.append((case, obs, outcome)),
                                                                   real(case, obs, outcome)))
    campaign.run_pct(c)
    assert c.stats.runs == runs and c.stats.focus_runs > 0
    for case, obs, outcome in seen:
        again = run_case(case)
        assert (again.events, judge(case, again)) == (obs.events, outcome)


def test_a_focus_run_that_shows_the_oracle_what_an_earlier_one_did_is_not_judged_again(monkeypatch):
    """Of 030's overlapping_5 under 24 PCT schedules, the oracle is asked once per
    distinct thing it would read (replies, events, end state, finding); every run still
    gets the outcome the oracle gives it."""
    from harness.corpus import judge
    case = case_mod.load("corpus/seeds/030/test_overlapping_5.json")
    c = Campaign(Config(engine="pct", seed=3, budget=Budget(runs=100), minimize=False))
    asked, seen = [], []
    monkeypatch.setattr(campaign, "judge", lambda case, obs: (asked.append(obs), judge(case, obs))[1])
    monkeypatch.setattr(c, "observe", lambda case, obs, outcome: seen.append((obs, outcome)))
    campaign._focus(c, case, 0, 24)
    shown = {repr((o.replies, o.events, o.finding, o.data, o.chain, o.jobs_left)) for o, _ in seen}
    assert (len(seen), len(asked)) == (24, len(shown))
    assert 1 < len(shown) < 24
    assert all(outcome == judge(case, obs) for obs, outcome in seen)


def test_status_line_and_summary_name_what_happened():
    c = Campaign(Config(engine="pct", bugs=(REF_ONLY,)))
    c.stats = Stats(started=c.stats.started, runs=42)
    c.stats.kinds.update({"wrong-backing": 1})
    line = status_line(c)
    assert line.startswith("pct: 42 runs  ") and "findings: wrong-backing 1" in line
    c.found(case_mod.load("corpus/seeds/030/test_overlapping_5.json"), Outcome("hang", "x"))
    assert c.stats.first.runs == 42
    lines = campaign.summary(c)
    assert lines[0] == f"done: engine pct, bugs {REF_ONLY}, seed 0"
    assert "first finding: hang at run 42, after " in "\n".join(lines)


def test_live_status_draws_only_on_a_terminal():
    from rich.console import Console
    quiet = Console(file=io.StringIO(), force_terminal=False)
    with LiveStatus(quiet) as live:
        live.update(Campaign(Config()))
    assert quiet.file.getvalue() == ""
    loud = Console(file=io.StringIO(), force_terminal=True)
    with LiveStatus(loud) as live:
        live.update(Campaign(Config()))
        assert live.live is not None


def test_cell_coverage_keeps_the_first_run_per_cell_and_names_what_is_missing():
    from harness.cells import REQUIRED, CellCoverage
    cov = CellCoverage()
    assert cov.add(["stream_prepare ran"], 0) == ["stream_prepare ran"]
    assert cov.add(["stream_prepare ran", "a job completed inside a drain"], 7) == ["a job completed inside a drain"]
    assert len(cov) == 2
    assert cov.missing() == [c for c in REQUIRED if c not in cov.first]
    assert cov.lines()[:2] == ["  stream_prepare ran  (the corpus)", "  a job completed inside a drain  (first at run 7)"]
    assert cov.lines()[2:] == [f"  NOT REACHED: {c}" for c in cov.missing()]


def test_known_signatures_are_counted_but_never_reported(tmp_path):
    from harness.campaign import known_signatures
    known = known_signatures("corpus/known")
    assert known == {"hang@a guest write on a drained device", "use-after-free@commit_abort",
                     "wrong-backing@backing:node-skipped", "use-after-free@bdrv_filter_or_cow_bs",
                     "crash@resume:AssertionError", "wrong-backing@backing:header-after-failed-stream"}
    c = Campaign(Config(known=known))
    case = case_mod.load("corpus/known/guest-write-waits-for-pending-active-commit.json")
    c.found(case, Outcome("hang", "a guest write on a drained device", "no progress"))
    c.found(case, Outcome("hang", "a guest write on a drained device", "no progress"))
    assert c.stats.known == {"hang@a guest write on a drained device": 2}
    assert not c.stats.kinds and c.stats.first is None and c.stats.duplicates == 0
    c.found(case, Outcome("crash", "elsewhere", "boom"))
    assert c.stats.kinds == {"crash": 1}
    assert "  known, not reported: hang@a guest write on a drained device (2 runs)" in summary(c)


def test_a_campaign_on_the_fixed_model_finds_qemus_commit_use_after_free_from_scratch():
    """The grammar's over-long backing-file (cases with error forms) reaches QEMU 7.2's
    commit_abort use-after-free (corpus/known): a random campaign on the fixed model
    finds it, and the case replays to that verdict; given --known corpus/known, the
    same campaign counts it and reports nothing it documents."""
    from harness.campaign import known_signatures, replay_outcome, run_random
    seen: list = []
    c = Campaign(Config(engine="random", seed=1, budget=Budget(runs=1200), minimize=False),
                 sink=seen.append)
    run_random(c)
    found = {(m[2], m[3]): m[1] for m in seen if m[0] == "finding"}
    assert ("use-after-free", "commit_abort") in found
    case = case_mod.from_dict(json.loads(found[("use-after-free", "commit_abort")]))
    assert replay_outcome(case).signature == "use-after-free@commit_abort"
    known = known_signatures("corpus/known")
    c = Campaign(Config(engine="random", seed=1, budget=Budget(runs=1200), minimize=False,
                        known=known))
    run_random(c)
    assert c.stats.known["use-after-free@commit_abort"] >= 1
    assert not c.signatures & known


def test_a_known_signature_is_not_a_new_finding_for_hypothesis_either():
    """hypothesis's test raises only for a new finding; a documented one is counted
    through observe like any run (it once set the campaign's first finding)."""
    c = Campaign(Config(engine="hypothesis", known=frozenset({"hang@a guest write on a drained device"})))
    assert not c.new_finding(Outcome("hang", "a guest write on a drained device", "no progress"))
    assert not c.new_finding(Outcome("ok", "", ""))
    crash = Outcome("crash", "elsewhere", "boom")
    assert c.new_finding(crash)
    c.signatures.add(crash.signature)
    assert not c.new_finding(crash)


def test_known_takes_several_directories_and_skips_cases_without_a_finding(tmp_path):
    """--known may be given more than once: the signatures of every directory; a case
    that replays without a finding adds none (an "ok" would count nothing anyway)."""
    from harness.campaign import known_signatures, replay_outcome
    case_mod.save(case_mod.load("corpus/seeds/030/test_overlapping_5.json"), str(tmp_path / "ok.json"))
    case = case_mod.load("corpus/regressions/overlapping_5-stream-prepare-no-drain.json")
    case_mod.save(case, str(tmp_path / "uaf.json"))
    assert known_signatures([str(tmp_path)]) == {replay_outcome(case).signature}
    assert known_signatures(["corpus/known", str(tmp_path)]) == \
        known_signatures("corpus/known") | {replay_outcome(case).signature}


def test_known_must_be_a_directory(capsys, tmp_path):
    assert main(["fuzz", "--runs", "1", "--known", "corpus/known", "--known", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--known" in err and "not a directory" in err


def test_needs_names_each_forced_decision_or_says_there_is_none():
    from harness.campaign import needs
    from harness.choices import Decision
    from harness.minimize import Minimized
    case = case_mod.load("corpus/seeds/030/test_overlapping_5.json")
    delay = Decision(0, 5, "between", None, 0, 2, False, "0.0")
    assert needs(Minimized(case, "hang", 1, case, (delay,))) == (
        "delay at 0.0: the loop ran 2 iterations before the next command",)
    assert needs(Minimized(case, "hang", 1, case, ())) == ("nothing beyond a non-preemptive schedule",)


def test_atheris_status_with_a_known_finding_is_not_the_first_finding():
    import queue
    known = "hang@a guest write on a drained device"
    c = Campaign(Config(engine="atheris", known=frozenset({known})))
    lines = queue.Queue()
    path = "corpus/known/guest-write-waits-for-pending-active-commit.json"
    finding = {"path": path, "kind": "hang", "where": "a guest write on a drained device",
               "message": "no progress", "seconds": 1.5}
    for status in ({"runs": 10, "finding": finding}, {"runs": 20}, None):
        lines.put((0, status))
    campaign._follow_atheris(c, lines, workers=1)
    assert c.stats.first is None and c.stats.known == {known: 1} and c.stats.runs == 20
    lines.put((0, {"runs": 30, "finding": dict(finding, kind="crash", where="elsewhere")}))
    lines.put((0, None))
    campaign._follow_atheris(c, lines, workers=1)
    assert c.stats.first == campaign.FirstFinding(30, 1.5, "crash")


def test_the_summary_names_the_model_atheris_ran(monkeypatch):
    import blockfuzz_fast
    monkeypatch.setattr(blockfuzz_fast, "describe", lambda: "compiled (Cython)")
    assert campaign.model_build(Config(engine="atheris")) == "compiled (Cython)"
    assert campaign.model_build(Config(engine="atheris", feedback="code")) == "pure Python"
    assert campaign.model_build(Config(engine="pct", feedback="code")) == "compiled (Cython)"


def test_a_campaign_runs_with_the_heap_it_began_with_frozen_and_thaws_it_after():
    import gc
    frozen_during: list[int] = []
    c = Campaign(Config(engine="random", seed=0, budget=Budget(runs=3), minimize=False),
                 on_progress=lambda c: frozen_during.append(gc.get_freeze_count()))
    before = gc.get_freeze_count()
    campaign.run_campaign(c)
    assert len(frozen_during) == 3 and min(frozen_during) > before
    assert gc.get_freeze_count() == before


def test_a_jobs_worker_runs_with_its_heap_frozen_and_thaws_it_after(monkeypatch):
    import gc
    import queue
    frozen_during: list[int] = []
    monkeypatch.setitem(campaign.ENGINE_LOOPS, "random",
                        lambda c, first, stride: frozen_during.append(gc.get_freeze_count()))
    before = gc.get_freeze_count()
    out: queue.Queue = queue.Queue()
    campaign._worker(Config(engine="random", seed=0, budget=Budget(runs=3), minimize=False), 0, 1, out)
    assert len(frozen_during) == 1 and frozen_during[0] > before
    assert gc.get_freeze_count() == before
    assert out.get_nowait()[0] == "runs" and out.get_nowait() == ("done",)
