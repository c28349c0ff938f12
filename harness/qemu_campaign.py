"""``blockfuzz fuzz --backend qemu`` and ``blockfuzz fuzz --differential``.

Cases come from the one grammar (:mod:`harness.generate`): with ``--engine random``
its seeded random choices; with ``--engine pct`` only the cases whose run on the fixed
model, in a pct campaign there, reached a scenario cell (or pair of cells) that few
recent runs reached (:func:`directed_case_stream`). On QEMU the schedule is QEMU's
own, so only the generation is chosen. ``--backend qemu`` judges each run with the
oracle; ``--differential`` runs each case on the fixed model (several schedules) and on QEMU and keeps
every disagreement as a ``qemu-mismatch`` (and every QEMU crash as
``qemu-crash``). Findings go through the same store as model findings:
written atomically, deduplicated by signature, replayed twice (on QEMU) before
they are reported. The live line shows cases/s and the agreement rate.

``--known DIR`` names what QEMU is known to do (``corpus/known``,
``docs/qemu-7.2-findings``): each case file there is replayed as the campaign
runs a case (on QEMU, and for ``--differential`` on the model too) unless its
description names its signature, and a case with one of those signatures is
counted, not reported. A campaign against QEMU 7.2 then exits 0 unless it finds
something new: a gate for a tree whose known crashes are not the point.
"""
from __future__ import annotations

import argparse
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

from harness.backends import qemu_binaries
from harness.case import Case
from harness.choices import RandomSource
from harness.corpus import FindingStore, Outcome, judge
from harness.errors import UsageError
from harness.learning import RecentShares

BATCH = 16                 # cases generated ahead for the worker pool
SEED_STRIDE = 1_000_003    # campaign seed S draws case i from RandomSource(S * stride + i)
#: --engine pct: a model run's case goes to QEMU when its rarest cell or pair of cells was
#: reached by fewer than this share of recent model runs (about one run in a hundred)
DIRECTED_RARE = 0.005
QEMU_ENGINES = ("random", "pct")    # where --backend qemu and --differential draw cases


@dataclass
class Tally:
    cases: int = 0
    agree: int = 0
    kinds: Counter = field(default_factory=Counter)
    known: Counter = field(default_factory=Counter)      # --known signatures seen again
    stored: list = field(default_factory=list)
    duplicates: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def line(self, mode: str) -> str:
        rate = self.cases / self.elapsed if self.elapsed > 0 else 0.0
        agree = f"{100.0 * self.agree / self.cases:.1f} %" if self.cases else "-"
        label = "agreement" if mode == "differential" else "oracle ok"
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())) or "none"
        known = f"  known {sum(self.known.values())}" if self.known else ""
        return (f"{mode}: {self.cases:,} cases  {rate:.1f} cases/s  {label} {agree}  "
                f"findings: {kinds}{known}  {int(self.elapsed) // 60}:{int(self.elapsed) % 60:02d}")


def check_args(args: argparse.Namespace) -> None:
    if args.engine not in QEMU_ENGINES:
        raise UsageError("--backend qemu and --differential draw cases with --engine random or "
                         "--engine pct (the cases a pct campaign on the model found rare): on QEMU "
                         "the schedule is QEMU's own")
    if args.bugs:
        raise UsageError("--bugs cannot be put back into real QEMU; drop --bugs "
                         "(--differential compares QEMU with the fixed model)")
    if args.qemu_build:
        qemu_binaries.use_build(args.qemu_build)


def case_stream(seed: int, engine: str = "random"):
    if engine == "pct":
        yield from directed_case_stream(seed)
        return
    from harness.generate import generate
    for i in itertools.count():
        yield generate(RandomSource(seed * SEED_STRIDE + i))


def directed_case_stream(seed: int, rare: float = DIRECTED_RARE, depth: int = 3):
    """The cases of a pct campaign on the fixed model (its learned grammar and PCT
    schedules, as :func:`harness.campaign.run_pct` without focus) whose run reached a
    scenario cell or pair of cells that fewer than ``rare`` of the recent model runs
    reached: "a node was freed during a drain", "stream_prepare's base is a node a
    pending commit will drop", ... Uniform cases reach those rarely, and they are where
    QEMU's drains and completions interleave. A model run takes about half a
    millisecond and a QEMU run over a hundred, so the model picks which cases QEMU's
    time goes to. Each case keeps the model schedule that reached the cell, so the
    differential's model side tries it first. The model's runs are not judged: only
    their cells count here. Deterministic for a ``seed``."""
    from harness.backends.reference import run_case
    from harness.campaign import PCT_FIRST_ESTIMATE, run_seed, scenarios
    from harness.generate import generate_with_spans
    from harness.learning import GrammarModel, LearnedPCTSource

    grammar, recent, steps = GrammarModel(), RecentShares(), 0
    for index in itertools.count():
        # PCT's step estimate as run_pct's: the most steps a run took so far
        estimate = max(steps, 1) if index else PCT_FIRST_ESTIMATE
        source = LearnedPCTSource(run_seed(seed, index), 1 + index % depth, estimate, grammar)
        generated = generate_with_spans(source)
        observation = run_case(generated.case, source)
        steps = max(steps, source.steps)
        features = scenarios(observation.extra.get("cells", ()))
        recent.add(features)
        share = recent.rarest(features)
        grammar.learn(source.generated, share)
        if share is not None and share < rare:
            yield generated.case.with_schedule({"choices": source.recorded[generated.choices_used:]})


def qemu_outcome(case: Case, runner) -> Outcome:
    obs = runner.run(case)
    return judge(case, obs)


#: model schedules a mismatch's census counts (:func:`harness.differential.census`)
CENSUS = 400


def diff_outcome(result) -> Outcome:
    """The finding's first line; under a mismatch, the model's census of QEMU's outcome
    too (which of QEMU's fields the model gives how often), so that the finding's case
    file says at once where to look."""
    if result.finding is None:
        return Outcome("ok")
    f = result.finding
    message = f.message.splitlines()[0] if f.message else ""
    if f.kind == "qemu-mismatch":
        from harness.differential import census
        message = "\n".join([message, *(line.strip() for line in census(result.case, result.qemu, CENSUS))])
    return Outcome(f.kind, f.where, message)


def results(args: argparse.Namespace, cases):
    """Yield ``(case, outcome)`` pairs, one worker or a pool."""
    if args.differential:
        from harness.differential import run_all
        for r in run_all(cases, seeds=args.model_seeds, timeout=10.0, only=None, jobs=args.jobs):
            yield r.case, diff_outcome(r)
        return
    from harness.differential import run_all
    for r in run_all(cases, seeds=0, timeout=10.0, only="qemu", jobs=args.jobs):
        yield r.case, judge(r.case, r.qemu)


def make_store(args: argparse.Namespace) -> FindingStore:
    from harness.differential import Differ

    def replay(case: Case) -> Outcome:
        with Differ(seeds=args.model_seeds, only=None if args.differential else "qemu") as d:
            r = d.diff(case)
        return diff_outcome(r) if args.differential else judge(case, r.qemu)
    return FindingStore(args.findings, replay=replay)


def within_budget(args: argparse.Namespace, t: Tally) -> bool:
    if args.max_time is not None:
        return t.elapsed < args.max_time
    return t.cases < (args.runs or 200)


def record(t: Tally, store: FindingStore, case: Case, outcome: Outcome,
           known: frozenset[str] = frozenset()) -> None:
    t.cases += 1
    if outcome.kind == "ok":
        t.agree += 1
        return
    if outcome.signature in known:
        t.known[outcome.signature] += 1
        return
    t.kinds[outcome.kind] += 1
    stored = store.add(case, outcome)
    if stored is None:
        t.duplicates += 1
    else:
        t.stored.append(stored)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from harness.campaign import known_signatures
    check_args(args)
    mode = "differential" if args.differential else "qemu"
    console = Console(highlight=False)
    note = qemu_binaries.version_note()
    if note:
        console.print(note, markup=False, soft_wrap=True)
    store = make_store(args)
    known = known_signatures(args.known, replay=store.replay)
    t = Tally()
    interrupted = False
    stream = case_stream(args.seed, args.engine)
    live = Live(t.line(mode), console=console, transient=True) if console.is_terminal else None
    try:
        if live is not None:
            live.__enter__()
        while within_budget(args, t):
            batch = [next(stream) for _ in range(BATCH if args.max_time else
                                                 min(BATCH, (args.runs or 200) - t.cases))]
            for case, outcome in results(args, batch):
                record(t, store, case, outcome, known)
                if live is not None:
                    live.update(t.line(mode))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if live is not None:
            live.__exit__(None, None, None)
    for line in summary(t, mode, interrupted):
        console.print(line, markup=False, soft_wrap=True)
    if interrupted:
        return 130
    return 1 if t.kinds else 0


def summary(t: Tally, mode: str, interrupted: bool) -> list[str]:
    lines = [f"{'interrupted' if interrupted else 'done'}: {t.line(mode)}"]
    if mode == "differential" and t.cases:
        lines.append(f"agreement: {t.agree}/{t.cases} cases agree with the model "
                     f"({100.0 * t.agree / t.cases:.1f} %)")
    for s in t.stored:
        flag = " (flaky)" if s.flaky else ""
        lines.append(f"  {s.outcome.signature}{flag}: {s.path}")
    if t.duplicates:
        lines.append(f"  ({t.duplicates} more with signatures already stored)")
    for sig, n in sorted(t.known.items()):
        lines.append(f"  known, not reported: {sig} ({n} case{'s' if n != 1 else ''})")
    return lines
