"""``blockfuzz minimize``: shrink a finding to its smallest form, same finding kind.

Three passes, repeated until none makes progress (syzkaller's
``prog/minimization.go`` order, then CHESS's preemption bounding for the
schedule):

1. commands: drop runs of commands, then single ones, then optional
   arguments;
2. the chain: drop writes, then whole images;
3. the schedule: cut the recorded choices short (past its end every choice
   is 0, the first runnable item), then drop, zero or lower single choices. A non-zero
   choice is a *preemption*: the scheduler ran something other than the
   oldest ready item, so the result needs as few of those as it can.

A candidate is kept when it is a valid case and its run gives the same
finding: the same kind, and where the first run said where (the signature
of :mod:`harness.corpus`), so a use-after-free in ``stream_prepare`` is not
traded for another one elsewhere. Every run is on the model, so the whole
search is bounded by ``max_runs``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from harness import case as case_mod
from harness.case import Case, Command
from harness.choices import Decision, PreemptionSource, plural, summarize
from harness.errors import CaseError, UsageError

#: arguments a command needs to mean anything; the rest may be dropped
ESSENTIAL_ARGUMENTS = frozenset({"device", "id", "offset", "length", "pattern", "count"})


@dataclass(frozen=True)
class Run:
    """One run as the minimizer sees it: the verdict kind, where, and the choices consumed."""

    kind: str
    choices: tuple[int, ...]
    where: str = ""


@dataclass(frozen=True)
class Minimized:
    case: Case
    kind: str
    runs: int               # model runs spent
    before: Case
    forced: tuple[Decision, ...] | None = None   # model runs: the schedule's forced decisions

    @property
    def preemptions(self) -> int:
        return preemptions(self.case)


def preemptions(case: Case) -> int:
    """How many recorded scheduler choices are not 0 (not the oldest ready item)."""
    return sum(1 for c in case.schedule.get("choices", ()) if c)


def run_on_model(case: Case) -> Run:
    """Run ``case`` on the reference model with its own schedule and bugs, and judge it."""
    from harness.backends.reference import run_case
    from harness.corpus import judge
    observation = run_case(case)
    outcome = judge(case, observation)
    return Run(outcome.kind, tuple(observation.choices), outcome.where)


class _Search:
    """The state of one minimization: the best case so far and the run budget."""

    def __init__(self, case: Case, kind: str, where: str, run: Callable[[Case], Run], max_runs: int):
        self.best = case
        self.kind = kind
        self.where = where
        self.run = run
        self.runs = 0
        self.max_runs = max_runs

    @property
    def exhausted(self) -> bool:
        return self.runs >= self.max_runs

    def attempt(self, candidate: Case) -> bool:
        """Keep ``candidate`` if it is valid and gives the same kind."""
        if self.exhausted or candidate == self.best:
            return False
        try:
            candidate = case_mod.from_dict(candidate.to_dict())
        except CaseError:
            return False
        self.runs += 1
        result = self.run(candidate)
        if (result.kind, result.where) != (self.kind, self.where):
            return False
        self.best = with_choices(candidate, result.choices)
        return True


def with_choices(case: Case, choices: Sequence[int]) -> Case:
    """``case`` with the recorded schedule ``choices``, trailing zeros dropped."""
    choices = list(choices)
    while choices and choices[-1] == 0:
        choices.pop()
    return replace(case, schedule={"choices": choices, **case.schedule_options()})


def minimize(case: Case, kind: str | None = None, run: Callable[[Case], Run] = run_on_model,
             max_runs: int = 3000) -> Minimized:
    """Shrink ``case`` keeping its finding (``kind``, or what it gives now, and where).

    :raise UsageError: when the case gives ``ok`` (there is nothing to keep).
    """
    first = run(case)
    kind = kind or first.kind
    name = case.path or "case"
    if first.kind == "ok":
        raise UsageError(f"{name}: gives verdict 'ok'; minimize needs a case that shows a finding")
    if first.kind != kind:
        raise UsageError(f"{name}: gives verdict '{first.kind}', not the expected '{kind}'; "
                         "correct its expect, or put other bugs back with --bugs")
    search = _Search(with_choices(case, first.choices), kind, first.where, run, max_runs)
    search.runs = 1
    progress = True
    while progress and not search.exhausted:
        before = search.best
        for shrink in PASSES:
            shrink(search)
        progress = search.best != before
    forced = tuple(forced_decisions(search.best)) if run is run_on_model else None
    return Minimized(search.best, kind, search.runs, case, forced)


# -- pass 1: commands -------------------------------------------------------------

def shrink_commands(search: _Search) -> None:
    _drop_chunks(search, lambda c: c.commands, without_commands)
    for i in range(len(search.best.commands)):
        for key in _optional_arguments(search.best.commands, i):
            commands = list(search.best.commands)
            args = {k: v for k, v in commands[i].arguments.items() if k != key}
            commands[i] = Command(commands[i].execute, args)
            search.attempt(replace(search.best, commands=tuple(commands)))


def without_commands(case: Case, start: int, end: int) -> Case:
    """``case`` without commands ``start`` .. ``end - 1``. The schedule's x-step end
    times (``x-step-until``, keyed by command index) follow their x-steps: those of
    dropped commands go, those after them move up."""
    schedule = case.schedule
    times = schedule.get("x-step-until")
    if times:
        gone = end - start
        moved = {str(i - gone if i >= end else i): ns for i, ns in ((int(k), v) for k, v in times.items())
                 if not start <= i < end}
        schedule = {**schedule, "x-step-until": moved}
    return replace(case, commands=case.commands[:start] + case.commands[end:], schedule=schedule)


def _optional_arguments(commands: Sequence[Command], i: int) -> list[str]:
    if i >= len(commands):
        return []
    return [k for k in commands[i].arguments if k not in ESSENTIAL_ARGUMENTS]


def _drop_chunks(search: _Search, get: Callable, drop: Callable) -> None:
    """Remove runs of items (halves, quarters, ... single ones), last ones first:
    ``drop(case, start, end)`` is the case without items ``start`` .. ``end - 1``."""
    size = max(1, len(get(search.best)) // 2)
    while size >= 1 and not search.exhausted:
        end = len(get(search.best))
        while end > 0 and not search.exhausted:
            start = max(0, end - size)
            search.attempt(drop(search.best, start, end))
            end = min(start, len(get(search.best)))
        size //= 2


# -- pass 2: the chain ------------------------------------------------------------

def shrink_images(search: _Search) -> None:
    for i in range(len(search.best.images) - 1, -1, -1):
        if i < len(search.best.images) and search.best.images[i].writes:
            images = list(search.best.images)
            images[i] = replace(images[i], writes=())
            if not search.attempt(replace(search.best, images=tuple(images))):
                _drop_writes(search, i)
    # a case with no image left is not valid, so attempt() refuses it
    _drop_chunks(search, lambda c: c.images,
                 lambda c, start, end: replace(c, images=c.images[:start] + c.images[end:]))


def _drop_writes(search: _Search, i: int) -> None:
    for w in range(len(search.best.images[i].writes) - 1, -1, -1):
        images = list(search.best.images)
        writes = images[i].writes
        images[i] = replace(images[i], writes=writes[:w] + writes[w + 1:])
        search.attempt(replace(search.best, images=tuple(images)))


# -- pass 3: the schedule ---------------------------------------------------------

def shrink_schedule(search: _Search) -> None:
    """Cut the schedule short, then for each preemption (from the last): drop it (the
    later choices move up), or make it 0, or make it 1."""
    def choices(c: Case) -> list[int]:
        return list(c.schedule.get("choices", ()))

    def put(c: Case, items: list[int]) -> Case:
        return replace(c, schedule={"choices": items, **c.schedule_options()})

    def drop(c: Case, start: int, end: int) -> Case:
        items = choices(c)
        return put(c, items[:start] + items[end:])

    _drop_chunks(search, choices, drop)
    for i in range(len(choices(search.best)) - 1, -1, -1):
        current = choices(search.best)
        if i >= len(current) or not current[i]:
            continue
        for candidate in (current[:i] + current[i + 1:], current[:i] + [0] + current[i + 1:],
                          current[:i] + [1] + current[i + 1:]):
            if candidate != current and search.attempt(put(search.best, candidate)):
                break


# -- pass 4: the fewest forced decisions (model runs only) ---------------------------

#: forced decisions (delays, preemptions, reorders) a bounded search tries at most
MAX_FORCED = 3


def follow(case: Case, choices: Sequence[int], bugs: Sequence[str] | None = None) -> PreemptionSource:
    """Run ``case`` with exactly ``choices`` (and ``bugs``, default the case's), noting
    each decision and where it departs from a non-preemptive schedule."""
    from harness.backends.reference import run_case
    source = PreemptionSource(follow=choices)
    run_case(case, source, bugs=bugs)
    return source


def forced_decisions(case: Case) -> list[Decision]:
    """Where ``case``'s recorded schedule departs from a non-preemptive one, with
    where in the run each departure happened."""
    return follow(case, case.schedule.get("choices", ())).forced


def bound_preemptions(search: _Search) -> None:
    """Iterative context bounding (CHESS): run the case with a non-preemptive schedule,
    then with every schedule that forces one decision, then two, ... up to
    :data:`MAX_FORCED` or the run budget; the first that shows the same finding
    replaces the schedule when it forces fewer decisions than the current one.
    A random schedule that found a race forces dozens of decisions; the race itself
    usually needs one or two, and the result says which. When no schedule within the
    bound shows the finding, the recorded schedule is shrunk instead
    (:func:`shrink_schedule`)."""
    from harness.backends.reference import run_case
    from harness.corpus import judge
    case = search.best
    current = len(forced_decisions(case))
    search.runs += 1
    frontier: list[tuple[dict[int, int], list[Decision]]] = []
    for k in range(min(MAX_FORCED, current - 1) + 1):
        grown = []
        for points in _extend(frontier, k):
            if search.exhausted:
                return
            source = PreemptionSource(points)
            search.runs += 1
            outcome = judge(case, run_case(case, source))
            if (outcome.kind, outcome.where) == (search.kind, search.where):
                search.attempt(with_choices(case, source.recorded))
                return
            grown.append((points, source.decisions))
        frontier = grown
    if current > MAX_FORCED:
        shrink_schedule(search)


def schedule_pass(search: _Search) -> None:
    """Pass 3: on the model, the fewest forced decisions; with another runner (tests,
    a backend without a scheduler to steer), the shortest recorded schedule."""
    if search.run is run_on_model:
        bound_preemptions(search)
    else:
        shrink_schedule(search)


def _extend(frontier: list[tuple[dict[int, int], list[Decision]]], k: int):
    """The schedules with ``k`` forced decisions: each of ``frontier`` (``k - 1`` of them)
    with one more, at a later decision, to any option but the default."""
    if k == 0:
        yield {}
        return
    for points, decisions in frontier:
        for d in decisions[max(points, default=-1) + 1:]:
            for option in range(d.n):
                if option != d.default:
                    yield {**points, d.index: option}


PASSES: tuple[Callable[[_Search], None], ...] = (shrink_commands, shrink_images, schedule_pass)


# -- the command line -------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", metavar="CASE", help="a case file that shows a finding")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="where to write the result (default: CASE with -min before .json)")
    parser.add_argument("--bugs", metavar="ID,...", help="put these bugs back (default: the case's)")
    parser.add_argument("--max-runs", type=int, default=3000, metavar="N",
                        help="model runs to spend at most (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from harness.replay import parse_bugs
    case = case_mod.load(args.case)
    if args.bugs is not None:
        case = replace(case, bugs=parse_bugs(args.bugs))
    expected = (case.expect or {}).get("verdict") if args.bugs is None else None
    result = minimize(case, kind=expected if expected not in (None, "ok") else None,
                      max_runs=args.max_runs)
    out = args.output or _default_output(args.case)
    final = replace(result.case, expect={"verdict": result.kind}, path=None)
    case_mod.save(final, out)
    print(describe(result))
    print(f"wrote {out}")
    return 0


def _default_output(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}-min{ext or '.json'}"


def describe(result: Minimized) -> str:
    """What the minimization kept of the case; on the model, then one line per forced
    decision of its schedule (where it happened, what ran instead of what)."""
    a, b = result.before, result.case
    writes = lambda c: sum(len(i.writes) for i in c.images)  # noqa: E731
    head = (f"{result.kind}: {len(a.commands)} -> {len(b.commands)} commands, "
            f"{len(a.images)} -> {len(b.images)} images, {writes(a)} -> {writes(b)} writes, "
            f"{len(b.schedule.get('choices', ()))} choices ")
    if result.forced is None:
        return head + f"({plural(result.preemptions, 'preemption')}), {result.runs} runs"
    counted = summarize(result.forced)
    head += (f"(needs {plural(len(result.forced), 'forced decision')}{': ' + counted if counted else ''}), "
             f"{result.runs} runs")
    return "\n".join([head] + [f"  {d.describe()}" for d in result.forced])

