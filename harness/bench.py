"""``blockfuzz bench``: how fast the model runs, counted in runs per second.

Two workloads, as the project's speed targets name them: 030's
test_overlapping_5 (nine 16 MiB images) and a six-image 1 MiB version of it.
Each runs ``--runs`` times under consecutive scheduler seeds, best of
``--repeat``, timed in the process's CPU time: the targets are runs per second
on one core, and CPU time does not count what other processes on the machine
take from it, as the wall clock does. Memory is sampled (tracemalloc) to show it
stays flat.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from typing import Any, Callable

import blockfuzz_fast

from harness.backends.reference import run_case
from harness.case import Case, Command, Image, Write
from harness.choices import RandomSource

M = 1 << 20


def overlapping_5(images: int, size: int) -> Case:
    """030 test_overlapping_5 on ``images`` images of ``size`` bytes (030: 9 x 16 MiB)."""
    imgs = [Image("node0", size, 65536, format="raw", filename="node0.raw")]
    for i in range(1, images):
        writes = ()
        if i % 2:
            off = (size // 16) * ((12 - 4 * (i // 2)) % 16)
            writes = (Write(off, size // 8, 0xFF),)
        imgs.append(Image(f"node{i}", size, 65536, writes))
    cmds = (
        Command("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                                 "filter-node-name": "commit-filter", "speed": 1048576}),
        Command("block-stream", {"device": "node4", "base-node": "commit-filter", "job-id": "node4"}),
        Command("block-job-set-speed", {"device": "drive0", "speed": 0}),
        Command("x-wait-jobs"),
    )
    return Case(tuple(imgs), cmds)


WORKLOADS = {
    "overlapping_5-9x16MiB": lambda: overlapping_5(9, 16 * M),
    "overlapping_5-6x1MiB": lambda: overlapping_5(6, 1 * M),
}


def measure(case: Case, runs: int, repeat: int) -> dict:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        for seed in range(runs):
            run_case(case, RandomSource(seed))
        best = min(best, time.process_time() - t0)
    return {"runs": runs, "seconds": round(best, 4), "runs_per_s": round(runs / best, 1)}


def memory_growth(case: Case, runs: int) -> dict:
    """Live traced memory (bytes) after the first tenth of the runs and at the end."""
    tracemalloc.start()
    mark = max(1, runs // 10)
    first = 0
    for seed in range(runs):
        run_case(case, RandomSource(seed))
        if seed + 1 == mark:
            gc.collect()
            first = tracemalloc.get_traced_memory()[0]
    gc.collect()
    last = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"after_bytes": first, "end_bytes": last, "runs": runs}


ENGINE_BUGS = (("stream-prepare-no-drain", "use-after-free"),
               ("stream-prepare-ref-only", "wrong-backing"))


def time_to_bug(engines: list[str], seeds: int, max_runs: int) -> list[dict]:
    """FuzzBench-style time to first finding: for each engine and each form of the
    seed bug, ``seeds`` campaigns from an empty corpus until the bug's finding kind
    first shows; the median, the spread and the interquartile range in runs and
    seconds, and against random (when it is among ``engines``) Â12 and the
    Mann-Whitney p-value on runs (:mod:`harness.stats`). A campaign that found
    nothing counts as ``max_runs``."""
    from statistics import median

    from harness.campaign import time_to_first_finding
    from harness.stats import a12, iqr, mann_whitney_p
    rows = []
    for bug, kind in ENGINE_BUGS:
        for engine in engines:
            trials = [time_to_first_finding(engine, bug, seed, max_runs, kind) for seed in range(seeds)]
            all_runs = [r if v == kind else max_runs for r, _, v in trials]
            found = [(r, s) for r, s, v in trials if v == kind]
            runs = sorted(r for r, _ in found) or [max_runs]
            secs = sorted(s for _, s in found) or [float("nan")]
            rows.append({"bug": bug, "engine": engine, "found": len(found), "trials": seeds,
                         "median_runs": median(runs), "min_runs": runs[0], "max_runs": runs[-1],
                         "iqr_runs": iqr(sorted(all_runs)), "runs": all_runs,
                         "median_s": round(median(secs), 3), "min_s": round(secs[0], 3),
                         "max_s": round(secs[-1], 3)})
        base = next((r for r in rows if r["bug"] == bug and r["engine"] == "random"), None)
        for r in rows:
            if base is not None and r["bug"] == bug and r is not base:
                r["a12_vs_random"] = round(a12(r["runs"], base["runs"]), 2)
                r["p_vs_random"] = round(mann_whitney_p(r["runs"], base["runs"]), 4)
    return rows


def print_time_to_bug(rows: list[dict]) -> None:
    base = {r["bug"]: r["median_s"] for r in rows if r["engine"] == "random"}
    print(f"{'bug':26} {'engine':10} {'found':>6} {'median runs':>12} {'IQR runs':>12} {'runs min-max':>14} "
          f"{'median s':>9} {'s min-max':>14} {'vs random':>9} {'A12':>5} {'p':>7}")
    for r in rows:
        speedup = base.get(r["bug"], 0) / r["median_s"] if r["median_s"] else float("nan")
        q1, q3 = r["iqr_runs"]
        versus = (f"{r['a12_vs_random']:>5.2f} {r['p_vs_random']:>7.4f}" if "a12_vs_random" in r
                  else f"{'-':>5} {'-':>7}")
        print(f"{r['bug']:26} {r['engine']:10} {r['found']:>3}/{r['trials']:<2} {r['median_runs']:>12.0f} "
              f"{f'{q1:.0f}-{q3:.0f}':>12} {r['min_runs']:>6}-{r['max_runs']:<7} {r['median_s']:>9.3f} "
              f"{r['min_s']:>6.2f}-{r['max_s']:<7.2f} {speedup:>8.1f}x {versus}")


def engine_speed(engine: str, runs: int, seed: int = 0, repeat: int = 1) -> dict:
    """An engine's runs/s on the fixed model, and the bare model's on the very cases
    the engine ran (their recorded schedules replayed by ``run_case`` alone): what the
    engine adds per run is generation, judging and its own bookkeeping.

    A first, untimed campaign collects the cases (the engines are deterministic: each
    campaign with the same seed runs the same ones), which are then frozen out of the
    garbage collector's sight, so that neither timing pays for retained objects. Then,
    ``repeat`` times, a fresh campaign is timed and the cases are replayed; each side
    counts its best time. Both are timed in the process's CPU time
    (:func:`time.process_time`), not the wall clock, and side by side: on a machine busy
    with other work the wall clock counts the time the process waited for a core, and
    a single timing of either side moved the ratio by a tenth or more."""
    from harness.campaign import ENGINE_LOOPS, Budget, Campaign, Config, documented_signatures
    known = documented_signatures()

    def campaign() -> Campaign:
        return Campaign(Config(engine=engine, seed=seed, budget=Budget(runs=runs), minimize=False,
                               known=known))

    cases = _cases_of(campaign())
    engine_s = bare_s = float("inf")
    gc.collect()
    gc.freeze()
    try:
        for _ in range(repeat):
            c = campaign()
            engine_s = min(engine_s, _cpu_seconds(ENGINE_LOOPS[engine], c))
            bare_s = min(bare_s, _cpu_seconds(_replay, cases))
    finally:
        gc.unfreeze()
    return {"engine": engine, "runs": c.stats.runs, "runs_per_s": round(c.stats.runs / engine_s),
            "bare_runs_per_s": round(len(cases) / bare_s),
            "ratio": round((len(cases) / bare_s) / (c.stats.runs / engine_s), 2)}


def _cpu_seconds(function: Callable[[Any], Any], argument: Any) -> float:
    """The process CPU time ``function(argument)`` takes."""
    gc.collect()
    t0 = time.process_time()
    function(argument)
    return time.process_time() - t0


def _replay(cases: list[Case]) -> None:
    for case in cases:
        run_case(case)


def _cases_of(c) -> list[Case]:
    """Every case campaign ``c`` runs, with the schedule it ran under."""
    from harness.campaign import ENGINE_LOOPS
    cases: list[Case] = []
    observe = c.observe

    def keep(case, observation, outcome):
        cases.append(case)
        observe(case, observation, outcome)

    c.observe = keep
    ENGINE_LOOPS[c.config.engine](c)
    return cases


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=2000, help="runs per workload (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="best of N repetitions (default 3)")
    p.add_argument("--memory-runs", type=int, default=0,
                   help="also trace memory over this many runs (e.g. 100000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--engines", metavar="E,...", default="",
                   help="instead: time to first finding of each seed bug for these engines "
                        "(random,pct,hypothesis,atheris)")
    p.add_argument("--trials", type=int, default=10, help="--engines: campaigns per cell (default 10)")
    p.add_argument("--max-runs", type=int, default=40000,
                   help="--engines: run budget of one campaign (default 40000)")
    p.add_argument("--speed", action="store_true",
                   help="--engines: instead, each engine's runs/s on the fixed model next to the "
                        "bare model's on the same cases (--runs of them; atheris runs in libFuzzer "
                        "and is left out: it prints its own exec/s), each the best of --repeat, "
                        "in CPU time")


def engine_list(text: str) -> list[str]:
    """``--engines``'s comma-separated names, each one of the campaign's engines."""
    from harness.campaign import ENGINES
    from harness.errors import UsageError
    engines = [e for e in text.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            raise UsageError(f"--engines: unknown engine '{e}'; known: {', '.join(ENGINES)}")
    return engines


def run(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    if args.speed and not args.engines:
        raise UsageError("--speed compares engines with the bare model: name them with --engines E,...")
    if args.engines and args.speed:
        engines = [e for e in engine_list(args.engines) if e != "atheris"]
        speeds = [engine_speed(e, args.runs, repeat=args.repeat) for e in engines]
        if args.json:
            print(json.dumps(speeds, indent=2))
            return 0
        print(f"model: {blockfuzz_fast.describe()}")
        for r in speeds:
            print(f"{r['engine']:11} {r['runs_per_s']:>6} runs/s; the bare model on its "
                  f"{r['runs']} cases {r['bare_runs_per_s']:>6} runs/s ({r['ratio']}x; CPU time)")
        return 0
    if args.engines:
        rows = time_to_bug(engine_list(args.engines), args.trials, args.max_runs)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_time_to_bug(rows)
        return 0
    results = {}
    for name, make in WORKLOADS.items():
        case = make()
        results[name] = measure(case, args.runs, args.repeat)
        if args.memory_runs:
            results[name]["memory"] = memory_growth(case, args.memory_runs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"model: {blockfuzz_fast.describe()}")
        for name, r in results.items():
            line = f"{name:26} {r['runs_per_s']:>9.1f} runs/s  ({r['runs']} runs in {r['seconds']} s of CPU time)"
            if "memory" in r:
                mem = r["memory"]
                line += (f"  live memory {mem['after_bytes']} B after {mem['runs'] // 10} runs, "
                         f"{mem['end_bytes']} B after {mem['runs']}")
            print(line)
    return 0
