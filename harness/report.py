"""``blockfuzz show CASE``: what a person reads about a finding.

One finding, three reproducers (style.md, "What no existing tool has"): the
model's replay (``blockfuzz replay``), a QMP transcript, and an iotest. The
verdict comes first, then by default the transcript: each command as the
JSON line QMP would carry (``->``), the events QEMU emits while it runs and
its reply (``<-``, in the order a QMP client reads them: an event emitted
inside a command arrives before its reply), then the events of the main loop
until the next command. A run the model cut short ends with ``!!`` at the
command where it happened::

    $ blockfuzz show corpus/regressions/overlapping_5-stream-prepare-no-drain.json
    verdict: use-after-free: node 'commit-filter' was freed at step 3.74 ...
    -> {"execute": "block-commit", "arguments": {"device": "drive0", ...}}
    <- {"event": "JOB_STATUS_CHANGE", "data": {"id": "drive0", "status": "created"}}
    ...
    !! use-after-free: node 'commit-filter' was freed at step 3.74 ...

``--schedule`` says where the run's schedule departs from a non-preemptive
one (each step continues the job that ran last; commands back to back): the
delays, preemptions and reorders a race needed, each with where it was.
``--trace`` prints the model's own one-line-per-event trace (``3.72 run
bh:job_exit:node4``: command 3, loop step 72); ``--graph OUT.svg|png|dot``
draws the block graph after the chain is built and at the end (or at the
fault) side by side; ``--iotest OUT.py`` writes a QMPTestCase for
``tests/qemu-iotests/tests/`` (and its ``.out``) that asserts what a correct
QEMU does: the replies of a run on the fixed model where the oracle is certain
of them (a reply that depends on timing becomes a comment), and the oracle's
chain, on the graph and in the image headers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from typing import Any, Iterable

from harness import case as case_mod
from harness.case import Case, Command
from harness.check import check
from harness.choices import ChoiceSource, RandomSource
from harness.errors import UsageError
from harness.observation import Observation

GRAPH_FORMATS = ("svg", "png", "dot")
#: events after which x-wait-jobs stops waiting for a job (with ``pending`` when it stays there)
SETTLE_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_READY")
#: QMP arguments that name an image file; the iotest passes its own path for them
FILE_ARGUMENTS = ("base", "top", "backing-file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="CASE", help="a case file")
    parser.add_argument("--trace", action="store_true",
                        help="print the model's one-line-per-event trace")
    parser.add_argument("--transcript", action="store_true",
                        help="print the QMP transcript (the default when nothing else is asked for)")
    parser.add_argument("--schedule", action="store_true",
                        help="say where the run's schedule departs from a non-preemptive one")
    parser.add_argument("--graph", metavar="OUT.svg|OUT.png|OUT.dot",
                        help="draw the block graph before and after the run (or at the fault)")
    parser.add_argument("--iotest", metavar="OUT.py",
                        help="write a qemu-iotests reproducer (and OUT.py.out beside it)")
    parser.add_argument("--bugs", metavar="ID,...", default=None,
                        help="bug ids to put back instead of the case's own ('' for the fixed model)")
    parser.add_argument("--seed", metavar="S", type=int, default=None,
                        help="run under random seed S instead of the case's schedule")


def run(args: argparse.Namespace) -> int:
    from harness.replay import parse_bugs
    bugs = parse_bugs(args.bugs)
    graph_format = _graph_format(args.graph) if args.graph else None
    case = case_mod.load(args.path)
    observation = observe(case, bugs, args.seed)
    verdict = check(case, observation)
    print(f"verdict: {verdict}")
    if args.transcript or not (args.trace or args.graph or args.iotest or args.schedule):
        print("\n".join(transcript(case, observation)))
    if args.trace:
        print("\n".join(trace_lines(observation)))
    if args.schedule:
        print("\n".join(schedule_lines(case, bugs, observation)))
    if args.graph:
        with _writing("--graph", args.graph):
            write_graph(graph_source(case, bugs, args.seed), args.graph, graph_format)
        print(f"wrote {args.graph}")
    if args.iotest:
        on_model = f"{_bug_note(case.bugs if bugs is None else bugs)}: {verdict}"
        with _writing("--iotest", args.iotest):
            write_iotest(case, args.seed, args.iotest, on_model)
        print(f"wrote {args.iotest} and {args.iotest}.out")
    return 0


@contextlib.contextmanager
def _writing(option: str, path: str):
    """Make the file's directory; a file that cannot be written is bad input."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        yield
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write it: {e.strerror or e}") from None


def _graph_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in GRAPH_FORMATS:
        raise UsageError(f"--graph {path}: unknown picture format '{ext}'; "
                         f"name the file .svg, .png or .dot")
    return ext


# -- the run -----------------------------------------------------------------------

def source(case: Case, seed: int | None) -> ChoiceSource:
    """A fresh choice source: the case's schedule, or random seed ``seed`` when given
    (which also replaces recorded choices)."""
    from harness.backends.reference import source_for
    if seed is not None and "choices" in (case.schedule or {}):
        return RandomSource(seed)
    return source_for(case, seed)


def observe(case: Case, bugs: Iterable[str] | None, seed: int | None) -> Observation:
    """Run ``case`` on the model with its trace on."""
    from harness.backends.reference import run_case
    return run_case(case, source(case, seed), bugs=bugs, trace=True)


def schedule_lines(case: Case, bugs: Iterable[str] | None, observation: Observation) -> list[str]:
    """The run's decisions that a non-preemptive scheduler would have taken otherwise
    (:class:`~harness.choices.PreemptionSource`), each with where it happened."""
    from harness.choices import summarize
    from harness.minimize import follow
    run = follow(case, observation.choices, bugs)
    counted = summarize(run.forced)
    head = (f"schedule: {len(run.decisions)} decisions, {len(run.forced)} of them forced beyond a "
            f"non-preemptive schedule{': ' + counted if counted else ''}")
    return [head] + [f"  {d.describe()}" for d in run.forced]


# -- the transcript ------------------------------------------------------------------

def event_moments(trace: list[str]) -> list[tuple[int, bool]]:
    """For each QMP event, in order: the index of the command it belongs to, and
    whether it came before that command's reply (emitted while it ran) or after
    (the main loop's steps until the next command).

    Reads the model's trace: ``I.S event ...`` is an event at loop step S while
    command I is the latest; ``I execute ...`` is command I's reply."""
    moments: list[tuple[int, bool]] = []
    replied: set[int] = set()
    for line in trace:
        stamp, kind = line.split(" ", 2)[:2]
        if "." not in stamp:
            replied.add(int(stamp))
        elif kind == "event":
            index = int(stamp.split(".")[0])
            moments.append((index, index not in replied))
    return moments


def transcript(case: Case, observation: Observation) -> list[str]:
    """The run as a QMP client sees it, up to the command during which it faulted."""
    grouped: dict[tuple[int, bool], list[dict]] = {}
    for event, moment in zip(observation.events, event_moments(observation.trace)):
        grouped.setdefault(moment, []).append(event)
    finding = observation.finding
    lines = [_in(e) for e in grouped.get((-1, True), [])]
    if finding is not None and finding.step < 0:
        return lines + [f"!! {finding.kind}: {finding.message}"]
    commands = list(case.commands) + [Command("x-wait-jobs")]
    for i, command in enumerate(commands):
        during, after = grouped.get((i, True), []), grouped.get((i, False), [])
        faulted = finding is not None and finding.step == i
        if i == len(case.commands):
            if not (during or after or faulted):
                break
            lines.append("# the implicit x-wait-jobs at the end of every case")
        lines.append(f"-> {json.dumps(command.to_dict())}")
        lines += [_in(e) for e in during]
        if faulted:
            return lines + [f"!! {finding.kind}: {finding.message}"]
        reply = observation.replies[i] if i < len(observation.replies) else {"return": {}}
        lines.append(_in(reply))
        lines += [_in(e) for e in after]
    return lines


def _in(message: dict) -> str:
    return f"<- {json.dumps(as_qmp(message))}"


def as_qmp(message: dict) -> dict:
    """A reply or event as QMP carries it: without the "step" the model's events add."""
    return {k: v for k, v in message.items() if k != "step"}


def trace_lines(observation: Observation) -> list[str]:
    """The model's trace as it recorded it, and the finding where the run stopped."""
    lines = list(observation.trace)
    finding = observation.finding
    if finding is not None:
        lines.append(f"{finding.step} !! {finding.kind}: {finding.message}")
    return lines


# -- the graph ---------------------------------------------------------------------------

def query_graph(m) -> dict[str, Any]:
    """``x-debug-query-block-graph`` and ``query-named-block-nodes`` on the model."""
    from reference import qmp
    graph = qmp.execute(m, "x-debug-query-block-graph")["return"]
    named = qmp.execute(m, "query-named-block-nodes")["return"]
    return {**graph, "drivers": {n["node-name"]: n["drv"] for n in named}}


def graph_source(case: Case, bugs: Iterable[str] | None, seed: int | None):
    """The two graphs, drawn side by side as a :class:`graphviz.Digraph`: after the
    chain is built, and at the end of the run (or at its fault)."""
    from harness.backends.reference import build, new_machine
    choices = source(case, seed)
    m = new_machine(case, choices, tuple(case.bugs if bugs is None else bugs))
    build(m, case)
    before = query_graph(m)
    fault = run_to_end(m, case)
    title = "at the end" if fault is None else \
        f"at the {getattr(fault, 'kind', 'crash')} (command {m.cmd_index}, step {m.aio.steps})"
    return draw(before, {**query_graph(m), "fault": fault}, title)


def run_to_end(m, case: Case) -> Exception | None:
    """The run of :func:`harness.backends.reference.run_case` (its own loop, the
    same choices) on a machine kept for inspection; returns its fault, if any."""
    from harness.backends.reference import run_commands
    try:
        run_commands(m, case, Observation())
    except Exception as exc:         # a model fault or a crash of the model: stop at that moment
        return exc
    return None


def draw(before: dict, after: dict, after_title: str):
    import graphviz
    g = graphviz.Digraph("blockgraph", graph_attr={"rankdir": "TB", "fontname": "Helvetica"},
                         node_attr={"fontname": "Helvetica"}, edge_attr={"fontname": "Helvetica"})
    for key, title, graph in (("before", "after the chain is built", before),
                              ("after", after_title, after)):
        with g.subgraph(name=f"cluster_{key}") as sub:
            sub.attr(label=title)
            _draw_graph(sub, key, graph)
    return g


def _draw_graph(g, key: str, graph: dict) -> None:
    drivers = graph["drivers"]
    for node in graph["nodes"]:
        g.node(f"{key}_{node['id']}", **_node_style(node, drivers))
    for edge in graph["edges"]:
        g.edge(f"{key}_{edge['parent']}", f"{key}_{edge['child']}", label=edge["name"],
               style="dashed" if edge["name"] == "file" else "solid")
    freed = getattr(graph.get("fault"), "node", None)
    if freed is not None:            # the node a use-after-free touched, no longer in the graph
        fault = graph["fault"]
        g.node(f"{key}_freed", label=f"{freed}\nFREED at {fault.freed_at}\ntouched at {fault.touched_at}",
               **FREED_STYLE)


FREED_STYLE = {"shape": "box", "style": "filled,bold", "fillcolor": "lightcoral", "color": "red"}
FILTER_STYLE = {"shape": "box", "style": "rounded,dashed,filled", "fillcolor": "lightblue"}


def _node_style(node: dict, drivers: dict[str, str]) -> dict[str, str]:
    name = node["name"]
    if node["type"] == "block-backend":
        return {"label": f"{name}\nBlockBackend", "shape": "ellipse"}
    if node["type"] == "block-job":
        return {"label": f"job {name}", "shape": "octagon", "color": "darkgreen"}
    if name not in drivers:          # an edge still points to a node that was freed
        return {"label": f"{name}\nFREED", **FREED_STYLE}
    driver = drivers[name]
    if driver in ("copy-on-read", "commit_top", "mirror_top"):
        return {"label": f"{name}\n{driver} (filter)", **FILTER_STYLE}
    return {"label": f"{name}\n{driver}", "shape": "box"}


def write_graph(g, path: str, fmt: str) -> None:
    if fmt == "dot":
        with open(path, "w", encoding="utf-8") as f:
            f.write(g.source)
        return
    g.render(outfile=path, format=fmt, cleanup=True)


# -- the iotest ------------------------------------------------------------------------

OUT_FILE = """.
----------------------------------------------------------------------
Ran 1 tests

OK
"""


def write_iotest(case: Case, seed: int | None, path: str, on_model: str) -> None:
    """Write the reproducer and its ``.out``; ``on_model`` says what the model found."""
    fixed = observe(case, (), seed)
    text = iotest(case, fixed, on_model)
    for name, content in ((path, text), (path + ".out", OUT_FILE)):
        with open(name, "w", encoding="utf-8") as f:
            f.write(content)


def iotest(case: Case, fixed: Observation, on_model: str) -> str:
    """A QMPTestCase in the style of 030's TestParallelOps: the case's images,
    its commands with the replies of ``fixed`` (a run on the fixed model), and
    the chain a correct QEMU ends with."""
    head = ["#!/usr/bin/env python3", "# group: rw", "#",
            *_comment(case.description or "A case found by blockfuzz."),
            f"# On the model{on_model}",
            "#", "# Written by `blockfuzz show --iotest`.", "",
            "import os", *(["import time"] if _steps(case) else []), "",
            "import iotests", "from iotests import qemu_img, qemu_io", "", "",
            "class TestBlockfuzzCase(iotests.QMPTestCase):", "    def setUp(self):"]
    body = head + _setup(case) + [
        "", "    def tearDown(self):", "        self.vm.shutdown()",
        "        for img in self.imgs:", "            os.remove(img)",
        "", "    def test_case(self):", "        self.assert_no_active_block_jobs()", ""]
    body += _test_body(case, fixed) + _final_check(case, fixed)
    body += ["", "", "if __name__ == '__main__':",
             "    iotests.main(supported_fmts=['qcow2'], supported_protocols=['file'])", ""]
    return "\n".join(body)


def _comment(text: str) -> list[str]:
    import textwrap
    return [f"# {line}" for line in textwrap.wrap(text, 76)]


def _bug_note(bugs: Iterable[str]) -> str:
    bugs = list(bugs)
    return f" with {', '.join(bugs)} put back" if bugs else ""


def _setup(case: Case) -> list[str]:
    lines = ["        self.imgs = [os.path.join(iotests.test_dir, name) for name in ("]
    lines += [f"            {img.filename!r}," for img in case.images] + ["        )]"]
    for i, img in enumerate(case.images):
        create = ["'create'", f"'-f', '{img.format}'"]
        if img.format == "qcow2":
            create.append(f"'-o', 'cluster_size={img.cluster_size}'")
        if i:
            create.append(f"'-b', self.imgs[{i - 1}], '-F', '{case.images[i - 1].format}'")
        lines.append(f"        qemu_img({', '.join(create)}, self.imgs[{i}], '{img.size}')")
        for w in img.writes:
            lines.append(f"        qemu_io('-f', '{img.format}', '-c', "
                         f"'write -P {w.pattern:#04x} {w.offset} {w.length}', self.imgs[{i}])")
    return lines + ["", "        self.vm = iotests.VM()"] + _attach(case) + ["        self.vm.launch()"]


def _attach(case: Case) -> list[str]:
    """-drive as 030 attaches it (node names through ``backing.node-name``), or
    a nested -blockdev when the case has no device."""
    top = len(case.images) - 1
    opts = []
    for depth, img in enumerate(reversed(case.images)):
        prefix = "backing." * depth
        if case.drive is None:
            opts += [f"'{prefix}driver={img.format}'", f"'{prefix}file.driver=file'",
                     f"f'{prefix}file.filename={{self.imgs[{top - depth}]}}'"]
        opts.append(f"'{prefix}node-name={img.node_name}'")
    joined = "','.join([\n" + "".join(f"            {o},\n" for o in opts) + "        ])"
    if case.drive is None:
        return [f"        self.vm.add_blockdev({joined})"]
    if case.drive == "drive0":
        fmt = "" if case.images[-1].format == "qcow2" else f", img_format='{case.images[-1].format}'"
        return [f"        self.vm.add_drive(self.imgs[-1], {joined}{fmt})"]
    return [f"        self.vm.add_drive_raw(f'file={{self.imgs[-1]}},"
            f"format={case.images[-1].format},if=none,id={case.drive},' + {joined})"]


#: seconds an x-step lets QEMU's main loop run in an iotest
X_STEP_SLEEP = 0.1


def _steps(case: Case) -> bool:
    return any(c.execute == "x-step" for c in case.commands)


def _test_body(case: Case, fixed: Observation) -> list[str]:
    from harness.oracle import Context
    # judged as on QEMU, whose events do not say during which command they came:
    # a reply is asserted only when no timing of the real jobs could change it
    ctx = Context.build(case, dataclasses.replace(fixed, events=[as_qmp(e) for e in fixed.events]))
    moments = event_moments(fixed.trace)
    lines: list[str] = []
    waited = -1
    for i, command in enumerate(list(case.commands) + [Command("x-wait-jobs")]):
        if command.execute == "x-wait-jobs":
            lines += _waits(fixed.events, moments, waited, i)
            waited = i
        elif command.execute == "x-step":
            # the QEMU backend's x-step waits until nothing happens for 50 ms: here the
            # loop gets twice that, so that a throttled job is where the model has it
            lines.append(f"        time.sleep({X_STEP_SLEEP})  # x-step {dict(command.arguments)}: "
                         "the main loop runs until it is quiet")
        elif command.execute == "x-guest-write":
            a = command.arguments
            lines.append(f"        self.vm.hmp_qemu_io('{case.drive}', "
                         f"'write -P {a['pattern']:#04x} {a['offset']} {a['length']}')")
        else:
            reply = fixed.replies[i] if i < len(fixed.replies) else None
            lines += _qmp_call(case, command) + _assert_reply(ctx, i, reply) + [""]
    return lines


def _qmp_call(case: Case, command: Command) -> list[str]:
    files = {img.filename: i for i, img in enumerate(case.images)}
    args = "".join(f", {key.replace('-', '_')}={_value(key, value, files)}"
                   for key, value in command.arguments.items())
    return [f"        result = self.vm.qmp('{command.execute}'{args})"]


def _assert_reply(ctx, index: int, reply: dict | None) -> list[str]:
    """Assert the fixed model's reply where the oracle says its fate is certain;
    where it depends on timing, say so instead (an iotest must not be flaky)."""
    from harness.oracle import ACCEPT, describe_reply, expected_reply
    if reply is None:
        return ["        # the fixed model did not reach this command: no reply to compare"]
    certain = expected_reply(ctx, index, ctx.case.commands[index])
    if certain is None:
        return [f"        # its reply depends on timing (the fixed model's: {describe_reply(reply)})"]
    if certain != ACCEPT and certain.desc is None:
        return ["        self.assertIn('error', result)"]
    if "error" in reply:
        return [f"        self.assert_qmp(result, 'error/desc', {reply['error']['desc']!r})"]
    return ["        self.assert_qmp(result, 'return', {})"]


def _value(key: str, value: Any, files: dict[str, int]) -> str:
    if key in FILE_ARGUMENTS and value in files:
        return f"self.imgs[{files[value]}]"
    return repr(value)


def _waits(events: list[dict], moments: list[tuple[int, bool]], after: int, upto: int) -> list[str]:
    """x-wait-jobs: wait for the event that settled each job since the last wait."""
    window = [e for e, (i, _) in zip(events, moments) if after < i <= upto]
    lines = []
    for k, event in enumerate(window):
        data = event["data"]
        if event["event"] in SETTLE_EVENTS:
            match = {"data": {"device": data["device"]}}
        elif event["event"] == "JOB_STATUS_CHANGE" and data["status"] == "pending" and not any(
                e["event"] in SETTLE_EVENTS and e["data"]["device"] == data["id"] for e in window[k:]):
            match = {"data": {"id": data["id"], "status": "pending"}}
        else:
            continue
        lines.append(f"        self.vm.event_wait({event['event']!r}, match={match!r})")
    return lines + [""] if lines else []


def _final_check(case: Case, fixed: Observation) -> list[str]:
    """The oracle's chain, asserted on the graph (each node's ``backing`` child)
    and on each image's backing-file string (unless a job was given its own)."""
    from harness.oracle import Context, expected_chain
    chain = expected_chain(Context.build(case, fixed)) or fixed.chain_names()
    lines = _dismiss(fixed.jobs_left)
    if all(status == "concluded" for status in fixed.jobs_left.values()):
        lines.append("        self.assert_no_active_block_jobs()")
    if not chain:
        return lines + ["        # no chain to check: the fixed model's run did not end"]
    lines.append(f"        # the chain must now be {' -> '.join(chain)}")
    for upper, lower in zip(chain, chain[1:] + [None]):
        lines.append(f"        self.vm.assert_block_path({upper!r}, '/backing', {lower!r})")
    if any("backing-file" in c.arguments for c in case.commands):
        return lines
    index = {img.node_name: i for i, img in enumerate(case.images)}
    lines += ["        nodes = {node['node-name']: node",
              "                 for node in self.vm.qmp('query-named-block-nodes')['return']}"]
    for upper, lower in zip(chain, chain[1:]):
        lines.append(f"        self.assert_qmp(nodes['{upper}'], 'image/backing-filename', self.imgs[{index[lower]}])")
    return lines + [f"        self.assert_qmp_absent(nodes['{chain[-1]}'], 'image/backing-filename')"]


def _dismiss(jobs_left: dict[str, str]) -> list[str]:
    """Dismiss concluded jobs before the graph is read: QEMU 7.2 crashes in
    query-named-block-nodes while a concluded stream job is not dismissed."""
    lines = []
    for job_id, status in jobs_left.items():
        if status == "concluded":
            lines += [f"        result = self.vm.qmp('job-dismiss', id={job_id!r})",
                      "        self.assert_qmp(result, 'return', {})"]
    return lines
