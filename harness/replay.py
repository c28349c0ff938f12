"""``blockfuzz replay CASE|DIR``: run case files on the model and check their verdicts.

Every case runs under ``--seeds N`` scheduler seeds, S .. S+N-1 where S is
its ``schedule.seed``; a case with a recorded schedule (``{"choices": [...]}``)
replays exactly that, once. It passes when, under every run, the verdict is
its ``expect.verdict`` (default ``ok``) and nothing else in ``expect``
differs. One line per case, then ``N passed, N failed``. Exit status: 0 all
passed, 1 some failed, 2 bad input (nothing is run then)::

    $ blockfuzz replay corpus/ --seeds 20
    PASS corpus/seeds/030/test_overlapping_5.json (20 seeds)
    ...
    11 passed, 0 failed
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from harness import case as case_mod
from harness.case import Case
from harness.check import Verdict, check, compare_expect
from harness.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="CASE|DIR",
                        help="a case file, or a directory searched for *.json recursively")
    parser.add_argument("--bugs", metavar="ID,...", default=None,
                        help="bug ids to put back instead of each case's own "
                             "('' for the fixed model; see `blockfuzz bugs`)")
    parser.add_argument("--seeds", metavar="N", type=int, default=1,
                        help="scheduler seeds per case, from the case's own seed (default 1)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print every difference from the case's expect")


@dataclass(frozen=True)
class Run:
    """One run of a case: its label ("seed 4" or "recorded choices") and outcome."""

    label: str
    verdict: Verdict
    differences: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.differences


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise UsageError(f"--seeds: expected a positive number of seeds, got {args.seeds}")
    bugs = parse_bugs(args.bugs)
    cases = [case_mod.load(path) for path in case_paths(args.path)]
    failed = 0
    for case in cases:
        runs = replay_case(case, args.seeds, bugs)
        failed += not all(r.passed for r in runs)
        for line in report(case, runs, args.verbose):
            print(line)
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


def parse_bugs(text: str | None) -> tuple[str, ...] | None:
    """``--bugs``: None keeps each case's bugs (``case.load`` checks those);
    '' is the fixed model."""
    if text is None:
        return None
    from reference.bugs import BUGS, UnknownBug, validate
    try:
        return validate(b.strip() for b in text.split(",") if b.strip())
    except UnknownBug as e:
        raise UsageError(f"--bugs: unknown bug id '{e.args[0]}'; "
                         f"known: {', '.join(sorted(BUGS))}") from None


def case_paths(path: str) -> list[str]:
    """The one case file, or every ``*.json`` under a directory, sorted.

    Hidden files and directories are skipped: an interrupted atomic save
    leaves a ``.tmp-*.json`` behind."""
    if os.path.isdir(path):
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(root, n) for n in names
                      if n.endswith(".json") and not n.startswith(".")]
        return sorted(found)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    return [path]


def replay_case(case: Case, seeds: int, bugs: tuple[str, ...] | None) -> list[Run]:
    """Run ``case`` under each seed (or its recorded choices) and judge each run."""
    from harness.backends.reference import run_case, source_for
    schedule = case.schedule or {}
    if "choices" in schedule:
        plan = [("recorded choices", None)]
    else:
        first = schedule.get("seed", 0)
        plan = [(f"seed {s}", s) for s in range(first, first + seeds)]
    runs = []
    for label, seed in plan:
        observation = run_case(case, source_for(case, seed), bugs=bugs)
        verdict = check(case, observation)
        runs.append(Run(label, verdict, tuple(compare_expect(case, observation, verdict))))
    return runs


def report(case: Case, runs: list[Run], verbose: bool) -> list[str]:
    """``PASS path (N seeds)`` or ``FAIL path: KIND under K/N seeds (first: seed S): message``."""
    path = case.path
    if all(r.passed for r in runs):
        return [f"PASS {path} ({_count(runs)})"]
    failing = [r for r in runs if not r.passed]
    first = failing[0]
    want = (case.expect or {}).get("verdict", "ok")
    kind, message = (first.verdict.kind, first.verdict.message or first.differences[0]) \
        if first.verdict.kind != want else ("mismatch", first.differences[0])
    if first.label == "recorded choices":
        where = "under the recorded choices"
    else:
        where = f"under {len(failing)}/{len(runs)} seeds (first: {first.label})"
    lines = [f"FAIL {path}: {kind} {where}: {message}"]
    if len({r.verdict.kind for r in runs}) > 1:
        lines.append("    verdicts: " + _breakdown(runs))
    if verbose:
        lines += [f"    {d}" for d in first.differences]
    return lines


def _breakdown(runs: list[Run]) -> str:
    """Every verdict kind seen, with how often and its first seed: a bug put back
    may show in more than one way (``use-after-free 14 (first: seed 4), ...``)."""
    seen: dict[str, list[str]] = {}
    for r in runs:
        seen.setdefault(r.verdict.kind, []).append(r.label)
    return ", ".join(f"{kind} {len(labels)} (first: {labels[0]})" for kind, labels in seen.items())


def _count(runs: list[Run]) -> str:
    if runs[0].label == "recorded choices":
        return "recorded choices"
    return f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
