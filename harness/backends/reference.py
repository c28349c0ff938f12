"""The in-process backend: run a case on the model of QEMU's block layer.

``run_case`` builds the case's chain in a fresh :class:`reference.machine.Machine`,
sends its commands through ``reference.qmp``, lets the event loop run a
scheduler-chosen number of steps between commands (as QEMU's main loop does
between QMP commands), ends with an implicit ``x-wait-jobs``, and returns an
:class:`~harness.observation.Observation`. A fault of the model (use-after-free,
hang, illegal transition, an unexpected exception) becomes the observation's
``finding``; it is never raised.
"""
from __future__ import annotations

import traceback
from typing import Iterable, Mapping, Sequence

from harness.backends.qemu_images import CASE_PATH_PREFIX
from harness.case import Case
from harness.choices import ChoiceSource, RandomSource, RecordedSource
from harness.errors import UsageError
from harness.observation import ChainNode, Finding, Observation, fold_drain_pairs
from reference import qmp
from reference.bugs import BUGS
from reference.errors import BlockfuzzError, ModelFault
from reference.graph import bdrv_filter_or_cow_bs
from reference.machine import Machine

#: the choices of the gap between two commands (see :func:`reference.qmp.client_gap`)
BETWEEN = qmp.CLIENT_GAP


def source_for(case: Case, seed: int | None = None) -> ChoiceSource:
    """The choice source a case's ``schedule`` asks for (``seed`` overrides its seed)."""
    schedule = case.schedule or {}
    if "choices" in schedule:
        return RecordedSource(schedule["choices"])
    policy = schedule.get("policy", "random")
    s = schedule.get("seed", 0) if seed is None else seed
    if policy == "pct":
        try:
            from harness.choices import PCTSource
        except ImportError:  # pragma: no cover - PCT ships with the engines
            return RandomSource(s)
        return PCTSource(s, schedule.get("depth", 3))
    return RandomSource(s)


def build(m: Machine, case: Case) -> None:
    """Create the chain as 030 does: read-only backing nodes, the device on the top."""
    below = None
    top = len(case.images) - 1
    for i, img in enumerate(case.images):
        bs = m.add_image(img.node_name, img.format, img.filename, img.size, img.cluster_size,
                         below, read_only=(i != top))
        for w in img.writes:
            m.write(bs, w.offset, w.offset + w.length, [(w.offset, w.offset + w.length, w.pattern)])
        below = bs
    m.attach_device(case.drive, below)


def new_machine(case: Case, source: ChoiceSource, bug_ids: tuple[str, ...],
                trace: bool = False, metadata_io: bool = False) -> Machine:
    """The machine a run of ``case`` starts from (before :func:`build`): its choices
    from ``source``, qcow2 metadata reads if asked or if the case's schedule asks, the
    x-steps' end times the schedule gives (``x-step-until``), and QEMU's path lengths
    (the QEMU backend's case directories are :data:`CASE_PATH_PREFIX` characters long)."""
    m = Machine(source.choose, bug_ids, trace=trace)
    m.path_prefix = CASE_PATH_PREFIX
    schedule = case.schedule or {}
    m.metadata_io = metadata_io or bool(schedule.get("metadata-io"))
    if "x-step-until" in schedule:
        m.x_step_until = {int(i): ns for i, ns in schedule["x-step-until"].items()}
    return m


def run_case(case: Case, source: ChoiceSource | None = None, *,
             bugs: Iterable[str] | None = None, trace: bool = False,
             unthrottle: Mapping[int, Sequence[str]] | None = None,
             metadata_io: bool = False, x_step_until: Mapping[int, int] | None = None,
             gap_steps: Mapping[int, int] | None = None) -> Observation:
    """Run ``case`` on the model; never raises for a model fault. ``unthrottle``:
    command index (that of an x-wait-jobs, ``len(case.commands)`` for the implicit
    last one) -> block jobs whose speed limit it lifts first, in order (what the QEMU
    backend did; see :func:`harness.differential.unthrottled`). ``metadata_io``: a
    job's first block-status query on a qcow2 image waits for a metadata read
    (``Machine.metadata_io``; only ``diff``'s gap search asks for it).
    ``x_step_until``: command index -> the virtual time since the first command up
    to which that ``x-step`` may run, instead of 50 ms past its start (``diff`` gives
    when QEMU's ended; a case's schedule may, as ``x-step-until``; this one wins).
    ``gap_steps``: position -> the exact loop steps of the client's gap after that
    command (``Machine.gap_steps``); the observation's ``extra["gap_idle"]`` says
    whether one went idle first."""
    bug_ids = tuple(case.bugs if bugs is None else bugs)
    for b in bug_ids:
        if b not in BUGS:
            raise UsageError(f"unknown bug id '{b}'; known: {', '.join(sorted(BUGS))}")
    source = source if source is not None else source_for(case)
    m = new_machine(case, source, bug_ids, trace=trace, metadata_io=metadata_io)
    if unthrottle:
        m.unthrottle = {i: list(devices) for i, devices in unthrottle.items()}
    if x_step_until:
        m.x_step_until = dict(x_step_until)
    if gap_steps:
        m.gap_steps = dict(gap_steps)
    source.attach(m)
    obs = Observation()
    try:
        build(m, case)
        run_commands(m, case, obs)
    except ModelFault as fault:
        obs.finding = Finding(fault.kind, str(fault), fault.where, m.cmd_index)
    except Exception as exc:  # a bug in the model itself
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        # the function's own name: a compiled module reports it qualified
        # ("reference.job.Job.resume"), so that the signature would depend on the build
        where = f"{tb.name.rsplit('.', 1)[-1]}:{type(exc).__name__}"
        obs.finding = Finding("crash", f"{type(exc).__name__}: {exc}", where, m.cmd_index)
    _observe(m, obs)
    if gap_steps:
        obs.extra["gap_idle"] = m.gap_idle
    obs.choices = list(source.recorded)
    m.release()
    return obs


def run_commands(m: Machine, case: Case, obs: Observation) -> None:
    """Send the case's commands, with the loop running between them, then the
    implicit x-wait-jobs. Public so that `blockfuzz show` replays exactly this."""
    m.case_start = m.aio.now
    for i, cmd in enumerate(case.commands):
        if i:
            qmp.client_gap(m, "between")
        m.cmd_index = i
        obs.replies.append(qmp.execute(m, cmd.execute, dict(cmd.arguments)))
        if m.trace is not None:
            m.trace.append(f"{i} {cmd.execute} {dict(cmd.arguments)} -> {obs.replies[-1]}")
    m.cmd_index = len(case.commands)
    qmp.x_wait_jobs(m)


def _observe(m: Machine, obs: Observation) -> None:
    obs.events = list(m.events)
    raw: dict[str, list[str]] = {}
    for ev in m.events:
        if ev["event"] == "JOB_STATUS_CHANGE":
            raw.setdefault(ev["data"]["id"], []).append(ev["data"]["status"])
    obs.job_statuses = {k: fold_drain_pairs(v) for k, v in raw.items()}
    obs.jobs_left = {j.id: j.status for j in m.jobs.values()}
    obs.extra["cells"] = sorted(m.cells)
    obs.extra["errors"] = list(m.errors)
    if m.trace is not None:
        obs.trace = m.trace
    try:
        obs.chain = observe_chain(m)
        obs.data = m.guest_view()
        top = next((n.filename for n in obs.chain if not n.is_filter), None)
        if top is not None:
            obs.extra["on_disk_backing"] = m.on_disk_backing(top)
    except BlockfuzzError as exc:
        obs.extra["observe-error"] = str(exc)


def observe_chain(m: Machine) -> list[ChainNode]:
    out = []
    bs = m.device_root()
    while bs is not None:
        if bs.freed_at is not None:
            raise ModelFault(f"the chain reaches freed node '{bs.node_name}'", "observe")
        out.append(ChainNode(bs.node_name, bs.drv, bs.display_filename(),
                             None if bs.is_filter else bs.backing_file, bs.read_only))
        bs = bdrv_filter_or_cow_bs(bs)
    return out
