"""``blockfuzz diff``: run cases on the model and on real QEMU 7.2 and compare.

Both observations are brought to one shape (:func:`normalise`): the replies
(success, or error class and text), each job's status sequence with drain
pauses folded away, the final chain's node names with filters collapsed,
their backing strings and read-only flags, the guest-visible data, the on-disk
backing strings
(where both sides report them) and the kind of finding, if any.

The model's scheduler may legitimately give several outcomes, so QEMU's
outcome is compared with the *set* the model gives over ``K`` seeds (and the
case's own schedule): a match with any of them is agreement. When none
matches, the search goes on systematically (:func:`search_gaps`): commands back
to back, as QEMU's side sends them, with one gap of the loop running between
two of them, then two gaps, then three, every position and length; then the same again,
from the commands all back to back on, with qcow2 metadata reads as I/O (a
job's first block-status query on an image waits, busy, for its L2 table, as
on QEMU, where a ``block-job-pause`` right after ``block-stream`` finds the job
still ``running``); then one gap of an exact length, past the 0-3 loop steps a
choice names short of running idle (:func:`search_long_gaps`: QEMU's main loop
may stop anywhere in a job's run between two pipelined commands); last,
:data:`DEEP_SEEDS` more seeds (:func:`search_seeds`:
outcomes that need several timings to line up at once). Anything else is
a ``qemu-mismatch`` finding whose report shows the closest model outcome(s)
and QEMU next to each other, command by command.

Example::

    $ blockfuzz diff corpus/seeds --seeds 20
    PASS corpus/seeds/030/test_overlapping_1.json
    ...
    9 passed, 0 failed
    blockfuzz diff case.json --repeat 200 --jobs 2 --only qemu   # throughput
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator

from harness.backends import qemu_binaries
from harness.case import Case, load
from harness.choices import ChoiceSource, RandomSource
from harness.errors import UsageError
from harness.observation import Finding, Observation, fold_drain_pairs

DEFAULT_SEEDS = 20
GAP_BOUND = 3       # gap schedules tried on a mismatch: at most this many gaps ...
GAP_SEEDS = 2       # ... each under this many seeds for the other decisions
#: the longest exact gap (loop steps) :func:`search_long_gaps` tries
LONG_GAP = 64
#: seeds tried after the gap searches, on a mismatch they did not explain
DEEP_SEEDS = 2000
SEEDED_GAP_SEEDS = 100    # random schedules with one exact gap (search_seeded_gaps) ...
SEEDED_GAP_LONGEST = 12   # ... of 1 to this many steps
METADATA_NOTE = ", qcow2 metadata reads as I/O (schedule metadata-io)"
#: the fields of a normalised outcome, in report order
FIELDS = ("finding", "replies", "job_statuses", "job_events", "chain", "backing", "read_only", "data",
          "on_disk_backing")
#: the events compared with their ``len`` or error (:func:`_job_events`)
JOB_EVENTS = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED")

#: QEMU's automatic node names come from a process-wide counter (block.c's
#: bdrv_assign_node_name): never stable across runs, so compared as one name
AUTO_NODE_NAME = re.compile(r"#block\d+")

ModelRun = Callable[[Case, "int | None"], Observation]
GappedRun = Callable[[Case, int, "dict[int, int]"], Observation]


# -- normalising -------------------------------------------------------------------

def normalise(obs: Observation) -> dict[str, Any]:
    """One observation in the shape both backends are compared in (JSON-able, hashable by
    :func:`outcome_key`)."""
    return {
        "finding": obs.finding.kind if obs.finding else None,
        "replies": [_reply(r) for r in obs.replies],
        "job_statuses": {job: fold_drain_pairs(seq) for job, seq in sorted(obs.job_statuses.items())},
        "job_events": _job_events(obs.events),
        "chain": [_auto(n) for n in obs.chain_names(collapse_filters=True)],
        "backing": [[_auto(n.node_name), n.backing_file] for n in obs.chain if not n.is_filter],
        "read_only": [[_auto(n.node_name), n.read_only] for n in obs.chain if not n.is_filter],
        "data": _merge_runs(obs.data),
        "on_disk_backing": obs.extra.get("on_disk_backing"),
    }


def _job_events(events: list[dict]) -> dict[str, list[list]]:
    """Per job, in order, each ``BLOCK_JOB_READY`` and ``BLOCK_JOB_COMPLETED`` as
    ``[event, len, error]``: the progress total, which a stream and a commit set to the
    image's length and an active commit to what it copied plus what is still dirty
    (mirror.c's ``job_progress_set_remaining``), and the text of a completion's error.
    A failed job's ``len`` and a cancelled job's event are left out: where it stopped
    depends on the wall clock, and its status sequence says that it was cancelled."""
    out: dict[str, list[list]] = {}
    for e in events:
        name = e.get("event")
        if name not in JOB_EVENTS:
            continue
        data = e.get("data") or {}
        error = data.get("error")
        out.setdefault(str(data.get("device")), []).append(
            [name, None if error is not None else data.get("len"), error])
    return dict(sorted(out.items()))


def _auto(text: str) -> str:
    return AUTO_NODE_NAME.sub("#block*", text)


def _reply(reply: dict) -> dict:
    if "error" in reply:
        err = reply["error"]
        return {"error": {"class": err.get("class"), "desc": _auto(str(err.get("desc")))}}
    return {"return": {}}


def _merge_runs(runs: Iterable[Iterable[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for offset, length, byte in runs:
        if out and out[-1][2] == byte and out[-1][0] + out[-1][1] == offset:
            out[-1][1] += length
        elif length:
            out.append([offset, length, byte])
    return out


def outcome_key(outcome: dict[str, Any]) -> str:
    return json.dumps(outcome, sort_keys=True)


def differing_fields(model: dict[str, Any], qemu: dict[str, Any]) -> list[str]:
    """Fields that differ; the on-disk strings only count when both sides give them.
    When both sides hang only the finding and the replies so far count: a hung QEMU
    cannot be asked for its graph or its data."""
    out = []
    both_hang = model["finding"] == qemu["finding"] == "hang"
    for name in (("finding", "replies") if both_hang else FIELDS):
        if name == "on_disk_backing" and (model[name] is None or qemu[name] is None):
            continue
        if model[name] != qemu[name]:
            out.append(name)
    return out


# -- one case ------------------------------------------------------------------------

@dataclass
class DiffResult:
    """The outcome of one case on both sides."""

    case: Case
    qemu: Observation
    model: list[tuple[str, Observation]] = field(default_factory=list)  # label, one per outcome
    finding: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.finding is None


def model_outcomes(case: Case, seeds: int, run_model: ModelRun) -> list[tuple[str, Observation]]:
    """The distinct outcomes of the model: the case's own schedule, then seeds 0..K-1."""
    seen: dict[str, tuple[str, Observation]] = {}
    for seed in [None, *range(seeds)]:
        obs = run_model(case, seed)
        label = "the case's schedule" if seed is None else f"seed {seed}"
        seen.setdefault(outcome_key(normalise(obs)), (label, obs))
    return list(seen.values())


def _merged(first: list[tuple[str, Observation]], more: list[tuple[str, Observation]],
            suffix: str) -> list[tuple[str, Observation]]:
    """``first``, then the outcomes of ``more`` not in it, their labels marked."""
    seen = {outcome_key(normalise(obs)) for _, obs in first}
    out = list(first)
    for label, obs in more:
        key = outcome_key(normalise(obs))
        if key not in seen:
            seen.add(key)
            out.append((label + suffix, obs))
    return out


def compare(case: Case, qemu: Observation, model: list[tuple[str, Observation]],
            seeds: int, gapped: int = 0) -> Finding | None:
    """None when QEMU's outcome is one the model allows; else the finding."""
    if qemu.finding is not None and qemu.finding.kind == "qemu-crash":
        return qemu.finding
    q = normalise(qemu)
    normalised = [(label, normalise(obs)) for label, obs in model]
    if any(not differing_fields(m, q) for _, m in normalised):
        return None
    return Finding("qemu-mismatch", report(case, qemu, model, seeds, gapped),
                   where=_where(case, normalised, q), step=_first_step(normalised, q))


def _closest(normalised: list[tuple[str, dict]], q: dict) -> list[tuple[str, dict]]:
    best = min(len(differing_fields(m, q)) for _, m in normalised)
    return [(label, m) for label, m in normalised if len(differing_fields(m, q)) == best]


def _first_step(normalised: list[tuple[str, dict]], q: dict) -> int:
    label, m = _closest(normalised, q)[0]
    for i, reply in enumerate(q["replies"]):
        if i >= len(m["replies"]) or m["replies"][i] != reply:
            return i
    return -1


def _where(case: Case, normalised: list[tuple[str, dict]], q: dict) -> str:
    """For deduplication: the first differing field, and the command for replies."""
    label, m = _closest(normalised, q)[0]
    name = differing_fields(m, q)[0]
    step = _first_step(normalised, q)
    if name == "replies" and 0 <= step < len(case.commands):
        return f"replies:{case.commands[step].execute}"
    return name


# -- the report ------------------------------------------------------------------------

def report(case: Case, qemu: Observation, model: list[tuple[str, Observation]], seeds: int,
           gapped: int = 0) -> str:
    """The side-by-side report: a one-line summary of the first difference, then every
    command with the closest model outcome(s) and QEMU, then every other differing field."""
    q = normalise(qemu)
    normalised = [(label, normalise(obs)) for label, obs in model]
    closest = _closest(normalised, q)
    fields = differing_fields(closest[0][1], q)
    searched = f"{seeds} seeds" + (f" and {gapped} schedules with at most {GAP_BOUND} gaps "
                                   "between back-to-back commands" if gapped else "")
    lines = [_summary(case, closest, q, fields),
             f"QEMU differs from all {len(model)} model outcome(s) over {searched}; the "
             f"closest ({', '.join(label for label, _ in closest)}) differ in: {', '.join(fields)}"]
    if qemu.finding is not None:
        lines.append(f"QEMU finding: {qemu.finding.kind}: {qemu.finding.message}")
    lines.append(f"  {'step':<5}{'command':<50}{'model':<45}qemu")
    for i, command in enumerate(case.commands):
        text = json.dumps(command.to_dict()["arguments"]) if command.arguments else ""
        mine = _distinct(_reply_text(m["replies"], i) for _, m in closest)
        theirs = _reply_text(q["replies"], i)
        mark = "" if theirs in mine else "   <<"
        lines.append(f"  {i:<5}{_cut(command.execute + ' ' + text, 48):<50}"
                     f"{_cut(' | '.join(mine), 43):<45}{theirs}{mark}")
        if mark:
            lines += [f"{'':7}model: {variant}" for variant in mine]
            lines.append(f"{'':7}qemu:  {theirs}")
    for name in FIELDS:
        if name in fields and name != "replies":
            lines.append(f"{name}:")
            lines += [f"  model ({label}): {_show(name, m[name])}" for label, m in closest]
            lines.append(f"  qemu: {_show(name, q[name])}")
    return "\n".join(lines)


def _summary(case: Case, closest: list[tuple[str, dict]], q: dict, fields: list[str]) -> str:
    """``qemu-mismatch: command 3 (block-stream): model ... / qemu ...`` or the first field."""
    name = fields[0]
    if name == "replies":
        step = _first_step(closest, q)
        mine = " | ".join(_distinct(_reply_text(m["replies"], step) for _, m in closest))
        return (f"qemu-mismatch: command {step} ({case.commands[step].execute}): "
                f"model {mine} / qemu {_reply_text(q['replies'], step)}")
    mine = " | ".join(_distinct(_show(name, m[name]) for _, m in closest))
    return f"qemu-mismatch: {name}: model {mine} / qemu {_show(name, q[name])}"


def _reply_text(replies: list[dict], i: int) -> str:
    if i >= len(replies):
        return "(not reached)"
    reply = replies[i]
    if "error" in reply:
        return f"error {reply['error']['class']}: {reply['error']['desc']}"
    return "ok"


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _show(name: str, value: Any) -> str:
    if name == "finding":
        return value or "none"
    if name == "chain":
        return " → ".join(value)
    if name == "job_statuses":
        return "; ".join(f"{job}: {' '.join(seq)}" for job, seq in value.items()) or "(no jobs)"
    return json.dumps(value)


# -- running --------------------------------------------------------------------------

class Gaps(ChoiceSource):
    """Commands back to back except at chosen gaps: ``gaps[i]`` is the loop's
    ``between`` choice before command ``i + 1`` (0 where absent); every other
    decision comes from ``inner``. QEMU's side sends consecutive commands
    pipelined, so a job's I/O may still be in flight several commands later; a
    uniform choice of the gap reaches that only rarely."""

    def __init__(self, inner: ChoiceSource, gaps: dict[int, int] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.gaps = gaps or {}
        self.between = 0

    def _pick(self, n, label, keys):
        if label != "between":
            return self.inner.choose(n, label, keys)
        value = self.gaps.get(self.between, 0)
        self.between += 1
        return min(value, n - 1)


def gap_schedules(case: Case, bound: int = GAP_BOUND, fewest: int = 1) -> Iterator[dict[int, int]]:
    """CHESS's iterative bounding, over the gaps between commands: every schedule with
    ``fewest`` gaps (1: each position, each length), then every one with one more, ...
    up to ``bound``. ``fewest`` 0 starts with the commands all back to back."""
    from harness.backends.reference import BETWEEN
    positions = range(len(case.commands) - 1)
    for k in range(fewest, bound + 1):
        for where in itertools.combinations(positions, k):
            for lengths in itertools.product(range(1, BETWEEN), repeat=k):
                yield dict(zip(where, lengths))


def gap_count(case: Case, bound: int = GAP_BOUND, seeds: int = GAP_SEEDS, fewest: int = 1) -> int:
    return seeds * sum(1 for _ in gap_schedules(case, bound, fewest))


def gapped_model(case: Case, seed: int, gaps: dict[int, int],
                 unthrottle: dict[int, list[str]] | None = None,
                 metadata_io: bool = False, gap_steps: dict[int, int] | None = None) -> Observation:
    """The fixed model with commands back to back but for ``gaps``; other decisions
    from plain random choices with ``seed``; ``metadata_io`` and ``gap_steps``: see
    :func:`harness.backends.reference.run_case`."""
    from harness.backends import reference
    return reference.run_case(case, Gaps(RandomSource(seed), gaps), bugs=(), unthrottle=unthrottle,
                              metadata_io=metadata_io, gap_steps=gap_steps)


def search_long_gaps(case: Case, qemu: Observation, run_gapped: Callable[..., Observation],
                     seeds: int = GAP_SEEDS, longest: int = LONG_GAP,
                     note: str = "") -> tuple[tuple[str, Observation] | None, int]:
    """One gap of an exact length past the three steps a ``between`` choice names short
    of running idle (4 to ``longest`` steps, and no longer than the loop has work), at
    each position, with no other gap, one short one, or the loop idle at every later
    gap or every other one (:func:`_idle_around`); the other decisions random with
    each of ``seeds``. QEMU's main loop runs all that is ready in one iteration, so
    between two pipelined commands it may stop anywhere in a job's run: after its
    coroutine returned and before the completion it scheduled, say. Returns the first
    schedule that gives QEMU's outcome (or None) and the number of runs tried."""
    from harness.backends.reference import BETWEEN
    q = normalise(qemu)
    positions = range(len(case.commands) - 1)
    tried = 0
    for p in positions:
        shorts = [{}] + [{o: n} for o in positions if o != p for n in range(1, BETWEEN)]
        shorts += _idle_around(positions, p, shorts)
        for short, seed in itertools.product(shorts, range(seeds)):
            for steps in range(BETWEEN - 1, longest + 1):
                obs = run_gapped(case, seed, short, gap_steps={p: steps})
                tried += 1
                if not differing_fields(normalise(obs), q):
                    also = "".join(f", {n} before command {o + 1}" for o, n in short.items())
                    return (f"back to back but exactly {steps} steps before command {p + 1}{also} "
                            f"(seed {seed}){note}", obs), tried
                if obs.extra.get("gap_idle"):
                    break
    return None, tried


def _idle_around(positions: range, p: int, shorts: list[dict[int, int]]) -> list[dict[int, int]]:
    """Beside an exact gap at ``p``: the loop idle at every later gap, then at every
    other gap. On a busy machine QEMU's client is slow, its main loop runs all that is
    ready between any two commands, and one gap ends somewhere inside a job's run."""
    from harness.backends.reference import BETWEEN
    out = []
    for idle in ({o: BETWEEN - 1 for o in positions if o > p},
                 {o: BETWEEN - 1 for o in positions if o != p}):
        if idle and idle not in shorts and idle not in out:
            out.append(idle)
    return out


def unthrottled(case: Case, qemu: Observation) -> dict[int, list[str]]:
    """The jobs whose speed limit the QEMU backend lifted, per x-wait-jobs, in its order,
    keyed as :func:`harness.backends.reference.run_case` takes them (the implicit last
    x-wait-jobs, -1 on QEMU's side, is ``len(case.commands)``)."""
    out: dict[int, list[str]] = {}
    for index, device in qemu.extra.get("unthrottled", ()):
        out.setdefault(len(case.commands) if index < 0 else index, []).append(device)
    return out


def search_seeds(case: Case, qemu: Observation, runs: list[tuple[ModelRun, str]], first: int,
                 count: int = DEEP_SEEDS) -> tuple[list[tuple[str, Observation]], bool]:
    """Seeds ``first`` .. ``first + count - 1`` under each of ``runs`` (a model run and
    the note its labels get): the distinct outcomes, in order, and whether the last is
    QEMU's (the search stops there). The outcomes the first seeds miss are mostly
    reachable ones that need several things to line up (a job's step in the client's
    gap before one command, none before the next, and the right order inside a
    drain): on QEMU 7.2, a stream still running when a commit it was started during
    had completed, which one seed in about 200 gives."""
    q = normalise(qemu)
    seen: set = set()
    out: list[tuple[str, Observation]] = []
    for seed in range(first, first + count):
        for run, note in runs:
            obs = run(case, seed)
            n = normalise(obs)
            key = outcome_key(n)
            if key in seen:
                continue
            seen.add(key)
            out.append((f"seed {seed}{note}", obs))
            if not differing_fields(n, q):
                return out, True
    return out, False


def search_seeded_gaps(case: Case, qemu: Observation, seeds: int = SEEDED_GAP_SEEDS,
                       longest: int = SEEDED_GAP_LONGEST,
                       unthrottle: dict[int, list[str]] | None = None,
                       x_step_until: dict | None = None) -> tuple[tuple[str, Observation] | None, int]:
    """Random schedules (seeds 0 .. ``seeds`` - 1, with and without qcow2 metadata reads)
    with one gap of an exact length, 1 to ``longest`` steps, after each command in turn.
    :func:`search_long_gaps` puts its exact gap among back-to-back commands, and
    :func:`search_seeds` has no exact gap; some of QEMU's outcomes need both: earlier
    gaps that let one job finish and another start, then a gap that ends inside a third
    job's run. An active commit cancelled in its flush before READY (differential seed
    128) was one: one random schedule in 500 with a gap of exactly 5 steps after the
    commit gives it. Returns the first schedule that gives QEMU's outcome (or None) and
    the number of runs tried."""
    from harness.backends import reference
    q = normalise(qemu)
    tried = 0
    for seed in range(seeds):
        for p in range(len(case.commands) - 1):
            for reads in (False, True):
                for steps in range(1, longest + 1):
                    obs = reference.run_case(case, RandomSource(seed), bugs=(), metadata_io=reads,
                                             gap_steps={p: steps}, unthrottle=unthrottle,
                                             x_step_until=x_step_until)
                    tried += 1
                    if not differing_fields(normalise(obs), q):
                        return (f"seed {seed} but exactly {steps} steps before command {p + 1}"
                                f"{METADATA_NOTE if reads else ''}", obs), tried
                    if obs.extra.get("gap_idle"):
                        break
    return None, tried


def search_gaps(case: Case, qemu: Observation, run_gapped: GappedRun,
                seeds: int = GAP_SEEDS, note: str = "", fewest: int = 1) -> tuple[str, Observation] | None:
    """A schedule with few gaps between otherwise back-to-back commands whose outcome
    is QEMU's, or None. QEMU's side pipelines commands, so a job's step that
    happened to run between two of them, and none between the rest, is a common
    real timing that uniform gaps reach rarely."""
    q = normalise(qemu)
    for gaps in gap_schedules(case, fewest=fewest):
        for seed in range(seeds):
            obs = run_gapped(case, seed, gaps)
            if not differing_fields(normalise(obs), q):
                shown = ", ".join(f"{n} before command {i + 1}" for i, n in gaps.items())
                return f"back to back{' but ' + shown if shown else ''} (seed {seed}){note}", obs
    return None


def reference_model(case: Case, seed: int | None,
                    unthrottle: dict[int, list[str]] | None = None,
                    x_step_until: dict[int, int] | None = None) -> Observation:
    """The model with QEMU 7.2's behaviour (no bugs put back), on one schedule: the
    case's own (``seed`` None), else the case's policy with ``seed``, or plain random
    choices with ``seed`` where the case records its choices. Odd seeds run the
    commands back to back (:class:`Gaps` without gaps)."""
    try:
        from harness.backends import reference
    except ImportError:  # pragma: no cover - the model ships with the harness
        raise UsageError("blockfuzz diff: the model backend (harness.backends.reference) "
                         "is not available in this build") from None
    if seed is None:
        source = None
    elif "choices" in (case.schedule or {}):
        source = RandomSource(seed)  # a recorded schedule is one outcome: try others too
    else:
        source = reference.source_for(case, seed)
    if seed is not None and seed % 2:
        source = Gaps(source)
    return reference.run_case(case, source, bugs=(), unthrottle=unthrottle,
                              x_step_until=x_step_until)


def census(case: Case, qemu: Observation, schedules: int) -> list[str]:
    """How near the model comes to QEMU's outcome, field by field: over ``schedules``
    plain random schedules (the odd ones with qcow2 metadata reads as I/O), how many
    runs give QEMU's whole outcome and QEMU's value of each field (:data:`FIELDS`), and
    which sets of fields differ most often. A field that no schedule gives where the
    others are given is where the model parts from QEMU: the seed-124 case gave QEMU's
    replies under thousands of schedules and its job statuses under none."""
    from collections import Counter

    from harness.backends import reference
    want = normalise(qemu)
    same: Counter = Counter()
    differing: Counter = Counter()
    for seed in range(schedules):
        got = normalise(reference.run_case(case, RandomSource(seed), bugs=(), metadata_io=bool(seed % 2)))
        fields = differing_fields(got, want)
        differing[" + ".join(fields)] += 1
        same.update(name for name in FIELDS if name not in fields)
    lines = [f"    model census, {schedules:,} schedules (half with qcow2 metadata reads): "
             f"QEMU's whole outcome {differing['']:,}",
             "      QEMU's value of each field: " + ", ".join(f"{name} {same[name]:,}" for name in FIELDS)]
    common = [(fields, n) for fields, n in differing.most_common() if fields][:3]
    if common:
        lines.append("      commonest differences: " + "; ".join(f"{fields} {n:,}" for fields, n in common))
    return lines


def oracle_finding(case: Case, qemu: Observation) -> Finding | None:
    """``--only qemu``: the oracle's verdict on QEMU's run, as a finding (None: ok)."""
    from harness.check import check
    verdict = check(case, qemu)
    return None if verdict.ok else Finding(verdict.kind, verdict.message, verdict.where)


class Differ:
    """Runs cases on both sides; owns one :class:`~harness.backends.qemu.QemuRunner`."""

    def __init__(self, *, seeds: int = DEFAULT_SEEDS, timeout: float = 10.0,
                 only: str | None = None, run_model: ModelRun = reference_model,
                 run_gapped: GappedRun | None = gapped_model, trace: tuple[str, ...] = ()):
        from harness.backends.qemu import QemuRunner

        self.seeds = seeds
        self.only = only
        self.run_model = run_model
        self.run_gapped = run_gapped
        self.runner = QemuRunner(timeout=timeout, trace=trace) if only != "model" else None

    def __enter__(self) -> "Differ":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()

    def diff(self, case: Case) -> DiffResult:
        if self.only == "model":
            obs = self.run_model(case, None)
            return DiffResult(case, Observation(), [("the case's schedule", obs)], obs.finding)
        assert self.runner is not None
        qemu = self.runner.run(case)
        if self.only == "qemu":
            return DiffResult(case, qemu, [], qemu.finding or oracle_finding(case, qemu))
        run_model, run_gapped = self.run_model, self.run_gapped
        searches_gaps = run_gapped is gapped_model     # the model's own gap searches, all of them
        lifted = unthrottled(case, qemu) if run_model is reference_model else {}
        model = model_outcomes(case, self.seeds, run_model)
        if lifted:
            # QEMU's x-wait-jobs lifted speed limits (its rate limits run in real time):
            # the model lifts the same ones in the same order; its runs without stay allowed
            model = _merged(model, model_outcomes(
                case, self.seeds, partial(reference_model, unthrottle=lifted)),
                ", speed limits lifted as on QEMU")
        # (run, note, fewest gaps). The model's runs with no gap are among its seeds
        # already, but not with qcow2's metadata reads, which it leaves out otherwise
        if searches_gaps:
            gapped = [(partial(gapped_model, unthrottle=u, metadata_io=reads),
                       METADATA_NOTE if reads else "", 0 if reads else 1)
                      for reads in (False, True) for u in ([lifted] if lifted else []) + [None]]
        else:
            gapped = [(run_gapped, "", 1)] if run_gapped is not None else []
        finding = compare(case, qemu, model, self.seeds)
        timed = qemu.extra.get("x_step_until_ns") if run_model is reference_model else None
        if _mismatch(finding) and timed:
            # QEMU's x-steps waited in real time, its rate limits running meanwhile; the
            # model's go 50 ms of virtual time at most: let each end where QEMU's ended
            model = _merged(model, model_outcomes(
                case, self.seeds, partial(reference_model, unthrottle=lifted or None, x_step_until=timed)),
                ", x-steps ending when QEMU's did")
            finding = compare(case, qemu, model, self.seeds)
        searched = 0
        if _mismatch(finding) and gapped:
            for run, note, fewest in gapped:
                found = search_gaps(case, qemu, run, note=note, fewest=fewest)
                if found is not None:
                    return DiffResult(case, qemu, model + [found], None)
            searched = sum(gap_count(case, fewest=fewest) for _, _, fewest in gapped)
            if searches_gaps:
                for run, note, _ in gapped:
                    found, tried = search_long_gaps(case, qemu, run, note=note)
                    searched += tried
                    if found is not None:
                        return DiffResult(case, qemu, model + [found], None)
            finding = compare(case, qemu, model, self.seeds, searched)
        if _mismatch(finding) and run_model is reference_model:
            deep, matched = search_seeds(case, qemu, _deep_runs(lifted, timed), self.seeds)
            if matched:
                return DiffResult(case, qemu, model + deep[-1:], None)
            model = _merged(model, deep, "")
            if searches_gaps:
                found, tried = search_seeded_gaps(case, qemu, unthrottle=lifted or None,
                                                  x_step_until=timed)
                if found is not None:
                    return DiffResult(case, qemu, model + [found], None)
                searched += tried
            finding = compare(case, qemu, model, self.seeds + DEEP_SEEDS, searched)
        return DiffResult(case, qemu, model, finding)


def _mismatch(finding: Finding | None) -> bool:
    return finding is not None and finding.kind == "qemu-mismatch"


def _deep_runs(lifted: dict[int, list[str]], timed: dict | None) -> list[tuple[ModelRun, str]]:
    """The model runs :func:`search_seeds` tries each seed under: as the first seeds
    were tried (speed limits lifted as on QEMU, x-steps ending when QEMU's did)."""
    runs: list[tuple[ModelRun, str]] = [(reference_model, "")]
    if lifted:
        runs.append((partial(reference_model, unthrottle=lifted), ", speed limits lifted as on QEMU"))
    if timed:
        runs.append((partial(reference_model, unthrottle=lifted or None, x_step_until=timed),
                     ", x-steps ending when QEMU's did"))
    return runs


# -- worker pool ------------------------------------------------------------------------

_worker: Differ | None = None


def _init_worker(seeds: int, timeout: float, only: str | None,
                 trace: tuple[str, ...] = ()) -> None:  # pragma: no cover - in workers
    import multiprocessing.util

    global _worker
    _worker = Differ(seeds=seeds, timeout=timeout, only=only, trace=trace)
    multiprocessing.util.Finalize(None, _worker.close, exitpriority=10)


def _diff_in_worker(case: Case) -> DiffResult:  # pragma: no cover - in workers
    assert _worker is not None
    return _worker.diff(case)


def run_all(cases: list[Case], *, seeds: int, timeout: float, only: str | None,
            jobs: int, trace: tuple[str, ...] = ()) -> Iterable[DiffResult]:
    """Diff every case, in order; ``jobs`` > 1 spreads them over worker processes."""
    if jobs <= 1:
        with Differ(seeds=seeds, timeout=timeout, only=only, trace=trace) as differ:
            for case in cases:
                yield differ.diff(case)
        return
    with ProcessPoolExecutor(jobs, initializer=_init_worker,
                             initargs=(seeds, timeout, only, trace)) as pool:
        yield from pool.map(_diff_in_worker, cases, chunksize=4)


# -- command line ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="CASE|DIR",
                        help="case files, or directories searched for *.json")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="K",
                        help=f"model schedules to try besides the case's own (default {DEFAULT_SEEDS})")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="worker processes, each with its own QEMU (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="bound of every QEMU wait, in seconds (default 10)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each case N times (throughput measurements)")
    parser.add_argument("--only", choices=("qemu", "model"),
                        help="run one side only and report its findings (QEMU's: its crashes and "
                             "hangs and the oracle's verdict on its run) and speed")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the side-by-side report under each failing case")
    parser.add_argument("--qemu-trace", action="append", default=[], metavar="PATTERN",
                        help="enable QEMU trace events matching PATTERN (e.g. 'job_*', "
                             "'stream_one_iteration'; repeatable; `qemu-system-x86_64 -trace help` "
                             "lists them) and print each case's trace lines under it")
    parser.add_argument("--census", type=int, default=0, metavar="N",
                        help="under each failing case, how many of N model schedules give QEMU's "
                             "whole outcome and each field of it (which field the model never "
                             "gives is where it parts from QEMU)")
    parser.add_argument("--qemu-build", metavar="DIR",
                        help="run the QEMU built in DIR (your tree's build directory: "
                             "qemu-system-x86_64, qemu-img, qemu-io, storage-daemon/) "
                             "instead of the one on PATH; QEMU_PROG, QEMU_IMG_PROG, "
                             "QEMU_IO_PROG and QSD_PROG, as iotests read them, go first")


def trace_lines(qemu: Observation) -> list[str]:
    """The case's QEMU trace lines, indented under its PASS/FAIL line."""
    lines = (qemu.extra.get("log") or "").splitlines()
    return ["    qemu trace:"] + [f"      {line}" for line in lines if line.strip()] if lines \
        else ["    qemu trace: no lines (does the pattern name an event of this QEMU?)"]


def collect(paths: list[str]) -> list[Case]:
    """Load the cases named on the command line (directories: every *.json below, sorted)."""
    from harness.replay import case_paths

    files = [f for path in paths for f in case_paths(path)]
    if not files:
        raise UsageError(f"{' '.join(paths)}: no *.json case files there")
    return [load(f) for f in files]


def run(args: argparse.Namespace) -> int:
    if args.seeds < 0 or args.jobs < 1 or args.repeat < 1 or args.timeout <= 0 or args.census < 0:
        raise UsageError("blockfuzz diff: --seeds and --census must be >= 0, --jobs and --repeat "
                         ">= 1, --timeout > 0")
    if args.census and args.only:
        raise UsageError("blockfuzz diff: --census compares the model with QEMU: drop --only")
    cases = [c for c in collect(args.paths) for _ in range(args.repeat)]
    passed = failed = 0
    start = time.perf_counter()
    trace = tuple(args.qemu_trace)
    if args.only == "model" and trace:
        raise UsageError("blockfuzz diff: --qemu-trace needs QEMU: drop --only model")
    if args.only == "model" and args.qemu_build:
        raise UsageError("blockfuzz diff: --qemu-build needs QEMU: drop --only model")
    if args.qemu_build:
        qemu_binaries.use_build(args.qemu_build)
    note = qemu_binaries.version_note() if args.only != "model" else None
    if note:
        print(note, flush=True)
    for result in run_all(cases, seeds=args.seeds, timeout=args.timeout, only=args.only,
                          jobs=args.jobs, trace=trace):
        name = result.case.path or "<case>"
        if result.ok:
            passed += 1
            print(f"PASS {name}")
        else:
            failed += 1
            finding = result.finding
            assert finding is not None
            first = finding.message.splitlines()[0]
            detail = first if first.startswith(finding.kind) else f"{finding.kind}: {first}"
            print(f"FAIL {name}: {detail}")
            if args.verbose:
                print("\n".join("    " + line for line in finding.message.splitlines()[1:]))
            if args.census and finding.kind == "qemu-mismatch":
                print("\n".join(census(result.case, result.qemu, args.census)), flush=True)
        if trace:
            print("\n".join(trace_lines(result.qemu)))
        sys.stdout.flush()
    elapsed = time.perf_counter() - start
    print(f"{passed} passed, {failed} failed")
    if args.repeat > 1 or args.only:
        side = args.only or "model and qemu"
        print(f"{len(cases)} cases in {elapsed:.2f} s: {len(cases) / elapsed:.1f} cases/s "
              f"({side}, {args.jobs} worker{'s' if args.jobs > 1 else ''})")
    return 0 if failed == 0 else 1
