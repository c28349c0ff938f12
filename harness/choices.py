"""Choice sources: the one interface behind every decision of a run.

The model's scheduler and the case generator ask ``choose(n, label, keys)``
for an integer in ``range(n)``. ``label`` says what is being decided (for
traces and for engines that treat kinds of decision differently), ``keys``
optionally names the ``n`` options (PCT uses them as thread identities).

Every source records the choices it handed out in ``recorded``, so any run
can be replayed exactly with :class:`RecordedSource`. A decision with a single
option (``n == 1``) is not a choice: it is neither asked for nor recorded,
which keeps recorded schedules short and stable under shrinking.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Hashable, Sequence


class ChoiceSource:
    """Base class: subclasses implement :meth:`_pick`."""

    def __init__(self) -> None:
        self.recorded: list[int] = []

    def choose(self, n: int, label: str, keys: Sequence[Hashable] | None = None) -> int:
        """Return an integer in ``range(n)``; ``n`` must be at least 1."""
        if n <= 1:
            return 0
        value = self._pick(n, label, keys)
        self.recorded.append(value)
        return value

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        raise NotImplementedError

    def attach(self, machine) -> None:
        """Called with the machine a run is about to use; a source that explains its
        decisions (:class:`PreemptionSource`) keeps it."""


class RandomSource(ChoiceSource):
    """Seeded uniform choices: the plain-random baseline."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.rng = random.Random(seed)
        self._bits = self.rng.getrandbits

    def choose(self, n: int, label: str, keys: Sequence[Hashable] | None = None) -> int:
        """``randrange(n)`` as CPython draws it (``random.Random._randbelow``:
        ``n.bit_length()`` bits, again until below ``n``), without its argument
        checks and two call levels, which cost more than the draw: the same
        sequence. The hot path of every run, so :meth:`_pick` is folded in here."""
        if n <= 1:
            return 0
        bits, k = self._bits, n.bit_length()
        value = bits(k)
        while value >= n:
            value = bits(k)
        self.recorded.append(value)
        return value


class RecordedSource(ChoiceSource):
    """Replays a recorded list; past its end every choice is 0.

    A recorded value that is out of range for the decision at hand (the case
    was edited, or a shrinker removed something) is reduced modulo ``n``.
    """

    def __init__(self, choices: Sequence[int]) -> None:
        super().__init__()
        self.choices = list(choices)
        self.position = 0

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        if self.position >= len(self.choices):
            return 0
        value = self.choices[self.position] % n
        self.position += 1
        return value

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self.choices)


class PCTSource(ChoiceSource):
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010).

    Every runnable item the scheduler offers is named by a key (``keys``:
    "timer:drive0", "io:node4", "bh:job_exit:node4", ...). The items of one
    job (its coroutine's timer and I/O, its ``job_exit`` bottom half) are one
    sequential activity, so the *thread* of a key is its last ``:``-separated
    part, the job id (:func:`job_thread`). Each thread gets a random priority the
    first time it is seen, and a decision always runs the offered item whose
    thread has the highest priority (the first such item: the oldest).
    ``depth - 1`` change points, drawn uniformly from the first
    ``n_steps_estimate`` decisions, drop the thread chosen there below every
    other. A bug of depth ``d`` is then hit with probability at least
    ``1/(n * k**(d-1))`` per run, for ``n`` threads and ``k`` decisions
    (:func:`pct_bound`).

    Only *graph-relevant* decisions count as PCT's steps (:func:`graph_relevant`): those
    that offer an item which changes the graph, a job's completion BH or the
    header write of ``bdrv_change_backing_file``. Every other decision follows
    the priorities without a chance of a change point, so ``k`` counts the
    points where an interleaving can matter (a handful per run, not the
    hundred loop iterations of the copy loops) and the bound stays useful.

    Decisions without keys (the case generator's) are seeded random.
    """

    def __init__(self, seed: int, depth: int = 2, n_steps_estimate: int = 10) -> None:
        super().__init__()
        if depth < 1 or n_steps_estimate < 1:
            raise ValueError("PCT needs depth >= 1 and n_steps_estimate >= 1")
        self.seed = seed
        self.depth = depth
        self.rng = random.Random(seed)
        points = self.rng.sample(range(1, n_steps_estimate + 1), min(depth - 1, n_steps_estimate))
        #: decision number -> the low priority given there (earlier points rank higher)
        self.change_points = {p: float(depth - 1 - i) for i, p in enumerate(sorted(points))}
        self.priorities: dict[Hashable, float] = {}
        self.steps = 0

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        """The first offered item of the highest-priority thread; a thread seen for the
        first time gets its priority here, in the order offered. One pass over the keys,
        each key's thread and relevance looked up in :data:`_KEY_FACTS` (a scheduler
        decision offers two to four items, and a pct run takes a few dozen)."""
        if keys is None:
            return self.rng.randrange(n)
        priorities = self.priorities
        threads = []
        relevant = False
        best = 0
        top = -1.0
        for i in range(len(keys)):
            facts = _KEY_FACTS.get(keys[i])
            if facts is None:
                facts = _key_facts(keys[i])
            thread = facts[0]
            if facts[1]:
                relevant = True
            priority = priorities.get(thread)
            if priority is None:
                # initial priorities lie above every change-point priority
                priority = priorities[thread] = self.depth + self.rng.random()
            if priority > top:
                top, best = priority, i
            threads.append(thread)
        if not relevant:
            return best
        self.steps += 1
        low = self.change_points.get(self.steps)
        if low is not None:
            priorities[threads[best]] = low
            best = self._highest(threads)
        return best

    def _highest(self, threads: list) -> int:
        priorities = self.priorities
        top = max(priorities[t] for t in threads)
        return next(i for i, t in enumerate(threads) if priorities[t] == top)

    @property
    def threads(self) -> int:
        """How many distinct threads this run has seen (PCT's n)."""
        return len(self.priorities)


@dataclass(frozen=True)
class Decision:
    """One decision of a run, as :class:`PreemptionSource` saw it.

    ``default`` is what a non-preemptive scheduler picks: the item of the thread
    that ran last when it is on offer (``continued``), else the oldest item; between
    two commands, no loop iteration. ``where`` says where the run was (the step
    label, what the loop was waiting for, whose completion ran) when a machine
    was attached.
    """

    index: int
    n: int
    label: str
    keys: tuple | None
    default: int
    chosen: int
    continued: bool
    where: str = ""

    @property
    def forced(self) -> bool:
        return self.chosen != self.default

    @property
    def kind(self) -> str:
        """``delay`` (the loop ran on before the next command), ``preemption`` (the
        thread that ran last was stopped although it could go on) or ``reorder``
        (it could not; a newer item ran before the oldest)."""
        if self.keys is None:
            return "delay"
        return "preemption" if self.continued else "reorder"

    def describe(self) -> str:
        if self.keys is None and self.label == "between":     # the last option runs until idle
            ran = "until idle" if self.chosen == self.n - 1 else plural(self.chosen, "iteration")
            return f"delay at {self.where}: the loop ran {ran} before the next command"
        if self.keys is None:
            return f"{self.kind} at {self.where or self.label}: {self.label} ran {self.chosen}, not {self.default}"
        return f"{self.kind} at {self.where}: ran {self._item(self.chosen)} instead of {self._item(self.default)}"

    def _item(self, i: int) -> str:
        """The key of option ``i``, numbered when several options share it (oldest #1)."""
        key = self.keys[i]
        if self.keys.count(key) == 1:
            return str(key)
        return f"{key} #{self.keys[:i].count(key) + 1}"


class PreemptionSource(ChoiceSource):
    """A non-preemptive scheduler with chosen exceptions (CHESS's iterative context
    bounding, Musuvathi and Qadeer, PLDI 2007).

    By default each decision continues the thread (:func:`job_thread`) that ran
    last, or runs the oldest item, and runs no loop iteration between commands.
    ``points`` maps a decision index to the option to take there instead;
    ``follow`` replays a recorded choice list exactly (0 past its end, as
    :class:`RecordedSource`) while still noting where it departs from the
    default. Every decision is kept in ``decisions``.
    """

    def __init__(self, points: dict[int, int] | None = None, follow: Sequence[int] | None = None) -> None:
        super().__init__()
        self.points = dict(points or {})
        self.follow = None if follow is None else list(follow)
        self.decisions: list[Decision] = []
        self.last: Hashable | None = None
        self.machine = None

    def attach(self, machine) -> None:
        self.machine = machine

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        i = len(self.decisions)
        threads = None if keys is None else [job_thread(k) for k in keys]
        continued = threads is not None and self.last in threads
        default = threads.index(self.last) if continued else 0
        if self.follow is not None:
            chosen = self.follow[i] % n if i < len(self.follow) else 0
        else:
            chosen = self.points.get(i, default)
            chosen = chosen if chosen < n else default
        if threads is not None:
            self.last = threads[chosen]
        self.decisions.append(Decision(i, n, label, None if keys is None else tuple(keys), default, chosen,
                                       continued, self._where()))
        return chosen

    def _where(self) -> str:
        m = self.machine
        if m is None:
            return ""
        where = m.step_label()
        if m.aio.waiting:
            where += f" inside the wait for {m.aio.waiting[-1]}"
        if m.completing:
            job = m.completing[-1]
            where += f" ({job.job_type} job '{job.id}' completion)"
        return where

    @property
    def forced(self) -> list[Decision]:
        return [d for d in self.decisions if d.forced]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summarize(forced: Sequence[Decision]) -> str:
    """``3 delays, 36 preemptions, 1 reorder``: the forced decisions counted by kind."""
    kinds = [d.kind for d in forced]
    return ", ".join(plural(kinds.count(k), k) for k in ("delay", "preemption", "reorder") if k in kinds)


def job_thread(key: Hashable) -> Hashable:
    """The thread of a scheduler key: its last ``:``-separated part (a job id)."""
    return key.rsplit(":", 1)[-1] if isinstance(key, str) else key


#: scheduler items that change the graph: a job's completion, a header write
GRAPH_ITEMS = ("bh:", "io:bdrv_")


def graph_relevant(keys: Sequence[Hashable]) -> bool:
    """Whether a decision offers an item that changes the graph (PCT counts only those)."""
    return any(isinstance(k, str) and k.startswith(GRAPH_ITEMS) for k in keys)


#: scheduler key -> (its thread, whether it changes the graph), as PCT reads them
_KEY_FACTS: dict[Hashable, tuple[Hashable, bool]] = {}


def _key_facts(key: Hashable) -> tuple[Hashable, bool]:
    """:func:`job_thread` and :func:`graph_relevant` of one key, remembered (the keys are
    names of jobs and nodes, a few dozen a campaign; the table starts again past 4,096)."""
    if len(_KEY_FACTS) >= 4096:
        _KEY_FACTS.clear()
    facts = _KEY_FACTS[key] = (job_thread(key), graph_relevant((key,)))
    return facts


def pct_bound(threads: int, steps: int, depth: int) -> float:
    """PCT's guarantee: a depth-``depth`` bug is hit with at least this probability per run."""
    return 1.0 / (max(1, threads) * max(1, steps) ** (depth - 1))


class BytesSource(ChoiceSource):
    """Choices decoded from a byte string, for atheris (libFuzzer) inputs.

    Integers are read from the FRONT of the buffer, one byte for a choice of
    up to 256 options, two (big-endian) up to 65,536, four beyond. atheris's
    ``FuzzedDataProvider`` takes integers from the tail instead: a mutation
    that grows or shrinks the buffer then shifts every integer, so a case
    drifts away from itself under mutation. Read from the front, a byte keeps
    its meaning until the choices before it change shape, which is what a
    structure-aware mutator needs. Past the end every choice is 0.

    ``offsets[i]`` is where the ``i``-th recorded choice was read.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = bytes(data)
        self.position = 0
        self.offsets: list[int] = []

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        width = byte_width(n)
        self.offsets.append(self.position)
        chunk = self.data[self.position:self.position + width]
        self.position += width
        return int.from_bytes(chunk.ljust(width, b"\0"), "big") % n

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self.data)


def byte_width(n: int) -> int:
    """How many bytes :class:`BytesSource` reads for a choice among ``n`` options."""
    return 1 if n <= 1 << 8 else 2 if n <= 1 << 16 else 4


#: the scheduler's random stream under hypothesis; registered below so that
#: hypothesis seeds it per example (``st.random_module()`` varies the seed)
SCHEDULER_RANDOM = random.Random(0)


class HypothesisSource(ChoiceSource):
    """Choices drawn from hypothesis's ``st.data()``.

    With ``schedule="draw"`` (the default) the scheduler's decisions are drawn
    like the generator's, so hypothesis shrinks the commands and the schedule
    together. With ``schedule="random"`` the scheduler's decisions (those with
    ``keys``) come from :data:`SCHEDULER_RANDOM`, registered with
    ``hypothesis.register_random`` and seeded through ``st.random_module()``:
    hypothesis then shrinks the seed, not the schedule.

    ``draws`` says how a decision becomes a draw. ``"bytes"`` (the default)
    draws blocks of :data:`BLOCK` bytes and reads each decision from the front
    of the current block, as :class:`BytesSource` does: a case costs two or
    three draws, and hypothesis still generates, mutates and shrinks every
    choice (a shorter, smaller byte string is a simpler case). ``"integers"``
    makes each decision one ``draw_integer(0, n - 1)``: hypothesis's finest
    shrinking, at about 25 microseconds a draw, three times the model's run
    on a typical case. Both go straight to the test case's ``ConjectureData``
    where this hypothesis has it (the same choice sequence as
    ``data.draw(st.integers(...))`` or ``st.binary(...)``, without the
    per-draw bookkeeping for the printed example, which a case file makes
    unnecessary).
    """

    def __init__(self, data, schedule: str = "draw", draws: str = "bytes") -> None:
        super().__init__()
        if schedule not in ("draw", "random"):
            raise ValueError(f"schedule must be 'draw' or 'random', not {schedule!r}")
        if draws not in ("bytes", "integers"):
            raise ValueError(f"draws must be 'bytes' or 'integers', not {draws!r}")
        from hypothesis import strategies as st
        self.data = data
        self.schedule = schedule
        self.blocks: list[bytes] = []   # with draws="bytes": hypothesis's choices, in order
        cd = getattr(data, "conjecture_data", None)
        if draws == "integers":
            raw = getattr(cd, "draw_integer", None)
            self._draw = (lambda n: raw(0, n - 1)) if raw is not None else \
                (lambda n: data.draw(st.integers(0, n - 1)))
        else:
            raw_bytes = getattr(cd, "draw_bytes", None)
            self._draw_block = (lambda: raw_bytes(BLOCK, BLOCK)) if raw_bytes is not None else \
                (lambda: data.draw(st.binary(min_size=BLOCK, max_size=BLOCK)))
            self._bytes = b""
            self._at = 0
            self._draw = self._from_block
        if schedule == "random":
            _register_scheduler_random()
            data.draw(st.random_module())
        elif draws == "bytes":
            self.choose = self._choose_from_blocks

    def _choose_from_blocks(self, n: int, label: str, keys: Sequence[Hashable] | None = None) -> int:
        """:meth:`choose` when every decision is read from blocks: a one-byte decision
        (nearly all) read inline, the same value :meth:`_from_block` gives."""
        if n <= 1:
            return 0
        if n <= 256:
            at = self._at
            if at >= len(self._bytes):
                self._bytes, at = self._block(), 0
            value = self._bytes[at] % n
            self._at = at + 1
        else:
            value = self._from_block(n)
        self.recorded.append(value)
        return value

    def _block(self) -> bytes:
        block = self._draw_block()
        self.blocks.append(block)
        return block

    def _from_block(self, n: int) -> int:
        width = byte_width(n)
        if self._at + width > len(self._bytes):
            self._bytes, self._at = self._block(), 0
        chunk = self._bytes[self._at:self._at + width]
        self._at += width
        return int.from_bytes(chunk, "big") % n

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        if keys is not None and self.schedule == "random":
            return SCHEDULER_RANDOM.randrange(n)
        return self._draw(n)


#: bytes per hypothesis draw of :class:`HypothesisSource` (``draws="bytes"``)
BLOCK = 64


_registered = False


def _register_scheduler_random() -> None:
    global _registered
    if not _registered:
        import hypothesis
        hypothesis.register_random(SCHEDULER_RANDOM)
        _registered = True
