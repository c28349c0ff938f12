"""Time to first finding of each seed-bug form over many campaigns (seeds FIRST..FIRST+N-1).

    python scripts/ttff.py --engine pct --seeds 200 [--first 0] [--out runs.json] [--against old.json]
    python scripts/ttff.py --engine random --seeds 10 --signature use-after-free@commit_abort
    python scripts/ttff.py --engine pct --seeds 10 --repeat 3     # CPU seconds, best of 3

With ``--signature``, the time to the first finding with that signature on the fixed
model instead (QEMU 7.2's own behaviours, documented in corpus/known, included).

Prints per form the median and mean runs and seconds; with ``--against`` (an earlier
``--out``), Â12 and the Mann-Whitney p-value on runs against it (above 0.5: fewer
runs now). The bench's ``--trials 40`` takes seeds 0-39 only, which are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from statistics import mean, median

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this tree's harness

from harness.bench import ENGINE_BUGS
from harness.campaign import documented_signatures, time_to_first_finding
from harness.stats import a12, mann_whitney_p


def measure(engine: str, seeds: range, max_runs: int, signature: str | None = None,
            repeat: int = 0) -> dict:
    """Per form (or for ``signature`` on the fixed model): the runs and seconds of each
    campaign (``max_runs`` when nothing was found). With ``repeat``, each campaign's
    seconds are instead the process's CPU time for the whole campaign, the best of
    ``repeat`` runs of it (the runs are the same each time; atheris's libFuzzer process
    counted too, :func:`cpu_seconds`): on a busy machine the wall
    clock of a 30 ms campaign moves by half."""
    out = {}
    targets = [("", signature)] if signature else ENGINE_BUGS
    known = documented_signatures()
    for bug, kind in targets:
        trials = [_trial(engine, bug, s, max_runs, kind, frozenset() if signature else known, repeat)
                  for s in seeds]
        kind = kind.split("@")[0]
        out[bug or signature] = {"runs": [r if v == kind else max_runs for r, _, v in trials],
                                 "seconds": [t for _, t, _ in trials],
                                 "missed": sum(v != kind for _, _, v in trials)}
    return out


def _trial(engine: str, bug: str, seed: int, max_runs: int, kind: str, known: frozenset,
           repeat: int) -> tuple[int, float, str]:
    if not repeat:
        return time_to_first_finding(engine, bug, seed, max_runs, kind, known=known)
    best = float("inf")
    for _ in range(repeat):
        t0 = cpu_seconds()
        runs, _, verdict = time_to_first_finding(engine, bug, seed, max_runs, kind, known=known)
        best = min(best, cpu_seconds() - t0)
    return runs, best, verdict


def cpu_seconds() -> float:
    """This process's CPU time and that of its children waited for: atheris's campaign
    runs in a libFuzzer process of its own. Not ``os.times()``: it counts in clock
    ticks (10 ms here), as long as a third of a pct campaign."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def report(result: dict, against: dict | None) -> None:
    for bug, r in result.items():
        line = (f"{bug:26} median {median(r['runs']):7.1f} runs  mean {mean(r['runs']):7.1f}  "
                f"median {median(r['seconds']):.3f} s  mean {mean(r['seconds']):.3f} s  missed {r['missed']}")
        if against and bug in against:
            old = against[bug]["runs"]
            line += (f"  | before {median(old):.1f} / {mean(old):.1f}"
                     f"  A12 {a12(r['runs'], old):.2f}  p {mann_whitney_p(r['runs'], old):.3f}")
        print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", default="pct")
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--max-runs", type=int, default=40000)
    p.add_argument("--out")
    p.add_argument("--against")
    p.add_argument("--signature", help="time to this finding on the fixed model instead")
    p.add_argument("--repeat", type=int, default=0,
                   help="seconds as CPU time, the best of N runs of each campaign")
    args = p.parse_args()
    if args.repeat < 0 or args.seeds < 1 or args.max_runs < 1:
        p.error("--repeat must be >= 0, --seeds and --max-runs >= 1")
    result = measure(args.engine, range(args.first, args.first + args.seeds), args.max_runs,
                     args.signature, args.repeat)
    against = json.load(open(args.against)) if args.against else None
    report(result, against)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
