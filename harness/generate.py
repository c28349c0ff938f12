"""The one grammar: a case built from a choice source.

Every engine (hypothesis, atheris, random, PCT) and every baseline draws
cases through :func:`generate`, so they differ only in where the choices
come from. The grammar asks ``source.choose(n, "gen:...")`` for every
decision: first the chain (2-9 images of 1 MiB, 64 KiB clusters, data in
some layers, the bottom sometimes raw, a device "drive0" mostly), then 1-8
commands over the QMP surface of QEMU 7.2's block jobs (``block-stream``,
``block-commit``, the ``job-*`` and ``block-job-*`` verbs,
``block-job-set-speed``) and the harness commands (``x-guest-write``,
``x-step``, ``x-wait-jobs``).

Arguments are chosen the way syzkaller chooses resources: node names,
filter names and job ids that earlier commands created are *live* and
picked most of the time; names that a commit will cut out, or jobs already
cancelled or dismissed, are *stale*; names that never existed are *absent*.
The last two exercise the error paths, and so does a ``backing-file`` longer
than qcow2 takes (:data:`TOO_LONG_BACKING_FILE`), whose header update fails at
the job's completion.

Each case is also a *swarm* (:class:`Swarm`): it leaves out some command
kinds, optional argument families and the error forms altogether, so that
some cases are free of the noise that would stop a deep interleaving.
Resources steer the rest: a stream is likelier while an intermediate
commit's filter waits for a consumer, and then mostly takes it as its
``base-node`` from above that commit (030's test_overlapping_5).

A source that runs out of choices gives 0 from then on: the first entry of
each table, and the swarm with every command kind and no optional argument,
so the all-zero case is a plain intermediate commit.

:func:`run_generated` then runs the case on the model with the *same*
source, so generation and scheduling form one recorded list; the case it
returns carries only the scheduler's part as its schedule, which replays
on its own.
"""
from __future__ import annotations

import functools
import itertools
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

from harness.case import DEFAULT_CLUSTER_SIZE, DEFAULT_SIZE, Case, Command, Image, Write, record
from harness.choices import ChoiceSource

T = TypeVar("T")

IMAGE_COUNTS = (6, 5, 4, 3, 2, 7, 8, 9)
MAX_COMMANDS = 8
#: how many commands a case has, 2-4 likeliest: every command more is one more
#: chance to lock, cancel or finish what a race needs
COMMAND_COUNTS = tuple(range(1, MAX_COMMANDS + 1))
COMMAND_COUNT_WEIGHTS = (2, 4, 4, 3, 2, 1, 1, 1)
COMMAND_COUNT_TABLE = tuple(zip(COMMAND_COUNT_WEIGHTS, COMMAND_COUNTS))
CLUSTERS = DEFAULT_SIZE // DEFAULT_CLUSTER_SIZE
PATTERNS = 255                      # write patterns 1..255 (0 is what unwritten reads)
SPEEDS = (1 << 20, 0, 64 << 10, -1)  # 030's throttle first; -1 is refused
SET_SPEEDS = tuple((1, s) for s in (0,) + SPEEDS)
STEP_COUNTS = (1, 2, 4, 8, 16, 32)
DRIVE = "drive0"
FILTER_NAMES = ("commit-filter", "stream-filter", "filter0", "filter1")
ABSENT_NODES = ("none", "nonexistent")
JOB_VERBS = ("pause", "resume", "cancel", "complete", "finalize", "dismiss")
ON_ERROR = ("report", "ignore", "stop", "enospc")
ON_ERROR_TABLE = ((2, None),) + tuple((1, e) for e in ON_ERROR)
#: optional argument families a case may leave out altogether (swarm testing)
OPTIONAL_ARGUMENTS = ("backing-file", "auto-finalize", "auto-dismiss", "on-error", "job-id")
#: ``speed`` is not left to the swarm: a throttled job is a long-running one, and
#: races need one job still running while another completes (030 throttles first)
SPEED_TABLE = ((3, None), (3, 1 << 20), (1, 0), (1, 64 << 10), (1, -1))
#: a backing-file longer than qcow2 takes (1,023 characters): with errors on, the header
#: update at the job's completion fails (a stream aborts; a commit's failure path is
#: corpus/known/commit-backing-file-too-long-frees-the-commit-filter.json)
TOO_LONG_BACKING_FILE = "d" * 1013 + "/base.qcow2"
#: table entries that are refused or name what does not exist: only in cases with errors on
ERROR = "error"


def weighted(source: ChoiceSource, label: str, table: Sequence[tuple[int, T]]) -> T:
    """One choice among ``table``'s values, each as likely as its weight."""
    entry = _BOUNDS.get(id(table))
    if entry is None or entry[0] is not table:
        entry = (table, *_bounds(table))
        if isinstance(table, tuple):     # immutable: its bounds stay right
            _remember(_BOUNDS, id(table), entry)
    return table[bisect_right(entry[2], source.choose(entry[1], label))][1]


def _bounds(table: Sequence[tuple[int, Any]]) -> tuple[int, tuple[int, ...]]:
    """The total weight of ``table`` and the running sums that end each entry
    (a draw ``r`` picks the first entry whose sum exceeds it)."""
    bounds = tuple(itertools.accumulate(w for w, _ in table))
    return bounds[-1], bounds


#: Per table, by identity: the grammar's tables are constants (or cached, see
#: :meth:`Resources.allowed`), so this skips hashing a tuple of tuples per decision, which
#: an ``lru_cache`` on the table's value did. Each entry keeps its table alive, so an id
#: is never reused while its entry stands; a table made afresh per call only misses.
_BOUNDS: dict[int, tuple[Any, int, tuple[int, ...]]] = {}
#: per table (by identity, as :data:`_BOUNDS`; each table goes with one tuple of errors)
_WITHOUT: dict[int, tuple[Any, Any, tuple]] = {}
_CACHE_MAX = 1024


def _remember(cache: dict, key: Any, entry: tuple) -> tuple:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = entry
    return entry


#: the images, writes and commands, most of a case's records, are made as
#: :func:`harness.case.record` makes them, inline (a call level is a tenth of a
#: record's cost)
_new = object.__new__
_set_attribute = object.__setattr__


def _image(name: str, writes: tuple, filename: str, format: str) -> Image:
    image = _new(Image)
    _set_attribute(image, "__dict__", {"node_name": name, "size": DEFAULT_SIZE,
                                       "cluster_size": DEFAULT_CLUSTER_SIZE, "writes": writes,
                                       "filename": filename, "format": format})
    return image


def _write(offset: int, length: int, pattern: int) -> Write:
    write = _new(Write)
    _set_attribute(write, "__dict__", {"offset": offset, "length": length, "pattern": pattern})
    return write


def _command(execute: str, arguments: dict) -> Command:
    command = _new(Command)
    _set_attribute(command, "__dict__", {"execute": execute, "arguments": arguments})
    return command


def pick(source: ChoiceSource, label: str, values: Sequence[T]) -> T:
    """One of ``values``, uniformly."""
    return values[source.choose(len(values), label)]


@dataclass(frozen=True)
class Swarm:
    """What one case may use (swarm testing, Groce et al. ISSTA 2012).

    Each case leaves out a random part of the grammar: command kinds,
    optional argument families, and the error forms (stale or absent names,
    refused argument pairs, invalid values). A case without the noise it does
    not need is far likelier to show a deep interleaving; across cases every
    feature is still on half of the time.
    """

    commands: frozenset[str]
    arguments: frozenset[str]
    errors: bool


def gen_swarm(source: ChoiceSource) -> Swarm:
    """Command kinds are on unless a choice says off; arguments and errors the other way round,
    so choices that run out (all 0) give every command and the plainest arguments."""
    choose = source.choose      # looked up once for the thirteen decisions
    kinds = [k for k, label in SWARM_COMMANDS if choose(2, label) == 0]
    arguments = [a for a, label in SWARM_ARGUMENTS if choose(2, label) == 1]
    errors = choose(2, "gen:swarm:errors") == 1
    return record(Swarm, {"commands": frozenset(kinds) if kinds else ALL_COMMANDS,
                           "arguments": frozenset(arguments), "errors": errors})


@dataclass
class Resources:
    """What the commands generated so far created, consumed or will make stale."""

    nodes: list[str]                    # image node names, bottom first
    filenames: list[str]
    drive: str | None
    swarm: Swarm
    filters: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    stale_jobs: list[str] = field(default_factory=list)
    cut_nodes: list[str] = field(default_factory=list)   # a commit will remove them
    commit_tops: list[int] = field(default_factory=list)  # chain index of each commit's top
    commit_filters: list[tuple[int, str]] = field(default_factory=list)  # (top, name), unconsumed

    def stale(self) -> list[str]:
        return self.stale_jobs + self.cut_nodes

    def add_job(self, job_id: str) -> None:
        if job_id and job_id not in self.jobs:
            self.jobs.append(job_id)

    def allowed(self, table: tuple[tuple[int, T], ...], errors: tuple[T, ...] = ()) -> tuple[tuple[int, T], ...]:
        """``table`` without its error entries unless this case has errors on."""
        if self.swarm.errors:
            return table
        entry = _WITHOUT.get(id(table))
        if entry is None or entry[0] is not table or entry[1] is not errors:
            entry = _remember(_WITHOUT, id(table), (table, errors, _without(table, errors)))
        return entry[2]


def _resources(nodes: list[str], filenames: list[str], drive: str | None, swarm: Swarm) -> Resources:
    """``Resources(nodes, filenames, drive, swarm)`` (:func:`harness.case.record`)."""
    return record(Resources, {"nodes": nodes, "filenames": filenames, "drive": drive, "swarm": swarm,
                               "filters": [], "jobs": [], "stale_jobs": [], "cut_nodes": [],
                               "commit_tops": [], "commit_filters": []})


def _without(table: tuple[tuple[int, T], ...], errors: tuple[T, ...]) -> tuple[tuple[int, T], ...]:
    return tuple((w, v) for w, v in table if v not in errors)


@dataclass
class Generated:
    """A generated case and, per command, the span of choice indexes it consumed."""

    case: Case
    spans: list[tuple[int, int]]
    choices_used: int


def generate(source: ChoiceSource, bugs: Sequence[str] = ()) -> Case:
    """Build a case from ``source``; ``bugs`` go into the case as they are."""
    return generate_with_spans(source, bugs).case


def generate_with_spans(source: ChoiceSource, bugs: Sequence[str] = ()) -> Generated:
    """:func:`generate`, also telling which choices each command consumed."""
    images = gen_images(source)
    drive = None if source.choose(8, "gen:drive") == 1 else DRIVE
    res = _resources([i.node_name for i in images], [i.filename for i in images], drive, gen_swarm(source))
    count = weighted(source, "gen:commands", COMMAND_COUNT_TABLE)
    commands, spans = [], []
    for _ in range(count):
        start = len(source.recorded)
        commands.append(gen_command(source, res))
        spans.append((start, len(source.recorded)))
    case = record(Case, {"images": tuple(images), "commands": tuple(commands), "drive": drive,
                          "bugs": tuple(bugs), "schedule": {"choices": []}, "expect": None,
                          "description": "generated", "path": None})
    return Generated(case, spans, len(source.recorded))


# -- the chain ------------------------------------------------------------------

def gen_images(source: ChoiceSource) -> list[Image]:
    """2-9 images, bottom first; the bottom raw one time in four."""
    choose = source.choose      # looked up once for the image's decisions and its writes'
    count = IMAGE_COUNTS[choose(len(IMAGE_COUNTS), "gen:images")]
    raw_bottom = choose(4, "gen:bottom-raw") == 1
    images = []
    for i in range(count):
        writes = [_gen_write(choose, "gen:write") for _ in range(choose(3, "gen:writes"))]
        name = NODE_NAMES[i]
        if i == 0 and raw_bottom:
            images.append(_image(name, tuple(writes), name + ".raw", "raw"))
        else:
            images.append(_image(name, tuple(writes), QCOW2_FILENAMES[i], "qcow2"))
    return images


#: the chain's node names and qcow2 filenames, made once (the generator's strings are
#: per-run work that adds up: a case has five or six images)
NODE_NAMES = tuple(f"node{i}" for i in range(max(IMAGE_COUNTS)))
QCOW2_FILENAMES = tuple(f"{name}.qcow2" for name in NODE_NAMES)


def gen_write(source: ChoiceSource, label: str) -> Write:
    """A cluster-aligned write of 1-4 clusters, inside the image."""
    return _gen_write(source.choose, label)


def _gen_write(choose, label: str) -> Write:
    """:func:`gen_write` with the source's ``choose`` looked up already."""
    offset, length_label, pattern_label = WRITE_LABELS[label]
    first = choose(CLUSTERS, offset)
    clusters = 1 + choose(4, length_label)
    length = min(clusters, CLUSTERS - first) * DEFAULT_CLUSTER_SIZE
    pattern = 1 + choose(PATTERNS, pattern_label)
    return _write(first * DEFAULT_CLUSTER_SIZE, length, pattern)


# -- commands -------------------------------------------------------------------

def gen_command(source: ChoiceSource, res: Resources) -> Command:
    """One command. While an intermediate commit's filter waits for a consumer, a stream
    is likelier (syzkaller's dynamic priorities: calls that use what earlier calls made)."""
    table = _command_table(res.swarm.commands, bool(res.commit_filters))
    return GENERATORS[weighted(source, "gen:command", table)](source, res)


@functools.lru_cache(maxsize=512)
def _command_table(kinds: frozenset[str], boosted: bool) -> tuple[tuple[int, str], ...]:
    boost = CONSUMER_BOOST if boosted else {}
    return tuple((w * boost.get(k, 1), k) for w, k in COMMAND_TABLE if k in kinds)


def gen_block_commit(source: ChoiceSource, res: Resources) -> Command:
    """block-commit with every argument form (qapi/block-core.json)."""
    args: dict[str, Any] = {"device": _commit_device(source, res)}
    top = len(res.nodes) - 1
    form = weighted(source, "gen:commit:top",
                    res.allowed(((4, "top-node"), (3, None), (2, "top"), (1, "both")), ("both",)))
    if form is not None:
        top = _commit_top(source, res)
        _node_or_file(args, form, "top", res, top, source, "gen:commit:top")
    base = None
    form = weighted(source, "gen:commit:base",
                    res.allowed(((4, "base-node"), (3, None), (2, "base"), (1, "both")), ("both",)))
    if form is not None and (top > 0 or res.swarm.errors):   # nothing below the bottom
        base = _node_index(source, res, "gen:commit:base-node", below=top)
        _node_or_file(args, form, "base", res, base, source, "gen:commit:base")
    _filter_node_name(source, res, args, "gen:commit")
    _common_job_args(source, res, args, "gen:commit")
    job_id = args.get("job-id", res.drive if args["device"] == res.drive else args["device"])
    res.add_job(job_id)
    res.commit_tops.append(top)
    if "filter-node-name" in args and args["filter-node-name"] not in res.nodes and top + 3 < len(res.nodes):
        res.commit_filters.append((top, args["filter-node-name"]))
    low = 0 if base is None else base + 1
    res.cut_nodes.extend(n for n in res.nodes[low:top] if n not in res.cut_nodes)
    return _command("block-commit", args)


def gen_block_stream(source: ChoiceSource, res: Resources) -> Command:
    """block-stream with every argument form (qapi/block-core.json).

    Three times in four that an intermediate commit's filter is there, the
    stream consumes it as its ``base-node`` from a node above that commit's
    top: 030's test_overlapping_5 shape, a few choices away.
    """
    if res.commit_filters and source.choose(4, "gen:stream:onto-filter") != 1:
        top, name = res.commit_filters.pop(source.choose(len(res.commit_filters), "gen:stream:filter"))
        # above the commit's top and its overlay, below the device node (the commit's)
        device = top + 2 + source.choose(len(res.nodes) - top - 3, "gen:stream:device-above")
        args: dict[str, Any] = {"device": res.nodes[device], "base-node": name}
        return _stream_rest(source, res, args)
    device = _stream_device(source, res)
    args = {"device": res.nodes[device] if isinstance(device, int) else device}
    below = device if isinstance(device, int) else len(res.nodes)
    form = weighted(source, "gen:stream:base", res.allowed(STREAM_BASE_FORMS, STREAM_REFUSED_FORMS))
    for key in form:
        if key == "base-node":
            args["base-node"] = _stream_base_node(source, res, below)
        elif key == "base":
            args["base"] = res.filenames[_node_index(source, res, "gen:stream:base-file", below)]
        else:
            args["bottom"] = _any_node(source, res, "gen:stream:bottom", below)
    return _stream_rest(source, res, args)


def _stream_rest(source: ChoiceSource, res: Resources, args: dict[str, Any]) -> Command:
    _filter_node_name(source, res, args, "gen:stream")
    _common_job_args(source, res, args, "gen:stream")
    if "job-id" not in args and args["device"] != res.drive:
        if not res.swarm.errors or source.choose(4, "gen:stream:job-id-default") != 1:
            args["job-id"] = args["device"]     # 030's habit: the job is named after its node
    res.add_job(args.get("job-id", args["device"]))
    return _command("block-stream", args)


def gen_job_verb(source: ChoiceSource, res: Resources) -> Command:
    """A job verb: ``job-<verb> id`` or ``block-job-<verb> device``."""
    verb = pick(source, "gen:verb", JOB_VERBS)
    job = _job_id(source, res)
    if verb in ("cancel", "dismiss"):
        res.stale_jobs.append(job)
    if source.choose(2, "gen:verb:family") == 0:
        return _command(f"job-{verb}", {"id": job})
    args: dict[str, Any] = {"id": job} if verb in ("finalize", "dismiss") else {"device": job}
    if verb == "cancel" and source.choose(3, "gen:verb:force") == 1:
        args["force"] = True
    return _command(f"block-job-{verb}", args)


def gen_set_speed(source: ChoiceSource, res: Resources) -> Command:
    speeds = res.allowed(SET_SPEEDS, (-1,))
    return _command("block-job-set-speed",
                   {"device": _job_id(source, res), "speed": weighted(source, "gen:set-speed", speeds)})


def gen_guest_write(source: ChoiceSource, res: Resources) -> Command:
    """A guest write through the device; without a device, a scheduler step instead."""
    if res.drive is None:
        return gen_step(source, res)
    w = gen_write(source, "gen:guest-write")
    return _command("x-guest-write", {"offset": w.offset, "length": w.length, "pattern": w.pattern})


def gen_step(source: ChoiceSource, res: Resources) -> Command:
    return _command("x-step", {"count": pick(source, "gen:step", STEP_COUNTS)})


def gen_wait_jobs(source: ChoiceSource, res: Resources) -> Command:
    return _command("x-wait-jobs", {})


COMMAND_TABLE = (
    (6, "block-commit"), (6, "block-stream"), (3, "job-verb"), (2, "block-job-set-speed"),
    (2, "x-step"), (1, "x-wait-jobs"), (1, "x-guest-write"),
)
ALL_COMMANDS = frozenset(k for _, k in COMMAND_TABLE)
#: each swarm decision's label, made once rather than per case
SWARM_COMMANDS = tuple((k, f"gen:swarm:{k}") for _, k in COMMAND_TABLE)
SWARM_ARGUMENTS = tuple((a, f"gen:swarm:{a}") for a in OPTIONAL_ARGUMENTS)
#: a write's three labels, per label prefix
WRITE_LABELS = {label: (label + ":offset", label + ":length", label + ":pattern")
                for label in ("gen:write", "gen:guest-write")}
#: weight factors while a commit's filter waits for a stream
CONSUMER_BOOST = {"block-stream": 6}
GENERATORS = {
    "block-commit": gen_block_commit, "block-stream": gen_block_stream, "job-verb": gen_job_verb,
    "block-job-set-speed": gen_set_speed, "x-step": gen_step, "x-wait-jobs": gen_wait_jobs,
    "x-guest-write": gen_guest_write,
}
#: block-stream's ways of naming the base, the refused pairs last
STREAM_REFUSED_FORMS = (("base", "base-node"), ("base", "bottom"), ("bottom", "base-node"))
STREAM_BASE_FORMS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (6, ("base-node",)), (2, ()), (2, ("base",)), (2, ("bottom",)),
) + tuple((1, f) for f in STREAM_REFUSED_FORMS)


# -- arguments ------------------------------------------------------------------

def _commit_device(source: ChoiceSource, res: Resources) -> str:
    """Mostly the root (the device, or the top node without one)."""
    root = res.drive or res.nodes[-1]
    which = weighted(source, "gen:commit:device",
                     res.allowed(((8, "root"), (1, "node"), (1, "absent")), ("node", "absent")))
    if which == "root":
        return root
    if which == "node":
        return _any_node(source, res, "gen:commit:device-node", len(res.nodes))
    return pick(source, "gen:absent", ABSENT_NODES)


def _commit_top(source: ChoiceSource, res: Resources) -> int:
    """Mostly an intermediate node (a node below it to commit into, one above it
    to re-point): the active layer is what leaving ``top`` out means."""
    inner = len(res.nodes) - 2
    if inner > 0 and source.choose(8, "gen:commit:top-anywhere") != 1:
        return 1 + source.choose(inner, "gen:commit:top-node")
    return source.choose(len(res.nodes), "gen:commit:top-node")


def _stream_device(source: ChoiceSource, res: Resources) -> int | str:
    """A chain index (mostly above a live commit's top) or a name."""
    which = weighted(source, "gen:stream:device",
                     res.allowed(((5, "node"), (4, "above-commit"), (1, "drive"), (1, "other")), ("other",)))
    if which == "above-commit" and res.commit_tops:
        top = pick(source, "gen:stream:commit", res.commit_tops)
        if top + 2 < len(res.nodes):
            return top + 2 + source.choose(len(res.nodes) - top - 2, "gen:stream:device-above")
    if which == "drive" and res.drive:
        return res.drive
    if which == "other":
        return _any_node(source, res, "gen:stream:device-other", len(res.nodes))
    return source.choose(len(res.nodes), "gen:stream:device-node")


def _stream_base_node(source: ChoiceSource, res: Resources, below: int) -> str:
    """Mostly a live filter (a commit's) or a node below the stream's top."""
    which = weighted(source, "gen:stream:base-node",
                     res.allowed(((4, "filter"), (4, "below"), (1, "any")), ("any",)))
    if which == "filter" and res.filters:
        return pick(source, "gen:stream:base-filter", res.filters)
    if which == "any":
        return _any_node(source, res, "gen:stream:base-any", len(res.nodes))
    return res.nodes[_node_index(source, res, "gen:stream:base-below", below)]


def _node_index(source: ChoiceSource, res: Resources, label: str, below: int) -> int:
    """A chain index, mostly below ``below``."""
    if below > 0 and source.choose(8, label + ":anywhere") != 1:
        return source.choose(below, label)
    return source.choose(len(res.nodes), label)


def _any_node(source: ChoiceSource, res: Resources, label: str, below: int) -> str:
    """Any name a command could use: live, and with errors on also stale or absent."""
    which = weighted(source, label, res.allowed(((6, "node"), (2, "filter"), (1, "stale"), (1, "absent")),
                                                ("stale", "absent")))
    if which == "filter" and res.filters:
        return pick(source, label + ":filter", res.filters)
    if which == "stale" and res.stale():
        return pick(source, label + ":stale", res.stale())
    if which == "absent":
        return pick(source, "gen:absent", ABSENT_NODES)
    return res.nodes[_node_index(source, res, label + ":node", below)]


def _node_or_file(args: dict, form: str, name: str, res: Resources, index: int,
                  source: ChoiceSource, label: str) -> None:
    """``top``/``base`` by node name (``*-node``), by filename, or both (refused)."""
    if form in (f"{name}-node", "both"):
        args[f"{name}-node"] = res.nodes[index]
    if form in (name, "both"):
        other = index if form == name else source.choose(len(res.nodes), label + ":file")
        args[name] = res.filenames[other]


def _filter_node_name(source: ChoiceSource, res: Resources, args: dict, label: str) -> None:
    which = weighted(source, label + ":filter", res.allowed(((3, None), (3, "fresh"), (1, "clash")), ("clash",)))
    if which is None:
        return
    if which == "clash":
        args["filter-node-name"] = pick(source, label + ":filter-clash", res.filters + res.nodes)
        return
    fresh = [f for f in FILTER_NAMES if f not in res.filters] or [f"filter{len(res.filters)}"]
    name = fresh[0] if len(fresh) == 1 else pick(source, label + ":filter-name", fresh)
    args["filter-node-name"] = name
    res.filters.append(name)


def _common_job_args(source: ChoiceSource, res: Resources, args: dict, label: str) -> None:
    """speed; backing-file, auto-finalize, auto-dismiss, on-error, job-id only in cases
    whose swarm has them."""
    labels = JOB_ARGUMENT_LABELS[label]
    speed = weighted(source, labels["speed"], res.allowed(SPEED_TABLE, (-1,)))
    if speed is not None:
        args["speed"] = speed
    arguments = res.swarm.arguments
    if "backing-file" in arguments and source.choose(4, labels["backing-file"]) == 1:
        args["backing-file"] = pick(source, labels["backing-file-name"], res.filenames + ["custom.qcow2"]
                                    + ([TOO_LONG_BACKING_FILE] if res.swarm.errors else []))
    for flag in ("auto-finalize", "auto-dismiss"):
        if flag in arguments:
            value = weighted(source, labels[flag], ((2, None), (1, False), (1, True)))
            if value is not None:
                args[flag] = value
    if "on-error" in arguments:
        on_error = weighted(source, labels["on-error"], ON_ERROR_TABLE)
        if on_error is not None:
            args["on-error"] = on_error
    if "job-id" in arguments:
        _job_id_argument(source, res, args, label)


#: the labels of a job command's common arguments, per command label, made once
JOB_ARGUMENT_LABELS = {
    label: {part: f"{label}:{part}" for part in ("speed", "backing-file", "backing-file-name",
                                                  "auto-finalize", "auto-dismiss", "on-error")}
    for label in ("gen:commit", "gen:stream")
}


def _job_id_argument(source: ChoiceSource, res: Resources, args: dict, label: str) -> None:
    table = res.allowed(((3, None), (2, "fresh"), (1, "reuse"), (1, "invalid")), ("reuse", "invalid"))
    which = weighted(source, label + ":job-id", table)
    if which == "fresh" or (which == "reuse" and not res.jobs):
        args["job-id"] = f"job{len(res.jobs)}"
    elif which == "reuse":
        args["job-id"] = pick(source, label + ":job-id-reuse", res.jobs)
    elif which == "invalid":
        args["job-id"] = pick(source, label + ":job-id-invalid", ("", "0job", "job id"))


def _job_id(source: ChoiceSource, res: Resources) -> str:
    """Mostly a live job id; with errors on, sometimes a stale or absent one."""
    which = weighted(source, "gen:job", res.allowed(((8, "live"), (1, "stale"), (1, "absent")),
                                                    ("stale", "absent")))
    if which == "live" and res.jobs:
        return pick(source, "gen:job:live", res.jobs)
    if which == "stale" and res.stale_jobs:
        return pick(source, "gen:job:stale", res.stale_jobs)
    return pick(source, "gen:job:absent", (res.drive or "drive0", "job9", "none"))


# -- running --------------------------------------------------------------------

def run_generated(source: ChoiceSource, bugs: Sequence[str] = ()):
    """Generate a case from ``source``, run it on the model with the same source, judge it.

    :returns: ``(case, observation, verdict)``; the case's schedule is
        ``{"choices": [...]}`` holding only the scheduler's choices, so the
        case replays on its own, while ``source.recorded`` (generation and
        scheduling) replays through :func:`run_generated` with a
        :class:`~harness.choices.RecordedSource`.
    """
    return run_generated_batch((source,), bugs)[0]


def run_generated_batch(sources: Sequence[ChoiceSource], bugs: Sequence[str] = ()) -> list:
    """:func:`run_generated` for each of ``sources``, stage by stage: every case
    generated, then every case run, then every run judged. The same triples in the same
    order as one :func:`run_generated` per source (each source is read by its own case
    only); what changes is that each stage's code and data stay in the processor's
    caches for a whole batch instead of being pushed out by the other two stages every
    run, which took about a tenth of a random engine's run (measured with batches of 8
    and 32, ``docs/measurements.md``)."""
    from harness.backends.reference import run_case
    from harness.corpus import judge

    bugs = tuple(bugs)
    generated = [generate_with_spans(source, bugs) for source in sources]
    observations = [run_case(g.case, source, bugs=bugs) for g, source in zip(generated, sources)]
    out = []
    for g, source, observation in zip(generated, sources, observations):
        case = g.case.with_schedule({"choices": source.recorded[g.choices_used:]})
        out.append((case, observation, judge(case, observation)))
    return out


# -- structure-aware mutation (atheris) ----------------------------------------------

@dataclass
class ByteLayout:
    """Where the grammar read each part of a byte input (:class:`~harness.choices.BytesSource`).

    ``data`` is the input padded with zeros up to the end of generation,
    ``count_at`` the offset of the command-count byte, ``commands`` the
    byte span of each command, ``schedule_at`` where the scheduler's part begins.
    """

    data: bytes
    count_at: int
    commands: list[tuple[int, int]]
    schedule_at: int


def byte_layout(data: bytes) -> ByteLayout:
    from harness.choices import BytesSource
    source = BytesSource(data)
    generated = generate_with_spans(source)
    offsets = source.offsets + [source.position]
    spans = [(offsets[a], offsets[b]) for a, b in generated.spans]
    count_at = offsets[generated.spans[0][0] - 1]
    return ByteLayout(bytes(data).ljust(source.position, b"\0"), count_at, spans, source.position)


def mutate_structure(data: bytes, rng, other: bytes | None = None) -> bytes:
    """One structure-aware mutation of an atheris input: drop, duplicate, splice or
    retarget a command, or change the schedule (syzkaller's ``prog/mutation.go`` operators
    on the grammar's byte layout)."""
    layout = byte_layout(data)
    ops = [_retarget, _reschedule, _duplicate, _drop]
    if other is not None:
        ops.append(lambda lay, r: _splice(lay, r, byte_layout(other)))
    return ops[rng.randrange(len(ops))](layout, rng)


def _with_count(layout: ByteLayout, data: bytes, count: int) -> bytes:
    """``data`` with the command-count choice set to ``count``."""
    at = layout.count_at
    value = sum(COMMAND_COUNT_WEIGHTS[:COMMAND_COUNTS.index(count)])
    return data[:at] + bytes([value]) + data[at + 1:]


def _drop(layout: ByteLayout, rng) -> bytes:
    if len(layout.commands) < 2:
        return _retarget(layout, rng)
    a, b = layout.commands[rng.randrange(len(layout.commands))]
    return _with_count(layout, layout.data[:a] + layout.data[b:], len(layout.commands) - 1)


def _insert(layout: ByteLayout, rng, piece: bytes) -> bytes:
    if len(layout.commands) >= MAX_COMMANDS:
        return _drop(layout, rng)
    at = layout.commands[rng.randrange(len(layout.commands))][rng.randrange(2)]
    return _with_count(layout, layout.data[:at] + piece + layout.data[at:], len(layout.commands) + 1)


def _duplicate(layout: ByteLayout, rng) -> bytes:
    a, b = layout.commands[rng.randrange(len(layout.commands))]
    return _insert(layout, rng, layout.data[a:b])


def _splice(layout: ByteLayout, rng, donor: ByteLayout) -> bytes:
    a, b = donor.commands[rng.randrange(len(donor.commands))]
    return _insert(layout, rng, donor.data[a:b])


def _retarget(layout: ByteLayout, rng) -> bytes:
    """Change one byte inside one command: another node, filter, job, form or value."""
    a, b = layout.commands[rng.randrange(len(layout.commands))]
    if a == b:
        return _reschedule(layout, rng)
    at = rng.randrange(a, b)
    return layout.data[:at] + bytes([rng.randrange(256)]) + layout.data[at + 1:]


def _reschedule(layout: ByteLayout, rng) -> bytes:
    """Change, add or cut the scheduler's bytes."""
    data, start = layout.data, layout.schedule_at
    what = rng.randrange(3)
    if what == 0 and len(data) > start:
        at = rng.randrange(start, len(data))
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    if what == 1 and len(data) > start:
        return data[:rng.randrange(start, len(data))]
    return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
