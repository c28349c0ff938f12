"""``blockfuzz pin``: make a finding happen under every schedule, so that real
QEMU shows it on every run.

A finding on the model comes with the schedule that showed it; QEMU has its
own timing and shows a race only sometimes (030's test_overlapping_5: some
runs). Pinning takes the scheduler out of the race:

1. the case is made *drain-driven*: some jobs copy at 1 byte/s, so that once
   past their first chunk they move only when a drained section wakes them,
   one chunk each; the others run unthrottled; the loop runs until idle after
   every command (``x-step``); ``block-job-set-speed``, ``x-wait-jobs`` and
   the case's own ``x-step`` go;
2. the amount of data is searched: every image and write scaled by 1, 2, 4,
   8 or 16 (a throttled job needs enough chunks left for the drains that
   should wake it), then each write's length and place, one write at a time;
3. the first variant whose finding (its signature: kind and where) shows under
   every one of ``seeds`` model schedules, and not at all on the fixed model
   when the case puts bugs back, is the pinned case.

Which drained sections reach which job, and how often, is what
``scripts/drain_diff.py`` holds the model to QEMU 7.2 on, so a pinned case
runs on QEMU as on the model: ``blockfuzz diff PINNED --only qemu --repeat 20
--qemu-build DIR``.
"""
from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass, replace
from typing import Collection, Iterator

from harness import case as case_mod
from harness.backends.qemu_jobs import JOB_COMMANDS
from harness.case import Case, Command
from harness.corpus import Outcome, judge
from harness.errors import UsageError

STEP = Command("x-step", {"count": 200})
#: commands a drain-driven case leaves out: it sets its own pace
DROPPED = frozenset({"block-job-set-speed", "x-wait-jobs", "x-step"})
SCALES = (1, 2, 4, 8, 16)
#: the largest image a scale may make, and the longest write tried, in clusters
MAX_SIZE = 64 << 20
MAX_WRITE_CLUSTERS = 64
DEFAULT_SEEDS = 10


def drain_driven(case: Case, throttled: Collection[int] | None = None) -> Case:
    """``case`` with the jobs its commands at ``throttled`` (indices; None: every
    job) start at 1 byte/s, the others unthrottled, and the loop idle after each
    command."""
    commands = []
    for i, c in enumerate(case.commands):
        if c.execute in DROPPED:
            continue
        if c.execute in JOB_COMMANDS:
            arguments = {k: v for k, v in c.arguments.items() if k != "speed"}
            if throttled is None or i in throttled:
                arguments["speed"] = 1
            c = Command(c.execute, arguments)
        commands += [c, STEP]
    return replace(case, commands=tuple(commands), schedule={"policy": "random", "seed": 0},
                   expect=None, path=None)


def scaled(case: Case, factor: int) -> Case:
    """Every image, write and guest write ``factor`` times as large (cluster sizes kept)."""
    if factor == 1:
        return case
    images = tuple(replace(img, size=img.size * factor, writes=tuple(
        replace(w, offset=w.offset * factor, length=w.length * factor) for w in img.writes))
        for img in case.images)
    commands = tuple(Command(c.execute, {**c.arguments, "offset": c.arguments["offset"] * factor,
                                         "length": c.arguments["length"] * factor})
                     if c.execute == "x-guest-write" else c for c in case.commands)
    return replace(case, images=images, commands=commands)


def data_variants(case: Case) -> Iterator[tuple[str, Case]]:
    """``(what changed, variant)``: each scale (images up to :data:`MAX_SIZE`), then at
    that scale each write, one at a time, with every length up to
    :data:`MAX_WRITE_CLUSTERS` clusters, where it was and moved to the end of its
    image (a job whose data ends where the image does finishes with its last
    chunk; one with unallocated space after it waits for one more wake)."""
    largest = max(img.size for img in case.images)
    for factor in SCALES:
        if factor > 1 and largest * factor > MAX_SIZE:
            return
        base = scaled(case, factor)
        yield (f"data x{factor}" if factor > 1 else "data as found"), base
        for i, img in enumerate(base.images):
            for j, w in enumerate(img.writes):
                for where, length in _placements(img.size, img.cluster_size, w.offset):
                    if (where, length) != (w.offset, w.length):
                        writes = img.writes[:j] + (replace(w, offset=where, length=length),) + img.writes[j + 1:]
                        images = base.images[:i] + (replace(img, writes=writes),) + base.images[i + 1:]
                        yield (f"data x{factor}, {img.node_name}'s write {length} bytes at {where}",
                               replace(base, images=images))


def _placements(size: int, cluster: int, offset: int) -> Iterator[tuple[int, int]]:
    longest = min(MAX_WRITE_CLUSTERS, size // cluster)
    for clusters in range(1, longest + 1):
        if offset + clusters * cluster <= size:
            yield offset, clusters * cluster
    for clusters in range(1, longest + 1):
        yield size - clusters * cluster, clusters * cluster


@dataclass(frozen=True)
class Pinned:
    case: Case
    signature: str
    throttled: tuple[int, ...]   # indices (in the case as found) of the commands throttled
    change: str                  # what changed in the data
    tried: int                   # variants tried


def outcome(case: Case, seed: int | None, bugs: tuple[str, ...]) -> Outcome:
    from harness.backends.reference import run_case, source_for
    return judge(case, run_case(case, source_for(case, seed), bugs=bugs))


def holds(case: Case, signature: str, bugs: tuple[str, ...], seeds: int) -> bool:
    """The finding under every one of ``seeds`` schedules, and (bugs put back) none
    of the fixed model's."""
    if any(outcome(case, s, bugs).signature != signature for s in range(seeds)):
        return False
    return not bugs or all(outcome(case, s, ()).kind == "ok" for s in range(seeds))


def pin(case: Case, seeds: int = DEFAULT_SEEDS, max_variants: int = 20_000) -> Pinned | None:
    """The first drain-driven variant of ``case`` that gives its finding under every
    schedule (fewest throttled jobs first, then the data as little changed as can be)."""
    found = outcome(case, None, tuple(case.bugs))
    if found.kind == "ok":
        raise UsageError(f"{case.path or 'the case'}: its run is ok; nothing to pin "
                         "(give a finding, or --bugs to put its bug back)")
    jobs = [i for i, c in enumerate(case.commands) if c.execute in JOB_COMMANDS]
    tried = 0
    for k in range(1, len(jobs) + 1):
        for throttled in itertools.combinations(jobs, k):
            for change, variant in data_variants(case):
                candidate = drain_driven(variant, set(throttled))
                tried += 1
                if holds(candidate, found.signature, tuple(case.bugs), seeds):
                    return Pinned(candidate, found.signature, throttled, change, tried)
                if tried >= max_variants:
                    return None
    return None


def describe(p: Pinned, source: Case, seeds: int) -> str:
    jobs = ", ".join(f"{i} ({source.commands[i].execute})" for i in p.throttled)
    return (f"{p.signature} under all {seeds} schedules of the model, from variant {p.tried}: "
            f"commands {jobs} at 1 byte/s, {p.change}, the loop idle after each command")


# -- command line ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", metavar="CASE", help="a case file that shows a finding")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="where to write the pinned case (default: CASE with -pinned before .json)")
    parser.add_argument("--bugs", metavar="ID,...", help="put these bugs back (default: the case's)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="K",
                        help="model schedules the finding must show under, each (default: %(default)s)")
    parser.add_argument("--max-variants", type=int, default=20_000, metavar="N",
                        help="drain-driven variants to try at most (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from harness.replay import parse_bugs
    if args.seeds < 1 or args.max_variants < 1:
        raise UsageError("blockfuzz pin: --seeds and --max-variants must be at least 1")
    case = case_mod.load(args.case)
    if args.bugs is not None:
        case = replace(case, bugs=parse_bugs(args.bugs))
    result = pin(case, seeds=args.seeds, max_variants=args.max_variants)
    if result is None:
        print(f"{args.case}: no drain-driven variant gives its finding under every schedule "
              f"(tried at most {args.max_variants})")
        return 1
    out = args.output or f"{os.path.splitext(args.case)[0]}-pinned.json"
    description = f"pinned from {os.path.basename(args.case)}: {describe(result, case, args.seeds)}"
    verdict = result.signature.split("@")[0]
    case_mod.save(replace(result.case, description=description, expect={"verdict": verdict}), out)
    print(describe(result, case, args.seeds))
    print(f"wrote {out}")
    print(f"on QEMU: blockfuzz diff {out} --only qemu --repeat 20 [--qemu-build DIR]")
    return 0
