"""``blockfuzz bench``: how fast the model runs, counted in runs per second.

Two workloads, as the project's speed targets name them: 030's
test_overlapping_5 (nine 16 MiB images) and a six-image 1 MiB version of it.
Each runs ``--runs`` times under consecutive scheduler seeds, best of
``--repeat``; memory is sampled (tracemalloc) to show it stays flat.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc

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
        t0 = time.perf_counter()
        for seed in range(runs):
            run_case(case, RandomSource(seed))
        best = min(best, time.perf_counter() - t0)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=2000, help="runs per workload (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="best of N repetitions (default 3)")
    p.add_argument("--memory-runs", type=int, default=0,
                   help="also trace memory over this many runs (e.g. 100000)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    results = {}
    for name, make in WORKLOADS.items():
        case = make()
        results[name] = measure(case, args.runs, args.repeat)
        if args.memory_runs:
            results[name]["memory"] = memory_growth(case, args.memory_runs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            line = f"{name:26} {r['runs_per_s']:>9.1f} runs/s  ({r['runs']} runs in {r['seconds']} s)"
            if "memory" in r:
                mem = r["memory"]
                line += (f"  live memory {mem['after_bytes']} B after {mem['runs'] // 10} runs, "
                         f"{mem['end_bytes']} B after {mem['runs']}")
            print(line)
    return 0
