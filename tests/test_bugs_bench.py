"""`blockfuzz bugs` and `blockfuzz bench` through the CLI."""
import json

from harness.cli import main
from reference.bugs import BUGS, UnknownBug, validate
import pytest


def test_bugs_lists_every_bug_with_its_fix(capsys):
    assert main(["bugs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("stream-prepare-no-drain  (undoes b1e1af394d, fixed in QEMU 7.0; "
                        "finding: use-after-free)")
    assert len(lines) == 2 * len(BUGS)


def test_bugs_ids(capsys):
    assert main(["bugs", "--ids"]) == 0
    assert capsys.readouterr().out.split() == list(BUGS)


def test_validate_rejects_unknown_ids():
    assert validate(["stream-prepare-ref-only"]) == ("stream-prepare-ref-only",)
    with pytest.raises(UnknownBug):
        validate(["nope"])


def test_bench_counts_runs_and_memory(capsys):
    assert main(["bench", "--runs", "3", "--repeat", "1", "--memory-runs", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"overlapping_5-9x16MiB", "overlapping_5-6x1MiB"}
    for r in out.values():
        assert r["runs"] == 3 and r["runs_per_s"] > 0
        assert r["memory"]["runs"] == 10


def test_bench_text(capsys):
    assert main(["bench", "--runs", "2", "--repeat", "1"]) == 0
    model, *lines = capsys.readouterr().out.splitlines()
    assert model == "model: pure Python"          # the suite runs the sources (tests/conftest.py)
    assert [l.split()[0] for l in lines] == ["overlapping_5-9x16MiB", "overlapping_5-6x1MiB"]
    assert all("runs/s" in l for l in lines)


def test_bench_workload_is_030s_scenario():
    from harness.bench import overlapping_5
    from harness.backends.reference import run_case
    from harness.choices import RandomSource
    case = overlapping_5(9, 16 << 20)
    obs = run_case(case, RandomSource(0))
    assert obs.finding is None
    assert obs.chain_names() == ["node8", "node7", "node6", "node5", "node4", "node0"]
    assert obs.replies == [{"return": {}}] * 4


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.startswith("blockfuzz: error: ")


def test_bench_engine_speed_replays_the_engines_own_cases(capsys):
    assert main(["bench", "--engines", "random,pct,atheris", "--speed", "--runs", "20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["engine"] for r in rows] == ["random", "pct"]      # atheris runs in libFuzzer
    for r in rows:
        assert r["runs"] == 20 and r["runs_per_s"] > 0 and r["bare_runs_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["bare_runs_per_s"] / r["runs_per_s"], rel=0.05)


def test_bench_engine_speed_text(capsys):
    assert main(["bench", "--engines", "random", "--speed", "--runs", "10"]) == 0
    model, line = capsys.readouterr().out.splitlines()
    assert model == "model: pure Python"
    assert line.startswith("random") and "the bare model on its 10 cases" in line


def test_bench_engines_compares_each_engine_with_random(capsys):
    assert main(["bench", "--engines", "random,pct", "--trials", "2", "--max-runs", "3000", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["bug"], r["engine"]) for r in rows] == [
        ("stream-prepare-no-drain", "random"), ("stream-prepare-no-drain", "pct"),
        ("stream-prepare-ref-only", "random"), ("stream-prepare-ref-only", "pct")]
    for r in rows:
        assert len(r["runs"]) == 2 and r["iqr_runs"][0] <= r["median_runs"] <= r["iqr_runs"][1] or r["found"] < 2
        assert ("a12_vs_random" in r) == (r["engine"] == "pct")
    assert all(0 <= r["a12_vs_random"] <= 1 and 0 < r["p_vs_random"] <= 1 for r in rows if r["engine"] == "pct")


@pytest.mark.parametrize("argv,message", [
    (["bench", "--engines", "random,foo"], "--engines: unknown engine 'foo'; known: random, pct, hypothesis, atheris"),
    (["bench", "--speed"], "--speed compares engines with the bare model: name them with --engines E,..."),
])
def test_bench_bad_engine_arguments_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"blockfuzz: error: {message}\n"


def test_ttff_script_repeat_times_the_same_campaigns_in_cpu_time(tmp_path):
    """scripts/ttff.py --repeat N runs each campaign N times: the same runs to the seed
    bug as without it (the engines are deterministic), the seconds the best CPU time."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BLOCKFUZZ_PURE="1")

    def ttff(*extra: str) -> dict:
        out = tmp_path / f"ttff{len(extra)}.json"
        subprocess.run([sys.executable, os.path.join(repo, "scripts", "ttff.py"), "--engine", "pct",
                        "--seeds", "1", "--first", "3", "--out", str(out), *extra],
                       cwd=repo, env=env, check=True, capture_output=True)
        return json.loads(out.read_text())

    once, best = ttff(), ttff("--repeat", "2")
    assert sorted(best) == ["stream-prepare-no-drain", "stream-prepare-ref-only"]
    for form, result in best.items():
        assert result["runs"] == once[form]["runs"] and result["missed"] == 0
        assert 0 < result["seconds"][0] < 60


def test_ttff_cpu_seconds_count_a_child_process():
    """atheris's campaign runs in a libFuzzer process of its own: the CPU time that
    ``--repeat`` takes counts the children the script waited for, which
    ``time.process_time`` leaves out."""
    import importlib.util
    import os
    import subprocess
    import sys
    import time
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("ttff", os.path.join(repo, "scripts", "ttff.py"))
    ttff = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttff)
    cpu0, own0 = ttff.cpu_seconds(), time.process_time()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    child = (ttff.cpu_seconds() - cpu0) - (time.process_time() - own0)
    assert child > 0.01


def test_ttff_cpu_seconds_resolve_a_millisecond():
    """A pct campaign takes 10-30 ms of CPU: ``--repeat`` must not count in 10 ms
    clock ticks."""
    import importlib.util
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("ttff", os.path.join(repo, "scripts", "ttff.py"))
    ttff = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttff)
    t0 = ttff.cpu_seconds()
    while (elapsed := ttff.cpu_seconds() - t0) == 0:
        pass
    assert elapsed < 0.001
