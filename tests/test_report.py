"""``blockfuzz show``: the transcript, the trace, the graph and the iotest, in
process, on case files written into ``tmp_path`` (and the regression corpus)
and run on the model."""
from __future__ import annotations

import ast
import json
import os

import pytest

from harness import case as case_mod
from harness import report
from harness.backends.reference import build, run_case, source_for
from harness.choices import RandomSource, RecordedSource
from harness.cli import main
from harness.observation import Finding, Observation
from reference.machine import Machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGRESSION = os.path.join(REPO, "corpus", "regressions", "overlapping_5-stream-prepare-no-drain.json")
STREAM_COMMIT = os.path.join(REPO, "corpus", "seeds", "030", "test_stream_commit_1.json")


def small_case(commands=None, **extra) -> dict:
    """node0 (raw) <- node1 (one written cluster) <- node2, drive0 on node2."""
    return {
        "format": "blockfuzz-case/1",
        "images": [{"node-name": "node0", "format": "raw"},
                   {"node-name": "node1", "writes": [{"offset": 0, "length": 65536, "pattern": 1}]},
                   {"node-name": "node2"}],
        "commands": commands if commands is not None else [
            {"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s", "base": "node0.raw"}},
            {"execute": "block-job-pause", "arguments": {"device": "nosuch"}},
            {"execute": "x-wait-jobs"}],
        "schedule": {"policy": "random", "seed": 0},
        **extra,
    }


def write(tmp_path, data, name="case.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def show(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["show", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


# -- the transcript ---------------------------------------------------------------------

def test_transcript_of_a_small_case(tmp_path, capsys):
    """Events emitted inside a command come before its reply; the main loop's
    events after it; the implicit x-wait-jobs is left out when nothing happened in it."""
    code, out, err = show(capsys, write(tmp_path, small_case()))
    assert (code, err) == (0, "")
    assert out == [
        "verdict: ok",
        '-> {"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s", "base": "node0.raw"}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "created"}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "running"}}',
        '<- {"return": {}}',
        '-> {"execute": "block-job-pause", "arguments": {"device": "nosuch"}}',
        '<- {"error": {"class": "DeviceNotActive", "desc": "Block job \'nosuch\' not found"}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "waiting"}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "pending"}}',
        '<- {"event": "BLOCK_JOB_COMPLETED", "data": {"type": "stream", "device": "s", '
        '"len": 1048576, "offset": 1048576, "speed": 0}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "concluded"}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "null"}}',
        '-> {"execute": "x-wait-jobs"}',
        '<- {"return": {}}',
    ]


def test_implicit_wait_is_shown_when_events_happen_in_it(tmp_path, capsys):
    path = write(tmp_path, small_case([
        {"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s", "speed": 1}}]))
    code, out, _ = show(capsys, path)
    assert code == 0
    assert out[5:7] == ["# the implicit x-wait-jobs at the end of every case", '-> {"execute": "x-wait-jobs"}']
    assert out[-2:] == ['<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "null"}}',
                        '<- {"return": {}}']


def test_regression_shows_the_use_after_free_first_and_ends_where_it_happened(capsys):
    code, out, err = show(capsys, REGRESSION)
    assert (code, err) == (0, "")
    assert out[0].startswith("verdict: use-after-free: node 'commit-filter' was freed at step 3.")
    sent = [json.loads(line[3:])["execute"] for line in out if line.startswith("-> ")]
    assert sent == ["block-commit", "block-stream", "block-job-set-speed", "x-wait-jobs"]
    assert out[-1] == "!! " + out[0][len("verdict: "):]
    assert out[-2].startswith('<- {"event"')       # the wait never replied


def test_event_moments_read_the_trace():
    trace = ["-1.0 event E {}", "0.0 event E {}", "0 block-stream {} -> {}", "0.1 run timer:s",
             "0.2 event E {}", "1.2 event E {}"]
    assert report.event_moments(trace) == [(-1, True), (0, True), (0, False), (1, True)]


def _observation(finding, events=(), trace=()):
    obs = Observation(replies=[{"return": {}}], events=list(events), trace=list(trace))
    obs.finding = finding
    return obs


def test_a_fault_while_the_chain_is_built_ends_the_transcript_before_any_command():
    case = case_mod.from_dict(small_case())
    obs = _observation(Finding("crash", "boom", "build", -1), [{"event": "E", "data": {}}], ["-1.0 event E {}"])
    assert report.transcript(case, obs) == ['<- {"event": "E", "data": {}}', "!! crash: boom"]


# -- the trace ------------------------------------------------------------------------------

def test_trace_is_the_models_own_with_the_finding_last(tmp_path, capsys):
    code, out, _ = show(capsys, REGRESSION, "--trace")
    obs = run_case(case_mod.load(REGRESSION), trace=True)
    assert code == 0
    assert out[1:] == obs.trace + [f"3 !! {obs.finding.kind}: {obs.finding.message}"]
    code, out, _ = show(capsys, write(tmp_path, small_case()), "--trace", "--transcript")
    assert out[1:5] == [
        "-> " + json.dumps(small_case()["commands"][0]),
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "created"}}',
        '<- {"event": "JOB_STATUS_CHANGE", "data": {"id": "s", "status": "running"}}',
        '<- {"return": {}}']
    assert out[14:17] == ["0.0 event JOB_STATUS_CHANGE {'id': 's', 'status': 'created'}",
                          "0.0 event JOB_STATUS_CHANGE {'id': 's', 'status': 'running'}",
                          "0 block-stream {'device': 'drive0', 'job-id': 's', 'base': 'node0.raw'} "
                          "-> {'return': {}}"]


def test_seed_replaces_the_schedule():
    recorded = case_mod.load(REGRESSION)
    assert isinstance(report.source(recorded, None), RecordedSource)
    assert isinstance(report.source(recorded, 5), RandomSource)
    plain = case_mod.from_dict(small_case())
    assert [report.source(plain, 5).choose(1000, "x") for _ in range(2)] == \
        [RandomSource(5).choose(1000, "x") for _ in range(2)]


# -- the graph -------------------------------------------------------------------------------

IDLE_BETWEEN = {"format": "blockfuzz-case/1",
                "images": [{"node-name": "node0", "format": "raw", "size": 16777216},
                           {"node-name": "node1", "writes": [{"offset": 0, "length": 16777216, "pattern": 1}]},
                           {"node-name": "node2"}],
                "commands": [{"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s"}},
                             {"execute": "query-jobs"}],
                "schedule": {"choices": [4]}}


@pytest.mark.parametrize("path", [REGRESSION, STREAM_COMMIT, None])
def test_the_graph_replay_is_the_run_of_run_case(tmp_path, path):
    """The "after" picture shows the run the verdict is about, not another one:
    the same choices, and each event at the same command and loop step (None:
    the loop runs to idle between commands)."""
    case = case_mod.load(path or write(tmp_path, IDLE_BETWEEN))
    choices = source_for(case)
    m = Machine(choices.choose, case.bugs, trace=True)
    build(m, case)
    fault = report.run_to_end(m, case)
    obs = run_case(case, trace=True)
    assert choices.recorded == obs.choices
    assert [line for line in m.trace if " event " in line] == [line for line in obs.trace if " event " in line]
    assert (getattr(fault, "kind", None), str(fault) if fault else None) == \
        ((obs.finding.kind, obs.finding.message) if obs.finding else (None, None))


def test_graph_dot_names_the_filter_freed_and_the_stream(tmp_path, capsys):
    out_path = str(tmp_path / "g.dot")
    code, out, _ = show(capsys, REGRESSION, "--graph", out_path)
    assert (code, out[1:]) == (0, [f"wrote {out_path}"])
    dot = open(out_path).read()
    assert 'label="after the chain is built"' in dot
    assert "label=\"at the use-after-free (command 3, step " in dot
    assert 'after_freed [label="commit-filter\nFREED at 3.' in dot
    assert 'label="job node4"' in dot and 'label="node4\nqcow2"' in dot
    assert 'before_10 -> before_9 [label=root style=solid]' in dot


def test_graph_draws_filters_and_dangling_edges_to_freed_nodes():
    graph = {"nodes": [{"id": 1, "type": "block-driver", "name": "f"},
                       {"id": 2, "type": "block-driver", "name": "gone"},
                       {"id": 3, "type": "block-driver", "name": "node0"}],
             "edges": [{"parent": 1, "child": 2, "name": "backing"}, {"parent": 3, "child": 2, "name": "file"}],
             "drivers": {"f": "commit_top", "node0": "qcow2"}}
    source = report.draw(graph, graph, "at the end").source
    assert 'before_1 [label="f\ncommit_top (filter)" fillcolor=lightblue shape=box ' \
           'style="rounded,dashed,filled"]' in source
    assert 'after_2 [label="gone\nFREED" color=red fillcolor=lightcoral shape=box style="filled,bold"]' in source
    assert "after_3 -> after_2 [label=file style=dashed]" in source


def test_graph_at_the_end_renders_svg(tmp_path, capsys):
    out_path = str(tmp_path / "g.svg")
    code, _, _ = show(capsys, write(tmp_path, small_case()), "--graph", out_path)
    svg = open(out_path).read()
    assert code == 0 and "<svg" in svg and "at the end" in svg and "BlockBackend" in svg


# -- the iotest ------------------------------------------------------------------------------

def qmp_calls(source: str) -> list[tuple[str, dict]]:
    """Each ``self.vm.qmp(NAME, key=value, ...)`` call, ``self.imgs[i]`` as ``imgs[i]``."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "self.vm.qmp" and node.keywords:
            args = {k.arg.replace("_", "-"): (ast.literal_eval(k.value) if isinstance(k.value, ast.Constant)
                                              else ast.unparse(k.value).replace("self.", ""))
                    for k in node.keywords}
            calls.append((node.args[0].value, args))
    return calls


def iotest_of(tmp_path, capsys, path) -> str:
    out_path = str(tmp_path / "t.py")
    code, out, _ = show(capsys, path, "--iotest", out_path)
    assert (code, out[-1]) == (0, f"wrote {out_path} and {out_path}.out")
    assert open(out_path + ".out").read() == report.OUT_FILE
    return open(out_path).read()


def test_iotest_of_the_regression_compiles_and_sends_the_case_commands(tmp_path, capsys):
    text = iotest_of(tmp_path, capsys, REGRESSION)
    compile(text, "t.py", "exec")
    case = case_mod.load(REGRESSION)
    assert qmp_calls(text) == [(c.execute, dict(c.arguments)) for c in case.commands
                               if not c.execute.startswith("x-")]
    assert "# On the model with stream-prepare-no-drain put back: use-after-free: node 'commit-filter'" in text
    assert "            'backing.backing.backing.backing.node-name=node4',\n" in text
    assert text.count("self.assert_qmp(result, 'return', {})") == 1     # the commit: the others race with it
    assert text.count("        # its reply depends on timing (the fixed model's: success)\n") == 2
    body = text[text.index("        self.assert_no_active_block_jobs()\n        # the chain"):]
    assert body.splitlines()[:11] == [
        "        self.assert_no_active_block_jobs()",
        "        # the chain must now be node8 -> node7 -> node6 -> node5 -> node4 -> node0",
        "        self.vm.assert_block_path('node8', '/backing', 'node7')",
        "        self.vm.assert_block_path('node7', '/backing', 'node6')",
        "        self.vm.assert_block_path('node6', '/backing', 'node5')",
        "        self.vm.assert_block_path('node5', '/backing', 'node4')",
        "        self.vm.assert_block_path('node4', '/backing', 'node0')",
        "        self.vm.assert_block_path('node0', '/backing', None)",
        "        nodes = {node['node-name']: node",
        "                 for node in self.vm.qmp('query-named-block-nodes')['return']}",
        "        self.assert_qmp(nodes['node8'], 'image/backing-filename', self.imgs[7])"]
    assert "        self.assert_qmp(nodes['node4'], 'image/backing-filename', self.imgs[0])\n" \
           "        self.assert_qmp_absent(nodes['node0'], 'image/backing-filename')\n" in body


def test_iotest_setup_and_waits_of_a_small_case(tmp_path, capsys):
    text = iotest_of(tmp_path, capsys, write(tmp_path, small_case()))
    lines = text.splitlines()
    assert "import time" not in lines                 # no x-step: nothing sleeps
    setup = lines[lines.index("    def setUp(self):") + 1:lines.index("    def tearDown(self):") - 1]
    assert setup == [
        "        self.imgs = [os.path.join(iotests.test_dir, name) for name in (",
        "            'node0.raw',", "            'node1.qcow2',", "            'node2.qcow2',", "        )]",
        "        qemu_img('create', '-f', 'raw', self.imgs[0], '1048576')",
        "        qemu_img('create', '-f', 'qcow2', '-o', 'cluster_size=65536', "
        "'-b', self.imgs[0], '-F', 'raw', self.imgs[1], '1048576')",
        "        qemu_io('-f', 'qcow2', '-c', 'write -P 0x01 0 65536', self.imgs[1])",
        "        qemu_img('create', '-f', 'qcow2', '-o', 'cluster_size=65536', "
        "'-b', self.imgs[1], '-F', 'qcow2', self.imgs[2], '1048576')",
        "",
        "        self.vm = iotests.VM()",
        "        self.vm.add_drive(self.imgs[-1], ','.join([",
        "            'node-name=node2',", "            'backing.node-name=node1',",
        "            'backing.backing.node-name=node0',",
        "        ]))",
        "        self.vm.launch()"]
    test = lines[lines.index("    def test_case(self):") + 1:]
    assert test[:12] == [
        "        self.assert_no_active_block_jobs()", "",
        "        result = self.vm.qmp('block-stream', device='drive0', job_id='s', base=self.imgs[0])",
        "        self.assert_qmp(result, 'return', {})", "",
        "        result = self.vm.qmp('block-job-pause', device='nosuch')",
        "        self.assert_qmp(result, 'error/desc', \"Block job 'nosuch' not found\")", "",
        "        self.vm.event_wait('BLOCK_JOB_COMPLETED', match={'data': {'device': 's'}})", "",
        "        self.assert_no_active_block_jobs()",
        "        # the chain must now be node2 -> node0"]
    assert lines[-2:] == ["if __name__ == '__main__':",
                          "    iotests.main(supported_fmts=['qcow2'], supported_protocols=['file'])"]


def test_iotest_maps_the_harness_commands(tmp_path, capsys):
    commands = [
        {"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s", "auto-finalize": False,
                                                  "auto-dismiss": False, "backing-file": "node0.raw",
                                                  "base-node": "node0"}},
        {"execute": "x-step", "arguments": {"count": 2}},
        {"execute": "x-guest-write", "arguments": {"offset": 0, "length": 512, "pattern": 171}},
        {"execute": "x-wait-jobs"},
        {"execute": "query-jobs"},
        {"execute": "job-finalize", "arguments": {"id": "s"}}]
    text = iotest_of(tmp_path, capsys, write(tmp_path, small_case(commands)))
    compile(text, "t.py", "exec")
    for line in ["        result = self.vm.qmp('block-stream', device='drive0', job_id='s', "
                 "auto_finalize=False, auto_dismiss=False, backing_file=self.imgs[0], base_node='node0')",
                 "        time.sleep(0.1)  # x-step {'count': 2}: the main loop runs until it is quiet",
                 "        self.vm.hmp_qemu_io('drive0', 'write -P 0xab 0 512')",
                 "        self.vm.event_wait('JOB_STATUS_CHANGE', match={'data': {'id': 's', 'status': 'pending'}})",
                 "        # its reply depends on timing (the fixed model's: success)",
                 "        self.vm.event_wait('BLOCK_JOB_COMPLETED', match={'data': {'device': 's'}})",
                 "        result = self.vm.qmp('job-dismiss', id='s')\n"
                 "        self.assert_qmp(result, 'return', {})\n"
                 "        self.assert_no_active_block_jobs()\n"
                 "        # the chain must now be node2 -> node0\n"
                 "        self.vm.assert_block_path('node2', '/backing', 'node0')\n"
                 "        self.vm.assert_block_path('node0', '/backing', None)\n\n"]:
        assert line + "\n" in text
    assert "query-named-block-nodes" not in text      # a custom backing string: the graph alone
    assert "\nimport os\nimport time\n\nimport iotests\n" in text   # for the x-step


@pytest.mark.parametrize("drive, attach", [
    (None, "        self.vm.add_blockdev(','.join([\n            'driver=qcow2',\n"
           "            'file.driver=file',\n            f'file.filename={self.imgs[2]}',\n"
           "            'node-name=node2',\n            'backing.driver=qcow2',\n"),
    ("disk", "        self.vm.add_drive_raw(f'file={self.imgs[-1]},format=qcow2,if=none,id=disk,' "
             "+ ','.join([\n            'node-name=node2',\n")])
def test_iotest_attaches_a_case_without_drive0(tmp_path, capsys, drive, attach):
    commands = [{"execute": "block-stream", "arguments": {"device": "node2", "job-id": "s"}}]
    text = iotest_of(tmp_path, capsys, write(tmp_path, small_case(commands, drive=drive)))
    compile(text, "t.py", "exec")
    assert attach in text


def test_iotest_of_a_raw_single_image_and_an_unfinished_fixed_run():
    case = case_mod.from_dict({"format": "blockfuzz-case/1", "images": [{"node-name": "n", "format": "raw"}],
                               "commands": [{"execute": "query-jobs"}, {"execute": "query-jobs"}]})
    fixed = _observation(Finding("hang", "stuck", "x", 1))
    fixed.trace = ["0 query-jobs {} -> {'return': []}"]
    text = report.iotest(case, fixed, ": hang: stuck")
    compile(text, "t.py", "exec")
    assert "        self.vm.add_drive(self.imgs[-1], ','.join([\n            'node-name=n',\n        ]), " \
           "img_format='raw')\n" in text
    assert "        # the fixed model did not reach this command: no reply to compare\n" in text
    assert "        self.assert_qmp_absent(nodes['n'], 'image/backing-filename')\n" in text


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["nosuch.json"], "nosuch.json: $: expected a readable file: No such file or directory"),
    (["{case}", "--graph", "x.pdf"], "--graph x.pdf: unknown picture format 'pdf'; name the file .svg, .png or .dot"),
    (["{case}", "--bugs", "nosuch"], "--bugs: unknown bug id 'nosuch'; known: "),
    (["{bad}"], "$.commands[0].execute: "),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    case = write(tmp_path, small_case())
    bad = write(tmp_path, small_case([{"execute": "no-such-command"}]), "bad.json")
    code, out, err = show(capsys, *[a.format(case=case, bad=bad) for a in argv])
    assert (code, out, len(err.splitlines())) == (2, [], 1)
    assert err.startswith("blockfuzz: error: ") and message in err


@pytest.mark.parametrize("option, name", [("--iotest", "999"), ("--graph", "g.dot")])
def test_outputs_go_into_a_new_directory_or_fail_in_one_line(tmp_path, capsys, option, name):
    case = write(tmp_path, small_case())
    made = tmp_path / "new" / "dir" / name
    code, out, _ = show(capsys, case, option, str(made))
    assert code == 0 and made.is_file() and out[-1].startswith(f"wrote {made}")
    blocked = tmp_path / "file" / name
    (tmp_path / "file").write_text("a file, not a directory\n")
    code, _, err = show(capsys, case, option, str(blocked))
    assert (code, err) == (2, f"blockfuzz: error: {option} {blocked}: cannot write it: File exists\n")


def test_iotest_without_a_chain_to_check(monkeypatch):
    """The oracle cannot say and the fixed model's run did not end: no final assertion."""
    import harness.oracle
    monkeypatch.setattr(harness.oracle, "expected_chain", lambda ctx: None)
    case = case_mod.from_dict(small_case([{"execute": "query-jobs"}]))
    text = report.iotest(case, _observation(Finding("hang", "stuck", "x", 0)), ": hang: stuck")
    assert text.splitlines()[-6:-4] == ["        self.assert_no_active_block_jobs()",
                                        "        # no chain to check: the fixed model's run did not end"]


def test_iotest_header_names_the_bugs_the_run_put_back(tmp_path, capsys):
    out_path = str(tmp_path / "t.py")
    code, out, _ = show(capsys, REGRESSION, "--bugs", "", "--iotest", out_path)
    assert (code, out[0]) == (0, "verdict: ok")
    assert "\n# On the model: ok\n" in open(out_path).read()


def test_iotest_asserts_only_that_an_error_comes_when_the_oracle_knows_no_text(monkeypatch):
    import harness.oracle
    monkeypatch.setattr(harness.oracle, "expected_reply", lambda ctx, i, c: harness.oracle.Refusal(None, None))
    case = case_mod.from_dict(small_case([{"execute": "block-stream", "arguments": {"device": "drive0"}}]))
    text = report.iotest(case, run_case(case, trace=True), ": ok")
    assert "        result = self.vm.qmp('block-stream', device='drive0')\n" \
           "        self.assertIn('error', result)\n" in text


def test_iotest_leaves_a_job_that_waits_for_a_verb_alone(tmp_path, capsys):
    commands = [{"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s", "auto-finalize": False}}]
    text = iotest_of(tmp_path, capsys, write(tmp_path, small_case(commands)))
    assert "        self.vm.event_wait('JOB_STATUS_CHANGE', match={'data': {'id': 's', 'status': 'pending'}})\n" \
           "\n        # the chain must now be node2 -> node1 -> node0\n" in text
    assert "job-dismiss" not in text


def test_schedule_names_where_the_run_departs_from_a_non_preemptive_one(tmp_path, capsys):
    from harness.minimize import minimize
    case = case_mod.load(REGRESSION)
    small = tmp_path / "small.json"
    case_mod.save(minimize(case).case, str(small))
    assert main(["show", str(small), "--schedule"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("verdict: use-after-free: ")
    assert lines[1].startswith("schedule: ") and lines[1].endswith(
        " decisions, 1 of them forced beyond a non-preemptive schedule: 1 preemption")
    assert lines[2:] == ["  preemption at 2.35: ran timer:node4 instead of io:drive0"]
    assert main(["show", REGRESSION, "--schedule"]) == 0
    head = capsys.readouterr().out.splitlines()[1]
    assert head.endswith("forced beyond a non-preemptive schedule: 3 delays, 36 preemptions, 1 reorder")


def test_a_reader_that_stops_early_is_not_an_error(monkeypatch, capsys):
    import harness.report as report

    def closed(*_):
        raise BrokenPipeError
    monkeypatch.setattr(report, "transcript", closed)
    assert main(["show", REGRESSION]) == 0
