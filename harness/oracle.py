"""The oracle: what any correct QEMU 7.2 must show for a case.

An abstract model written from job.c's tables, blockdev.c's argument checks
and the invariants of a backing chain (qemu-block-semantics.md §4, §5, §6,
§11). It shares no code with the reference model and must never import
``reference``: when the two disagree, one of them is wrong, and the finding
says which way. Use :func:`violations`::

    for v in violations(case, observation):
        print(v)        # "wrong-backing: node4's backing is commit-filter, expected node0"

It checks four things:

* ``illegal-transition``: every job's ``JOB_STATUS_CHANGE`` sequence against
  job.c's ``JobSTT`` (:data:`TRANSITIONS`);
* ``wrong-backing``: once every job has ended, the chain is the original one
  minus the nodes the successful jobs removed (no filter left behind), and
  each header names its backing node's file;
* ``data-mismatch``: the guest view is the initial chain's data plus the
  accepted ``x-guest-write`` commands: jobs never change it;
* ``accept-mismatch``: replies to commands whose fate is certain (:data:`RULES`,
  QEMU's own check order with QEMU 7.2's texts), and exactly one
  ``BLOCK_JOB_COMPLETED``/``BLOCK_JOB_CANCELLED`` per job that ended.

Time. Commands and events are two streams; a command's checks see the job
statuses of the moment it starts. Event position *p* means "after the first
*p* events". If every event carries ``"step"`` (the index of the command
during which it was emitted) a command starts at one known position;
otherwise the ``created`` event of each accepted job anchors its command and
a command may start anywhere between its neighbours' anchors. A status is
*known* only when it is the same all over that window.
"""
from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

if TYPE_CHECKING:
    from harness.case import Case, Command
    from harness.observation import ChainNode, Observation

# --- job.c's tables (QEMU 7.2), as data ----------------------------------

#: JobSTT: status -> the statuses it may change to.
TRANSITIONS: dict[str, frozenset[str]] = {
    "undefined": frozenset({"created"}),
    "created": frozenset({"running", "aborting", "null"}),
    "running": frozenset({"paused", "ready", "waiting", "aborting"}),
    "paused": frozenset({"running"}),
    "ready": frozenset({"standby", "waiting", "aborting"}),
    "standby": frozenset({"ready"}),
    "waiting": frozenset({"pending", "aborting"}),
    "pending": frozenset({"aborting", "concluded"}),
    "aborting": frozenset({"aborting", "concluded"}),
    "concluded": frozenset({"null"}),
    "null": frozenset(),
}

_ACTIVE = frozenset({"created", "running", "paused", "ready", "standby"})

#: JobVerbTable: verb -> the statuses that accept it. ``complete`` is also
#: accepted on ``standby`` since QEMU 6.0 (53ddb9c892).
VERBS: dict[str, frozenset[str]] = {
    "cancel": _ACTIVE | {"waiting", "pending"},
    "pause": _ACTIVE,
    "resume": _ACTIVE,
    "set-speed": _ACTIVE,
    "complete": frozenset({"ready", "standby"}),
    "finalize": frozenset({"pending"}),
    "dismiss": frozenset({"concluded"}),
}

#: Statuses in which no job of that id exists: lookups fail.
GONE = frozenset({"undefined", "null"})

JOB_COMMANDS = ("block-stream", "block-commit")
END_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
SPEED_TEXT = "Parameter 'speed' expects a non-negative value"
NODE_NAME_MAX = 32   # sizeof(BlockDriverState.node_name)


@dataclass(frozen=True)
class Violation:
    """One thing the observation shows that QEMU 7.2 cannot do.

    ``step`` is the command index (-1: not tied to one command); ``where``
    is a short, case-independent signature for deduplication.
    """

    kind: str
    step: int
    expected: str
    observed: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        at = f" at command {self.step}" if self.step >= 0 else ""
        return f"{self.kind}{at}: {self.message}"


def violations(case: "Case", observation: "Observation") -> list[Violation]:
    """Everything in ``observation`` that no correct QEMU could show for ``case``.

    Chain and data are judged only for a run that went to its end
    (``observation.finding`` is None): a cut-short run has neither.
    """
    ctx = Context.build(case, observation)
    found = transition_violations(observation.events)
    found += completion_violations(ctx.timeline)
    found += ctx.timeline.problems
    if observation.finding is None:
        found += chain_violations(ctx, observation)
        found += data_violations(case, observation)
    found += reply_violations(ctx, observation.replies)
    return found


# --- the event stream --------------------------------------------------------

@dataclass
class Lifetime:
    """One job from its ``created`` on; positions index ``observation.events``."""

    job_id: str
    start: int
    changes: list[tuple[int, str]] = field(default_factory=list)
    ends: list[tuple[int, str]] = field(default_factory=list)   # (position, event name)
    end_errors: list[Any] = field(default_factory=list)          # each end event's "error"

    @property
    def accepted(self) -> bool:
        """A job whose command failed goes straight from created to null."""
        return len(self.changes) < 2 or self.changes[1][1] != "null"

    @property
    def concluded(self) -> bool:
        return any(status == "concluded" for _, status in self.changes)

    @property
    def completed_ok(self) -> bool:
        return [name for _, name in self.ends] == ["BLOCK_JOB_COMPLETED"] \
            and not self.end_errors[0]

    def status_before(self, position: int) -> str:
        status = "undefined"
        for pos, new in self.changes:
            if pos >= position:
                break
            status = new
        return status


class Timeline:
    """Jobs, their statuses, and where each command sits in the event stream."""

    def __init__(self, case: "Case", replies: list[dict], events: list[dict]):
        self.events = events
        self.lifetimes: list[Lifetime] = []
        self.problems: list[Violation] = []
        self._lives_of: dict[Any, list[Lifetime]] = {}   # job id -> its lifetimes, in order
        self._no_jobs: dict[int, bool] = {}              # no_jobs_alive, per command
        self._read_events(events)
        self.jobs = self._match_jobs(case.commands, replies)
        self.windows = self._windows(case.commands)

    def _read_events(self, events: list[dict]) -> None:
        current: dict[str, Lifetime] = {}
        for pos, event in enumerate(events):
            name, data = event.get("event"), event.get("data") or {}
            if name == "JOB_STATUS_CHANGE":
                job_id, status = data.get("id"), data.get("status")
                life = current.get(job_id)
                if life is None or status == "created" or life.changes[-1][1] == "null":
                    life = current[job_id] = Lifetime(job_id, pos)
                    self.lifetimes.append(life)
                    self._lives_of.setdefault(job_id, []).append(life)
                life.changes.append((pos, status))
            elif name in END_EVENTS:
                self._read_end(current.get(data.get("device")), pos, name, data)

    def _read_end(self, life: Lifetime | None, pos: int, name: str, data: dict) -> None:
        if life is None:
            self.problems.append(Violation(
                "accept-mismatch", -1, "no event for a job that does not exist", name,
                f"{name} for job '{data.get('device')}', which was never created",
                "completion-events"))
            return
        life.ends.append((pos, name))
        life.end_errors.append(data.get("error"))

    def _match_jobs(self, commands, replies) -> dict[int, Lifetime]:
        """Pair each accepted job command with the job it created, in order.

        A run cut short during a job command has no reply for it: that
        command may own one more job."""
        accepted = [i for i, c in enumerate(commands) if c.execute in JOB_COMMANDS
                    and i < len(replies) and "return" in replies[i]]
        lives = [life for life in self.lifetimes if life.accepted]
        cut_short = len(replies) < len(commands) and commands[len(replies)].execute in JOB_COMMANDS
        for i in accepted[len(lives):]:
            self.problems.append(Violation(
                "accept-mismatch", i, "a JOB_STATUS_CHANGE 'created' for the new job",
                "none", f"command {i} ({commands[i].execute}) was accepted but created no job",
                f"{commands[i].execute}:no-job"))
        for life in lives[len(accepted) + cut_short:]:
            self.problems.append(Violation(
                "accept-mismatch", -1, "jobs only from accepted commands", life.job_id,
                f"job '{life.job_id}' was created but no command that creates a job "
                "was accepted for it", "job-without-command"))
        return dict(zip(accepted, lives))

    def _windows(self, commands) -> list[tuple[int, int]]:
        """For each command (and the implicit final x-wait-jobs), where it may start."""
        total = len(self.events)
        steps = [e.get("step") for e in self.events]
        if all(isinstance(s, int) for s in steps):
            steps.sort()      # command i starts after every event an earlier step emitted
            return [(p, p) for p in (bisect_left(steps, i) for i in range(len(commands) + 1))]
        return [self._window(commands, i, total) for i in range(len(commands) + 1)]

    def _window(self, commands, index: int, total: int) -> tuple[int, int]:
        """Bounds from the jobs: each job command creates at most one job, so
        the first jobs belong to earlier commands and the last to later ones.
        A job whose command failed lived and died inside that command."""
        before = sum(1 for c in commands[:index] if c.execute in JOB_COMMANDS)
        after = sum(1 for c in commands[index:] if c.execute in JOB_COMMANDS)
        lives = self.lifetimes
        earlier = lives[:max(0, len(lives) - after)]
        lo = max([_inside_command(life) + 1 for life in earlier]
                 + [_inside_command(a) + 1 for j, a in self.jobs.items() if j < index], default=0)
        hi = min([a.start for j, a in self.jobs.items() if j >= index]
                 + [life.start for life in lives[before:before + 1]], default=total)
        return (lo, hi) if lo <= hi else (0, total)

    def of(self, job_id: str) -> list[Lifetime]:
        """The lifetimes of job ``job_id``, in order (not to be modified: the rules ask
        for them several times per command, so they are indexed once)."""
        return self._lives_of.get(job_id, [])

    def statuses(self, job_id: str, index: int) -> frozenset[str]:
        """Every status job ``job_id`` may have when command ``index`` starts."""
        lo, hi = self.windows[index]
        lives = self.of(job_id)
        before = [life for life in lives if life.start < lo]
        out = {before[-1].status_before(lo) if before else "undefined"}
        for life in lives:
            for pos, status in life.changes:
                if lo <= pos < hi:
                    out.add(status)
        return frozenset(out)

    def lifetime_at(self, job_id: str, index: int) -> Lifetime | None:
        """The job ``job_id`` that exists when command ``index`` starts, if certain."""
        lo, hi = self.windows[index]
        lives = self.of(job_id)
        inside = [life for life in lives if life.start < lo]
        if not inside or any(lo <= life.start < hi for life in lives):
            return None
        return inside[-1]

    def no_jobs_alive(self, index: int) -> bool:
        """True when certainly no job exists when command ``index`` starts (remembered:
        a command's rules ask up to four times)."""
        known = self._no_jobs.get(index)
        if known is None:
            lo, hi = self.windows[index]
            known = self._no_jobs[index] = all(
                life.start >= hi or (life.start < lo and life.status_before(lo) == "null")
                for life in self.lifetimes)
        return known


def _inside_command(life: Lifetime) -> int:
    """The last event its creating command certainly emitted: a failed job's
    whole life, an accepted job's ``running`` (job_start runs in the command)."""
    if not life.accepted:
        return life.changes[-1][0]
    if len(life.changes) > 1 and life.changes[1][1] == "running":
        return life.changes[1][0]
    return life.start


# --- transitions and completion events ---------------------------------------

def transition_violations(events: list[dict]) -> list[Violation]:
    """Each JOB_STATUS_CHANGE against job.c's transition table."""
    last: dict[str, str] = {}
    found = []
    for event in events:
        if event.get("event") != "JOB_STATUS_CHANGE":
            continue
        data = event.get("data") or {}
        job_id, new = data.get("id"), data.get("status")
        old = last.get(job_id, "null")
        old = "undefined" if old == "null" else old
        if new not in TRANSITIONS.get(old, ()):
            found.append(_illegal(job_id, old, new, event.get("step", -1)))
        last[job_id] = new
    return found


def _illegal(job_id: str, old: str, new: str, step: int) -> Violation:
    allowed = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "nothing"
    if old == "undefined":
        message = f"job '{job_id}': first status is {new}, expected created"
    else:
        message = f"job '{job_id}': illegal transition {old} -> {new}"
    return Violation("illegal-transition", step, allowed, new, message, f"{old}->{new}")


def completion_violations(timeline: Timeline) -> list[Violation]:
    """A job that concluded emitted exactly one COMPLETED or CANCELLED event."""
    found = []
    for life in timeline.lifetimes:
        want = 1 if life.concluded else (0 if not life.accepted else len(life.ends[:1]))
        if len(life.ends) != want:
            names = ", ".join(name for _, name in life.ends) or "none"
            found.append(Violation(
                "accept-mismatch", -1, f"{want} completion event(s)", names,
                f"job '{life.job_id}' emitted {len(life.ends)} completion events ({names}), "
                f"expected {'exactly one' if want else 'none'}", "completion-events"))
    return found


# --- names and chain positions -------------------------------------------------

@dataclass
class Context:
    """What the rules know: the case's names, the timeline, and node lifetimes."""

    case: "Case"
    replies: list[dict]
    timeline: Timeline
    images: list[str]                        # bottom first
    by_filename: dict[str, str]
    filter_names: frozenset[str]             # every filter-node-name in the case
    added_names: frozenset[str]              # node-names from blockdev-add
    removable: list[frozenset[str] | None]   # per command: nodes it may remove (None: any)
    names: frozenset[str]                    # every node name of the case: images, filters, added
    #: per command: the nodes the commands before it may have removed (None: any), the
    #: running union of ``removable``, which :meth:`alive` would otherwise redo per call
    removed_before: list[frozenset[str] | None]
    #: image node -> its chain index (the first, as ``images.index`` gives; one of the
    #: case's facts, :func:`_case_facts`), and the device and top node: the rules ask for
    #: these some forty times a case, so they are looked up in a dict and read from fields
    #: rather than searched in ``images`` or read through ``case`` each time
    positions: dict[str, int]
    drive: str | None
    top: str

    @classmethod
    def build(cls, case: "Case", observation: "Observation") -> "Context":
        timeline = Timeline(case, observation.replies, observation.events)
        images, by_filename, filter_names, added_names, names, positions = _case_facts(case)[0]
        ctx = cls(case, observation.replies, timeline, images, by_filename,
                  filter_names, added_names, [], names, [],
                  positions, case.drive, images[-1] if images else "")
        ctx._plan()
        return ctx

    def _plan(self) -> None:
        """Each accepted job's removal set on the original chain: a superset of
        what it can remove whatever ran before it."""
        filters: dict[str, str] = {}
        chain = list(reversed(self.images))
        for i, command in enumerate(self.case.commands):
            accepted = _accepted(self, i)
            removes: frozenset[str] | None = frozenset()
            if accepted and command.execute in JOB_COMMANDS:
                removes = job_removals(self, command, chain, filters)
                _note_filter(self, command, chain, filters)
            elif accepted and command.execute == "blockdev-del":
                removes = frozenset({command.arguments.get("node-name")})
            self.removable.append(removes)
        removed: frozenset[str] | None = frozenset()
        for removes in self.removable:
            self.removed_before.append(removed)
            removed = None if removed is None or removes is None else removed | removes
        self.removed_before.append(removed)

    def alive(self, name: str, index: int) -> bool:
        """True when ``name`` is an image node no earlier accepted command can
        have removed: it is still in the chain, in its original place."""
        if not isinstance(name, str) or name not in self.positions:
            return False
        removed = self.removed_before[min(index, len(self.removable))]
        return removed is not None and name not in removed

    def node_of(self, name: Any) -> str | None:
        """The image node a device or node argument names (drive: the top)."""
        if not isinstance(name, str):
            return None
        if name == self.drive:
            return self.top
        return name if name in self.positions else None

    def position(self, name: str) -> int | None:
        node = self.node_of(name)
        return None if node is None else self.positions[node]

    def may_exist(self, name: Any, device: bool = False) -> bool:
        """False for a name that no node (or device) ever carried in this case."""
        if not isinstance(name, str):
            return False
        return name in self.names or (device and name == self.drive) or name.startswith("#")

    def job_id_free(self, job_id: str, index: int) -> Any:
        statuses = self.timeline.statuses(job_id, index)
        return PASS if statuses <= GONE else UNSURE

    def user_paused(self, job_id: str, index: int) -> bool | None:
        """job->user_paused when command ``index`` starts, if certain."""
        life = self.timeline.lifetime_at(job_id, index)
        if life is None or any(e.get("event") == "BLOCK_JOB_ERROR"
                               and (e.get("data") or {}).get("device") == job_id
                               for e in self.timeline.events):
            return None
        paused = False
        for j, command in enumerate(self.case.commands[:index]):
            effect = USER_PAUSE.get(command.execute)
            if effect is None or _arg_id(command) != job_id or not _accepted(self, j):
                continue
            if self.timeline.lifetime_at(job_id, j) is not life:
                if self.timeline.lifetime_at(job_id, j) is None:
                    return None
                continue
            paused = effect
        return paused


#: the last case judged and what :func:`_case_facts` derived from it alone
_FACTS: list = [None, None]


def _case_facts(case: "Case") -> tuple[tuple, list[list[int]]]:
    """What the oracle derives from the case alone, whatever the run showed: its names
    (images bottom first, filename -> node, filter names, added names, all of them, each
    image's chain index) and
    the guest data of its images before any command (:func:`expected_data`).

    Computed again only for another case: pct runs a case that reached a rare cell
    under up to 32 more schedules, each judged. The last case is held, so the identity
    test cannot match a new case at a reused address. Neither part is modified by the
    rules (``_merge_sorted`` copies the runs it merges)."""
    if _FACTS[0] is not case:
        images = [img.node_name for img in case.images]
        filter_names = _argument_values(case.commands, "filter-node-name")
        added_names = _added_names(case.commands)
        positions: dict[str, int] = {}
        for index, name in enumerate(images):
            positions.setdefault(name, index)
        names = (images, {img.filename: img.node_name for img in case.images}, filter_names,
                 added_names, frozenset(images) | filter_names | added_names, positions)
        _FACTS[0], _FACTS[1] = case, (names, _image_data(case))
    return _FACTS[1]


def _argument_values(commands, key: str) -> frozenset[str]:
    return frozenset(c.arguments[key] for c in commands
                     if isinstance(c.arguments.get(key), str))


def _added_names(commands) -> frozenset[str]:
    out: set[str] = set()
    for command in commands:
        if command.execute == "blockdev-add":
            _collect_node_names(command.arguments, out)
    return frozenset(out)


def _collect_node_names(value: Any, out: set[str]) -> None:
    """Every ``node-name`` string inside ``value``, into ``out``. A module function, not a
    closure: a recursive closure is a reference cycle, garbage for the collector every run."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k == "node-name" and isinstance(v, str):
                out.add(v)
            _collect_node_names(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect_node_names(v, out)


def _accepted(ctx: Context, index: int) -> bool:
    return index < len(ctx.replies) and "return" in ctx.replies[index]


#: accepted commands that set or clear job->user_paused (job.c: a cancel
#: clears it too, in job_cancel_async_locked)
USER_PAUSE = {"job-pause": True, "block-job-pause": True, "job-resume": False,
              "block-job-resume": False, "job-cancel": False, "block-job-cancel": False}


def _arg_id(command: "Command") -> Any:
    return command.arguments.get("id", command.arguments.get("device"))


# --- what a job removes ---------------------------------------------------------

def _resolve(ctx: Context, name: Any, filters: Mapping[str, str]) -> str | None:
    """A node argument as an image node: a filter means the node it sits on."""
    if not isinstance(name, str):
        return None
    if name in filters:
        return filters[name]
    return ctx.node_of(name)


def _between(chain: list[str], upper: str, lower: str | None) -> frozenset[str] | None:
    """Nodes strictly below ``upper`` and above ``lower`` (None: to the bottom);
    None when ``lower`` is not below ``upper``."""
    if upper not in chain:
        return None
    below = chain[chain.index(upper) + 1:]
    if lower is None:
        return frozenset(below)
    return frozenset(below[:below.index(lower)]) if lower in below else None


def stream_removals(ctx, args, chain, filters) -> frozenset[str] | None:
    """block-stream: the nodes between the device and base (or through bottom)."""
    top = _resolve(ctx, args.get("device"), filters)
    if top is None:
        return None
    if "bottom" in args:
        bottom = _resolve(ctx, args["bottom"], filters)
        between = _between(chain, top, bottom)
        return None if between is None else between | {bottom}
    base_arg = args.get("base-node") if "base-node" in args else \
        ctx.by_filename.get(args["base"], "") if "base" in args else None
    base = None if base_arg is None else _resolve(ctx, base_arg, filters)
    if base_arg is not None and base is None:
        return None
    return _between(chain, top, base)


def commit_removals(ctx, args, chain, filters) -> frozenset[str] | None:
    """block-commit: the nodes from top down to, excluding, base."""
    device = _resolve(ctx, args.get("device"), filters)
    top, base = _commit_ends(ctx, args, chain, filters, device)
    if top is None or base is None:
        return None
    between = _between(chain, top, base)
    return None if between is None else between | {top}


def _commit_ends(ctx, args, chain, filters, device):
    if "top-node" in args:
        top = _resolve(ctx, args["top-node"], filters)
    elif "top" in args:
        top = ctx.by_filename.get(args["top"])
    else:
        top = device
    if "base-node" in args:
        base = _resolve(ctx, args["base-node"], filters)
    elif "base" in args:
        base = ctx.by_filename.get(args["base"])
    else:
        base = chain[-1] if chain else None
    return top, base


REMOVALS: dict[str, Callable[..., frozenset[str] | None]] = {
    "block-stream": stream_removals,
    "block-commit": commit_removals,
}


def job_removals(ctx, command, chain, filters) -> frozenset[str] | None:
    return REMOVALS[command.execute](ctx, command.arguments, chain, filters)


def _is_active_commit(ctx, command, chain, filters) -> bool:
    if command.execute != "block-commit" or not chain:
        return False
    device = _resolve(ctx, command.arguments.get("device"), filters)
    top, _ = _commit_ends(ctx, command.arguments, chain, filters, device)
    return top == chain[0]


def _note_filter(ctx, command, chain, filters: dict[str, str]) -> None:
    """Record where an accepted job's named filter sits: stream's COR filter
    on its device, commit_top on top, an active commit's mirror_top on top."""
    name = command.arguments.get("filter-node-name")
    if not isinstance(name, str):
        return
    args = command.arguments
    if command.execute == "block-stream":
        node = _resolve(ctx, args.get("device"), filters)
    else:
        device = _resolve(ctx, args.get("device"), filters)
        node, _ = _commit_ends(ctx, args, chain, filters, device)
    if node is not None:
        filters[name] = node


# --- the final chain ---------------------------------------------------------

def expected_chain(ctx: Context) -> list[str] | None:
    """The surviving image nodes, top first; None when a job's effect is unknown.

    Walks the event stream: each accepted job's removals are computed on the
    chain as it is when its ``created`` event appears, and applied when its
    ``BLOCK_JOB_COMPLETED`` (without error) appears.
    """
    chain = list(reversed(ctx.images))
    filters: dict[str, str] = {}
    pending: dict[int, frozenset[str] | None] = {}
    for pos, kind, index in _job_moments(ctx):
        command = ctx.case.commands[index]
        if kind == "start":
            pending[index] = _start_job(ctx, index, command, chain, filters)
        elif pending.get(index, frozenset()) is None:
            return None
        else:
            chain = [n for n in chain if n not in pending[index]]
    return chain


def _job_moments(ctx: Context) -> list[tuple[int, str, int]]:
    moments = []
    for index, life in ctx.timeline.jobs.items():
        moments.append((life.start, "start", index))
        if life.completed_ok:
            moments.append((life.ends[0][0], "end", index))
    return sorted(moments)


def _start_job(ctx, index, command, chain, filters) -> frozenset[str] | None:
    removes = job_removals(ctx, command, chain, filters)
    if _is_active_commit(ctx, command, chain, filters):
        removes = _active_commit_outcome(ctx, index, removes)
    _note_filter(ctx, command, chain, filters)
    return removes


def _active_commit_outcome(ctx, index, removes):
    """An active commit pivots only after job-complete; a soft cancel on
    ``ready`` ends it successfully without switching (mirror.c). The pivot
    moves the device to the base; with no device the top image keeps its
    chain (only its parents, of which it has none, are moved)."""
    if ctx.drive is None:
        return frozenset()
    job_id = ctx.timeline.jobs[index].job_id
    later = [c for j, c in enumerate(ctx.case.commands) if j > index and _accepted(ctx, j)
             and _arg_id(c) == job_id]
    completes = any(c.execute in ("job-complete", "block-job-complete") for c in later)
    soft = any(c.execute == "block-job-cancel" and not c.arguments.get("force") for c in later)
    if completes and soft:
        return None
    return removes if completes else frozenset()


def chain_violations(ctx: Context, observation: "Observation") -> list[Violation]:
    if any(status != "concluded" for status in observation.jobs_left.values()):
        return []
    expected = expected_chain(ctx)
    if expected is None:
        return []
    wrong = _first_wrong_backing(ctx, expected, observation.chain)
    if wrong is not None:
        return [wrong]
    return _header_violations(ctx, observation.chain)


def _first_wrong_backing(ctx, expected: list[str], chain: list["ChainNode"]) -> Violation | None:
    names = [n.node_name for n in chain]
    for k in range(max(len(expected), len(names))):
        want = expected[k] if k < len(expected) else None
        got = names[k] if k < len(names) else None
        if want != got:
            return Violation("wrong-backing", -1, "→".join(expected), "→".join(names),
                             _backing_message(ctx, k, names, want, got),
                             f"backing:{_wrong_kind(chain, k, expected, got)}")
    return None


def _backing_message(ctx, k: int, names: list[str], want, got) -> str:
    if k == 0:
        holder = f"{ctx.drive}" if ctx.drive else "the top"
        return f"{holder} is attached to {got or 'nothing'}, expected {want}"
    return f"{names[k - 1]}'s backing is {got or 'none'}, expected {want or 'none'}"


def _wrong_kind(chain, k: int, expected: list[str], got) -> str:
    if got is None:
        return "chain-too-short"
    if chain[k].is_filter:
        return "filter-left"
    return "removed-node-kept" if got not in expected else "node-skipped"


def _header_violations(ctx: Context, chain: list["ChainNode"]) -> list[Violation]:
    """Each image's header names its backing node's file (unless a job was
    told to write another string with ``backing-file``)."""
    custom = any(map(_told_backing_file, ctx.case.commands))
    for node, below in zip(chain, chain[1:]):
        if custom or node.is_filter or node.backing_file is None:
            continue
        if node.backing_file != below.filename and json_image_file(node.backing_file) != below.filename:
            failed = _failed_stream_of(ctx, node.node_name)
            return [Violation(
                "wrong-backing", -1, below.filename, node.backing_file,
                f"{node.node_name}'s header names backing file '{node.backing_file}', "
                f"expected '{below.filename}' ({below.node_name})"
                + (f"; stream '{failed}' of {node.node_name} failed after writing it" if failed else ""),
                "backing:header-after-failed-stream" if failed else "backing:header")]
    return []


def _failed_stream_of(ctx: Context, node: str) -> str | None:
    """The id of a stream of ``node`` that ended with an error, if any: QEMU 7.2's
    stream_prepare rewrites the header even when the graph change before it failed,
    so its header and the chain disagree for a reason of their own (and a signature
    of their own, apart from a stream that succeeded with a stale base)."""
    for index, life in ctx.timeline.jobs.items():
        command = ctx.case.commands[index]
        if command.execute == "block-stream" and ctx.node_of(command.arguments.get("device")) == node \
                and any(life.end_errors):
            return life.job_id
    return None


def json_image_file(backing: str) -> str | None:
    """The image file a ``json:{...}`` backing string opens (its ``file``'s
    ``filename``): QEMU writes one when the backing node's filename is a
    description (a named filter in the chain below it), and it names the
    right image as well as a plain filename does."""
    if not backing.startswith("json:"):
        return None
    try:
        file = json.loads(backing[len("json:"):]).get("file")
    except (ValueError, AttributeError):
        return None
    return file.get("filename") if isinstance(file, dict) else None


# --- guest data ------------------------------------------------------------------

def expected_data(case: "Case", replies: list[dict]) -> list[list[int]]:
    """The guest view as maximal runs ``[offset, length, byte]``: the topmost
    image that wrote a byte wins (unwritten: 0), then every accepted
    ``x-guest-write`` in order."""
    size = case.images[-1].size
    runs = _case_facts(case)[1]
    for i, command in enumerate(case.commands):
        if command.execute == "x-guest-write" and i < len(replies) and "return" in replies[i]:
            args = command.arguments
            offset, length, pattern = args.get("offset"), args.get("length"), args.get("pattern")
            runs = _paint(runs, offset, min(offset + length, size), pattern)
    return _merge_sorted(runs)


def _image_data(case: "Case") -> list[list[int]]:
    """The guest view of the case's images before any command, as :func:`_paint`'s runs."""
    size = case.images[-1].size
    runs: list[list[int]] = [[0, size, 0]]
    for image in case.images:
        for w in image.writes:
            runs = _paint(runs, w.offset, min(w.offset + w.length, image.size, size), w.pattern)
    return runs


def _paint(runs: list[list[int]], start: int, end: int, byte: int) -> list[list[int]]:
    """``runs`` (sorted, disjoint) with ``[start, end)`` painted ``byte``; still sorted."""
    if end <= start:
        return runs
    out = []
    painted = [start, end - start, byte]
    for run in runs:
        off, length, value = run
        if off + length <= start:
            out.append(run)
            continue
        if off < start:
            out.append([off, start - off, value])
        if painted is not None:
            out.append(painted)
            painted = None
        if off + length > end:
            cut = max(off, end)
            out.append([cut, off + length - cut, value])
    if painted is not None:
        out.append(painted)
    return out


def _merge(runs: Iterable[list[int]]) -> list[list[int]]:
    """Any runs (an observation's) sorted and merged into maximal ones; ``runs`` is left alone."""
    return _merge_sorted(sorted(list(r) for r in runs))


def _merge_sorted(runs: list[list[int]]) -> list[list[int]]:
    """Runs sorted by offset merged into maximal ones, as new lists: :func:`_paint`'s runs
    are sorted already, so :func:`expected_data` skips the copy and the sort of
    :func:`_merge` (a tenth of the oracle's time went there)."""
    out: list[list[int]] = []
    for run in runs:
        off, length, value = run
        if length <= 0:
            continue
        if out and out[-1][2] == value and out[-1][0] + out[-1][1] == off:
            out[-1][1] += length
        else:
            out.append([off, length, value])
    return out


def data_violations(case: "Case", observation: "Observation") -> list[Violation]:
    expected = expected_data(case, observation.replies)
    if observation.data == expected:
        # the usual case, and the same answer: ``expected`` is sorted and maximal already,
        # so it is its own merge, and runs equal to it merge to it; this skips the copy
        # and the sort of :func:`_merge` (the model's guest view is maximal runs, mostly
        # equal to what is expected)
        return []
    observed = _merge(observation.data)
    if observed == expected:
        return []
    offset, want, got = _first_difference(expected, observed)
    return [Violation("data-mismatch", -1, _show_byte(want), _show_byte(got),
                      f"guest data at offset {offset:#x}: expected {_show_byte(want)}, "
                      f"observed {_show_byte(got)}", "guest-data")]


def _show_byte(value: int | None) -> str:
    return "nothing" if value is None else f"byte {value:#04x}"


def _byte_at(runs: list[list[int]], offset: int) -> int | None:
    for off, length, value in runs:
        if off <= offset < off + length:
            return value
    return None


def _first_difference(expected, observed) -> tuple[int, int | None, int | None]:
    """The first offset where two different run lists disagree (runs are
    constant between their bounds, so only the bounds need looking at)."""
    runs = expected + observed
    for offset in sorted({r[0] for r in runs} | {r[0] + r[1] for r in runs}):
        want, got = _byte_at(expected, offset), _byte_at(observed, offset)
        if want != got:
            return offset, want, got
    raise AssertionError("unreachable: different merged runs differ at a bound")


# --- which commands must be accepted or refused ---------------------------------

PASS = "pass"       # this check certainly passes
UNSURE = "unsure"   # it may pass or fail: later texts are no longer certain


@dataclass(frozen=True)
class Refusal:
    """This check certainly fails; ``desc``/``error_class`` None: text unknown."""

    desc: str | None = None
    error_class: str | None = "GenericError"


ACCEPT = "accept"   # every check certainly passes: the command must succeed

Rule = Callable[[Context, int, Mapping[str, Any]], Any]


def _exclusive(a: str, b: str, text: str) -> Rule:
    def rule(ctx, i, args):
        return Refusal(text) if a in args and b in args else PASS
    return rule


def _wellformed(name: Any) -> bool:
    """util/id.c id_wellformed(): a letter, then letters, digits, '-', '.', '_' (all ASCII)."""
    return isinstance(name, str) and _ID.fullmatch(name) is not None


_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


def _below(ctx: Context, i: int, upper: Any, lower: str, refusal: Refusal,
           strict: bool = True, lookup: bool = False) -> Any:
    """``lower`` must be in ``upper``'s backing chain, below it (or at it).

    ``lookup``: ``lower`` was found by node name and is compared with the
    device's node itself (bdrv_chain_contains), not from below its filters."""
    up, low = ctx.position(upper), ctx.position(lower)
    if up is None or low is None:
        return UNSURE
    certain = ctx.alive(ctx.node_of(upper), i) and ctx.alive(lower, i)
    if low < up or (not strict and low == up):
        return PASS if certain else UNSURE
    if lookup and upper == ctx.drive and low == up and not ctx.timeline.no_jobs_alive(i):
        # A job's filter may sit on the top, under the device: the top is then
        # in the device's chain, but that filter is the job's node and blocks
        # the command anyway.
        return Refusal(None, None)
    return refusal if certain else Refusal(None, None)


def _lookup_node(ctx: Context, name: Any) -> Any:
    """bdrv_lookup_bs(NULL, name): a name never seen cannot be found."""
    if not ctx.may_exist(name):
        return Refusal(f"Cannot find device='' nor node-name='{name}'")
    return None


def _no_blockers(ctx, i, args):
    """Op blockers and frozen edges come only from jobs."""
    return PASS if ctx.timeline.no_jobs_alive(i) else UNSURE


def _speed(ctx, i, args):
    speed = args.get("speed", 0)
    return Refusal(SPEED_TEXT) if isinstance(speed, int) and speed < 0 else PASS


def _filter_name(ctx, i, args):
    name = args.get("filter-node-name")
    if name is None:
        return PASS
    if not _wellformed(name) or len(name) >= NODE_NAME_MAX or name == ctx.drive \
            or (name in ctx.images and ctx.alive(name, i)):
        return Refusal(None, None)
    if name in ctx.images or name in ctx.added_names:
        return UNSURE
    return _no_blockers(ctx, i, args)


def _default_job_id(ctx: Context, device: Any, i: int) -> str | None:
    """block_job_create(): the device name of the job's node, "" for none."""
    if ctx.drive is None:
        return ""
    if device == ctx.drive:
        return ctx.drive
    if device in ctx.images and ctx.alive(ctx.top, i):
        return ctx.drive if device == ctx.top else ""
    return None


def _job_id(ctx, i, args):
    job_id = args.get("job-id")
    if job_id is None:
        job_id = _default_job_id(ctx, args.get("device"), i)
        if job_id is None:
            return UNSURE
    if not _wellformed(job_id):
        return Refusal(f"Invalid job ID '{job_id}'")
    return ctx.job_id_free(job_id, i)


# block-stream (blockdev.c qmp_block_stream, block/stream.c stream_start)

def _stream_device(ctx, i, args):
    device = args["device"]
    if not ctx.may_exist(device, device=True):
        return Refusal(f"Cannot find device='{device}' nor node-name='{device}'")
    return PASS if device == ctx.drive or ctx.alive(device, i) else UNSURE


def _named_below(ctx, i, upper, name, text: str, strict: bool = True):
    """A node-name argument (bdrv_lookup_bs) that must be in ``upper``'s chain."""
    if (refusal := _lookup_node(ctx, name)) is not None:
        return refusal
    if name not in ctx.images:
        return UNSURE
    return _below(ctx, i, upper, name, Refusal(text), strict, lookup=True)


def _file_below(ctx, i, upper, filename, text: str, strict: bool = True):
    """A filename argument (bdrv_find_backing_image) that must be in ``upper``'s chain.

    QEMU finds it by the backing strings in the overlays' headers, not by the
    images' names. Once a job was told to write its own string (``backing-file``),
    or a stream put a named copy-on-read filter into the chain (a stream's
    completion may then write a ``json:`` string naming it), a header may no
    longer name the image below it, and the lookup may fail."""
    node = ctx.by_filename.get(filename)
    if node is None:
        return Refusal(text)
    if _custom_header_before(ctx, i) or _completion_inside_completion_before(ctx, i):
        return UNSURE
    return _below(ctx, i, upper, node, Refusal(text), strict)


def _custom_header_before(ctx, i) -> bool:
    """Whether a job command before command ``i`` carried ``backing-file``, or a
    stream before it was given ``filter-node-name``."""
    return any(_told_backing_file(c) or (c.execute == "block-stream" and "filter-node-name" in c.arguments)
               for c in ctx.case.commands[:i])


def _completion_inside_completion_before(ctx, i) -> bool:
    """Whether, possibly before command ``i``, a job ended while another was completing
    (between its first ``waiting`` or ``pending`` and its end event). The inner completion
    can read a node's filename while the outer one's header write is still in flight: a
    node whose backing changed but whose header does not say so yet is described as
    ``json:{...}``, and that string is what the inner one writes into its header."""
    before = ctx.timeline.windows[i][1]
    ends, completing = [], []
    for life in ctx.timeline.lifetimes:
        if not life.ends:
            continue
        end = life.ends[0][0]
        ends.append(end)
        starts = [pos for pos, status in life.changes if status in ("waiting", "pending")]
        if starts:
            completing.append((starts[0], end))
    return any(start < end < stop and end < before for end in ends for start, stop in completing)


def _told_backing_file(command) -> bool:
    """A job command given its own header string (``backing-file``)."""
    return command.execute in JOB_COMMANDS and "backing-file" in command.arguments


def _stream_base(ctx, i, args):
    if "base" not in args:
        return PASS
    return _file_below(ctx, i, args["device"], args["base"],
                       f"Can't find '{args['base']}' in the backing chain")


def _stream_base_node(ctx, i, args):
    if "base-node" not in args:
        return PASS
    base, device = args["base-node"], args["device"]
    return _named_below(ctx, i, device, base, f"Node '{base}' is not a backing image of '{device}'")


def _stream_bottom(ctx, i, args):
    if "bottom" not in args:
        return PASS
    bottom, device = args["bottom"], args["device"]
    if (refusal := _lookup_node(ctx, bottom)) is not None:
        return refusal
    if bottom not in ctx.images:
        only_filter = bottom not in ctx.added_names
        return Refusal(None) if only_filter else UNSURE
    if ctx.position(device) == ctx.position(bottom):
        return UNSURE
    return _below(ctx, i, device, bottom,
                  Refusal(f"Node '{bottom}' is not in a chain starting from '{device}'"))


def _stream_backing_file(ctx, i, args):
    if "backing-file" in args and "base" not in args and "base-node" not in args:
        return Refusal("backing file specified, but streaming the entire chain")
    return PASS


# block-commit (blockdev.c qmp_block_commit)

def _commit_device(ctx, i, args):
    device = args["device"]
    if not ctx.may_exist(device, device=True):
        return Refusal(f"Device '{device}' not found", "DeviceNotFound")
    if device == ctx.drive:
        return PASS
    if device in ctx.images and device != ctx.top:
        # Below a top that is still there, a node has an overlay: not a root.
        # (An active commit may have moved the device down to it.)
        certain = ctx.alive(device, i) and ctx.alive(ctx.top, i)
        return Refusal("Need a root block node") if certain else UNSURE
    if device == ctx.top and ctx.alive(device, i):
        return _no_blockers(ctx, i, args)
    return UNSURE


def _commit_top_name(args) -> Any:
    return args.get("top-node", args.get("device"))


def _commit_top(ctx, i, args):
    device = args["device"]
    if "top-node" in args:
        top = args["top-node"]
        return _named_below(ctx, i, device, top, f"'{top}' is not in this backing file chain",
                            strict=False)
    if "top" in args:
        return _file_below(ctx, i, device, args["top"], f"Top image file {args['top']} not found",
                           strict=False)
    return PASS


def _commit_top_node(ctx, args) -> Any:
    if "top" in args:
        return ctx.by_filename.get(args["top"])
    return _commit_top_name(args)


def _commit_base(ctx, i, args):
    top = _commit_top_node(ctx, args)
    if "base-node" in args:
        base = args["base-node"]
        return _named_below(ctx, i, top, base, f"'{base}' is not in this backing file chain",
                            strict=False)
    if "base" in args:
        return _file_below(ctx, i, top, args["base"],
                           f"Can't find '{args['base']}' in the backing chain")
    if ctx.position(top) == 0:
        return Refusal(None, None)
    certain = ctx.position(top) is not None and ctx.alive(ctx.node_of(top), i)
    return PASS if certain and ctx.alive(ctx.images[0], i) else UNSURE


def _commit_base_node(ctx, args) -> str | None:
    if "base-node" in args:
        return ctx.node_of(args["base-node"])
    if "base" in args:
        return ctx.by_filename.get(args["base"])
    return ctx.images[0]


def _commit_into_itself(ctx, i, args):
    top = ctx.node_of(_commit_top_node(ctx, args) or "")
    base = _commit_base_node(ctx, args)
    if top is None or base is None:
        return UNSURE
    return Refusal("cannot commit an image into itself") if top == base else PASS


def _commit_backing_file(ctx, i, args):
    if "backing-file" not in args:
        return PASS
    top, device = ctx.position(_commit_top_node(ctx, args) or ""), ctx.position(args["device"])
    if top is None or device is None:
        return UNSURE
    if top == device:
        return Refusal("'backing-file' specified, but 'top' is the active layer")
    return PASS


# job verbs (job-qmp.c, blockdev.c, job.c)

def _find_job(key: str, block: bool) -> Rule:
    def rule(ctx, i, args):
        job_id = args[key]
        statuses = ctx.timeline.statuses(job_id, i)
        if statuses <= GONE:
            return Refusal(f"Block job '{job_id}' not found", "DeviceNotActive") if block \
                else Refusal("Job not found")
        return UNSURE if statuses & GONE else PASS
    return rule


def _verb(verb: str, key: str) -> Rule:
    def rule(ctx, i, args):
        job_id = args[key]
        statuses = ctx.timeline.statuses(job_id, i) - GONE
        if not statuses:
            return UNSURE
        if statuses <= VERBS[verb]:
            return PASS
        if statuses & VERBS[verb]:
            return UNSURE
        if len(statuses) > 1:
            return Refusal(None)
        (status,) = statuses
        return Refusal(f"Job '{job_id}' in state '{status}' cannot accept command verb '{verb}'")
    return rule


def _user_paused_rule(key: str, when_paused: Any, when_not: Any) -> Rule:
    def rule(ctx, i, args):
        paused = ctx.user_paused(args[key], i)
        if paused is None:
            return UNSURE
        outcome = when_paused if paused else when_not
        return PASS if outcome is PASS else Refusal(outcome.format(id=args[key]))
    return rule


def _cancel_paused(ctx, i, args):
    if args.get("force"):
        return PASS
    return _user_paused_rule(
        "device", "The block job for device '{id}' is currently paused", PASS)(ctx, i, args)


def _never(ctx, i, args):
    """A check whose outcome the oracle cannot know."""
    return UNSURE


def _set_speed_value(ctx, i, args):
    return _speed(ctx, i, args)


# QAPI: arguments each command takes (type, or a tuple of enum values)
_ON_ERROR = ("report", "ignore", "enospc", "stop", "auto")
_JOB_ARGS = {"job-id": str, "speed": int, "on-error": _ON_ERROR, "filter-node-name": str,
             "auto-finalize": bool, "auto-dismiss": bool, "backing-file": str}
QAPI: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "block-stream": (("device",), {"device": str, "base": str, "base-node": str,
                                   "bottom": str, **_JOB_ARGS}),
    "block-commit": (("device",), {"device": str, "base": str, "base-node": str, "top": str,
                                   "top-node": str, **_JOB_ARGS}),
    "block-job-set-speed": (("device", "speed"), {"device": str, "speed": int}),
    "block-job-cancel": (("device",), {"device": str, "force": bool}),
    **{f"block-job-{v}": (("device",), {"device": str}) for v in ("pause", "resume", "complete")},
    **{f"block-job-{v}": (("id",), {"id": str}) for v in ("finalize", "dismiss")},
    **{f"job-{v}": (("id",), {"id": str})
       for v in ("cancel", "pause", "resume", "complete", "finalize", "dismiss")},
}


def _qapi(ctx, i, args, command: str = "") -> Any:
    required, types = QAPI[command]
    if any(k not in args for k in required):
        return Refusal(None)
    for key, value in args.items():
        want = types.get(key)
        # an argument of exactly the wanted type (all of a generated case's) fits without
        # the call to _fits: a str is a str, an int that is an int is no bool
        if want is None or (type(value) is not want and not _fits(value, want)):
            return Refusal(None)
    return PASS


def _fits(value: Any, want: Any) -> bool:
    if isinstance(want, tuple):
        return value in want
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def _job_verb_rules(verb: str, key: str, block: bool) -> tuple[Rule, ...]:
    find, apply = _find_job(key, block), _verb(verb, key)
    extra: dict[str, tuple[Rule, ...]] = {
        "pause": (find, apply, _user_paused_rule(key, "Job is already paused", PASS)),
        "resume": (find, _user_paused_rule(key, PASS, "Can't resume a job that was not paused"),
                   apply),
        "complete": (find, apply, _never),
        "set-speed": (find, apply, _set_speed_value),
        "cancel": (find, _cancel_paused, apply) if block else (find, apply),
    }
    return extra.get(verb, (find, apply))


#: command -> its checks in QEMU's order. A rule returns PASS, UNSURE or a
#: Refusal; the first Refusal decides, and its text counts only when every
#: check before it certainly passed.
RULES: dict[str, tuple[Rule, ...]] = {
    "block-stream": (
        _exclusive("base", "base-node", "'base' and 'base-node' cannot be specified at the same time"),
        _exclusive("base", "bottom", "'base' and 'bottom' cannot be specified at the same time"),
        _exclusive("bottom", "base-node", "'bottom' and 'base-node' cannot be specified at the same time"),
        _stream_device, _stream_base, _stream_base_node, _stream_bottom,
        _no_blockers,                       # STREAM blockers; stream_start's freeze
        _stream_backing_file, _filter_name, _job_id, _speed),
    "block-commit": (
        _commit_device, _no_blockers,       # COMMIT_SOURCE
        _exclusive("top-node", "top", "'top-node' and 'top' are mutually exclusive"), _commit_top,
        _exclusive("base-node", "base", "'base-node' and 'base' are mutually exclusive"),
        _commit_base, _no_blockers,         # COMMIT_TARGET, top .. base
        _commit_into_itself, _commit_backing_file,
        _no_blockers,                       # COMMIT_TARGET on the overlay
        _filter_name, _job_id, _speed),
    **{f"job-{v}": _job_verb_rules(v, "id", False)
       for v in ("cancel", "pause", "resume", "complete", "finalize", "dismiss")},
    **{f"block-job-{v}": _job_verb_rules(v, "device", True)
       for v in ("cancel", "pause", "resume", "complete", "set-speed")},
    **{f"block-job-{v}": _job_verb_rules(v, "id", True) for v in ("finalize", "dismiss")},
}


def expected_reply(ctx: Context, index: int, command: "Command") -> Any:
    """ACCEPT, a Refusal, or None (the oracle cannot tell)."""
    rules = RULES.get(command.execute)
    if rules is None:
        return None
    args = command.arguments
    qapi = _qapi(ctx, index, args, command.execute)
    if qapi is not PASS:
        return qapi
    certain = True
    for rule in rules:
        outcome = rule(ctx, index, args)
        if outcome is UNSURE:
            certain = False
        elif isinstance(outcome, Refusal):
            return outcome if certain else Refusal(None, None)
    return ACCEPT if certain else None


def reply_violations(ctx: Context, replies: list[dict]) -> list[Violation]:
    found = []
    for index, command in enumerate(ctx.case.commands[:len(replies)]):
        expected = expected_reply(ctx, index, command)
        problem = _reply_problem(expected, replies[index])
        if problem is not None:
            want, where = problem
            got = describe_reply(replies[index])
            found.append(Violation(
                "accept-mismatch", index, want, got,
                f"command {index} ({command.execute}): expected {want}, observed {got}",
                f"{command.execute}:{where}"))
    return found


def _reply_problem(expected: Any, reply: dict) -> tuple[str, str] | None:
    if expected is None:
        return None
    if expected == ACCEPT:
        return None if "return" in reply else ("success", "refused")
    if "error" not in reply:
        return (describe_refusal(expected), "accepted")
    error = reply["error"]
    if expected.desc is not None and (error.get("desc"), error.get("class")) != \
            (expected.desc, expected.error_class):
        return (describe_refusal(expected), "error-text")
    return None


def describe_refusal(refusal: Refusal) -> str:
    if refusal.desc is None:
        return "an error"
    return f"error {refusal.error_class}: {refusal.desc}"


def describe_reply(reply: dict | None) -> str:
    """A reply in one line: "success" or "error CLASS: desc"."""
    if reply is None:
        return "no reply"
    if "return" in reply:
        return "success"
    error = reply.get("error", {})
    return f"error {error.get('class')}: {error.get('desc')}"
