"""Graph primitives, drains, the event loop, data, QAPI argument checks."""
import pytest

from harness.backends.reference import run_case
from harness.case import Write
from harness.choices import RandomSource, RecordedSource
from reference import drain, qmp
from reference.data import ImageData
from reference.errors import Hang, QMPError, UseAfterFree
from reference.graph import (BlockDriverState, bdrv_ref, bdrv_freeze_backing_chain,
                             bdrv_set_backing_hd, bdrv_unref, live)
from reference.loop import AioContext
from reference.machine import Machine, id_wellformed
from tests.model.conftest import chain_case


def machine_with_chain(n=3):
    m = Machine(RandomSource(0).choose)
    below = None
    for i in range(n):
        below = m.add_image(f"n{i}", "qcow2", f"n{i}.qcow2", 1 << 20, 65536, below, read_only=i < n - 1)
    m.attach_device("drive0", below)
    return m


def test_freed_node_is_poisoned_and_names_both_steps():
    m = machine_with_chain(2)
    bs = BlockDriverState(m, "lonely", "qcow2")
    m.cmd_index = 4
    bdrv_unref(bs, "test_free")
    with pytest.raises(UseAfterFree) as e:
        live(bs, "test_touch")
    assert str(e.value) == ("node 'lonely' was freed at step 4.0 test_free "
                            "and touched at step 4.0 test_touch")
    assert (e.value.node, e.value.kind, e.value.where) == ("lonely", "use-after-free", "test_touch")


def test_refcounts_cascade_when_the_last_parent_goes():
    m = machine_with_chain(3)
    n0, n1, n2 = (m.named_nodes[f"n{i}"] for i in range(3))
    assert (n0.refcnt, n1.refcnt, n2.refcnt) == (1, 1, 1)
    bdrv_ref(n0)                  # what stream_prepare's fix does
    bdrv_set_backing_hd(n2, n0)
    bdrv_unref(n0)
    assert n1.freed_at is not None and "n1" not in m.named_nodes
    assert n0.refcnt == 1 and n2.backing.bs is n0
    assert n2.backing_file == "n1.qcow2"     # only a header rewrite changes the string
    from reference.graph import bdrv_change_backing_file
    bdrv_change_backing_file(n2, "n0.qcow2", "qcow2")
    assert (n2.backing_file, n2.header_backing, m.on_disk_backing("n2.qcow2")) == \
        ("n0.qcow2", "n0.qcow2", {"n2.qcow2": "n0.qcow2", "n0.qcow2": None})


def test_set_backing_hd_drops_the_old_reference_only_after_attaching():
    """QEMU's transaction order: installing a node that only the old backing kept
    alive does not free it (a false use-after-free the fuzzer once reported)."""
    m = machine_with_chain(3)
    n0, n1, n2 = (m.named_nodes[f"n{i}"] for i in range(3))
    bdrv_set_backing_hd(n2, n0)
    assert n1.freed_at is not None and n0.freed_at is None and n2.backing.bs is n0
    bdrv_set_backing_hd(n2, n0)          # re-installing the same backing keeps it
    assert n0.freed_at is None and n0.refcnt == 1


def test_installing_a_freed_node_is_a_use_after_free():
    m = machine_with_chain(3)
    n2 = m.named_nodes["n2"]
    stray = BlockDriverState(m, "stray", "qcow2")
    bdrv_unref(stray, "test_free")
    with pytest.raises(UseAfterFree) as e:
        bdrv_set_backing_hd(n2, stray)
    assert e.value.node == "stray" and e.value.where == "bdrv_set_backing_hd"


def test_frozen_links_refuse_changes_with_qemus_texts():
    m = machine_with_chain(3)
    n0, n1, n2 = (m.named_nodes[f"n{i}"] for i in range(3))
    bdrv_freeze_backing_chain(n2, n0)
    with pytest.raises(QMPError) as e:
        bdrv_set_backing_hd(n2, n0)
    assert e.value.desc == "Cannot change frozen 'backing' link from 'n2' to 'n1'"
    with pytest.raises(QMPError) as e:
        bdrv_freeze_backing_chain(n2, n0)
    assert e.value.desc == "Cannot change 'backing' link from 'n2' to 'n1'"


def test_drain_pauses_a_job_and_end_resumes_it():
    case = chain_case(4, [("block-commit", {"device": "drive0", "top-node": "node2",
                                             "base-node": "node0", "job-id": "c", "speed": 1})])
    from harness.backends.reference import build
    from reference.qmp import execute
    m = Machine(RandomSource(0).choose)
    build(m, case)
    assert execute(m, "block-commit", dict(case.commands[0].arguments)) == {"return": {}}
    job = m.jobs["c"]
    node3 = m.named_nodes["node3"]
    drain.bdrv_drained_begin(node3)
    assert job.status == "paused" and job.pause_count == 1 and node3.quiesce_counter == 1
    drain.bdrv_drained_end(node3)
    assert job.pause_count == 0 and node3.quiesce_counter == 0
    assert job.status == "running"


def test_poll_while_without_progress_is_a_hang():
    aio = AioContext(RandomSource(0).choose)
    with pytest.raises(Hang) as e:
        aio.poll_while(lambda: True, "something")
    assert e.value.kind == "hang" and "something" in str(e.value)


def test_virtual_time_orders_timers_and_the_scheduler_orders_bhs():
    src = RecordedSource([1])
    aio = AioContext(src.choose)
    ran = []
    aio.timer_new(500, "late", lambda: ran.append("late"))
    aio.timer_new(100, "early", lambda: ran.append("early"))
    aio.bh_schedule("a", lambda: ran.append("a"))
    aio.bh_schedule("b", lambda: ran.append("b"))
    while aio.aio_poll(blocking=True):
        pass
    assert ran == ["b", "a", "early", "late"] and aio.now == 500


def test_a_timer_runs_once_and_a_cancelled_one_never():
    """Due timers are offered in arming order; a fired or cancelled timer leaves the
    loop (cancelling twice, or after it fired, is harmless)."""
    aio = AioContext(RecordedSource([1]).choose)
    ran = []
    first = aio.timer_new(100, "first", lambda: ran.append("first"))
    gone = aio.timer_new(100, "gone", lambda: ran.append("gone"))
    aio.timer_new(100, "third", lambda: ran.append("third"))
    gone.cancel()
    gone.cancel()
    assert [t.key for t in aio.timers] == ["first", "third"]
    while aio.aio_poll(blocking=True):
        pass
    first.cancel()
    assert ran == ["third", "first"] and aio.timers == [] and aio.now == 100


def test_step_limit_is_a_hang():
    aio = AioContext(RandomSource(0).choose, max_steps=5)

    def again():
        aio.bh_schedule("again", again)
    aio.bh_schedule("again", again)
    with pytest.raises(Hang):
        while aio.aio_poll(blocking=True):
            pass


def test_qcow2_write_allocates_clusters_with_copy_on_write():
    d = ImageData(1 << 20, 65536)
    d.write(70000, 70100, [(70000, 70100, 9)], lambda s, e: [(s, e, 3)])
    assert d.runs == [(65536, 70000, 3), (70000, 70100, 9), (70100, 131072, 3)]
    assert d.block_status(0, 1 << 20) == (False, 65536)
    assert d.block_status(65536, 1 << 20) == (True, 65536)
    raw = ImageData(1 << 20, 65536, raw=True)
    raw.write(10, 20, [(10, 20, 1)], None)
    assert raw.read(0, 30) == [(0, 10, 0), (10, 20, 1), (20, 30, 0)]



def test_qcow2_block_status_ends_where_host_clusters_stop_following():
    """qemu-img map on a qcow2 written at 960K, then at 832K..960K, shows host
    offsets 384K and 320K: block status answers 128K, then 64K."""
    zero = lambda s, e: [(s, e, 0)]
    d = ImageData(1 << 20, 65536)
    d.write(960 << 10, 1 << 20, [(960 << 10, 1 << 20, 34)], zero)
    d.write(832 << 10, 960 << 10, [(832 << 10, 960 << 10, 205)], zero)
    assert d.host == {15: 0, 13: 1, 14: 2}
    assert [d.block_status(off, 512 << 10) for off in (832 << 10, 960 << 10)] == [(True, 128 << 10),
                                                                                  (True, 64 << 10)]
    in_order = ImageData(1 << 20, 65536)
    in_order.write(0, 256 << 10, [(0, 256 << 10, 1)], zero)
    in_order.write(256 << 10, 512 << 10, [(256 << 10, 512 << 10, 2)], zero)
    in_order.write(128 << 10, 384 << 10, [(128 << 10, 384 << 10, 3)], zero)   # rewrites, allocates nothing
    assert (in_order.block_status(0, 1 << 20), in_order.breaks) == ((True, 512 << 10), [])
    copied = d.copy()
    copied.write(0, 65536, [(0, 65536, 7)], zero)
    assert (d.breaks, copied.breaks, 0 in d.host) == ([983040], [983040], False)

def test_jobs_never_change_guest_data():
    case = chain_case(6, [("block-commit", {"device": "drive0", "top-node": "node3",
                                             "base-node": "node1", "job-id": "c"}),
                          ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "s"}),
                          ("x-guest-write", {"offset": 65536, "length": 4096, "pattern": 200})])
    before = run_case(chain_case(6, [("x-guest-write", {"offset": 65536, "length": 4096, "pattern": 200})]),
                      RandomSource(0)).data
    for seed in range(20):
        obs = run_case(case, RandomSource(seed))
        assert obs.finding is None and obs.data == before


@pytest.mark.parametrize("args,desc", [
    ({}, "Parameter 'device' is missing"),
    ({"device": "drive0", "bogus": 1}, "Parameter 'bogus' is unexpected"),
    ({"device": "drive0", "speed": "fast"}, "Invalid parameter type for 'speed', expected: integer"),
    ({"device": 7}, "Invalid parameter type for 'device', expected: string"),
    ({"device": "drive0", "auto-finalize": 1}, "Invalid parameter type for 'auto-finalize', expected: boolean"),
    ({"device": "drive0", "on-error": "never"}, "Parameter 'on-error' does not accept value 'never'"),
    ({"device": "drive0", "on-error": 3}, "Invalid parameter type for 'on-error', expected: string"),
    ({"device": "nope"}, "Cannot find device='nope' nor node-name='nope'"),
    ({"device": "drive0", "backing-file": "x"}, "backing file specified, but streaming the entire chain"),
    ({"device": "drive0", "bottom": "node9"}, "Cannot find device='' nor node-name='node9'"),
    ({"device": "drive0", "base": "nowhere.qcow2"}, "Can't find 'nowhere.qcow2' in the backing chain"),
    ({"device": "node1", "job-id": "#x"}, "Invalid job ID '#x'"),
    ({"device": "node1"}, "Invalid job ID ''"),
])
def test_block_stream_argument_errors(args, desc):
    m = machine_with_chain(1)
    from harness.backends.reference import build
    m = Machine(RandomSource(0).choose)
    build(m, chain_case(3))
    assert qmp.execute(m, "block-stream", args) == {"error": {"class": "GenericError", "desc": desc}}


@pytest.mark.parametrize("args,reply", [
    ({"device": "nope"}, ("DeviceNotFound", "Device 'nope' not found")),
    ({"device": "node1"}, ("GenericError", "Need a root block node")),
    ({"device": "drive0", "top": "a", "top-node": "b"}, ("GenericError", "'top-node' and 'top' are mutually exclusive")),
    ({"device": "drive0", "base": "a", "base-node": "b"}, ("GenericError", "'base-node' and 'base' are mutually exclusive")),
    ({"device": "drive0", "top-node": "node1", "base-node": "node2"}, ("GenericError", "'node2' is not in this backing file chain")),
    ({"device": "drive0", "top-node": "node1", "base-node": "node1"}, ("GenericError", "cannot commit an image into itself")),
    ({"device": "drive0", "top": "x.qcow2"}, ("GenericError", "Top image file x.qcow2 not found")),
    ({"device": "drive0", "base": "x.qcow2"}, ("GenericError", "Can't find 'x.qcow2' in the backing chain")),
    ({"device": "drive0", "backing-file": "f"}, ("GenericError", "'backing-file' specified, but 'top' is the active layer")),
    ({"device": "drive0", "top-node": "node0"}, ("GenericError", "cannot commit an image into itself")),
    ({"device": "drive0", "top-node": "node1", "filter-node-name": "node0"}, ("GenericError", "Duplicate nodes with node-name='node0'")),
])
def test_block_commit_argument_errors(args, reply):
    from harness.backends.reference import build
    m = Machine(RandomSource(0).choose)
    build(m, chain_case(3))
    assert qmp.execute(m, "block-commit", args) == {"error": {"class": reply[0], "desc": reply[1]}}


def test_unknown_command_and_queries():
    from harness.backends.reference import build
    m = Machine(RandomSource(0).choose)
    build(m, chain_case(3, drive=None))
    assert qmp.execute(m, "blockdev-mirror", {}) == {"error": {"class": "CommandNotFound",
                                                               "desc": "The command blockdev-mirror has not been found"}}
    assert qmp.execute(m, "block-commit", {"device": "node2", "job-id": "c", "speed": 1}) == {"return": {}}
    jobs = qmp.execute(m, "query-jobs")["return"]
    assert [(j["id"], j["type"], j["status"]) for j in jobs] == [("c", "commit", "running")]
    bj = qmp.execute(m, "query-block-jobs")["return"][0]
    assert (bj["device"], bj["speed"], bj["ready"]) == ("c", 1, False)
    nodes = {n["node-name"]: n for n in qmp.execute(m, "query-named-block-nodes", {"flat": True})["return"]}
    assert nodes["node2"]["image"]["backing-image"]["filename"] == "node1.qcow2"
    graph = qmp.execute(m, "x-debug-query-block-graph")["return"]
    names = {(e["name"]) for e in graph["edges"]}
    assert {"backing", "main node", "source", "target"} <= names
    assert qmp.execute(m, "x-step", {"count": -1})["error"]["desc"] == \
        "Parameter 'count' expects a non-negative integer"
    assert "error" in qmp.execute(m, "x-guest-write", {"offset": 0, "length": 0, "pattern": 1})


def test_id_wellformed():
    assert id_wellformed("a-b.c_1") and not id_wellformed("") and not id_wellformed("1a")
    assert not id_wellformed("#block1") and not id_wellformed("a b")


@pytest.mark.parametrize("job_kind", ["commit", "stream"])
def test_a_throttled_job_woken_by_a_drain_goes_on_as_if_it_had_slept(job_kind):
    """QEMU 7.2 computes a delay only after a copied chunk and sleeps it at the top of
    the next iteration; woken early (a drain), the job takes the delay as served, and
    an iteration that copied nothing sleeps 0. So one drain lets a job at 1 byte/s
    over unallocated clusters (here one cluster at 320K, one at 960K) on to its next
    copied chunk and, here, its end. (QEMU 8.1's block_job_ratelimit_sleep,
    "blockjob: Adhere to rate limit even when reentered early", sleeps again.)"""
    from harness.backends.reference import build
    from reference.qmp import execute
    writes = {1: (Write(327680, 65536, 1), Write(983040, 65536, 2))}
    case = chain_case(4, writes=writes)
    args = ({"device": "drive0", "top-node": "node1", "base-node": "node0", "job-id": "j", "speed": 1}
            if job_kind == "commit" else
            {"device": "node2", "base-node": "node0", "job-id": "j", "speed": 1})
    m = Machine(RandomSource(0).choose)
    build(m, case)
    assert execute(m, f"block-{job_kind}", args) == {"return": {}}
    job = m.jobs["j"]
    while m.aio.aio_poll(blocking=False):
        pass
    assert job.offset == 393216 and job.status == "running"      # the first chunk is free
    node1 = m.named_nodes["node1"]        # the job holds an edge to it either way
    drain.bdrv_drained_begin(node1)
    drain.bdrv_drained_end(node1)
    while m.aio.aio_poll(blocking=False):
        pass
    assert job.offset == 1048576 and job.status == "null"


def test_a_commit_leaves_consistent_read_unshared_above_the_filters_on_its_base():
    """commit_start's claims: the intermediate nodes share writes only, the filters on
    the base share 'consistent read' too. A backing edge to an unshared node is refused
    while the claim lasts (QEMU: Permission conflict, the graph unchanged)."""
    from reference.commit import commit_start
    from reference.graph import bdrv_append_filter
    m = machine_with_chain(4)
    n0, n1, n2, n3 = (m.named_nodes[f"n{i}"] for i in range(4))
    f = bdrv_append_filter(m, "copy-on-read", "f", n1, implicit=False)   # n3 > n2 > f > n1 > n0
    job = commit_start(m, "c", n3, n1, n2, None, speed=0, on_error="report",
                       filter_node_name=None, auto_finalize=True, auto_dismiss=True)
    assert [job.unshares_read(bs) for bs in (n2, f, n1, n0)] == [True, False, False, False]
    with pytest.raises(QMPError) as e:
        bdrv_set_backing_hd(n3, n2)
    assert e.value.desc.startswith("Permission conflict on node 'n2': permissions 'consistent read' "
                                   "are both required by node 'n3'")
    assert n3.backing.bs is job.commit_top_bs
    job.remove_all_bdrv()
    assert not job.unshares_read(n2)
