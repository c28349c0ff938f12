"""The job state machine, verbs and events, through QMP on the model."""
import dataclasses
import os

import pytest

from harness.backends.reference import run_case
from harness.case import Write, load
from harness.choices import RandomSource, RecordedSource
from harness.observation import raw_statuses
from reference.errors import IllegalTransition
from reference.job import TRANSITIONS, VERBS
from tests.model.conftest import chain_case
from tests.model.drain_counts import (ALL, EXPECTED, LIFTS, LIFTS_FAST_CLIENT, LIFTS_SLOW_CLIENT,
                                      scenario_case)


def statuses(obs, job):
    return [e["data"]["status"] for e in obs.events
            if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job]


def test_stream_runs_through_the_exact_status_sequence_and_events():
    case = chain_case(4, [("block-stream", {"device": "drive0", "base-node": "node1"})])
    obs = run_case(case, RandomSource(1))
    assert obs.replies == [{"return": {}}]
    assert obs.job_statuses == {"drive0": ["created", "running", "waiting", "pending",
                                           "concluded", "null"]}
    completed = [e for e in obs.events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert completed == [{"event": "BLOCK_JOB_COMPLETED",
                          "data": {"type": "stream", "device": "drive0", "len": 1 << 20,
                                   "offset": 1 << 20, "speed": 0},
                          "step": 1}]     # in the implicit x-wait-jobs after command 0
    assert obs.chain_names(False) == ["node3", "node1", "node0"]
    assert obs.chain[0].backing_file == "node1.qcow2"


def test_manual_finalize_holds_the_graph_until_job_finalize():
    case = chain_case(4, [("block-stream", {"device": "drive0", "base-node": "node1",
                                             "job-id": "s", "auto-finalize": False,
                                             "auto-dismiss": False}),
                          ("x-wait-jobs",), ("job-dismiss", {"id": "s"}),
                          ("job-finalize", {"id": "s"}), ("job-dismiss", {"id": "s"})])
    obs = run_case(case, RandomSource(0))
    assert obs.replies[2] == {"error": {"class": "GenericError",
                                        "desc": "Job 's' in state 'pending' cannot accept command verb 'dismiss'"}}
    assert obs.replies[3:] == [{"return": {}}, {"return": {}}]
    assert [e["event"] for e in obs.events if e["event"].startswith("BLOCK_JOB")] == \
        ["BLOCK_JOB_PENDING", "BLOCK_JOB_COMPLETED"]
    assert statuses(obs, "s") == ["created", "running", "waiting", "pending", "concluded", "null"]
    assert obs.chain_names() == ["node3", "node1", "node0"]


def test_pending_job_changes_no_edge_before_finalize():
    case = chain_case(4, [("block-stream", {"device": "drive0", "base-node": "node1",
                                             "job-id": "s", "auto-finalize": False})])
    obs = run_case(case, RandomSource(0))
    assert obs.jobs_left == {"s": "pending"}
    assert obs.chain[0].driver == "copy-on-read"
    assert obs.chain_names(collapse_filters=False)[1:3] == ["node3", "node2"]


def test_user_pause_resume_and_their_refusals():
    case = chain_case(6, [("block-commit", {"device": "drive0", "top-node": "node3",
                                             "base-node": "node1", "job-id": "c", "speed": 1}),
                          ("job-pause", {"id": "c"}), ("job-pause", {"id": "c"}),
                          ("block-job-cancel", {"device": "c"}),
                          ("job-resume", {"id": "c"}), ("job-resume", {"id": "c"}),
                          ("block-job-set-speed", {"device": "c", "speed": 0})])
    obs = run_case(case, RandomSource(3))
    err = lambda d: {"error": {"class": "GenericError", "desc": d}}
    assert obs.replies[1:] == [{"return": {}}, err("Job is already paused"),
                               err("The block job for device 'c' is currently paused"),
                               {"return": {}}, err("Can't resume a job that was not paused"),
                               {"return": {}}]
    assert obs.job_statuses["c"] == ["created", "running", "waiting", "pending", "concluded", "null"]
    assert obs.chain_names() == ["node5", "node4", "node1", "node0"]


def test_job_cancel_aborts_and_leaves_the_chain():
    case = chain_case(6, [("block-commit", {"device": "drive0", "top-node": "node3",
                                             "base-node": "node1", "job-id": "c", "speed": 1}),
                          ("job-cancel", {"id": "c"})])
    obs = run_case(case, RandomSource(0))
    assert obs.job_statuses["c"] == ["created", "running", "aborting", "concluded", "null"]
    assert [e["event"] for e in obs.events if e["event"].startswith("BLOCK_JOB")] == ["BLOCK_JOB_CANCELLED"]
    assert obs.chain_names(False) == ["node5", "node4", "node3", "node2", "node1", "node0"]


def test_unknown_jobs_and_wrong_states_give_qemus_texts():
    case = chain_case(3, [("job-finalize", {"id": "x"}), ("block-job-pause", {"device": "x"}),
                          ("block-job-set-speed", {"device": "x", "speed": 1}),
                          ("block-stream", {"device": "drive0", "job-id": "s", "speed": 1}),
                          ("job-complete", {"id": "s"}), ("block-job-set-speed", {"device": "s", "speed": -1}),
                          ("block-stream", {"device": "node1", "job-id": "s"})])
    obs = run_case(case, RandomSource(0))
    assert obs.replies[0] == {"error": {"class": "GenericError", "desc": "Job not found"}}
    assert obs.replies[1] == {"error": {"class": "DeviceNotActive", "desc": "Block job 'x' not found"}}
    assert obs.replies[2] == obs.replies[1]
    assert obs.replies[4]["error"]["desc"] == "Job 's' in state 'running' cannot accept command verb 'complete'"
    assert obs.replies[5]["error"]["desc"] == "Parameter 'speed' expects a non-negative value"
    assert obs.replies[6]["error"]["desc"] in ("Job ID 's' already in use",
                                               "Node 'node1' is busy: block device is in use by block job: stream")


def test_negative_speed_at_creation_drops_the_job_with_both_events():
    case = chain_case(3, [("block-stream", {"device": "drive0", "job-id": "s", "speed": -1})])
    obs = run_case(case, RandomSource(0))
    assert obs.replies == [{"error": {"class": "GenericError", "desc": "Parameter 'speed' expects a non-negative value"}}]
    assert statuses(obs, "s") == ["created", "null"]
    assert obs.chain_names(False) == ["node2", "node1", "node0"]


def test_transition_table_matches_job_c():
    assert TRANSITIONS["running"] == {"paused", "ready", "waiting", "aborting"}
    assert TRANSITIONS["aborting"] == {"aborting", "concluded"}
    assert VERBS["finalize"] == {"pending"}
    assert VERBS["complete"] == {"ready", "standby"}


def test_illegal_transition_is_named():
    from reference.job import Job
    from reference.machine import Machine
    from reference.graph import BlockDriverState
    m = Machine(RandomSource(0).choose)
    bs = BlockDriverState(m, "n", "qcow2")
    job = Job(m, "j", bs)
    with pytest.raises(IllegalTransition) as e:
        job.transition("concluded")
    assert str(e.value) == "job 'j': illegal transition created -> concluded"
    assert e.value.kind == "illegal-transition"


def test_active_commit_ready_standby_complete_and_pivot():
    case = chain_case(5, [("block-commit", {"device": "drive0", "base-node": "node2", "job-id": "a"}),
                          ("x-wait-jobs",), ("job-pause", {"id": "a"}), ("x-step", {"count": 3}),
                          ("x-guest-write", {"offset": 0, "length": 65536, "pattern": 7}),
                          ("job-complete", {"id": "a"}), ("job-resume", {"id": "a"}),
                          ("x-wait-jobs",)])
    obs = run_case(case, RandomSource(2))
    assert all("return" in r for r in obs.replies), obs.replies
    assert obs.job_statuses["a"] == ["created", "running", "ready", "waiting", "pending",
                                     "concluded", "null"]
    assert "standby" in statuses(obs, "a")
    assert obs.chain_names(False) == ["node2", "node1", "node0"]
    assert obs.data[0] == [0, 65536, 7]


def test_soft_cancel_in_ready_completes_without_pivot():
    case = chain_case(4, [("block-commit", {"device": "drive0", "job-id": "a"}), ("x-wait-jobs",),
                          ("block-job-cancel", {"device": "a"})])
    obs = run_case(case, RandomSource(0))
    assert obs.job_statuses["a"][-4:] == ["waiting", "pending", "concluded", "null"]
    assert [e["event"] for e in obs.events if e["event"].startswith("BLOCK_JOB")] == \
        ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"]
    assert obs.chain_names(False) == ["node3", "node2", "node1", "node0"]


def test_an_active_commit_reports_the_bytes_it_copied_as_len_and_offset():
    """mirror_run sets the job's progress to what it copied plus what is still dirty, so
    its events count the data above the base, and the guest writes that dirtied it
    again, not the image's length as a stream or an intermediate commit does. QEMU 7.2
    on this case: READY with len and offset 196608 (128 KiB in node1, 64 KiB in node2),
    COMPLETED with 262144 after a 64 KiB guest write while READY."""
    case = chain_case(3, [("block-commit", {"device": "drive0", "job-id": "j"}), ("x-wait-jobs",),
                          ("x-guest-write", {"offset": 262144, "length": 65536, "pattern": 9}),
                          ("x-step", {"count": 8}), ("job-complete", {"id": "j"})],
                      writes={1: (Write(0, 131072, 5),), 2: (Write(524288, 65536, 7),)})
    obs = run_case(case)
    assert [(e["event"], e["data"]["len"], e["data"]["offset"]) for e in obs.events
            if e["event"] in ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED")] == \
        [("BLOCK_JOB_READY", 196608, 196608), ("BLOCK_JOB_COMPLETED", 262144, 262144)]


def test_drains_pause_an_active_commit_between_the_extents_of_its_dirty_init():
    """mirror_dirty_init queries the source extent by extent, each after a pause point, and
    (with metadata reads) its first queries wait for L2 tables: a stream's completion
    draining meanwhile holds the commit before its first copy, so the commit flushes only
    after the stream concluded, and a cancel sent then lands in the flush: READY, then the
    forced cancel's abort. QEMU 7.2 showed this outcome in 4 runs of 6 of the case; the model
    that filled the dirty bitmap in one step never did (0 of 40,000 schedules)."""
    obs = run_case(load("corpus/regressions/qemu-fidelity-mirror-dirty-init-pauses-per-extent.json"))
    assert obs.job_statuses["job1"] == ["created", "running", "ready", "aborting", "concluded", "null"]
    changes = [(e["data"]["id"], e["data"]["status"]) for e in obs.events if e["event"] == "JOB_STATUS_CHANGE"]
    assert changes.index(("job0", "null")) < changes.index(("job1", "ready"))


#: an active commit cancelled right after it starts: under schedule [1] the cancel lands
#: while it copies, [3] while it flushes the target before READY, [4] once it is ready
CANCELLED_ACTIVE_COMMIT = chain_case(3, [("block-commit", {"device": "drive0", "job-id": "a"}),
                                         ("block-job-cancel", {"device": "a"})])


@pytest.mark.parametrize("choices, sequence, ends", [
    ([1], ["created", "running", "aborting", "concluded", "null"], ["BLOCK_JOB_CANCELLED"]),
    ([3], ["created", "running", "ready", "aborting", "concluded", "null"],
     ["BLOCK_JOB_READY", "BLOCK_JOB_CANCELLED"]),
    ([4], ["created", "running", "ready", "waiting", "pending", "concluded", "null"],
     ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"]),
])
def test_an_active_commit_cancelled_during_its_flush_becomes_ready_then_aborts(
        monkeypatch, choices, sequence, ends):
    """mirror_run in QEMU 7.2 makes the job READY once the target's flush returns, without
    looking again at a cancel that came in meanwhile: a cancel before READY is forced, so
    the job aborts from READY (QEMU 7.2 showed running, ready, aborting in 4 runs of 24 of
    the case the directed differential found). However mirror_run ends, it leaves the
    source drained (the drain before a completion, or need_drain)."""
    from reference import drain
    begun = []
    real = drain.bdrv_drained_begin
    monkeypatch.setattr(drain, "bdrv_drained_begin", lambda bs: (begun.append(bs.node_name), real(bs)))
    obs = run_case(CANCELLED_ACTIVE_COMMIT, RecordedSource(choices))
    assert obs.finding is None and obs.replies == [{"return": {}}, {"return": {}}]
    assert obs.job_statuses["a"] == sequence
    assert [e["event"] for e in obs.events if e["event"].startswith("BLOCK_JOB")] == ends
    assert begun.count("node2") == 2     # the top: as mirror_top goes above it, and as mirror_run ends


@pytest.mark.parametrize("end, chain", [
    ({"execute": "block-job-complete", "arguments": {"device": "a"}}, ["node2", "node1", "node0"]),
    ({"execute": "block-job-cancel", "arguments": {"device": "a"}}, ["node3", "node2", "node1", "node0"]),
    ({"execute": "block-job-cancel", "arguments": {"device": "a", "force": True}},
     ["node3", "node2", "node1", "node0"]),
])
def test_an_active_commit_leaves_its_base_writable_however_it_ends(end, chain):
    # QEMU 7.2 reopens the base read-write at the start and never back (a pivot makes
    # it the device's image; the reopen on abort came in 8.x); the rest stay read-only
    case = chain_case(4, [("block-commit", {"device": "drive0", "base-node": "node2", "job-id": "a"}),
                          ("x-wait-jobs",), (end["execute"], end["arguments"])])
    obs = run_case(case, RandomSource(0))
    assert obs.finding is None and all("return" in r for r in obs.replies), obs.replies
    assert [(n.node_name, n.read_only) for n in obs.chain] == \
        [(name, name not in ("node3", "node2")) for name in chain]


def test_same_seed_same_run_and_recorded_replay_is_exact():
    from harness.case import load
    case = load("corpus/seeds/030/test_overlapping_5.json")
    a = run_case(case, RandomSource(5), trace=True)
    b = run_case(case, RandomSource(5), trace=True)
    assert a.trace == b.trace and a.choices == b.choices and a.events == b.events
    c = run_case(case, RecordedSource(a.choices), trace=True)
    assert c.trace == a.trace


def test_a_finished_run_leaves_no_cycles_for_the_garbage_collector():
    """Machine.release breaks the run's cycles (edges, nodes and jobs pointing back
    at the machine, coroutines at their jobs, a fault's traceback), so a run's
    objects are freed as it returns: none is left for the cyclic collector."""
    import gc

    from harness.case import load
    from harness.generate import run_generated
    from reference.graph import BlockDriverState, BdrvChild
    from reference.job import Job
    from reference.machine import Machine

    model_types = (Machine, BlockDriverState, BdrvChild, Job)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        kinds = {run_generated(RandomSource(seed), ())[2].kind for seed in range(200)}
        uaf = load("corpus/regressions/overlapping_5-stream-prepare-no-drain.json")
        kinds.add(run_case(uaf).finding.kind)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, model_types)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert {"ok", "use-after-free"} <= kinds    # faulting runs are among them
    assert left == []


def _dismiss_refusal(obs) -> str:
    return obs.replies[-1]["error"]["desc"]


@pytest.mark.parametrize("metadata_io, between, state", [
    (False, [1], "paused"),     # block status at once: the job is asleep when the pause comes
    (True, [1], "running"),     # its first metadata read is in flight: the pause is only counted
    (True, [0], "paused"),      # back to back: the stream has not left its first sleep yet
    (True, [2], "paused"),      # the read completed before the pause came
])
def test_a_qcow2_metadata_read_keeps_a_stream_busy_past_a_pause(metadata_io, between, state):
    """QEMU 7.2 reads each qcow2 image's L2 table on a stream's first block-status query
    (corpus/regressions/qemu-fidelity-qcow2-metadata-read-keeps-a-job-busy.json)."""
    case = chain_case(4, [("block-stream", {"device": "drive0", "base-node": "node0", "job-id": "s"}),
                          ("job-pause", {"id": "s"}), ("job-dismiss", {"id": "s"})])
    obs = run_case(case, RecordedSource(between), metadata_io=metadata_io)
    assert obs.replies[:2] == [{"return": {}}, {"return": {}}]
    assert _dismiss_refusal(obs) == f"Job 's' in state '{state}' cannot accept command verb 'dismiss'"
    assert obs.job_statuses["s"] == ["created", "running", "paused"]


def test_an_intermediate_commit_waits_for_its_metadata_read_too():
    case = chain_case(4, [("block-commit", {"device": "drive0", "top-node": "node2",
                                             "base-node": "node0", "job-id": "c"}),
                          ("job-pause", {"id": "c"}), ("job-dismiss", {"id": "c"})])
    state = lambda metadata_io: _dismiss_refusal(
        run_case(case, RecordedSource([1]), metadata_io=metadata_io)).split("'")[3]
    assert (state(False), state(True)) == ("paused", "running")


def test_metadata_is_read_once_per_image_and_a_guest_write_reads_the_tops():
    """An active commit of the top into node2 queries node3 alone, at its start."""
    from harness.differential import Gaps
    commit = ("block-commit", {"device": "drive0", "base-node": "node2", "job-id": "c"})
    pause, dismiss = ("job-pause", {"id": "c"}), ("job-dismiss", {"id": "c"})
    write = ("x-guest-write", {"offset": 0, "length": 65536, "pattern": 9})

    def state(*commands, metadata_io=True):     # commands back to back
        obs = run_case(chain_case(4, commands), Gaps(RecordedSource([])), metadata_io=metadata_io)
        return _dismiss_refusal(obs).split("'")[3]
    assert state(commit, pause, dismiss) == "running"
    assert state(commit, pause, dismiss, metadata_io=False) == "paused"
    assert state(write, commit, pause, dismiss) == "paused"


def test_a_streams_later_iterations_read_no_metadata_again():
    """Nothing to copy; node3's data at 512 KiB splits the stream into iterations. Gaps of
    one loop iteration: 1 the timer (metadata read in flight), 2 the read completes and
    the first iteration ends in its sleep, 3 the second iteration: cached, no read."""
    from harness.case import Write
    case = chain_case(4, [("block-stream", {"device": "drive0", "base-node": "node0", "job-id": "s"}),
                          ("job-pause", {"id": "s"}), ("job-dismiss", {"id": "s"})],
                      writes={3: (Write(512 << 10, 64 << 10, 3),)})
    states = [_dismiss_refusal(run_case(case, RecordedSource([k]), metadata_io=True)).split("'")[3]
              for k in (1, 2, 3)]
    assert states == ["running", "paused", "paused"]


def test_raw_images_have_no_metadata_to_read():
    case = chain_case(2, [("block-stream", {"device": "drive0", "job-id": "s"}),
                          ("job-pause", {"id": "s"}), ("job-dismiss", {"id": "s"})])
    images = (case.images[0], dataclasses.replace(case.images[1], format="raw", filename="node1.raw"))
    raw = dataclasses.replace(case, images=images)
    assert "'running'" in _dismiss_refusal(run_case(case, RecordedSource([1]), metadata_io=True))
    assert "'paused'" in _dismiss_refusal(run_case(raw, RecordedSource([1]), metadata_io=True))


def test_the_case_schedule_turns_metadata_reads_on():
    case = chain_case(4, [("block-stream", {"device": "drive0", "base-node": "node0", "job-id": "s"}),
                          ("job-pause", {"id": "s"}), ("job-dismiss", {"id": "s"})])
    on = dataclasses.replace(case, schedule={"choices": [1], "metadata-io": True})
    off = dataclasses.replace(case, schedule={"choices": [1]})
    assert "'running'" in _dismiss_refusal(run_case(on))
    assert "'paused'" in _dismiss_refusal(run_case(off))
    assert on.schedule_options() == {"metadata-io": True} and off.schedule_options() == {}


def test_an_x_step_runs_to_the_virtual_time_it_is_given_since_the_first_command():
    """`blockfuzz diff` ends the model's x-steps when QEMU's ended (its rate limits run in
    real time); otherwise an x-step goes 50 ms of virtual time at most."""
    case = chain_case(4, [("block-commit", {"device": "drive0", "top-node": "node2",
                                             "base-node": "node0", "speed": 1 << 20, "job-id": "c"}),
                          ("x-step", {"count": 32}), ("job-pause", {"id": "c"})])

    def pause_reply(until):
        return run_case(case, RecordedSource([]), x_step_until=until).replies[2]
    assert pause_reply(None) == pause_reply({1: 0}) == {"return": {}}     # still throttled
    assert pause_reply({1: 2_000_000_000}) == {"error": {"class": "GenericError",
                                                         "desc": "Job not found"}}


SLICE_CASE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "corpus", "regressions", "qemu-fidelity-slice-ends-when-the-sleep-does.json")


def test_a_rate_limit_slice_is_over_when_the_job_wakes_at_its_end():
    """Three 64 KiB chunks at 1 MiB/s: the job sleeps 125 ms after the second; the third
    opens a new slice, so the commit completes at 125 ms, within the third x-step (the
    case's schedule ends the x-steps when QEMU's ended), as on QEMU. Charged to the old
    slice, it slept until 187.5 ms and the last block-commit found the job still holding
    drive0's node."""
    from harness.case import load
    case = load(SLICE_CASE)
    obs = run_case(case)
    assert obs.replies[5] == {"error": {"class": "GenericError",
                                        "desc": "Cannot find device='' nor node-name='node1'"}}
    assert [(e["step"], e["data"]["status"]) for e in obs.events if e["event"] == "JOB_STATUS_CHANGE"] == [
        (0, "created"), (0, "running"), (3, "waiting"), (3, "pending"), (3, "concluded"), (3, "null")]
    # without QEMU's end times each x-step goes 50 ms past its start at most: the job's
    # 125 ms sleep is beyond every one of them, and the job is still there
    untimed = dataclasses.replace(case, schedule={"choices": []})
    assert run_case(untimed).replies[5]["error"]["desc"] == "Need a root block node"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_throttled_job_is_paused_by_each_drained_section_that_reaches_it(name):
    # stream-completion: five pauses of the commit (the model used to give three), so
    # its eight chunks finish inside the stream's completion; commit-start-and-
    # completion: one pause at the commit's start (two before), four at its end (three)
    obs = run_case(scenario_case(name), RandomSource(0))
    assert obs.finding is None
    assert raw_statuses(obs.events) == EXPECTED[name]


@pytest.mark.parametrize("name", ALL)
def test_a_throttled_jobs_events_do_not_depend_on_the_schedule(name):
    # what tests/qemu compares with QEMU's: the loop runs until idle after each
    # command, so the drained sections that reach the job are all there is to count
    runs = [run_case(scenario_case(name), RandomSource(seed)) for seed in range(4)]
    assert all(obs.finding is None for obs in runs)
    assert len({tuple(raw_statuses(obs.events)) for obs in runs}) == 1


def test_an_attach_inside_a_subtree_drain_polls_until_a_job_below_pauses_again():
    # tests/model/cases/attach-polls-a-throttled-stream.json: two pairs for node5
    # between the failing stream's 'pending' and 'aborting', as on QEMU 7.2
    events = raw_statuses(run_case(scenario_case("attach-polls-a-throttled-stream"), RandomSource(0)).events)
    window = events[events.index("drive0:pending") + 1:events.index("drive0:aborting")]
    assert window == ["node5:paused", "node5:running"] * 2


def test_the_loop_may_run_between_two_speed_lifts_of_one_x_wait_jobs():
    # QEMU 7.2 gave both orders (scripts/drain_diff.py, seed 5): the backend sends one
    # block-job-set-speed per job and waits for its reply, so node3 may finish, even its
    # completion, before node1's limit is lifted; the model used to lift both at once
    case = scenario_case("speed-lifts-one-command-at-a-time")
    outcomes = {tuple(raw_statuses(run_case(case, RandomSource(seed), unthrottle=LIFTS).events))
                for seed in range(20)}
    assert tuple(LIFTS_SLOW_CLIENT) in outcomes
    assert tuple(LIFTS_FAST_CLIENT) in outcomes
