"""Node filenames (reference/filename.py): the json: strings QEMU 7.2 writes
into headers when a named filter sits in a backing chain, and the cache that
only some calls refresh. The expected strings are the ones real QEMU 7.2
wrote for the same commands (``blockfuzz diff`` agrees on each scenario)."""
import pytest

from harness.choices import RandomSource
from reference import qmp
from reference.filename import (bdrv_backing_overridden, bdrv_refresh_filename, qdict_order, qemu_length,
                                qobject_to_json, tdb_hash)
from reference.errors import UseAfterFree
from reference.graph import bdrv_change_backing_file, bdrv_find_backing_image
from reference.machine import Machine

NODE6_OVER_NAMED_FILTER = (
    'json:{"backing": {"driver": "copy-on-read", "file": {"driver": "qcow2", "file": '
    '{"driver": "file", "filename": "node5.qcow2"}}}, "driver": "qcow2", "file": '
    '{"driver": "file", "filename": "node6.qcow2"}}')


def machine(n=8):
    m = Machine(RandomSource(0).choose)
    below = None
    for i in range(n):
        below = m.add_image(f"node{i}", "qcow2", f"node{i}.qcow2", 1 << 20, 65536, below,
                            read_only=i < n - 1)
    m.attach_device("drive0", below)
    return m


def ok(m, name, **args):
    reply = qmp.execute(m, name, {k.replace("_", "-"): v for k, v in args.items()})
    assert reply == {"return": {}}, reply
    return reply


def pending_stream_of_node5(m, filter_node_name=None):
    """A stream of node5 whose copy-on-read filter stays (auto-finalize off):
    node6's backing child is the filter until job-finalize."""
    extra = {"filter_node_name": filter_node_name} if filter_node_name else {}
    ok(m, "block-stream", device="node5", base_node="node3", auto_finalize=False, job_id="s5", **extra)
    ok(m, "x-wait-jobs")


def test_qdict_order_is_bucket_order_not_insertion_order():
    assert [tdb_hash(k) % 512 for k in ("backing", "driver", "filename", "file")] == [198, 239, 313, 463]
    assert qdict_order({"file": 1, "driver": 2, "backing": 3}) == ["backing", "driver", "file"]
    assert qobject_to_json({"driver": "file", "filename": "a", "x": None}) == \
        '{"x": null, "driver": "file", "filename": "a"}'     # not alphabetical either


def test_the_remembered_buckets_and_quotes_stay_bounded_and_right():
    import json

    from reference import filename
    names = [f"node{i}\"x" for i in range(filename._MEMO_MAX + 10)]
    for name in names:
        assert qobject_to_json({name: name}) == f'{{"node{name[4:-2]}\\"x": "node{name[4:-2]}\\"x"}}'
    assert len(filename._STRINGS) <= filename._MEMO_MAX
    for name in names[:3] + names[-3:]:      # forgotten or remembered, the same answer
        assert filename._string(name) == (tdb_hash(name) % 512, json.dumps(name))


def test_stream_over_a_named_filter_writes_the_json_string():
    m = machine()
    pending_stream_of_node5(m, "filter1")
    ok(m, "block-stream", device="node7", base_node="node6", job_id="s7")
    ok(m, "x-wait-jobs")
    assert m.images["node7.qcow2"].header_backing == NODE6_OVER_NAMED_FILTER
    assert m.named_nodes["node6"].filename == NODE6_OVER_NAMED_FILTER
    # a json: header string is compared as it is (a protocol path)
    assert bdrv_find_backing_image(m.named_nodes["node7"], NODE6_OVER_NAMED_FILTER) is m.named_nodes["node6"]


def test_an_implicit_filter_takes_its_childs_filename():
    m = machine()
    pending_stream_of_node5(m)
    cor = m.named_nodes["node6"].backing.bs
    assert cor.implicit and cor.node_name.startswith("#block")
    ok(m, "block-stream", device="node7", base_node="node6", job_id="s7")
    ok(m, "x-wait-jobs")
    assert cor.filename == "node5.qcow2"
    assert m.images["node7.qcow2"].header_backing == "node6.qcow2"


def test_an_unnamed_stream_filter_is_named_by_json_until_a_refresh():
    """7.2's stream_start marks its copy-on-read filter implicit only after
    bdrv_insert_node: the refresh as it became node6's backing gave it a json:
    filename of its own, so node6's header no longer names its backing node
    until a refresh copies the child's name
    (corpus/regressions/qemu-fidelity-unnamed-stream-filter-named-by-json-at-insertion.json;
    QEMU 7.2's lookups by filename follow)."""
    m = machine()
    pending_stream_of_node5(m)
    node6 = m.named_nodes["node6"]
    cor = node6.backing.bs
    assert cor.implicit
    assert cor.filename == ('json:{"driver": "copy-on-read", "file": {"driver": "qcow2", "file": '
                            '{"driver": "file", "filename": "node5.qcow2"}}}')
    assert bdrv_backing_overridden(node6)
    bdrv_refresh_filename(node6)
    assert cor.filename == "node5.qcow2" and not bdrv_backing_overridden(node6)


def test_a_named_commit_top_is_named_after_its_backing():
    m = machine()
    ok(m, "block-commit", device="drive0", top_node="node5", base_node="node3",
       filter_node_name="ct", auto_finalize=False, job_id="c")
    ct, node6 = m.named_nodes["ct"], m.named_nodes["node6"]
    assert node6.backing.bs is ct and ct.filename == "node5.qcow2"
    assert qobject_to_json(ct.full_open_options) == (
        '{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "node5.qcow2"}}, '
        '"driver": "commit_top"}')
    bdrv_refresh_filename(node6)
    assert not bdrv_backing_overridden(node6) and node6.filename == "node6.qcow2"


def test_commit_writes_the_refreshed_base_filename():
    """bdrv_drop_intermediate refreshes base first: a named stream filter below
    the base shows in the overlay's new header."""
    m = machine()
    ok(m, "block-stream", device="node3", base_node="node1", filter_node_name="filter1",
       auto_finalize=False, job_id="s3")
    ok(m, "x-wait-jobs")
    ok(m, "block-commit", device="drive0", top_node="node5", base_node="node4",
       filter_node_name="ct", job_id="c")
    ok(m, "x-wait-jobs")
    assert m.images["node6.qcow2"].header_backing == (
        'json:{"backing": {"driver": "copy-on-read", "file": {"driver": "qcow2", "file": '
        '{"driver": "file", "filename": "node3.qcow2"}}}, "driver": "qcow2", "file": '
        '{"driver": "file", "filename": "node4.qcow2"}}')


def test_the_filename_is_a_cache_a_query_refreshes():
    """Inserting the filter refreshes the filter (node6's backing attach), not
    node6: node7 still finds node6 by its plain name. query-named-block-nodes
    refreshes every node; then the same lookup fails, as on QEMU 7.2."""
    m = machine()
    pending_stream_of_node5(m, "filter1")
    node6, node7 = m.named_nodes["node6"], m.named_nodes["node7"]
    assert node6.filename == "node6.qcow2" and node6.backing.bs.filename.startswith("json:")
    assert bdrv_find_backing_image(node7, "node6.qcow2") is node6
    assert node6.filename == "node6.qcow2"            # that lookup refreshed nothing
    reply = qmp.execute(m, "query-named-block-nodes")
    assert node6.filename == NODE6_OVER_NAMED_FILTER
    assert {n["node-name"]: n["file"] for n in reply["return"]}["node6"] == NODE6_OVER_NAMED_FILTER
    assert bdrv_find_backing_image(node7, "node6.qcow2") is None
    assert bdrv_find_backing_image(node7, "node5.qcow2") is m.named_nodes["node5"]
    assert qmp.execute(m, "block-stream", {"device": "node7", "base": "node6.qcow2"}) == {
        "error": {"class": "GenericError", "desc": "Can't find 'node6.qcow2' in the backing chain"}}


def test_a_given_backing_file_is_relative_and_overrides():
    """The harness passes backing-file as it is: a relative path never equals
    a node's (absolute) filename, so the node gets a json: filename, and a
    lookup compares the backing node's own filename instead."""
    m = machine(3)
    node1, node2 = m.named_nodes["node1"], m.named_nodes["node2"]
    bdrv_change_backing_file(node2, "node1.qcow2", "qcow2", given=True)
    assert node2.auto_backing_relative and bdrv_backing_overridden(node2)
    bdrv_refresh_filename(node2)
    assert node2.filename.startswith('json:{"backing": {"driver": "qcow2"')
    assert bdrv_find_backing_image(node2, "node1.qcow2") is node1
    assert bdrv_find_backing_image(node2, "custom.qcow2") is None


def test_no_backing_where_the_header_names_one_is_json_null():
    m = machine(2)
    node0 = m.named_nodes["node0"]
    node0.auto_backing_file = "gone.qcow2"
    bdrv_refresh_filename(node0)
    assert node0.filename == ('json:{"backing": null, "driver": "qcow2", "file": '
                              '{"driver": "file", "filename": "node0.qcow2"}}')


def test_inserting_a_filter_over_the_top_refreshes_nothing():
    """A stream refused after its filter went in (negative speed) leaves the
    top's filename as it was: QEMU 7.2 then still takes 'top' by the shortcut
    and accepts the commit (the model once refreshed the top there and refused)."""
    m = machine(6)
    ok(m, "block-stream", device="node1", base_node="node0", filter_node_name="cf",
       auto_finalize=False, job_id="s1")
    ok(m, "x-wait-jobs")
    refused = qmp.execute(m, "block-stream", {"device": "node5", "base": "node4.qcow2", "speed": -1})
    assert refused["error"]["desc"] == "Parameter 'speed' expects a non-negative value"
    assert m.named_nodes["node5"].filename == "node5.qcow2"
    ok(m, "block-commit", device="drive0", top="node3.qcow2", base_node="node2", job_id="c")


def test_qemu_counts_its_absolute_paths_in_a_backing_string():
    plain, json_two = "node1.qcow2", 'json:{"a": {"filename": "node0.qcow2"}, "filename": "node1.qcow2"}'
    assert qemu_length(plain, False, 64) == 11 + 64
    assert qemu_length(json_two, False, 64) == len(json_two) + 2 * 64
    assert qemu_length(plain, True, 64) == 11          # the user's backing-file, as given
    assert qemu_length(None, False, 64) == qemu_length("", False, 64) == 0


def json_chain_then_stream_of_the_top(m, path_prefix):
    """node1's header names node5 (backing-file), so every node above node1 has a
    json: filename, one level per node; then the top streams from node6, whose
    json: string goes into node7's header: 601 characters, with 7 paths in it."""
    m.path_prefix = path_prefix
    ok(m, "block-stream", device="node1", base_node="node0", backing_file="node5.qcow2", job_id="s1")
    ok(m, "x-wait-jobs")
    ok(m, "block-stream", device="drive0", base_node="node6", job_id="s7")
    ok(m, "x-wait-jobs")
    return [e["data"] for e in m.events if e["event"] == "BLOCK_JOB_COMPLETED"]


def test_a_backing_string_longer_than_qcow2_takes_aborts_the_stream():
    """qcow2_change_backing_file refuses more than 1,023 characters (-EINVAL): with
    QEMU's 64-character directory, 601 + 7 * 64 = 1,049 is refused, the header is left
    as it was and the stream aborts; with 56 characters, 993 fits (real QEMU 7.2 agrees:
    corpus/regressions/qemu-fidelity-backing-string-too-long-for-qcow2.json)."""
    m = machine()
    completed = json_chain_then_stream_of_the_top(m, 64)
    assert completed[-1]["device"] == "s7" and completed[-1]["error"] == "Invalid argument"
    assert m.images["node7.qcow2"].header_backing == "node6.qcow2"
    assert m.named_nodes["node7"].backing.bs is m.named_nodes["node6"]

    m = machine()
    completed = json_chain_then_stream_of_the_top(m, 56)
    assert completed[-1]["device"] == "s7" and "error" not in completed[-1]
    header = m.images["node7.qcow2"].header_backing
    assert header.startswith("json:") and len(header) == 601


def test_a_commit_that_cannot_rewrite_the_overlays_header_frees_its_filter_then_touches_it():
    """bdrv_drop_intermediate has replaced commit_top by base when the header update
    fails: QEMU reports 'Could not update backing file link', does not roll back, and
    drops its reference on commit_top, the filter's last; the commit aborts and
    commit_abort takes a reference on the freed filter. QEMU 7.2 dies of it (SIGSEGV:
    corpus/known/commit-backing-file-too-long-frees-the-commit-filter.json)."""
    m = machine()
    m.path_prefix = 300         # base's json: filename, 4 paths, is now too long
    ok(m, "block-stream", device="node1", base_node="node0", backing_file="node5.qcow2", job_id="s1")
    ok(m, "x-wait-jobs")
    ok(m, "block-commit", device="drive0", top_node="node5", base_node="node4", job_id="c")
    with pytest.raises(UseAfterFree) as caught:
        qmp.execute(m, "x-wait-jobs", {})
    assert (caught.value.where, caught.value.freed_at.split(" ", 1)[1]) == \
        ("commit_abort", "bdrv_drop_intermediate (in commit job 'c' completion)")
    assert m.errors[-1] == "Could not update backing file link: Invalid argument"
    assert m.named_nodes["node6"].backing.bs is m.named_nodes["node4"]
    assert m.images["node6.qcow2"].header_backing == "node5.qcow2"


def test_a_stream_rewrites_the_header_even_when_its_graph_change_fails(monkeypatch):
    """stream_prepare calls bdrv_change_backing_file after bdrv_set_backing_hd whatever
    the latter did; a failed graph change then aborts the job with -EPERM. (No case
    reaches a failure there: the stream's own chain is frozen until its prepare, so a
    failure is put in its place.)"""
    from reference import stream
    from reference.errors import QMPError

    def refuse(bs, backing, drain_it=True):
        raise QMPError(f"Cannot change frozen 'backing' link from '{bs.node_name}'")

    m = machine()
    monkeypatch.setattr(stream, "bdrv_set_backing_hd", refuse)
    ok(m, "block-stream", device="drive0", base_node="node5", job_id="s7")
    ok(m, "x-wait-jobs")
    assert m.errors[-1] == "Cannot change frozen 'backing' link from 'node7'"
    completed = [e["data"] for e in m.events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert completed[-1]["error"] == "Operation not permitted"
    assert m.named_nodes["node7"].backing.bs is m.named_nodes["node6"]
    assert m.images["node7.qcow2"].header_backing == "node5.qcow2"


def test_every_run_of_a_case_counts_qemus_path_lengths_and_takes_the_schedules_options():
    """harness.backends.reference.new_machine, the machine of run_case and of `show
    --graph`: QEMU's path length from the QEMU backend, metadata reads if the case's
    schedule or the caller asks."""
    from harness.backends.qemu_images import CASE_PATH_PREFIX
    from harness.backends.reference import new_machine
    from harness.case import load
    plain = load("corpus/regressions/qemu-fidelity-backing-string-too-long-for-qcow2.json")
    reads = load("corpus/regressions/qemu-fidelity-qcow2-metadata-read-keeps-a-job-busy.json")
    source = RandomSource(0)
    assert [(m.path_prefix, m.metadata_io) for m in (
        new_machine(plain, source, ()), new_machine(reads, source, ()),
        new_machine(plain, source, (), metadata_io=True))] == \
        [(CASE_PATH_PREFIX, False), (CASE_PATH_PREFIX, True), (CASE_PATH_PREFIX, True)]


def test_a_backing_attach_refreshes_the_filename_before_the_drain_it_inherits_polls():
    """bdrv_child_cb_attach in 7.2: bdrv_backing_attach's refresh, then
    bdrv_apply_subtree_drain, whose poll here runs another stream to its completion;
    the name taken for the overlay's header is the one from before that completion
    (corpus/regressions/qemu-fidelity-backing-attach-refreshes-before-the-drain-polls.json)."""
    import os

    from harness.backends.reference import run_case
    from harness.case import load
    case = load(os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "regressions",
                             "qemu-fidelity-backing-attach-refreshes-before-the-drain-polls.json"))
    obs = run_case(case)
    assert obs.extra["on_disk_backing"]["node7.qcow2"] == "node6.qcow2"
    assert obs.extra["on_disk_backing"]["node5.qcow2"] == "custom.qcow2"
    assert obs.replies[6]["error"]["desc"] == "Cannot find device='' nor node-name='node3'"
