"""Cases whose raw job status events count the drained sections that reach a
throttled job (``tests/qemu`` holds QEMU 7.2's to the model's).

A job throttled to 1 byte/s copies its first chunk and then sleeps for good, except
that each drained section reaching it wakes it: it pauses ('paused'), resumes
('running') and copies one more chunk without sleeping. The events are folded away
when outcomes are compared (``fold_drain_pairs``), so these sequences are the one
place the number of sections is pinned (:func:`harness.observation.raw_statuses`).
"""
import json
import os

from harness.case import Case, from_dict
from harness.generate import TOO_LONG_BACKING_FILE

SEED = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "030",
                    "test_overlapping_5.json")


def _case(commands: list) -> Case:
    with open(SEED) as f:
        data = json.load(f)
    data.pop("expect")
    data["commands"] = commands
    return from_dict(data)


def _x_step() -> dict:
    return {"execute": "x-step", "arguments": {"count": 200}}


#: a stream at 1 byte/s of node6 down to node3: it watches what happens below it
THROTTLED_STREAM_OF_NODE6 = ("block-stream", {"device": "node6", "base-node": "node3", "job-id": "node6",
                                              "speed": 1})

#: the raw events QEMU 7.2 gives for two of the scenarios below
EXPECTED = {
    # 030's overlapping_5 with the commit at 1 byte/s: the stream's start pauses the
    # commit twice (reopen, filter insertion), its completion five times (the filter's
    # drop, the subtree drain, blk_unref's and blk_remove_bs's drains, the reopen)
    "stream-completion": (
        ["drive0:created", "drive0:running"]
        + ["drive0:paused", "drive0:running"] * 2
        + ["node4:created", "node4:running", "node4:waiting", "node4:pending"]
        + ["drive0:paused", "drive0:running"] * 5
        + ["BLOCK_JOB_COMPLETED", "node4:concluded", "node4:null",
           "drive0:waiting", "drive0:pending", "BLOCK_JOB_COMPLETED", "drive0:concluded", "drive0:null"]),
    # a commit below the throttled stream: its start pauses the stream once (the base's
    # reopen; commit_start's bdrv_append does not drain), its completion four times
    "commit-start-and-completion": (
        ["node6:created", "node6:running", "drive0:created", "node6:paused", "node6:running",
         "drive0:running", "drive0:waiting", "drive0:pending"]
        + ["node6:paused", "node6:running"] * 4
        + ["BLOCK_JOB_COMPLETED", "drive0:concluded", "drive0:null",
           "node6:waiting", "node6:pending", "BLOCK_JOB_COMPLETED", "node6:concluded", "node6:null"]),
}


#: cases with a job at 1 byte/s watching another job start and end (or be cancelled,
#: finalized, dismissed), the loop running until idle after each command;
#: ``tests/qemu`` holds QEMU's raw events to the model's for each.
SCENARIOS: dict[str, list[tuple[str, dict]]] = {
    "stream-completion": [
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                          "filter-node-name": "commit-filter", "speed": 1}),
        ("block-stream", {"device": "node4", "base-node": "commit-filter", "job-id": "node4"}),
    ],
    "commit-start-and-completion": [
        THROTTLED_STREAM_OF_NODE6,
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0"}),
    ],
    # a stream onto a throttled stream's filter whose header update then fails (over
    # qcow2's 1,023 characters): the failure path's drains
    "stream-onto-a-throttled-streams-filter-whose-header-update-fails": [
        ("block-stream", {"device": "node5", "filter-node-name": "filter0", "job-id": "node5", "speed": 1}),
        ("block-stream", {"device": "drive0", "base-node": "filter0", "backing-file": TOO_LONG_BACKING_FILE}),
    ],
    "cancel-stream": [
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                          "filter-node-name": "commit-filter", "speed": 1}),
        ("block-stream", {"device": "node4", "base-node": "commit-filter", "job-id": "node4", "speed": 1}),
        ("block-job-cancel", {"device": "node4"}),
    ],
    "cancel-commit": [
        THROTTLED_STREAM_OF_NODE6,
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0", "speed": 1}),
        ("block-job-cancel", {"device": "drive0"}),
    ],
    "active-commit": [
        THROTTLED_STREAM_OF_NODE6,
        ("block-commit", {"device": "drive0", "base-node": "node7", "job-id": "ac"}),
        ("block-job-complete", {"device": "ac"}),
    ],
    "stream-over-stream": [
        ("block-stream", {"device": "node3", "base-node": "node1", "job-id": "low", "speed": 1}),
        ("block-stream", {"device": "node7", "base-node": "node5", "job-id": "high"}),
    ],
    "commit-above-stream": [
        ("block-stream", {"device": "node3", "base-node": "node1", "job-id": "low", "speed": 1}),
        ("block-commit", {"device": "drive0", "top-node": "node6", "base-node": "node4"}),
    ],
    "stream-top-over-commit": [
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0", "speed": 1}),
        ("block-stream", {"device": "drive0", "base-node": "node5", "job-id": "s"}),
    ],
    "stream-backing-file": [
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0", "speed": 1}),
        ("block-stream", {"device": "node6", "base-node": "node4", "job-id": "s", "backing-file": "x.qcow2"}),
    ],
    "commit-filter-name-below-stream": [
        ("block-stream", {"device": "node7", "base-node": "node5", "job-id": "s", "speed": 1}),
        ("block-commit", {"device": "drive0", "top-node": "node4", "base-node": "node1",
                          "filter-node-name": "cf", "backing-file": "y.qcow2"}),
    ],
    "stream-manual-finalize": [
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0", "speed": 1}),
        ("block-stream", {"device": "node6", "base-node": "node4", "job-id": "s",
                          "auto-finalize": False, "auto-dismiss": False}),
        ("job-finalize", {"id": "s"}),
        ("job-dismiss", {"id": "s"}),
    ],
    "commit-manual-finalize": [
        ("block-stream", {"device": "node7", "base-node": "node5", "job-id": "s", "speed": 1}),
        ("block-commit", {"device": "drive0", "top-node": "node3", "base-node": "node1",
                          "auto-finalize": False, "job-id": "c"}),
        ("job-finalize", {"id": "c"}),
    ],
    "stream-cancel-before-start-copy": [
        ("block-stream", {"device": "node7", "base-node": "node5", "job-id": "s", "speed": 1}),
        ("block-stream", {"device": "node3", "base-node": "node1", "job-id": "t", "speed": 1}),
        ("block-job-cancel", {"device": "t"}),
    ],
    "active-commit-cancel-force": [
        THROTTLED_STREAM_OF_NODE6,
        ("block-commit", {"device": "drive0", "base-node": "node7", "job-id": "ac"}),
        ("block-job-cancel", {"device": "ac", "force": True}),
    ],
}


#: generated cases (scripts/drain_diff.py) kept for what they showed, by name
CASE_FILES = {name: os.path.join(os.path.dirname(__file__), "cases", f"{name}.json")
              for name in ("attach-polls-a-throttled-stream", "speed-lifts-one-command-at-a-time")}
#: every case the QEMU test holds to the model event for event (the loop idle after each
#: command, so the schedule does not matter)
ALL = sorted(SCENARIOS) + ["attach-polls-a-throttled-stream"]

#: speed-lifts-one-command-at-a-time: the implicit x-wait-jobs lifts node3's limit,
#: then node1's, each a QMP command of its own (the QEMU backend's order)
LIFTS = {4: ["node3", "node1"]}
#: QEMU 7.2 with the second block-job-set-speed late: node3 finished, its
#: completion's drains pausing node1 once, before node1's limit went
LIFTS_SLOW_CLIENT = [
    "node1:created", "node1:running", "node3:created", "node3:running",
    "node3:waiting", "node3:pending", "node1:paused", "node1:running", "BLOCK_JOB_COMPLETED",
    "node3:concluded", "node3:null",
    "node1:waiting", "node1:pending", "BLOCK_JOB_COMPLETED", "node1:concluded", "node1:null"]
#: ... and with both set-speeds in before node3 ran: the two jobs finish side by side
LIFTS_FAST_CLIENT = [
    "node1:created", "node1:running", "node3:created", "node3:running",
    "node3:waiting", "node3:pending", "node1:waiting", "node1:pending",
    "BLOCK_JOB_COMPLETED", "node1:concluded", "node1:null",
    "BLOCK_JOB_COMPLETED", "node3:concluded", "node3:null"]


def scenario_case(name: str) -> Case:
    if name in CASE_FILES:
        from harness.case import load
        return load(CASE_FILES[name])
    commands = []
    for execute, arguments in SCENARIOS[name]:
        commands += [{"execute": execute, "arguments": arguments}, _x_step()]
    return _case(commands)
