"""``blockfuzz fuzz``: a fuzz campaign on the model.

Four engines draw cases through the one grammar (:mod:`harness.generate`)
and differ only in where the choices come from:

``random``      seeded uniform choices (:class:`~harness.choices.RandomSource`), the baseline;
``pct``         a grammar that learns from runs that reached rare scenario cells
                (:mod:`harness.learning`), PCT priorities for the scheduler
                (:class:`~harness.choices.PCTSource`); prints the bound it achieved;
``hypothesis``  ``st.data()`` (:class:`~harness.choices.HypothesisSource`): hypothesis
                shrinks commands and schedule together; the ``ci`` profile when ``CI`` is set;
``atheris``     libFuzzer bytes read from the front (:class:`~harness.choices.BytesSource`),
                ``fuzz_targets/stream_commit_fuzzer.py`` run in a subprocess.

Every run is judged (the model's own faults, then the oracle); a finding is
minimized, replayed twice and written to the findings directory
(:mod:`harness.corpus`), once per signature. Scenario cells are accumulated
(:mod:`harness.cells`). A live status line shows runs, runs/s, cells,
findings by kind and elapsed time; Ctrl-C stops the campaign, keeps what it
wrote and prints the summary.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import multiprocessing
import os
import queue as queue_mod
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from itertools import combinations
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from harness import case as case_mod
from harness.blocks import whole_blocks
from harness.case import Case
from harness.cells import REQUIRED, CellCoverage
from harness.choices import PCTSource, RandomSource, pct_bound
from harness.corpus import FindingStore, Outcome, StoredFinding, iter_cases, judge
from harness.errors import AtherisError, UsageError
from harness.generate import run_generated, run_generated_batch
from harness.learning import RecentShares

ENGINES = ("random", "pct", "hypothesis", "atheris")
DEFAULT_RUNS = 1000
PCT_FIRST_ESTIMATE = 10     # PCT's k (graph-relevant decisions) before the first run has measured it
FOCUS_MAX = 32              # extra PCT schedules at most for a case that reached a rare cell
FOCUS_SCALE = 0.2           # ... FOCUS_SCALE / (share of runs that reached its rarest cell)
HYPOTHESIS_CHUNK = 50       # examples per hypothesis call (a fresh seed each)
HYPOTHESIS_BATCH = 8        # fresh cases per hypothesis example
RANDOM_BATCH = 32           # random runs generated, then run, then judged together
DATABASE_KEY = b"blockfuzz-finding"  # where a failing case waits for hypothesis to shrink it
MINIMIZE_RUNS = 2000        # model runs a campaign spends minimizing one finding
TARGET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "fuzz_targets", "stream_commit_fuzzer.py")
STATUS_PREFIX = "#blockfuzz "


def run_seed(seed: int, index: int) -> int:
    """The seed of run ``index`` of a campaign seeded ``seed``."""
    return (seed << 32) | index


@dataclass
class Budget:
    runs: int | None = None
    seconds: float | None = None

    def spent(self, runs: int, elapsed: float) -> bool:
        return (self.runs is not None and runs >= self.runs) or \
            (self.seconds is not None and elapsed >= self.seconds)


@dataclass(frozen=True)
class FirstFinding:
    runs: int
    seconds: float
    kind: str


@dataclass
class Stats:
    """What a campaign has done so far."""

    started: float = field(default_factory=time.perf_counter)
    runs: int = 0
    seeds: int = 0                       # corpus cases replayed before generating
    cells: CellCoverage = field(default_factory=CellCoverage)
    kinds: Counter = field(default_factory=Counter)    # distinct signatures by kind
    duplicates: int = 0
    known: Counter = field(default_factory=Counter)    # documented signatures seen again
    findings: list[StoredFinding] = field(default_factory=list)
    first: FirstFinding | None = None
    pct_threads: int = 0
    pct_steps: int = 0
    focus_runs: int = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def runs_per_second(self) -> float:
        return self.runs / max(self.elapsed, 1e-9)


@dataclass
class Config:
    engine: str = "random"
    bugs: tuple[str, ...] = ()
    seed: int = 0
    budget: Budget = field(default_factory=lambda: Budget(runs=DEFAULT_RUNS))
    depth: int = 3                   # PCT: runs cycle through depths 1..depth
    jobs: int = 1
    minimize: bool = True
    stop_at_first: bool = False
    mutator: str = "structure"       # atheris: structure-aware or plain byte mutation
    feedback: str = "cells"          # atheris: scenario cells or the model's bytecode guide libFuzzer
    only: str | None = None          # count only findings with this signature (timing one bug)
    known: frozenset[str] = frozenset()  # documented behaviours: counted, never reported


class Campaign:
    """One campaign: the budget, the statistics, and what happens to a finding.

    ``store`` None keeps findings in memory only (time-to-first-finding runs,
    workers of a parallel campaign, which send them to ``sink`` instead).
    """

    def __init__(self, config: Config, store: FindingStore | None = None,
                 sink: Callable[[tuple], None] | None = None,
                 on_progress: Callable[["Campaign"], None] | None = None):
        self.config = config
        self.store = store
        self.sink = sink
        self.on_progress = on_progress
        self.stats = Stats()
        self.signatures: set[str] = set()
        self.stopped = False
        self.recent = RecentShares()        # pct: what is rare among recent runs
        #: pct: the last run's cells and their :func:`scenarios`, which :meth:`observe`
        #: counts and :meth:`rarest_share` then looks up (made once, not twice)
        self.last_scenarios: tuple = ((), [])

    def done(self) -> bool:
        return self.stopped or self.config.budget.spent(self.stats.runs, self.stats.elapsed)

    def runs_left(self, most: int) -> int:
        """How many runs the next batch may hold: ``most``, or fewer where the run
        budget ends sooner (at least one)."""
        runs = self.config.budget.runs
        return most if runs is None else max(1, min(most, runs - self.stats.runs))

    def observe(self, case: Case, observation, outcome: Outcome) -> None:
        """Account for one generated run."""
        self.stats.runs += 1
        cells = observation.extra.get("cells", ())
        if self.config.engine == "pct":      # only its learning asks how rare a cell is
            features = scenarios(cells)
            self.last_scenarios = (cells, features)
            self.recent.add(features)
        new = self.stats.cells.add(cells, self.stats.runs)
        if self.sink is not None and new:
            self.sink(("cells", new))
        if self.interesting(outcome):
            self.found(case, outcome)
        if self.on_progress is not None:
            self.on_progress(self)

    def note_pct(self, source: PCTSource) -> None:
        self.stats.pct_threads = max(self.stats.pct_threads, source.threads)
        self.stats.pct_steps = max(self.stats.pct_steps, source.steps)

    def rarest_share(self, observation) -> float | None:
        """The share of recent runs (:class:`~harness.learning.RecentShares`, older runs
        weigh less) that reached this run's rarest cell or pair of cells
        (:func:`scenarios`; None: no cell)."""
        cells = observation.extra.get("cells", ())
        if not cells:
            return None
        seen, features = self.last_scenarios
        return self.recent.rarest(features if seen is cells else scenarios(cells))

    @staticmethod
    def focus_energy(share: float | None) -> int:
        """How many more schedules a case deserves whose run reached a cell (or pair)
        that ``share`` of the runs reached (:meth:`rarest_share`): the rarer, the more
        (AFL's energy, with scenario cells for edges)."""
        if share is None:
            return 0
        return min(FOCUS_MAX, int(FOCUS_SCALE / max(share, 1e-6)))

    def new_finding(self, outcome: Outcome) -> bool:
        """A finding not seen yet in this campaign and not a documented behaviour."""
        return (self.interesting(outcome) and outcome.signature not in self.signatures
                and outcome.signature not in self.config.known)

    def interesting(self, outcome: Outcome) -> bool:
        only = self.config.only
        return outcome.kind != "ok" and (only is None or only in (outcome.signature, outcome.kind))

    def found(self, case: Case, outcome: Outcome) -> None:
        stats = self.stats
        if outcome.signature in self.config.known:
            stats.known[outcome.signature] += 1
            return
        if stats.first is None:
            stats.first = FirstFinding(stats.runs, stats.elapsed, outcome.kind)
        if self.config.stop_at_first:
            self.stopped = True
        if outcome.signature in self.signatures or (self.store and self.store.known(outcome)):
            stats.duplicates += 1
            return
        self.signatures.add(outcome.signature)
        stats.kinds[outcome.kind] += 1
        if self.sink is not None:
            self.sink(("finding", case.to_json(), outcome.kind, outcome.where, outcome.message))
        if self.store is not None:
            stored = keep_finding(self.store, case, outcome, self.config.minimize)
            if stored is not None:
                stats.findings.append(stored)


def scenarios(cells: Sequence[str]) -> list:
    """The cells a run reached and every pair of them (a pair as a sorted tuple).

    The seed bug's precursor is two cells at once: "stream_prepare ran while a commit
    was pending" and "two job completions were pending at once". Once the grammar has
    learned each, each is common, so neither makes a run rare; together they stay
    rare, and a run that reached both is what the grammar should learn from. Over 40
    campaigns, counting pairs took pct's median runs to the seed bug from 216 to 166
    (no-drain), 233 to 168 (ref-only), 169 to 138 (header-before-backing)."""
    ordered = sorted(cells)
    return ordered + list(combinations(ordered, 2))


def keep_finding(store: FindingStore, case: Case, outcome: Outcome,
                 minimize_it: bool = True) -> StoredFinding | None:
    """Minimize a new finding (same kind) and write it, replayed twice."""
    if minimize_it:
        from harness.backends.reference import run_case
        from harness.minimize import minimize
        result = minimize(case, outcome.kind, max_runs=MINIMIZE_RUNS)
        shrunk = judge(result.case, run_case(result.case))
        if shrunk.kind == outcome.kind:
            stored = store.add(result.case, shrunk, aliases=(outcome.signature,))
            return replace(stored, needs=needs(result))
    return store.add(case, outcome)


def needs(result) -> tuple[str, ...]:
    """What a minimized finding's schedule forces beyond a non-preemptive one, a line each."""
    return tuple(d.describe() for d in result.forced or ()) or ("nothing beyond a non-preemptive schedule",)


# -- engines ----------------------------------------------------------------------

def run_random(c: Campaign, first: int = 0, stride: int = 1) -> None:
    """Uniform choices, run ``index`` from seed :func:`run_seed` (``first``, then every
    ``stride``-th), in batches of :data:`RANDOM_BATCH` run stage by stage
    (:func:`~harness.generate.run_generated_batch`); a run after the campaign is done
    (its first finding, its time) is not counted."""
    index = first
    while not c.done():
        n = c.runs_left(RANDOM_BATCH)
        sources = [RandomSource(run_seed(c.config.seed, index + k * stride)) for k in range(n)]
        index += n * stride
        for run in run_generated_batch(sources, c.config.bugs):
            if c.done():
                return
            c.observe(*run)


def run_pct(c: Campaign, first: int = 0, stride: int = 1) -> None:
    """PCT schedules, iterative deepening over depths 1..``depth``, on cases drawn from
    a grammar that learns from runs that reached rare scenario cells
    (:mod:`harness.learning`), and *focus*: such a case is run again under more PCT
    schedules (:meth:`Campaign.focus_energy`): its commands reached a dangerous
    precondition, so its interleavings are worth more than a fresh case's.

    Ideas tried on top of this and dropped, each with its numbers over 40 to 600
    campaigns, are in ``docs/pct-experiments.md``. In short: the case, not the
    interleaving, is the hard part of the seed race, and the learned grammar gains
    most from copying a rare run's decisions whole."""
    from harness.learning import GrammarModel, LearnedPCTSource
    model = GrammarModel()
    index = first
    while not c.done():
        depth, steps = _pct_shape(c, index)
        source = LearnedPCTSource(run_seed(c.config.seed, index), depth, steps, model)
        case, observation, outcome = run_generated(source, c.config.bugs)
        c.note_pct(source)
        c.observe(case, observation, outcome)
        share = c.rarest_share(observation)
        model.learn(source.generated, share)
        energy = c.focus_energy(share) if outcome.kind == "ok" else 0
        if energy:
            _focus(c, case, index, energy)
        index += stride


def _pct_shape(c: Campaign, index: int) -> tuple[int, int]:
    """PCT's depth (cycling through 1..depth) and step estimate for run ``index``."""
    return 1 + index % c.config.depth, max(c.stats.pct_steps, PCT_FIRST_ESTIMATE if not c.stats.runs else 1)


def _focus(c: Campaign, case: Case, index: int, runs: int) -> None:
    """``case`` under ``runs`` more PCT schedules: all of them run, then all judged (as
    :func:`~harness.generate.run_generated_batch` does, for the processor's caches). Each
    schedule's step estimate counts the steps of those before it, as when each run was
    noted before the next one began; a run after the campaign is done is not counted."""
    from harness.backends.reference import run_case
    if c.done():
        return
    sources, observations = [], []
    steps = 0
    for j in range(c.runs_left(runs)):
        depth, estimate = _pct_shape(c, j)
        source = PCTSource(run_seed(c.config.seed, index) ^ ((j + 1) << 48), depth, max(estimate, steps))
        observations.append(run_case(case, source))
        sources.append(source)
        steps = max(steps, source.steps)
    judged: list[tuple] = []
    for source, observation in zip(sources, observations):
        if c.done():
            return
        c.stats.focus_runs += 1
        c.note_pct(source)
        c.observe(case.with_schedule({"choices": list(source.recorded)}), observation,
                  _judge_once(case, observation, judged))


def _judge_once(case: Case, observation, judged: list[tuple]) -> Outcome:
    """:func:`judge` for one more run of ``case``, whose earlier runs and their outcomes
    are ``judged``: a run that showed the oracle exactly what an earlier one did (its
    replies, events, end state and finding; the oracle reads nothing else) gets that
    run's outcome. About a third of focus runs repeat one: their schedules differ only
    where nothing shows. Lists and dicts compare in C and stop at the first difference."""
    for seen, outcome in judged:
        if (observation.events == seen.events and observation.replies == seen.replies
                and observation.finding == seen.finding and observation.data == seen.data
                and observation.chain == seen.chain and observation.jobs_left == seen.jobs_left):
            return outcome
    outcome = judge(case, observation)
    judged.append((observation, outcome))
    return outcome


def run_hypothesis(c: Campaign, first: int = 0, stride: int = 1) -> None:
    """Call a hypothesis test in chunks, each with its own seed, until the budget is spent.

    A run with a signature not found yet fails the test, so hypothesis
    shrinks it (commands and schedule together) before the campaign keeps it.

    Each example holds :data:`HYPOTHESIS_BATCH` fresh cases, one after the
    other from the same ``st.data()``: hypothesis's own cost, about 280
    microseconds an example (more than a model run), is spread over eight
    runs. Measured over 20 campaigns a bug form, this took the median time to
    the seed bug from 0.73 s to 0.46 s (no-drain) and from 0.94 s to 0.46 s
    (ref-only), in as many runs, at 2,270 runs/s instead of 1,460. Three
    things make it work: no span around a case (with one label for every
    case, hypothesis's mutator copied cases over each other inside an example
    and the median grew five-fold); the failing case shrunk alone
    (:func:`_hypothesis_shrink`), not inside its example, where every shrink
    candidate that stopped failing ran the example's other cases; and fresh
    cases rather than schedules.

    Tried and dropped: 16 or 32 cases an example. 16 took the runs/s from 3.8x below
    the bare model's to 3.4x, but the runs to the seed bug went from a median
    1,406 / 1,241.5 (no-drain / ref-only, seeds 20-59) to 2,096.5 / 2,096.5; on
    seeds 0-19 it had looked better (1,103.5 / 942.5 against 1,374.5 / 1,374.5),
    32 there worse (2,012 / 1,302.5).

    Also tried and dropped: 500, 2,000 or 5,000 examples a call instead of 50.
    Each call begins, as hypothesis does, with small examples (a novel prefix, then
    the simplest choice for every draw after it: up to a tenth of the call's
    examples), so with 50 about 7 % of the runs are the all-zero case again. Fewer
    calls did not pay: median runs to the seed bug 1,281 / 1,250.5 against 1,374.5 /
    1,374.5 over seeds 0-19, but 1,282.5 / 1,194 against 1,147.5 / 1,092 over seeds
    20-39; the prefix-then-simplest cases find the race as often as random ones.

    Also tried and dropped: one case under several schedules per example. With 8
    schedules runs/s went from 4x below the bare model's to 2x, but the time to
    the seed bug doubled (median 0.58 s to 1.1 s over 20 campaigns): whether a
    race can happen at all is mostly a property of the case, so fresh cases beat
    more interleavings of the same one.
    """
    chunk = first
    while not c.done():
        found = _hypothesis_chunk(c, run_seed(c.config.seed, chunk))
        if found is not None:
            case, outcome = found
            c.found(case, outcome)
        chunk += stride


class _Interesting(Exception):
    """Raised inside the hypothesis test for a new signature; one class per signature."""

    classes: dict[str, type] = {}

    @classmethod
    def for_signature(cls, sig: str) -> type:
        if sig not in cls.classes:
            cls.classes[sig] = type(f"Found[{sig}]", (cls,), {})
        return cls.classes[sig]


def _hypothesis_chunk(c: Campaign, seed: int) -> tuple[Case, Outcome] | None:
    """One hypothesis call of up to :data:`HYPOTHESIS_CHUNK` examples, each of
    :data:`HYPOTHESIS_BATCH` fresh cases; a new finding is then shrunk on its own
    (:func:`_hypothesis_shrink`) unless the campaign only times the first one."""
    from hypothesis import Phase, given, strategies as st
    from hypothesis import seed as hypothesis_seed

    batch, remaining = _hypothesis_shape(c)
    shrink_here = batch == 1 and not c.config.stop_at_first
    config = _hypothesis_settings(max_examples=remaining, phases=(
        (Phase.generate, Phase.shrink) if shrink_here else (Phase.generate,)))
    found: list = []

    # the budget is checked between chunks only: a test that stopped drawing
    # half-way through a chunk would look flaky to hypothesis
    @config
    @hypothesis_seed(seed)
    @given(st.data())
    def prop(data):
        for _ in range(batch):
            _hypothesis_case(c, data, found)

    try:
        with whole_blocks():
            prop()
    except _Interesting:
        case, outcome, blocks = found
        if shrink_here or c.config.stop_at_first:
            return case, outcome
        return _hypothesis_shrink(c, blocks, seed, outcome.signature) or (case, outcome)
    return None


def _hypothesis_shape(c: Campaign) -> tuple[int, int]:
    """Cases per example and examples in the next chunk: full chunks, except that a
    run budget is met exactly (a smaller batch for the last chunk)."""
    batch = HYPOTHESIS_BATCH if _hypothesis_reuse() is not None else 1
    if c.config.budget.runs is None:
        return batch, HYPOTHESIS_CHUNK
    left = max(1, c.config.budget.runs - c.stats.runs)
    batch = min(batch, left)
    return batch, min(HYPOTHESIS_CHUNK, left // batch)


def _hypothesis_settings(**changes):
    from hypothesis import HealthCheck, settings
    base = settings.get_profile("ci") if os.environ.get("CI") else settings.default
    options = dict(database=None, deadline=None, derandomize=False, report_multiple_bugs=False,
                   print_blob=False, suppress_health_check=list(HealthCheck))
    return settings(base, **{**options, **changes})


def _hypothesis_reuse():
    """hypothesis's encoding of a choice sequence for its example database, or None
    where this hypothesis has none (then each example holds one case)."""
    try:
        from hypothesis.database import choices_to_bytes
    except ImportError:       # pragma: no cover - hypothesis before choice sequences
        return None
    return choices_to_bytes


def _hypothesis_shrink(c: Campaign, blocks: list[bytes], seed: int,
                       signature: str) -> tuple[Case, Outcome] | None:
    """Shrink one failing case alone: its choices go into an example database that a
    one-case test replays (phase *reuse*) and then shrinks, commands and schedule
    together. Shrinking it inside its example would run the example's other cases
    for every shrink candidate that stops failing."""
    from hypothesis import Phase, given, strategies as st
    from hypothesis import seed as hypothesis_seed
    from hypothesis.database import InMemoryExampleDatabase
    database = InMemoryExampleDatabase()
    found: list = []

    @_hypothesis_settings(database=database, max_examples=1, phases=(Phase.reuse, Phase.shrink))
    @hypothesis_seed(seed)
    @given(st.data())
    def prop(data):
        _hypothesis_case(c, data, found, signature)

    # the key hypothesis's own find() sets; a hypothesis that ignored it would find
    # nothing to reuse, and the campaign would keep the case as it failed
    prop._hypothesis_internal_database_key = DATABASE_KEY
    # the secondary corpus: hypothesis takes an exact replay from the primary one
    # for a test case it shrank already, and would not shrink it
    database.save(DATABASE_KEY + b".secondary", _hypothesis_reuse()(blocks))
    try:
        with whole_blocks():
            prop()
    except _Interesting:
        return found[0], found[1]
    return None


def _hypothesis_case(c: Campaign, data, found: list, signature: str | None = None) -> None:
    """Generate and run one fresh case; a new finding fails the test, with
    ``found`` holding the case, its verdict and hypothesis's choices for it.
    While a finding is shrunk, only its own ``signature`` fails the test:
    hypothesis, told to report one bug, would otherwise shrink into whichever
    other bug is simpler (a use-after-free into a wrong-backing)."""
    from harness.choices import HypothesisSource
    source = HypothesisSource(data)
    case, observation, outcome = run_generated(source, c.config.bugs)
    if not c.new_finding(outcome) or signature not in (None, outcome.signature):
        c.observe(case, observation, outcome)
        return
    c.stats.runs += 1              # counted here; the finding is kept after shrinking
    if c.stats.first is None:
        c.stats.first = FirstFinding(c.stats.runs, c.stats.elapsed, outcome.kind)
    found[:] = [case, outcome, source.blocks]
    raise _Interesting.for_signature(outcome.signature)(outcome.message)


ENGINE_LOOPS = {"random": run_random, "pct": run_pct, "hypothesis": run_hypothesis}


# -- parallel campaigns -----------------------------------------------------------

def _worker(config: Config, first: int, stride: int, out) -> None:
    """One process of ``--jobs N``: runs ``first, first + stride, ...``; reports to ``out``."""
    sent = [0.0, 0]

    def progress(c: Campaign) -> None:
        now = time.perf_counter()
        if now - sent[0] >= 0.2:
            out.put(("runs", c.stats.runs - sent[1], c.stats.pct_threads, c.stats.pct_steps))
            sent[:] = [now, c.stats.runs]

    c = Campaign(config, sink=out.put, on_progress=progress)
    try:
        with frozen_heap():
            ENGINE_LOOPS[config.engine](c, first, stride)
    except KeyboardInterrupt:
        pass
    out.put(("runs", c.stats.runs - sent[1], c.stats.pct_threads, c.stats.pct_steps))
    out.put(("done",))


def run_parallel(c: Campaign) -> None:
    """Fan the campaign out over ``jobs`` processes; the parent keeps the findings."""
    jobs = c.config.jobs
    budget = c.config.budget
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = []
    for w in range(jobs):
        share = None if budget.runs is None else budget.runs // jobs + (w < budget.runs % jobs)
        config = replace(c.config, jobs=1, budget=Budget(share, budget.seconds))
        procs.append(ctx.Process(target=_worker, args=(config, w, jobs, out), daemon=True))
    for p in procs:
        p.start()
    try:
        _collect(c, out, len(procs))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def _collect(c: Campaign, out, workers: int) -> None:
    while workers:
        try:
            message = out.get(timeout=0.25)
        except queue_mod.Empty:
            if c.on_progress:
                c.on_progress(c)
            continue
        workers -= merge_message(c, message)


def merge_message(c: Campaign, message: tuple) -> int:
    """Apply one worker message to the parent campaign; 1 when a worker finished."""
    what = message[0]
    if what == "runs":
        c.stats.runs += message[1]
        c.stats.pct_threads = max(c.stats.pct_threads, message[2])
        c.stats.pct_steps = max(c.stats.pct_steps, message[3])
    elif what == "cells":
        c.stats.cells.add(message[1], c.stats.runs)
    elif what == "finding":
        case = case_mod.from_dict(json.loads(message[1]))
        c.found(case, Outcome(message[2], message[3], message[4]))
    if c.on_progress:
        c.on_progress(c)
    return 1 if what == "done" else 0


# -- atheris ----------------------------------------------------------------------

def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def atheris_command(config: Config, corpus_dir: str, worker: int = 0) -> list[str]:
    """The libFuzzer command line of one atheris worker."""
    budget = config.budget
    cmd = [sys.executable, TARGET, corpus_dir, f"-seed={run_seed(config.seed, worker) % (1 << 31) + 1}",
           "-max_len=1024", "-print_final_stats=0"]
    if budget.runs is not None:
        share = budget.runs // config.jobs + (worker < budget.runs % config.jobs)
        cmd.append(f"-atheris_runs={share}")
    if budget.seconds is not None:
        cmd.append(f"-max_total_time={max(1, int(budget.seconds))}")
    return cmd


ATHERIS_SEEDS = 64          # random inputs libFuzzer starts from, in an empty corpus
ATHERIS_SEED_LEN = 256


def seed_atheris_corpus(corpus_dir: str, seed: int) -> None:
    """Start an empty libFuzzer corpus from random inputs (as many cases as the random
    engine's first runs): from the empty input alone, libFuzzer spends its first
    thousands of runs growing inputs out of all-zero choices."""
    os.makedirs(corpus_dir, exist_ok=True)
    if os.listdir(corpus_dir):
        return
    rng = RandomSource(run_seed(seed, 1 << 31)).rng
    for i in range(ATHERIS_SEEDS):
        with open(os.path.join(corpus_dir, f"seed-{i:03d}"), "wb") as f:
            f.write(bytes(rng.randrange(256) for _ in range(ATHERIS_SEED_LEN)))


def run_atheris(c: Campaign, work_dir: str) -> None:
    """Run ``jobs`` atheris subprocesses (``atheris.Fuzz`` never returns) and follow their status lines."""
    if not atheris_available():
        raise UsageError("the atheris engine needs atheris (pip install 'atheris>=2.3'); "
                         "the hypothesis, random and pct engines work without it")
    corpus_dir = os.path.join(work_dir, "atheris-corpus")
    seed_atheris_corpus(corpus_dir, c.config.seed)
    staging = tempfile.mkdtemp(prefix="blockfuzz-atheris-")
    env = dict(os.environ, BLOCKFUZZ_BUGS=",".join(c.config.bugs), BLOCKFUZZ_FINDINGS=staging,
               BLOCKFUZZ_ONLY=c.config.only or "", BLOCKFUZZ_KNOWN=",".join(sorted(c.config.known)),
               BLOCKFUZZ_KEEP_GOING="0" if c.config.stop_at_first else "1",
               BLOCKFUZZ_STATUS="1", BLOCKFUZZ_MUTATOR=c.config.mutator,
               BLOCKFUZZ_FEEDBACK=c.config.feedback)
    lines: queue_mod.Queue = queue_mod.Queue()
    procs, logs = [], []
    for w in range(c.config.jobs):
        logs.append(os.path.join(staging, f"libfuzzer-{w}.log"))
        with open(logs[-1], "w") as log:
            p = subprocess.Popen(atheris_command(c.config, corpus_dir, w), env=env, stdout=subprocess.PIPE,
                                 stderr=log, text=True, cwd=work_dir)
        threading.Thread(target=_pump, args=(p, w, lines), daemon=True).start()
        procs.append(p)
    finished, reported = False, set()
    try:
        reported = _follow_atheris(c, lines, len(procs))
        finished = True
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.wait()
    # a worker told to stop at its first finding stops with libFuzzer's crash exit
    failed = [(w, p.returncode) for w, p in enumerate(procs)
              if p.returncode != 0 and not (c.config.stop_at_first and w in reported)]
    if failed:
        worker, code = failed[0]
        raise AtherisError(worker, code, logs[worker])
    if finished:
        shutil.rmtree(staging, ignore_errors=True)


def _pump(proc: subprocess.Popen, worker: int, lines: queue_mod.Queue) -> None:
    for line in proc.stdout:
        if line.startswith(STATUS_PREFIX):
            lines.put((worker, json.loads(line[len(STATUS_PREFIX):])))
    lines.put((worker, None))


def _follow_atheris(c: Campaign, lines: queue_mod.Queue, workers: int) -> set[int]:
    """Take the workers' status lines until each has closed its output; returns the
    workers that reported a finding."""
    runs: dict[int, int] = {}
    reported: set[int] = set()
    while workers:
        try:
            worker, status = lines.get(timeout=0.25)
        except queue_mod.Empty:
            if c.on_progress:
                c.on_progress(c)
            continue
        if status is None:
            workers -= 1
            continue
        runs[worker] = status["runs"]
        c.stats.runs = sum(runs.values())
        c.stats.cells.add(status.get("cells", ()), c.stats.runs)
        if "finding" in status:
            reported.add(worker)
            f = status["finding"]
            outcome = Outcome(f["kind"], f["where"], f["message"])
            if c.stats.first is None and outcome.signature not in c.config.known:
                # the worker's own clock: its start-up is not fuzzing
                c.stats.first = FirstFinding(c.stats.runs, f["seconds"], f["kind"])
            c.found(case_mod.load(f["path"]), outcome)
        if c.on_progress:
            c.on_progress(c)
    return reported


class FuzzFinding(Exception):
    """What the atheris target raises for a finding, so libFuzzer writes its crash file too."""


def outcomes(case: Case, observation) -> list:
    """What each command did, as QMP said it: (command, accepted or the error with
    names masked), and each job's status sequence; the coarse signal, syzkaller's
    from system calls' results, that lets a corpus grow before any cell is reached."""
    out: list = []
    for command, reply in zip(case.commands, observation.replies):
        error = reply.get("error")
        out.append((command.execute, QUOTED.sub("'*'", error["desc"]) if error else "ok"))
    out.extend(("job", tuple(statuses)) for statuses in observation.job_statuses.values())
    return out


QUOTED = re.compile(r"'[^']*'")


class CellFeedback:
    """libFuzzer's coverage from what a run did in the block layer, not from which
    bytecode it ran: each scenario cell and pair of cells a run reached
    (:func:`scenarios`) and each command outcome and job status sequence
    (:func:`outcomes`) is one of atheris's coverage counters, the next one of a pool
    reserved before libFuzzer starts (it registers counters then). The model runs
    uninstrumented, and compiled if built.

    Measured on the seed bug, 10 campaigns a form, pure Python model: median 2,296
    runs and 1.2 s to the finding (no-drain and ref-only alike), against 4,106 runs
    and 5.3 s (no-drain) and 5,148 runs and 6.2 s (ref-only) with the model's
    bytecode coverage. Cells alone did as well (1,460 runs, 0.93 s, no-drain) in a
    campaign, which starts from random inputs, but from an empty corpus libFuzzer
    found nothing in 30 s: a minimal input reaches no cell, so nothing made the
    corpus grow. Command outcomes give it that first gradient. Bytecode coverage and
    cells together did worse than either (5,337 runs): the bytecode's thousands of
    features drown the cells', and libFuzzer keeps inputs for code paths that do not
    matter to a race."""

    POOL = 4096     # counters reserved before libFuzzer starts (it registers them then)

    def __init__(self, atheris) -> None:
        self.atheris = atheris      # its functions are looked up per call: Setup replaces them
        self.pool = [atheris._reserve_counter() for _ in range(self.POOL)]
        self.counters: dict = {}

    def signal(self, case: Case, observation) -> None:
        counters, hit = self.counters, self.atheris._trace_branch
        for feature in scenarios(observation.extra.get("cells", ())) + outcomes(case, observation):
            index = counters.get(feature)
            if index is None:
                index = counters[feature] = self.pool[len(counters) % self.POOL]
            hit(index)


class ByteTarget:
    """``TestOneInput`` of ``fuzz_targets/stream_commit_fuzzer.py``: one run from libFuzzer's bytes.

    Each finding with a new signature is written as a case file into
    ``findings_dir`` (the bytes' meaning does not survive a change of the
    grammar; the case file does). With ``keep_going`` the run goes on, else
    :class:`FuzzFinding` is raised and libFuzzer stops with a crash file.
    With ``status`` a JSON line (:data:`STATUS_PREFIX`) reports runs, new
    cells and findings on ``out`` for ``blockfuzz fuzz --engine atheris``.
    """

    def __init__(self, bugs: tuple[str, ...], findings_dir: str, keep_going: bool = False,
                 status: bool = False, out=None, only: str | None = None,
                 feedback: "CellFeedback | None" = None, known: frozenset[str] = frozenset()):
        self.bugs = bugs
        self.feedback = feedback
        self.only = only
        self.known = known
        self.findings_dir = findings_dir
        self.keep_going = keep_going
        self.status = status
        self.out = out or sys.stdout
        self.runs = 0
        self.cells: set[str] = set()
        self.signatures: set[str] = set()
        self.last_report = 0.0
        self.started: float | None = None

    def __call__(self, data: bytes) -> None:
        from harness.choices import BytesSource
        from harness.corpus import content_hash
        if self.started is None:
            self.started = time.perf_counter()
        case, observation, outcome = run_generated(BytesSource(data), self.bugs)
        self.runs += 1
        if self.feedback is not None:
            self.feedback.signal(case, observation)
        found = (outcome.kind != "ok" and (self.only is None or self.only in (outcome.signature, outcome.kind))
                 and outcome.signature not in self.known)
        status: dict = {}
        new = [x for x in observation.extra.get("cells", ()) if x not in self.cells]
        if new:
            self.cells.update(new)
            status["cells"] = new
        if found and outcome.signature not in self.signatures:
            self.signatures.add(outcome.signature)
            case = replace(case, expect={"verdict": outcome.kind})
            path = os.path.join(self.findings_dir, f"{outcome.kind}-{content_hash(case)}.json")
            case_mod.save(case, path)
            status["finding"] = {"path": os.path.abspath(path), "kind": outcome.kind,
                                 "where": outcome.where, "message": outcome.message,
                                 "seconds": time.perf_counter() - self.started}
        self.report(status)
        if found and not self.keep_going:
            raise FuzzFinding(f"{outcome.signature}: {outcome.message}")

    def report(self, status: dict, force: bool = False) -> None:
        now = time.perf_counter()
        if self.status and (status or force or now - self.last_report >= 0.2):
            status["runs"] = self.runs
            self.out.write(STATUS_PREFIX + json.dumps(status) + "\n")
            self.out.flush()
            self.last_report = now


# -- running a campaign -----------------------------------------------------------

def replay_corpus(c: Campaign, directory: str) -> None:
    """Run every case under ``directory`` with the campaign's bugs: their cells count, findings too."""
    from harness.backends.reference import run_case
    for case in iter_cases(directory):
        case = replace(case, bugs=c.config.bugs, expect=None)
        observation = run_case(case)
        c.stats.seeds += 1
        c.stats.cells.add(observation.extra.get("cells", ()), 0)
        outcome = judge(case, observation)
        if outcome.kind != "ok":
            c.found(replace(case, schedule={"choices": observation.choices}), outcome)


def run_campaign(c: Campaign, work_dir: str = ".") -> None:
    """Run ``c`` with its engine until its budget is spent (or the first finding, if asked)."""
    engine = c.config.engine
    if engine == "atheris":
        run_atheris(c, work_dir)
    elif c.config.jobs > 1:
        run_parallel(c)
    else:
        with frozen_heap():
            ENGINE_LOOPS[engine](c)


@contextlib.contextmanager
def frozen_heap():
    """Keep the objects that exist now (the imported libraries, the model's modules,
    the campaign's setup: some 35,000) out of the garbage collector's sight while the
    block runs (:func:`gc.freeze`), and give them back after it.

    A run makes and drops thousands of objects, so the collector runs often, and each
    of its full collections walked that whole heap again, though none of it ever
    becomes garbage. The model's runs free themselves by reference counting
    (``Machine.release`` breaks the graph's cycles), so what the collector looks at
    while frozen is what a run leaves behind. Measured with ``run_campaign`` over
    4,000 runs of seed 0 (best of 3, CPU time, the other core busy): random from
    126-136 to 122-125 microseconds a run, hypothesis from 232 to 223, pct from 268 to
    265. No collection first: with one, pct's median time to the seed bug (ten seeds,
    ``scripts/ttff.py``) went from 0.029 s to 0.058 s, a short campaign's whole
    length; what garbage the freeze keeps comes back with :func:`gc.unfreeze`."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def time_to_first_finding(engine: str, bug: str, seed: int, max_runs: int,
                          signature: str | None = None, feedback: str = "cells",
                          known: frozenset[str] | None = None) -> tuple[int, float, str]:
    """Runs and seconds until ``engine`` first finds something with ``bug`` put back.

    ``signature`` (e.g. ``"use-after-free@bdrv_set_backing_hd"``, or a kind alone) counts only
    findings with that signature; others are run past, and so are ``known`` signatures
    (by default QEMU 7.2's own behaviours, :func:`documented_signatures`: a commit's
    use-after-free is not the seed bug's, though of its kind).

    :returns: ``(runs, seconds, verdict)``; ``verdict`` is ``"ok"`` (and runs
        is ``max_runs``) when nothing was found within the budget.
    """
    config = Config(engine=engine, bugs=(bug,) if bug else (), seed=seed,
                    budget=Budget(runs=max_runs), minimize=False, stop_at_first=True,
                    only=signature, feedback=feedback,
                    known=documented_signatures() if known is None else known)
    c = Campaign(config)
    with tempfile.TemporaryDirectory(prefix="blockfuzz-ttff-") as work:
        run_campaign(c, work)
    if c.stats.first is None:
        return c.stats.runs, c.stats.elapsed, "ok"
    return c.stats.first.runs, c.stats.first.seconds, c.stats.first.kind


# -- what a person watches ---------------------------------------------------------

def status_line(c: Campaign) -> str:
    s = c.stats
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.kinds.items())) or "none"
    return (f"{c.config.engine}: {s.runs:,} runs  {s.runs_per_second:,.0f} runs/s  "
            f"cells {len(s.cells)}  findings: {kinds}  {_clock(s.elapsed)}")


def _clock(seconds: float) -> str:
    m, sec = divmod(int(seconds), 60)
    return f"{m}:{sec:02d}"


def summary(c: Campaign, interrupted: bool = False) -> list[str]:
    s = c.stats
    bugs = ",".join(c.config.bugs) or "none (the fixed model)"
    lines = [f"{'interrupted' if interrupted else 'done'}: engine {c.config.engine}, bugs {bugs}, "
             f"seed {c.config.seed}",
             f"runs {s.runs:,} in {s.elapsed:.1f} s ({s.runs_per_second:,.0f} runs/s, "
             f"{model_build(c.config)} model)"
             + (f", after {s.seeds} corpus cases" if s.seeds else "")]
    lines.append(f"cells reached: {len(s.cells)} ({len(REQUIRED) - len(s.cells.missing())} of "
                 f"{len(REQUIRED)} required)")
    lines += s.cells.lines()
    if s.first is not None:
        lines.append(f"first finding: {s.first.kind} at run {s.first.runs:,}, after {s.first.seconds:.2f} s")
    found = ", ".join(f"{k} {n}" for k, n in sorted(s.kinds.items())) or "none"
    lines.append(f"findings: {found} (duplicates {s.duplicates})")
    for sig, n in sorted(s.known.items()):
        lines.append(f"  known, not reported: {sig} ({n} run{'s' if n != 1 else ''})")
    for f in s.findings:
        lines.append(f"  {f.outcome.signature}: {f.path}" + ("  FLAKY: replayed as " + ", ".join(f.replays)
                                                           if f.flaky else ""))
        lines += [f"    needs {d}" for d in f.needs]
    if c.config.engine == "pct" and s.runs:
        lines.append(pct_summary(c))
    return lines


def model_build(config: Config) -> str:
    """Which model the runs used: atheris guided by bytecode coverage instruments the
    Python sources; every other engine takes the compiled build while it is current."""
    import blockfuzz_fast
    if config.engine == "atheris" and config.feedback == "code":
        return "pure Python"
    return blockfuzz_fast.describe()


def pct_summary(c: Campaign) -> str:
    """PCT's guarantee for this campaign: runs cycle through depths 1..D, so a depth-d
    bug of a case is hit with p >= 1/(D * n * k^(d-1)) per run of that case."""
    s, top = c.stats, c.config.depth
    bounds = ", ".join(f"d={d}: {pct_bound(s.pct_threads, s.pct_steps, d) / top:.1e}"
                       for d in range(1, top + 1))
    return (f"PCT: at most n = {s.pct_threads} threads and k = {s.pct_steps} decisions per run, "
            f"depths 1..{top}; per run of a case, a depth-d bug is hit with p >= 1/({top}*n*k^(d-1)): "
            f"{bounds}; {s.focus_runs:,} of the {s.runs:,} runs were focus runs")


class LiveStatus:
    """The rich status line on a terminal; nothing elsewhere."""

    def __init__(self, console):
        self.console = console
        self.live = None
        self.last = 0.0

    def __enter__(self):
        if self.console.is_terminal:
            from rich.live import Live
            self.live = Live("", console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def update(self, c: Campaign) -> None:
        now = time.perf_counter()
        if self.live is not None and now - self.last >= 0.25:
            self.live.update(status_line(c))
            self.last = now

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)


# -- the command line -------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="random", help="where choices come from")
    parser.add_argument("--bugs", metavar="ID,...", default="", help="put these bugs back into the model")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-time", type=float, metavar="S", help="stop after S seconds")
    budget.add_argument("--runs", type=int, metavar="N", help=f"stop after N runs (default {DEFAULT_RUNS})")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="campaign seed (default 0)")
    parser.add_argument("--corpus", metavar="DIR", help="replay these cases first (their cells count)")
    parser.add_argument("--findings", metavar="DIR", default="findings",
                        help="where findings are written (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="processes (default 1)")
    parser.add_argument("--depth", type=int, default=3, metavar="D",
                        help="PCT: runs cycle through bug depths 1..D (default 3)")
    parser.add_argument("--feedback", choices=("cells", "code"), default="cells",
                        help="atheris: what guides libFuzzer: the scenario cells and pairs of cells "
                             "a run reached (default), or coverage of the model's bytecode")
    parser.add_argument("--no-minimize", action="store_true", help="keep findings as found")
    parser.add_argument("--known", metavar="DIR", action="append",
                        help="case files of documented behaviours (e.g. corpus/known; with "
                             "--differential also docs/qemu-7.2-findings): their signatures are "
                             "counted but not reported as findings (may be given more than once)")
    parser.add_argument("--backend", choices=("model", "qemu"), default="model",
                        help="run the generated cases on the model (default) or on real QEMU 7.2")
    parser.add_argument("--differential", action="store_true",
                        help="run every generated case on the model and on QEMU and compare")
    parser.add_argument("--model-seeds", type=int, default=20, metavar="K",
                        help="--differential: model schedules per case (default 20)")
    parser.add_argument("--qemu-build", metavar="DIR",
                        help="--backend qemu, --differential: run the QEMU built in DIR (your "
                             "tree's build directory) instead of the one on PATH")


def config_from_args(args: argparse.Namespace) -> Config:
    from reference.bugs import UnknownBug, validate
    try:
        bugs = validate(b for b in args.bugs.split(",") if b)
    except UnknownBug as e:
        raise UsageError(f"unknown bug id {e}; `blockfuzz bugs` lists them") from None
    if args.jobs < 1 or args.depth < 1 or (args.runs is not None and args.runs < 1):
        raise UsageError("--jobs, --depth and --runs must be at least 1")
    if args.max_time is not None and args.max_time <= 0:
        raise UsageError("--max-time must be positive")
    runs = args.runs if args.runs is not None or args.max_time is not None else DEFAULT_RUNS
    return Config(engine=args.engine, bugs=bugs, seed=args.seed, budget=Budget(runs, args.max_time),
                  depth=args.depth, jobs=args.jobs, minimize=not args.no_minimize,
                  feedback=args.feedback, known=known_signatures(args.known))


#: the repository's corpus/known: QEMU 7.2 behaviours the fixed model reproduces
DOCUMENTED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "corpus", "known")


@functools.lru_cache(maxsize=None)
def documented_signatures() -> frozenset[str]:
    """The signatures of :data:`DOCUMENTED` (none where the harness runs without it)."""
    return known_signatures(DOCUMENTED) if os.path.isdir(DOCUMENTED) else frozenset()


def known_signatures(directories: str | Sequence[str] | None,
                     replay: Callable[[Case], Outcome] | None = None) -> frozenset[str]:
    """The signatures of the case files in ``directories`` (one or several), each
    replayed with its own schedule by ``replay`` (default: on the model) unless its
    description names its signature."""
    if directories is None:
        return frozenset()
    if isinstance(directories, str):
        directories = (directories,)
    for directory in directories:
        if not os.path.isdir(directory):
            raise UsageError(f"--known {directory}: not a directory")
    return frozenset(sig for directory in directories
                     for sig in FindingStore(directory, replay=replay or replay_outcome).signatures
                     if sig != "ok")     # a case the campaign's backend runs without a finding


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    if getattr(args, "backend", "model") == "qemu" or getattr(args, "differential", False):
        from harness import qemu_campaign
        return qemu_campaign.run(args)
    if args.qemu_build:
        raise UsageError("--qemu-build needs QEMU: add --backend qemu or --differential")
    config = config_from_args(args)
    if args.corpus is not None and not os.path.isdir(args.corpus):
        raise UsageError(f"--corpus {args.corpus}: not a directory")
    console = Console(highlight=False)
    store = FindingStore(args.findings, replay=replay_outcome)
    interrupted = False
    with LiveStatus(console) as live:
        c = Campaign(config, store=store, on_progress=live.update)
        try:
            if args.corpus:
                replay_corpus(c, args.corpus)
            c.stats.started = time.perf_counter()
            run_campaign(c, os.path.abspath(args.findings))
        except KeyboardInterrupt:
            interrupted = True
    for line in summary(c, interrupted):
        console.print(line, markup=False, soft_wrap=True)
    if interrupted:
        return 130
    return 1 if c.stats.kinds or c.stats.duplicates else 0


def replay_outcome(case: Case) -> Outcome:
    """Run a case on the model with its own schedule and judge it."""
    from harness.backends.reference import run_case
    return judge(case, run_case(case))
