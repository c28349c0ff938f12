"""The QEMU backend's pieces that need no QEMU process: data runs, graph reading, the job
tracker, exit descriptions, filename mapping; and the NBD client against qemu-nbd."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from harness.backends.nbd import NbdClient, NbdError
from harness.backends.qemu import data_runs
from harness.backends.qemu_graph import chain_from, filters_above, parse_graph
from harness.backends.qemu_images import CaseImages
from harness.backends.qemu_jobs import JobTracker
from harness.backends.qemu_process import describe_exit
from harness.case import Command
from harness.observation import ChainNode


def test_data_runs_are_maximal_runs_of_one_byte():
    data = bytes(65536) + b"\x01" * 100 + b"]]^\\" + bytes(3)
    assert data_runs(data) == [[0, 65536, 0], [65536, 100, 1], [65636, 2, 93], [65638, 1, 94],
                               [65639, 1, 92], [65640, 3, 0]]
    assert data_runs(b"") == []


# -- the graph ------------------------------------------------------------------------------

def _graph_replies():
    """node3 -> cor (copy-on-read, child 'file') -> node2 -> ct (commit_top) -> node1, with a
    block backend 'drive0' on node3, a job and protocol nodes."""
    names = ["drive0", "node3", "cor", "node2", "ct", "node1", "#block1", "job"]
    types = {"drive0": "block-backend", "job": "block-job"}
    nodes = [{"id": i, "name": n, "type": types.get(n, "block-driver")} for i, n in enumerate(names)]
    ids = {n: i for i, n in enumerate(names)}
    edges = [("drive0", "node3", "root"), ("node3", "cor", "backing"), ("node3", "#block1", "file"),
             ("cor", "node2", "file"), ("node2", "ct", "backing"), ("ct", "node1", "backing"),
             ("job", "node2", "main node")]
    xdbg = {"nodes": nodes, "edges": [{"parent": ids[p], "child": ids[c], "name": e,
                                       "perm": [], "shared-perm": []} for p, c, e in edges]}
    named = [
        {"node-name": "node3", "ro": False, "drv": "qcow2", "file": "/d/node3.qcow2",
         "image": {"backing-filename": "/d/node2.qcow2"}},
        {"node-name": "cor", "ro": False, "drv": "copy-on-read", "file": "/d/node2.qcow2", "image": {}},
        {"node-name": "node2", "ro": True, "drv": "qcow2", "file": "/d/node2.qcow2",
         "image": {"backing-filename": "/d/node1.qcow2"}},
        {"node-name": "ct", "ro": True, "drv": "commit_top", "file": "/d/node1.qcow2", "image": {}},
        {"node-name": "node1", "ro": True, "drv": "raw", "file": "/d/node1.raw", "image": {}},
        {"node-name": "#block1", "drv": "file", "file": "/d/node3.qcow2", "image": {}},
    ]
    return xdbg, named


def test_the_chain_follows_backing_and_filtered_children_and_maps_filenames():
    xdbg, named = _graph_replies()
    graph = parse_graph(xdbg, named)
    assert graph is not None
    assert graph.root_of("drive0") == "node3" and graph.root_of("nope") is None
    chain = chain_from(graph, "node3", lambda s: s.replace("/d/", ""))
    assert chain == [ChainNode("node3", "qcow2", "node3.qcow2", "node2.qcow2", False),
                     ChainNode("cor", "copy-on-read", "node2.qcow2", None, False),
                     ChainNode("node2", "qcow2", "node2.qcow2", "node1.qcow2", True),
                     ChainNode("ct", "commit_top", "node1.raw", None, True),
                     ChainNode("node1", "raw", "node1.raw", None, True)]
    assert chain_from(graph, None) == [] and chain_from(graph, "gone") == []
    assert filters_above(graph, "node2") == ["cor"]
    assert filters_above(graph, "node1") == ["ct"]
    assert filters_above(graph, "node3") == []


def test_two_reads_that_list_different_nodes_are_not_used():
    xdbg, named = _graph_replies()
    assert parse_graph(xdbg, named[:-1]) is None
    assert parse_graph(xdbg, named + [{"node-name": "extra", "drv": "qcow2"}]) is None


def test_a_backing_cycle_in_a_read_ends_the_chain():
    xdbg = {"nodes": [{"id": 1, "name": "a", "type": "block-driver"},
                      {"id": 2, "name": "b", "type": "block-driver"}],
            "edges": [{"parent": 1, "child": 2, "name": "backing"},
                      {"parent": 2, "child": 1, "name": "backing"}]}
    named = [{"node-name": "a", "drv": "qcow2", "file": "a"}, {"node-name": "b", "drv": "qcow2", "file": "b"}]
    graph = parse_graph(xdbg, named)
    assert [n.node_name for n in chain_from(graph, "a")] == ["a", "b"]


# -- jobs ---------------------------------------------------------------------------------

def _status(job: str, status: str) -> dict:
    return {"event": "JOB_STATUS_CHANGE", "data": {"id": job, "status": status}}


def test_which_statuses_wait_on_a_verb():
    t = JobTracker()
    t.on_reply(Command("block-commit", {"device": "drive0", "auto-finalize": False}), True, "drive0")
    t.on_reply(Command("block-stream", {"device": "n1", "job-id": "s"}), True, "drive0")
    t.on_reply(Command("block-stream", {"device": "n1", "job-id": "x", "auto-finalize": False}),
               False, "drive0")
    assert t.auto_finalize == {"drive0": False, "s": True}
    assert [t.waits_on_verb("drive0", s) for s in ("pending", "running", "ready", "concluded")] == [
        True, False, True, True]
    assert t.waits_on_verb("s", "pending") is False
    assert t.waits_on_verb("s", "paused") is False          # a drain's pause passes
    t.on_reply(Command("job-pause", {"id": "s"}), True, "drive0")
    assert t.waits_on_verb("s", "paused") and t.waits_on_verb("s", "standby")
    t.on_reply(Command("block-job-resume", {"device": "s"}), True, "drive0")
    assert t.waits_on_verb("s", "paused") is False


def test_statuses_come_from_events_with_drain_pairs_folded():
    t = JobTracker()
    for status in ("created", "running", "paused", "running", "waiting", "pending"):
        t.on_event(_status("s", status))
    t.on_event({"event": "BLOCK_JOB_ERROR", "data": {"device": "c", "action": "stop"}})
    t.on_event({"event": "BLOCK_JOB_ERROR", "data": {"device": "d", "action": "report"}})
    assert t.folded() == {"s": ["created", "running", "waiting", "pending"]}
    assert t.user_paused == {"c": True}
    assert t.settled() is False                              # s pending with auto-finalize
    assert t.settled({"s": "concluded", "c": "paused"}) is True
    t.on_event(_status("c", "null"))
    assert t.user_paused == {}


def test_exit_descriptions():
    assert describe_exit(-9) == "died with signal SIGKILL (9)"
    assert describe_exit(-11) == "died with signal SIGSEGV (11)"
    assert describe_exit(-200) == "died with signal signal 200 (200)"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(None) == "closed its monitor but is still running"


def test_case_filenames_map_to_real_paths_and_back():
    images = CaseImages("/shm/c01", ("n0.raw", "n1.qcow2"))
    assert images.real("n1.qcow2") == "/shm/c01/n1.qcow2"
    assert images.real("other.qcow2") == "other.qcow2"
    assert images.to_case("Can't find '/shm/c01/n0.raw' in the backing chain") == (
        "Can't find 'n0.raw' in the backing chain")


# -- the NBD client, against qemu-nbd ------------------------------------------------------

@pytest.fixture
def nbd_server(tmp_path):
    if shutil.which("qemu-nbd") is None or shutil.which("qemu-img") is None:
        pytest.skip("qemu-nbd is not installed (make qemu installs qemu-utils)")
    image = tmp_path / "d.raw"
    image.write_bytes(b"\x05" * 4096 + bytes(4096))
    sock = str(tmp_path / "nbd.sock")
    server = subprocess.Popen(["qemu-nbd", "--persistent", "--read-only", "--format=raw",
                               f"--socket={sock}", "--export-name=e", str(image)],
                              stderr=subprocess.PIPE)
    for _ in range(500):                      # until qemu-nbd listens (bounded by count)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(sock)
            break
        except OSError:
            time.sleep(0.01)
        finally:
            probe.close()
    yield sock
    server.kill()
    server.wait()


@pytest.mark.qemu
def test_the_nbd_client_reads_an_export_and_is_refused_by_name(nbd_server):
    with NbdClient.connect(nbd_server, "e") as nbd:
        assert nbd.size == 8192 and nbd.read_only
        assert nbd.read(4000, 200) == b"\x05" * 96 + bytes(104)
        with pytest.raises(NbdError) as info:
            nbd.write(0, b"x")
        assert str(info.value) == "NBD export 'e' is read-only"
    with pytest.raises(NbdError) as info:
        NbdClient.connect(nbd_server, "nope")
    assert str(info.value).startswith("NBD export 'nope' refused: ")
