"""Which generated cases a change to the model affects, and which side QEMU 7.2 takes.

The differential accepts a case when *some* schedule of the model gives QEMU's
outcome, so a model change that only moves which replies a schedule gives can pass
it either way. This script instead runs each generated case on the model as it is
and on the model of another revision (``--against``, extracted with ``git archive``
and run in a child process), keeps the cases whose replies or on-disk backing strings differ, runs each on QEMU
``--qemu-runs`` times and compares QEMU's at exactly the commands (or the headers)
where the two models differ::

    python scripts/model_change_check.py --against HEAD~1 --cases 200000 [--seed 0]

One line per affected case: how many QEMU runs gave the replies of the model now,
of the other revision, or neither (a job's timing moved something else). Where QEMU sided
with the other revision more often, ``blockfuzz diff`` is asked whether the model as
it is still reaches QEMU's outcome under another schedule (each model above runs the
case's own schedule only). The exit code is 1 when it does not for some case (those
cases are written to ``--out``), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: run in the child process, with the other revision's tree first on sys.path:
#: one line per case read from stdin, its outcome as :func:`outcome` has it
CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from harness.case import from_dict
from harness.backends.reference import run_case
from harness.differential import normalise
for line in sys.stdin:
    n = normalise(run_case(from_dict(json.loads(line))))
    print(json.dumps([n.get("on_disk_backing")] + n["replies"]), flush=True)
"""


def outcome(normalised: dict) -> list:
    """What is compared: the images' on-disk backing strings first (entry 0), then each
    command's reply (entry k + 1 for command k)."""
    return [normalised.get("on_disk_backing")] + normalised["replies"]


def describe(where: list[int]) -> str:
    return ", ".join("the headers" if k == 0 else f"command {k - 1}" for k in where)


def other_revision_outcomes(revision: str, cases: list) -> list[list]:
    """The outcomes (:func:`outcome`) of ``revision``'s model, one list per case."""
    with tempfile.TemporaryDirectory(prefix="blockfuzz-rev-") as tree:
        archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", revision],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree)
        env = dict(os.environ, BLOCKFUZZ_PURE="1")
        text = "".join(json.dumps(case.to_dict()) + "\n" for case in cases)
        out = subprocess.run([sys.executable, "-c", CHILD, tree], input=text, text=True,
                             capture_output=True, check=True, env=env, cwd=tree).stdout
    return [json.loads(line) for line in out.splitlines()]


def affected(cases: list, theirs: list[list]) -> list[tuple[int, object, list, list, list[int]]]:
    """(index, case, outcome now, outcome then, the entries where they differ)."""
    from harness.backends.reference import run_case
    from harness.differential import normalise
    out = []
    for i, (case, then) in enumerate(zip(cases, theirs)):
        now = outcome(normalise(run_case(case)))
        every = range(max(len(now), len(then)))
        where = [k for k, a, b in zip(every, _at(now, every), _at(then, every)) if a != b]
        if where:
            out.append((i, case, now, then, where))
    return out


def side(qemu: list, now: list, then: list, where: list[int]) -> str:
    """Which model QEMU's outcome matches at ``where``: "now", "then" or "neither"."""
    got = _at(qemu, where)
    return "now" if got == _at(now, where) else "then" if got == _at(then, where) else "neither"


def _at(entries: list, where) -> list:
    """``entries`` at the indices ``where``, None past its end (a run cut short)."""
    return [entries[k] if k < len(entries) else None for k in where]


def reachable_now(case) -> bool:
    """Whether ``blockfuzz diff`` passes ``case`` on the model now: the comparison above
    runs each model under the case's own schedule only, and QEMU's timing may be
    another schedule of the model as it is."""
    from harness.differential import Differ
    with Differ() as differ:
        result = differ.diff(case)
    return result.finding is None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", required=True, help="the git revision to compare with")
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qemu-runs", type=int, default=3)
    p.add_argument("--out", default="model-change")
    args = p.parse_args()
    if args.cases < 1 or args.qemu_runs < 1:
        p.error("--cases and --qemu-runs must be >= 1")
    from harness.choices import RandomSource
    from harness.generate import generate
    from reference.errors import BlockfuzzError
    cases = [generate(RandomSource(args.seed + i)) for i in range(args.cases)]
    try:
        theirs = other_revision_outcomes(args.against, cases)
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        last = (err.strip().splitlines() or ["failed"])[-1]
        print(f"model_change_check: --against {args.against}: {last}", file=sys.stderr)
        return 2
    found = affected(cases, theirs)
    print(f"{len(found)} of {len(cases)} generated cases reply or write headers otherwise than at {args.against}")
    try:
        worse = _hold_to_qemu(found, args)
    except BlockfuzzError as e:
        print(f"model_change_check: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("model_change_check: interrupted; the cases saved so far stay in --out", file=sys.stderr)
        return 130
    return 1 if worse else 0


def _hold_to_qemu(found: list, args: argparse.Namespace) -> int:
    """Run each affected case on QEMU; print the tallies; the count of cases that the
    model as it is no longer reaches."""
    from harness.backends.qemu import QemuRunner
    from harness.case import save
    from harness.differential import normalise
    totals = {"now": 0, "then": 0, "neither": 0}
    worse = 0
    with QemuRunner() as runner:
        for i, case, now, then, where in found:
            tally = {"now": 0, "then": 0, "neither": 0}
            for _ in range(args.qemu_runs):
                tally[side(outcome(normalise(runner.run(case))), now, then, where)] += 1
            for k in totals:
                totals[k] += tally[k]
            print(f"case {args.seed + i}: {describe(where)}: QEMU as now {tally['now']}, "
                  f"as {args.against} {tally['then']}, neither {tally['neither']}", flush=True)
            if tally["then"] > tally["now"]:
                if reachable_now(case):
                    print("  the model now still reaches QEMU's outcome under another schedule "
                          "(blockfuzz diff agrees)")
                    continue
                worse += 1
                save(case, os.path.join(args.out, f"case-{args.seed + i}.json"))
    print(f"QEMU runs: as the model now {totals['now']}, as at {args.against} {totals['then']}, "
          f"neither {totals['neither']}")
    return worse


if __name__ == "__main__":
    sys.exit(main())
