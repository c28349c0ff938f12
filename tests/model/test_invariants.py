"""Invariants of the model at every QMP command boundary, over generated cases.

Between two commands no drain is active, so every quiesce counter is back at
zero, jobs are paused only by the user, no edge points at a freed node and
nothing freed is still named. A drain-accounting or refcount bug in the model
breaks one of these long before it shows as a wrong verdict.
"""
import pytest

from harness.backends.reference import build
from harness.choices import RandomSource
from harness.generate import generate
from reference import qmp
from reference.errors import ModelFault
from reference.machine import Machine

CASES = 300


def live_nodes(m):
    seen, todo = {}, [blk.bs for blk in m.blks.values() if blk.bs is not None]
    todo += [c.bs for j in m.jobs.values() for c in j.edges]
    todo += list(m.named_nodes.values())
    if m.top_node is not None:
        todo.append(m.top_node)
    while todo:
        bs = todo.pop()
        if id(bs) in seen:
            continue
        seen[id(bs)] = bs
        todo += [c.bs for c in bs.children]
    return list(seen.values())


def check_invariants(m, where):
    assert m.drain_depth == 0 and m.aio.poll_depth == 0, where
    # the one drained section that outlives a command: an active commit's, from the end
    # of mirror_run (converged and asked to finish, or force-cancelled: need_drain) to
    # its exit, which a later command (job-finalize) or the loop runs; the jobs on the
    # nodes it drains stay paused by it
    held = [j for j in m.jobs.values() if getattr(j, "src_drained", False)]
    assert all(j.status not in ("concluded", "null") for j in held), where
    for bs in live_nodes(m):
        if bs is m.top_node and bs.freed_at is not None:
            continue          # a top without a device may legitimately be dropped
        assert bs.freed_at is None, f"{where}: freed node {bs.node_name} still reachable"
        assert held or bs.quiesce_counter == 0 and bs.recursive_quiesce_counter == 0, \
            f"{where}: {bs.node_name} left quiesced ({bs.quiesce_counter}/{bs.recursive_quiesce_counter})"
        assert bs.refcnt >= len(bs.parents) and bs.refcnt > 0, f"{where}: refcnt of {bs.node_name}"
        for c in bs.parents:
            assert held or c.parent_quiesce_counter == 0, f"{where}: edge {c} left quiesced"
    for name, bs in m.named_nodes.items():
        assert bs.freed_at is None and bs.node_name == name, f"{where}: stale name {name}"
    for blk in m.blks.values():
        assert held or blk.quiesce_counter == 0, f"{where}: {blk.name} left quiesced"
    for job in m.jobs.values():
        if job.status not in ("concluded", "null"):
            assert held or job.pause_count == int(job.user_paused), \
                f"{where}: job {job.id} pause_count {job.pause_count} (user_paused={job.user_paused})"


@pytest.mark.parametrize("chunk", range(3))
def test_invariants_hold_between_commands(chunk):
    checked = 0
    for seed in range(chunk * CASES // 3, (chunk + 1) * CASES // 3):
        case = generate(RandomSource(seed))
        src = RandomSource(seed + 10_000)
        m = Machine(src.choose)
        build(m, case)
        try:
            for i, cmd in enumerate(case.commands):
                m.cmd_index = i
                qmp.execute(m, cmd.execute, dict(cmd.arguments))
                check_invariants(m, f"seed {seed} after command {i} ({cmd.execute})")
                checked += 1
            qmp.x_wait_jobs(m)
        except ModelFault:
            continue          # a hang or fault is the oracle's business, not an invariant
        check_invariants(m, f"seed {seed} at the end")
    assert checked > CASES
