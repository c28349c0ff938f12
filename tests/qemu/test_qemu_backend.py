"""The QEMU backend on real QEMU 7.2: seeds, error texts, both binaries, guest writes, waits, reuse."""
from __future__ import annotations

import os

import pytest

from harness.case import Case, Command, Image, Write, from_dict, load
from harness.observation import ChainNode, raw_statuses
from tests.model.drain_counts import ALL, EXPECTED, LIFTS, scenario_case

pytestmark = pytest.mark.qemu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(REPO, "corpus", "seeds", "030")
OK = {"return": {}}
DONE = ["created", "running", "waiting", "pending", "concluded", "null"]
MiB = 1 << 20


def error(desc: str, error_class: str = "GenericError") -> dict:
    return {"error": {"class": error_class, "desc": desc}}


def case(commands: list[dict], *, images: int = 4, drive: str | None = "drive0",
         data: tuple[int, ...] = (1, 2)) -> Case:
    """A chain node0..node<images-1> of 1 MiB; layer i in ``data`` holds pattern i at [i*64K, +128K)."""
    imgs = []
    for i in range(images):
        img: dict = {"node-name": f"n{i}"}
        if i in data:
            img["writes"] = [{"offset": i * 65536, "length": 131072, "pattern": i}]
        imgs.append(img)
    return from_dict({"format": "blockfuzz-case/1", "images": imgs, "drive": drive,
                      "commands": commands})


# -- the 030 seeds ---------------------------------------------------------------------

def test_overlapping_5_seed_replays_with_its_replies_chain_data_and_backing_strings(runner):
    seed = load(os.path.join(SEEDS, "test_overlapping_5.json"))
    obs = runner.run(seed)
    assert obs.finding is None
    assert obs.replies == [OK, OK, OK, OK]
    assert obs.chain_names() == seed.expect["final-chain"]
    assert obs.chain == [
        ChainNode("node8", "qcow2", "node8.qcow2", "node7.qcow2", False),
        ChainNode("node7", "qcow2", "node7.qcow2", "node6.qcow2", True),
        ChainNode("node6", "qcow2", "node6.qcow2", "node5.qcow2", True),
        ChainNode("node5", "qcow2", "node5.qcow2", "node4.qcow2", True),
        ChainNode("node4", "qcow2", "node4.qcow2", "node0.raw", True),
        ChainNode("node0", "raw", "node0.raw", None, True),
    ]
    assert obs.job_statuses == {"drive0": DONE, "node4": DONE}
    assert obs.jobs_left == {}
    assert obs.data == [[0, 2 * MiB, 255], [2 * MiB, 2 * MiB, 0], [4 * MiB, 6 * MiB, 255],
                        [10 * MiB, 2 * MiB, 0], [12 * MiB, 4 * MiB, 255]]
    assert obs.extra["on_disk_backing"] == {
        "node8.qcow2": "node7.qcow2", "node7.qcow2": "node6.qcow2", "node6.qcow2": "node5.qcow2",
        "node5.qcow2": "node4.qcow2", "node4.qcow2": "node0.raw", "node0.raw": None}
    assert obs.extra["binary"] == "qemu-system-x86_64"
    completed = [e["data"]["device"] for e in obs.events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert sorted(completed) == ["drive0", "node4"]


def test_overlapping_3_seed_active_commit_moves_the_device_to_the_base(runner):
    seed = load(os.path.join(SEEDS, "test_overlapping_3.json"))
    obs = runner.run(seed)
    assert obs.finding is None
    assert obs.replies == [OK, error("Node 'node5' is busy: block device is in use by block job: commit"),
                           OK, OK, OK, OK]
    assert obs.chain_names() == ["node3", "node2", "node1", "node0"]
    assert obs.extra["root"] == "node3"
    assert obs.job_statuses == {"commit-drive0": ["created", "running", "ready", "waiting",
                                                  "pending", "concluded", "null"]}
    assert [e["event"] for e in obs.events if e["event"].startswith("BLOCK_JOB")] == [
        "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"]


# -- drained sections, counted by a throttled job ------------------------------------------

def _qemu_raw_statuses(runner, case, expected: list[str]) -> list[str]:
    """QEMU's raw status events for ``case``. An x-step ends after 50 ms without
    events, so on a loaded machine QEMU's may end before a job did, and x-wait-jobs
    then lifts the throttled job's limit: at most 3 runs to see ``expected``."""
    for _ in range(3):
        obs = runner.run(case)
        assert obs.finding is None, obs.finding
        if raw_statuses(obs.events) == expected:
            break
    return raw_statuses(obs.events)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_qemu_pauses_a_throttled_job_as_often_as_the_model_says(runner, name):
    """The exact sequences the model's tests pin: each drained section reaching the
    job at 1 byte/s is one 'paused'/'running' pair."""
    assert _qemu_raw_statuses(runner, scenario_case(name), EXPECTED[name]) == EXPECTED[name]


@pytest.mark.parametrize("name", ALL)
def test_a_throttled_job_sees_as_many_drains_on_qemu_as_on_the_model(runner, name):
    from harness.backends.reference import run_case
    from harness.choices import RandomSource
    case = scenario_case(name)
    model = raw_statuses(run_case(case, RandomSource(0)).events)
    assert _qemu_raw_statuses(runner, case, model) == model


def test_qemu_lifts_speed_limits_one_command_at_a_time_in_an_order_the_model_has(runner):
    """Each of QEMU's outcomes (which one depends on how fast the second
    block-job-set-speed arrives) is among the model's, given the lifts QEMU made."""
    from harness.backends.reference import run_case
    from harness.choices import RandomSource
    from harness.differential import unthrottled
    case = scenario_case("speed-lifts-one-command-at-a-time")
    qemu = runner.run(case)
    assert qemu.finding is None, qemu.finding
    lifted = unthrottled(case, qemu)    # node1 may be gone before its lift: woken, it finished
    assert lifted and lifted[4][0] == LIFTS[4][0]     # newest first
    model = {tuple(raw_statuses(run_case(case, RandomSource(seed), unthrottle=lifted).events))
             for seed in range(20)}
    assert tuple(raw_statuses(qemu.events)) in model


# -- error texts -----------------------------------------------------------------------

def test_error_texts_letter_for_letter_with_filenames_mapped_back(runner):
    obs = runner.run(case([
        {"execute": "block-stream", "arguments": {"device": "nonexistent"}},
        {"execute": "block-stream", "arguments": {"device": "n2", "base": "n0.qcow2", "base-node": "n0",
                                                  "job-id": "s"}},
        {"execute": "block-stream", "arguments": {"device": "n1", "base": "n2.qcow2", "job-id": "s"}},
        {"execute": "block-stream", "arguments": {"device": "n2", "base-node": "n3", "job-id": "s"}},
        {"execute": "block-stream", "arguments": {"device": "n2", "base-node": "none", "job-id": "s"}},
        {"execute": "block-stream", "arguments": {"device": "n2"}},
        {"execute": "block-stream", "arguments": {"device": "n2", "job-id": "#x"}},
        {"execute": "block-commit", "arguments": {"device": "n2", "base-node": "n0", "job-id": "c"}},
        {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n1",
                                                  "base-node": "n1", "job-id": "c"}},
        {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n1",
                                                  "base-node": "n2", "job-id": "c"}},
        {"execute": "job-pause", "arguments": {"id": "nope"}},
        {"execute": "block-job-set-speed", "arguments": {"device": "nope", "speed": 0}},
        {"execute": "block-stream", "arguments": {"device": "n2", "base": "n0.qcow2", "job-id": "s",
                                                  "speed": -1}},
        {"execute": "block-stream", "arguments": {"device": "n2", "base": "n0.qcow2", "job-id": "s",
                                                  "auto-finalize": False}},
        {"execute": "block-stream", "arguments": {"device": "n1", "job-id": "s2"}},
        {"execute": "x-wait-jobs"},
        {"execute": "job-dismiss", "arguments": {"id": "s"}},
        {"execute": "job-finalize", "arguments": {"id": "s"}},
    ]))
    assert obs.finding is None
    assert obs.replies == [
        error("Cannot find device='nonexistent' nor node-name='nonexistent'"),
        error("'base' and 'base-node' cannot be specified at the same time"),
        error("Can't find 'n2.qcow2' in the backing chain"),
        error("Node 'n3' is not a backing image of 'n2'"),
        error("Cannot find device='' nor node-name='none'"),
        error("Invalid job ID ''"),
        error("Invalid job ID '#x'"),
        error("Need a root block node"),
        error("cannot commit an image into itself"),
        error("'n2' is not in this backing file chain"),
        error("Job not found"),
        error("Block job 'nope' not found", "DeviceNotActive"),
        error("Parameter 'speed' expects a non-negative value"),
        OK,
        error("Node 'n1' is busy: block device is in use by block job: stream"),
        OK,
        error("Job 's' in state 'pending' cannot accept command verb 'dismiss'"),
        OK,
    ]
    # the refused speed still created (and dropped) the job 's'; then the pending one
    assert obs.job_statuses == {"s": ["created", "null"] + DONE}
    assert obs.chain_names() == ["n3", "n2", "n0"]
    assert obs.extra["on_disk_backing"] == {"n3.qcow2": "n2.qcow2", "n2.qcow2": "n0.qcow2",
                                            "n0.qcow2": None}


# -- qemu-storage-daemon ---------------------------------------------------------------

def test_a_case_without_a_device_runs_on_the_storage_daemon(runner):
    obs = runner.run(case([
        {"execute": "block-commit", "arguments": {"device": "n3", "top-node": "n1"}},
        {"execute": "block-stream", "arguments": {"device": "n2", "base-node": "n0", "job-id": "s"}},
        {"execute": "x-wait-jobs"},
        {"execute": "block-commit", "arguments": {"device": "n3", "job-id": "a", "auto-dismiss": False}},
        {"execute": "x-wait-jobs"},
        {"execute": "job-complete", "arguments": {"id": "a"}},
        {"execute": "x-wait-jobs"},
        {"execute": "job-dismiss", "arguments": {"id": "a"}},
    ], drive=None))
    assert obs.extra["binary"] == "qemu-storage-daemon"
    assert obs.finding is None
    assert obs.replies == [error("Invalid job ID ''"), OK, OK, OK, OK, OK, OK, OK]
    assert obs.job_statuses == {"s": DONE, "a": ["created", "running", "ready", "waiting", "pending",
                                                 "concluded", "null"]}
    # without a device, the old top stays on top of its chain (only parents move)
    assert obs.chain_names() == ["n3", "n2", "n0"]
    assert obs.data == [[0, 65536, 0], [65536, 65536, 1], [131072, 131072, 2], [262144, MiB - 262144, 0]]


def test_a_guest_write_on_the_storage_daemon_goes_through_a_writable_nbd_export(runner):
    no_device = Case(images=(Image("n0", writes=(Write(0, 65536, 1),)), Image("n1")),
                     commands=(Command("x-guest-write", {"offset": 4096, "length": 8192, "pattern": 170}),),
                     drive=None)
    obs = runner.run(no_device)
    assert obs.replies == [OK]
    assert obs.data == [[0, 4096, 1], [4096, 8192, 170], [12288, 53248, 1], [65536, MiB - 65536, 0]]
    assert obs.events == []


# -- guest writes, x-step ------------------------------------------------------------------

def test_guest_writes_through_the_device_during_a_stream(runner):
    obs = runner.run(case([
        {"execute": "x-guest-write", "arguments": {"offset": 100, "length": 70000, "pattern": 9}},
        {"execute": "block-stream", "arguments": {"device": "drive0", "base-node": "n0"}},
        {"execute": "x-guest-write", "arguments": {"offset": 0, "length": 512, "pattern": 3}},
        {"execute": "x-wait-jobs"},
    ], images=3, data=(1,)))
    assert obs.replies == [OK, OK, OK, OK]
    assert obs.job_statuses == {"drive0": DONE}
    assert obs.chain_names() == ["n2", "n0"]
    assert obs.data == [[0, 512, 3], [512, 69588, 9], [70100, 126508, 1], [196608, MiB - 196608, 0]]


def test_harness_commands_check_their_arguments_as_the_model_does(runner):
    bad = Case(images=(Image("n0"), Image("n1")),
               commands=(Command("x-guest-write", {"offset": MiB, "length": 1, "pattern": 1}),
                         Command("x-step", {"count": -1}),
                         Command("x-step", {"count": 1000})))
    obs = runner.run(bad)
    assert obs.replies == [error("Invalid guest write: offset, length or pattern out of range"),
                           error("Parameter 'count' expects a non-negative integer"), OK]
    assert obs.data == [[0, MiB, 0]]


def test_each_x_step_records_when_it_ended_since_the_first_command(runner):
    """For diff, which ends the model's x-steps there (QEMU's rate limits run in real
    time); an x-step refused for its argument waited for nothing and records nothing."""
    case = Case(images=(Image("n0"), Image("n1", writes=(Write(0, MiB, 7),)), Image("n2")),
                commands=(Command("block-commit", {"device": "drive0", "top-node": "n1",
                                                   "base-node": "n0", "speed": 1 << 16, "job-id": "c"}),
                          Command("x-step", {"count": 1}), Command("x-step", {"count": -1}),
                          Command("x-step", {"count": 2})))
    ends = runner.run(case).extra["x_step_until_ns"]
    assert sorted(ends) == [1, 3]
    assert 0 < ends[1] < ends[3] < 10 * 10 ** 9


# -- waits: verbs, ready, user pause -------------------------------------------------------------

def test_a_user_paused_job_waits_on_a_verb_and_is_cancelled_by_the_teardown(runner):
    obs = runner.run(case([
        {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n2", "base-node": "n0",
                                                  "job-id": "c", "speed": 1}},
        {"execute": "job-pause", "arguments": {"id": "c"}},
        {"execute": "x-wait-jobs"},
        {"execute": "job-complete", "arguments": {"id": "c"}},
    ]))
    assert obs.finding is None
    assert obs.replies == [OK, OK, OK,
                           error("Job 'c' in state 'paused' cannot accept command verb 'complete'")]
    assert obs.jobs_left == {"c": "paused"}
    assert obs.job_statuses == {"c": ["created", "running", "paused"]}
    assert obs.chain_names() == ["n3", "n2", "n1", "n0"]
    pid = runner.pids()
    after = runner.run(case([]))
    assert runner.pids() == pid          # the same process served the next case, cleanly
    assert after.events == [] and after.jobs_left == {}


def test_a_ready_job_left_at_the_end_is_reported_and_the_chain_is_unchanged(runner):
    obs = runner.run(case([
        {"execute": "block-commit", "arguments": {"device": "drive0", "job-id": "a",
                                                  "filter-node-name": "mt"}},
    ], images=3))
    assert obs.replies == [OK]
    assert obs.jobs_left == {"a": "ready"}
    assert obs.job_statuses == {"a": ["created", "running", "ready"]}
    assert [(n.node_name, n.driver) for n in obs.chain] == [
        ("mt", "mirror_top"), ("n2", "qcow2"), ("n1", "qcow2"), ("n0", "qcow2")]
    assert obs.chain[0].filename == "n2.qcow2"
    assert obs.chain_names() == ["n2", "n1", "n0"]


def test_pending_jobs_finalize_in_the_order_the_case_asks(runner):
    obs = runner.run(case([
        {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n2", "base-node": "n0",
                                                  "job-id": "c", "auto-finalize": False,
                                                  "filter-node-name": "cf"}},
        {"execute": "block-stream", "arguments": {"device": "n4", "base-node": "cf", "job-id": "s",
                                                  "auto-finalize": False}},
        {"execute": "x-wait-jobs"},
        {"execute": "x-step", "arguments": {"count": 4}},
        {"execute": "job-finalize", "arguments": {"id": "s"}},
        {"execute": "x-wait-jobs"},
        {"execute": "job-finalize", "arguments": {"id": "c"}},
    ], images=6))
    assert obs.finding is None
    assert obs.replies == [OK] * 7
    # which job reaches 'pending' first is QEMU's timing; the finalize order decides the rest
    assert sorted(e["data"]["id"] for e in obs.events if e["event"] == "BLOCK_JOB_PENDING") == ["c", "s"]
    assert [e["data"]["device"] for e in obs.events if e["event"] == "BLOCK_JOB_COMPLETED"] == ["s", "c"]
    assert obs.chain_names() == ["n5", "n4", "n0"]
    assert obs.extra["on_disk_backing"] == {"n5.qcow2": "n4.qcow2", "n4.qcow2": "n0.qcow2",
                                            "n0.qcow2": None}


def test_a_concluded_job_is_left_undismissed_and_the_graph_is_still_read(runner):
    # QEMU 7.2 dies in query-named-block-nodes while a concluded stream job is not
    # dismissed; the backend records it, then dismisses it before reading the graph.
    obs = runner.run(case([
        {"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s",
                                                  "auto-dismiss": False}},
        {"execute": "x-wait-jobs"},
    ], images=2, data=(1,)))
    assert obs.finding is None
    assert obs.jobs_left == {"s": "concluded"}
    assert obs.job_statuses == {"s": ["created", "running", "waiting", "pending", "concluded"]}
    assert obs.chain_names() == ["n1"]
    assert obs.data == [[0, 65536, 0], [65536, 131072, 1], [196608, MiB - 196608, 0]]


def test_without_a_device_the_data_is_read_through_a_job_filter_above_the_top(runner):
    obs = runner.run(case([
        {"execute": "block-commit", "arguments": {"device": "n2", "job-id": "a",
                                                  "filter-node-name": "mt"}},
    ], images=3, drive=None))
    assert obs.finding is None
    assert obs.jobs_left == {"a": "ready"}
    assert obs.extra["data_read_through"] == "mt"
    assert obs.data == [[0, 65536, 0], [65536, 65536, 1], [131072, 131072, 2],
                        [262144, MiB - 262144, 0]]


def test_x_step_ends_when_nothing_visible_happens():
    from harness.backends.qemu import QemuRunner

    with QemuRunner(timeout=1.0, unthrottle=False) as throttled:
        obs = throttled.run(case([
            {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n2",
                                                      "base-node": "n0", "speed": 1, "job-id": "c"}},
            {"execute": "x-step", "arguments": {"count": 1000}},
            {"execute": "job-cancel", "arguments": {"id": "c"}},
        ], data=(1, 2)))
    assert obs.finding is None
    assert obs.replies == [OK, OK, OK]
    assert obs.job_statuses == {"c": ["created", "running", "aborting", "concluded", "null"]}
    assert obs.chain_names() == ["n3", "n2", "n1", "n0"]


def test_a_chain_qemu_refuses_to_attach_is_a_clear_error(runner):
    from harness.errors import QemuError

    twice = (Image("a", filename="a0.qcow2"), Image("a", filename="a1.qcow2"))
    with pytest.raises(QemuError) as info:
        runner.run(Case(images=twice, commands=()))
    assert str(info.value) == ("drive_add failed: Could not open backing file: "
                               "Duplicate nodes with node-name='a'")
    with pytest.raises(QemuError) as info:
        runner.run(Case(images=twice, commands=(), drive=None))
    assert str(info.value) == ("blockdev-add failed: Could not open backing file: "
                               "Duplicate nodes with node-name='a'")
    assert runner.run(case([])).finding is None     # and the runner goes on


def test_a_backing_string_naming_no_file_is_read_image_by_image(runner):
    obs = runner.run(case([
        {"execute": "block-stream", "arguments": {"device": "drive0", "base-node": "n1",
                                                  "backing-file": "custom.qcow2"}},
    ], images=3))
    assert obs.finding is None
    assert obs.chain == [ChainNode("n2", "qcow2", "n2.qcow2", "custom.qcow2", False),
                         ChainNode("n1", "qcow2", "n1.qcow2", "n0.qcow2", True),
                         ChainNode("n0", "qcow2", "n0.qcow2", None, True)]
    assert obs.extra["on_disk_backing"] == {"n2.qcow2": "custom.qcow2", "n1.qcow2": "n0.qcow2",
                                            "n0.qcow2": None}


def test_a_process_serves_a_bounded_number_of_cases():
    from harness.backends.qemu import QemuRunner

    with QemuRunner(max_cases_per_process=1) as one_each:
        one_each.run(case([]))
        first = one_each.pids()
        one_each.run(case([]))
        assert one_each.pids() != first and len(one_each.pids()) == 1


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


@pytest.mark.parametrize("ours, theirs", [(None, "165"), ("0", "0"), ("42", "42")])
def test_qemu_runs_with_freed_memory_perturbed_unless_told_otherwise(monkeypatch, ours, theirs):
    """As qemu-iotests' check does: a use-after-free in QEMU then crashes it."""
    from harness.backends.qemu import QemuRunner

    if ours is None:
        monkeypatch.delenv("MALLOC_PERTURB_", raising=False)
    else:
        monkeypatch.setenv("MALLOC_PERTURB_", ours)
    with QemuRunner() as r:
        r.run(case([]))
        (pid,) = r.pids()
        assert _environ(pid)["MALLOC_PERTURB_"] == theirs
