"""Hold the model's drained sections to QEMU 7.2's on generated cases.

Each generated case is rewritten so that every job copies at 1 byte/s (a job
then makes progress only when a drained section wakes it: its first chunk, and
one chunk per section that reaches it) and the loop runs until idle after every
command (``x-step`` 200); ``block-job-set-speed`` and mid-case ``x-wait-jobs``
are dropped. The raw job status events, drain pauses included (``diff`` folds
them away), and the replies are then compared between QEMU and the model, whose outcome under any
of ``--model-seeds`` schedules counts as agreement (which ready bottom half or
timer runs first is still the scheduler's choice)::

    python scripts/drain_diff.py --cases 200 --seed 0 [--out DIR]

Cases that differ are written to DIR (default ``drain-diff``), one line each is
printed, and the exit code is 1 when any differed. Cases whose QEMU run was
cut short (an x-step that ended on 50 ms of quiet) show as differences too:
rerun them before believing one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from harness import pin  # noqa: E402
from harness.backends.qemu import QemuRunner  # noqa: E402
from harness.backends.qemu_jobs import JOB_COMMANDS  # noqa: E402
from harness.backends.reference import run_case  # noqa: E402
from harness.case import save  # noqa: E402
from harness.choices import RandomSource  # noqa: E402
from harness.differential import unthrottled  # noqa: E402
from harness.generate import generate  # noqa: E402
from harness.observation import raw_statuses  # noqa: E402

def outcome(obs) -> tuple:
    return tuple(raw_statuses(obs.events)), tuple("error" in r for r in obs.replies)


def agreeing_model(case, qemu, seeds: int):
    """None when one of the model's first ``seeds`` schedules gives QEMU's raw events
    and accepts and refuses the same commands; else the first schedule's run."""
    lifted = unthrottled(case, qemu)
    first = None
    for seed in range(seeds):
        model = run_case(case, RandomSource(seed), unthrottle=lifted)
        if outcome(model) == outcome(qemu):
            return None
        first = first or model
    return first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="drain-diff")
    p.add_argument("--model-seeds", type=int, default=20,
                   help="model schedules to try per case: the loop's order of ready work varies")
    args = p.parse_args(argv)
    differ = compared = 0
    with QemuRunner(timeout=10.0) as runner:
        for i in range(args.cases):
            case = pin.drain_driven(generate(RandomSource((args.seed << 32) + i)))
            if not any(c.execute in JOB_COMMANDS for c in case.commands):
                continue
            qemu = runner.run(case)
            if qemu.finding is not None:        # a QEMU crash or hang: diff's business
                continue
            compared += 1
            model = agreeing_model(case, qemu, args.model_seeds)
            if model is None:
                continue
            differ += 1
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, f"case-{args.seed}-{i}.json")
            events = {"qemu": raw_statuses(qemu.events), "model": raw_statuses(model.events)}
            save(replace(case, description=json.dumps(events)), path)
            print(f"DIFF {path}", flush=True)
    print(f"{compared} compared, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
