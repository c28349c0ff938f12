"""A QEMU that crashes, hangs, is interrupted or is missing: a finding or a clear error,
never a stuck harness, a leftover process or a leftover file."""
from __future__ import annotations

import os
import re
import signal
import stat
import time

import pytest

from harness.backends.qemu import QemuRunner, run_case
from harness.backends.qemu_core import cores_possible
from harness.backends.qemu_images import CASE_PATH_PREFIX, ROOT_PREFIX, ImageStore
from harness.case import Case, Command, Image, Write, from_dict
from harness.errors import QemuError

pytestmark = pytest.mark.qemu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OK = {"return": {}}
MiB = 1 << 20

#: a commit with 4 MiB to copy at 1 byte/s: held by its speed limit until someone lifts it
THROTTLED = from_dict({
    "format": "blockfuzz-case/1",
    "images": [{"node-name": "n0", "size": 4 * MiB},
               {"node-name": "n1", "writes": [{"offset": 0, "length": 4 * MiB, "pattern": 7}]},
               {"node-name": "n2"}],
    "commands": [
        {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n1",
                                                  "base-node": "n0", "speed": 1, "job-id": "c"}},
        {"execute": "x-wait-jobs"},
        {"execute": "query-jobs"},
    ]})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ended(pid: int, polls: int = 100) -> bool:
    """The process has exited (a zombie awaiting its new parent counts), within
    ``polls`` looks 10 ms apart: SIGKILL lands asynchronously."""
    for _ in range(polls):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def case_dirs(runner: QemuRunner) -> list[str]:
    return sorted(n for n in os.listdir(runner.store.root) if n.startswith("c"))


def test_qemu_killed_mid_case_is_a_qemu_crash_finding_and_leaves_no_process():
    pids: list[int] = []

    def kill_before_the_wait(index: int, command: Command, pid: int) -> None:
        pids.append(pid)
        if index == 1:
            os.kill(pid, signal.SIGKILL)

    with QemuRunner(before_command=kill_before_the_wait) as runner:
        obs = runner.run(THROTTLED)
        assert obs.finding is not None
        assert obs.finding.kind == "qemu-crash"
        assert obs.finding.step == 1
        assert obs.finding.where == "x-wait-jobs"
        assert obs.finding.message.splitlines() == [
            f"qemu-system-x86_64 (pid {pids[0]}) died with signal SIGKILL (9) during command 1 (x-wait-jobs)",
            "stderr:",
            "commands so far:",
            '  0: {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "n1", '
            '"base-node": "n0", "speed": 1, "job-id": "c"}}',
            '  1: {"execute": "x-wait-jobs"}',
        ]
        assert obs.replies == [OK]
        assert obs.job_statuses == {"c": ["created", "running"]}
        assert not alive(pids[0]) and runner.pids() == []
        assert case_dirs(runner) == []
        # the images are still read after the crash
        assert obs.extra["on_disk_backing"] == {"n2.qcow2": "n1.qcow2", "n1.qcow2": "n0.qcow2",
                                                "n0.qcow2": None}
        # the next case gets a fresh process
        again = runner.run(from_dict({"format": "blockfuzz-case/1", "images": [{"node-name": "a"}],
                                      "commands": []}))
        assert again.finding is None and again.chain_names() == ["a"]
        assert runner.pids() != [pids[0]]


#: QEMU 7.2 dies with SIGSEGV reading through the copy-on-read filter of a stream
#: that had nothing to copy and waits in 'pending' (docs/qemu-7.2-findings)
NOOP_STREAM_PENDING = from_dict({
    "format": "blockfuzz-case/1",
    "images": [{"node-name": "n0"}, {"node-name": "n1"}],
    "commands": [{"execute": "block-stream", "arguments": {"device": "drive0", "base-node": "n0",
                                                            "auto-finalize": False}}]})


def test_a_segfault_is_known_by_its_backtrace_and_leaves_no_core_behind():
    if not cores_possible():
        pytest.skip("core files do not reach gdb here (core_pattern is a program, or no gdb)")
    with QemuRunner() as runner:
        obs = runner.run(NOOP_STREAM_PENDING)
        assert (obs.finding.kind, obs.finding.where) == ("qemu-crash", "bdrv_getlength<bdrv_co_common_block_status_above")
        lines = obs.finding.message.splitlines()
        assert lines[0].endswith("died with signal SIGSEGV (11) in bdrv_getlength at the end of the case")
        trace = lines[lines.index("backtrace (gdb, from its core file):") + 1:lines.index("commands so far:")]
        # how deep blk_co_pread is depends on what gdb can unwind (Debian's binary names
        # only its exported functions): below the crash, wherever it is
        assert trace[0] == "  #0 bdrv_getlength"
        assert any(re.fullmatch(r"  #\d+ blk_co_pread", line) for line in trace[1:])
        left = [os.path.join(d, n) for d, _, names in os.walk(runner.store.root) for n in names + _]
        assert not [p for p in left if os.path.basename(p).startswith("core") or p.endswith(".cwd")]


def test_a_failed_assertion_is_known_by_the_qemu_function_that_failed_it():
    """docs/qemu-7.2-findings: block-stream by base filename on a concluded stream's
    named filter, which has no child any more."""
    if not cores_possible():
        pytest.skip("core files do not reach gdb here (core_pattern is a program, or no gdb)")
    from harness.case import load
    case = load(os.path.join(REPO, "docs", "qemu-7.2-findings",
                             "qemu-abort-stream-through-concluded-streams-filter.json"))
    with QemuRunner() as runner:
        obs = runner.run(case)
    assert (obs.finding.kind, obs.finding.where) == ("qemu-crash", "bdrv_find_backing_image<qmp_block_stream")
    lines = obs.finding.message.splitlines()
    assert lines[0].endswith("died with signal SIGABRT (6) in bdrv_find_backing_image "
                             "during command 2 (block-stream)")
    assert any("bdrv_do_skip_filters: Assertion `!bs->drv || !bs->drv->is_filter' failed." in line
               for line in lines[:lines.index("backtrace (gdb, from its core file):")])


def test_a_job_that_never_settles_is_a_hang_with_query_jobs_and_is_cleaned_up():
    with QemuRunner(timeout=0.5, unthrottle=False) as runner:
        obs = runner.run(THROTTLED)
        assert obs.finding is not None
        assert obs.finding.kind == "hang"
        assert obs.finding.step == 1
        assert obs.finding.message.startswith(
            "command 1 (x-wait-jobs): jobs did not settle within 0.5 s; query-jobs: [{")
        assert '"status": "running"' in obs.finding.message and '"id": "c"' in obs.finding.message
        assert obs.replies == [OK]
        assert obs.jobs_left == {"c": "running"}
        assert obs.chain_names() == ["n2", "n1", "n0"]
        assert obs.data == []                 # not read while a job still runs
        assert runner.pids() == [] and case_dirs(runner) == []


def test_x_wait_jobs_lifts_the_speed_limit_of_a_throttled_job(runner):
    obs = runner.run(THROTTLED)
    assert obs.finding is None
    assert obs.replies == [OK, OK, OK]
    assert obs.extra["unthrottled"] == [[1, "c"]]
    assert obs.job_statuses == {"c": ["created", "running", "waiting", "pending", "concluded", "null"]}
    assert obs.chain_names() == ["n2", "n0"]
    assert obs.data == [[0, 4 * MiB, 7]]


def test_ctrl_c_mid_case_kills_qemu_and_removes_the_case_images():
    pids: list[int] = []

    def interrupt(index: int, command: Command, pid: int) -> None:
        pids.append(pid)
        if index == 1:
            raise KeyboardInterrupt

    with QemuRunner(before_command=interrupt) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run(THROTTLED)
        assert not alive(pids[0]) and runner.pids() == []
        assert case_dirs(runner) == []
        root = runner.store.root
    assert not os.path.exists(root)


def test_run_case_uses_a_fresh_process_and_removes_everything(tmp_path):
    obs = run_case(from_dict({"format": "blockfuzz-case/1", "images": [{"node-name": "a"}],
                              "commands": []}), workdir=str(tmp_path))
    assert obs.chain_names() == ["a"] and obs.data == [[0, MiB, 0]]
    assert os.listdir(tmp_path) == []


def test_missing_qemu_tools_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QemuError) as info:
        QemuRunner()
    assert str(info.value) == ("qemu-img not found on PATH: install Debian's qemu-utils "
                               "(apt-get install qemu-utils qemu-system-x86), put it on PATH, "
                               "set QEMU_IMG_PROG or pass --qemu-build DIR")


def test_a_missing_qemu_binary_gives_a_clear_error(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("qemu-img", "qemu-io"):
        (bindir / tool).symlink_to(f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(QemuError) as info:
        run_case(from_dict({"format": "blockfuzz-case/1", "images": [{"node-name": "a"}],
                            "commands": []}), workdir=str(tmp_path))
    assert str(info.value) == ("qemu-system-x86_64 not found on PATH: install Debian's "
                               "qemu-system-x86 (apt-get install qemu-utils qemu-system-x86), "
                               "put it on PATH, set QEMU_PROG or pass --qemu-build DIR")
    assert os.listdir(tmp_path) == ["bin"]


def test_a_qemu_that_exits_at_start_gives_its_status_and_output(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("qemu-img", "qemu-io"):
        (bindir / tool).symlink_to(f"/usr/bin/{tool}")
    fake = bindir / "qemu-storage-daemon"
    fake.write_text("#!/bin/sh\necho 'qemu-storage-daemon: cannot start' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bindir))
    no_device = Case(images=(Image("a"),), commands=(), drive=None)
    with pytest.raises(QemuError) as info:
        run_case(no_device, workdir=str(tmp_path))
    assert str(info.value).startswith("qemu-storage-daemon did not start: qemu-storage-daemon (pid ")
    assert str(info.value).endswith(") exited with status 3; its output: qemu-storage-daemon: cannot start")


def test_a_qemu_img_that_never_finishes_gives_a_clear_error(tmp_path, monkeypatch):
    """A stuck qemu-img (here a script whose child sleeps) is stopped at the timeout,
    with everything it started, and named, instead of a traceback (seen before this
    was handled: subprocess.TimeoutExpired, and the script's child left running)."""
    from harness.backends import qemu_images
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "qemu-io").symlink_to("/usr/bin/qemu-io")
    stuck = bindir / "qemu-img"
    child = tmp_path / "child.pid"
    stuck.write_text(f"#!/bin/sh\n/bin/sleep 600 &\necho $! > {child}\nwait\n")
    stuck.chmod(stuck.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(qemu_images, "QEMU_IMG_TIMEOUT", 1)
    with ImageStore(str(tmp_path)) as store, pytest.raises(QemuError) as info:
        store.checkout((Image("a"),))
    assert str(info.value) == (f"qemu-img create for image 0 ('a.qcow2'): {stuck} did not finish "
                               "within 1 s: check that it is QEMU 7.2's qemu-img (qemu-img --version) "
                               "and that it runs")
    assert ended(int(child.read_text()))


def test_a_qemu_that_never_opens_its_monitor_is_killed_with_what_it_started(tmp_path, monkeypatch):
    """A wrapper script in QEMU's place that never answers: a clear error, and its
    child is killed too (it was left running before QEMU got a process group)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("qemu-img", "qemu-io"):
        (bindir / tool).symlink_to(f"/usr/bin/{tool}")
    stuck = bindir / "qemu-storage-daemon"
    child = tmp_path / "child.pid"
    stuck.write_text(f"#!/bin/sh\n/bin/sleep 600 &\necho $! > {child}\nwait\n")
    stuck.chmod(stuck.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bindir))
    no_device = Case(images=(Image("a"),), commands=(), drive=None)
    with pytest.raises(QemuError) as info:
        run_case(no_device, workdir=str(tmp_path), timeout=0.5)
    assert str(info.value).startswith("qemu-storage-daemon did not start: qemu-storage-daemon (pid ")
    assert ended(int(child.read_text()))


def test_image_roots_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / f"{ROOT_PREFIX}999999999-abc"
    stale.mkdir()
    (stale / "x.qcow2").write_bytes(b"x")
    mine = tmp_path / f"{ROOT_PREFIX}{os.getpid()}-keep"
    mine.mkdir()
    with ImageStore(str(tmp_path)) as store:
        assert not stale.exists() and mine.exists()
        assert os.path.basename(store.root).startswith(f"{ROOT_PREFIX}{os.getpid()}-")


def test_templates_are_built_once_per_layout_and_copies_are_independent(tmp_path):
    images = (Image("n0", writes=(Write(0, 512, 1),)), Image("n1"))
    with ImageStore(str(tmp_path)) as store:
        first, second = store.checkout(images), store.checkout(images)
        assert first.directory != second.directory
        assert len([n for n in os.listdir(store.root) if n.startswith("t")]) == 1
        with open(first.path("n1.qcow2"), "rb") as f:
            header = f.read(4096)
        assert (first.directory + "/n0.qcow2").encode() in header
        first.remove()
        assert os.path.exists(second.path("n0.qcow2"))


def test_case_directories_add_as_many_characters_to_a_path_as_the_model_counts(tmp_path):
    """The model counts CASE_PATH_PREFIX characters for each path in a backing string
    (qcow2 refuses one over 1,023): every case directory, the 1st and the 17th, and
    its template are that long, and a copy's header names the copy's directory."""
    images = (Image("n0"), Image("n1"))
    with ImageStore() as store:                 # where QemuRunner puts them
        copies = [store.checkout(images) for _ in range(17)]
        assert {len(c.directory) + 1 for c in copies} == {CASE_PATH_PREFIX}
        assert [len(os.path.join(store.root, n)) + 1 for n in os.listdir(store.root)
                if n.startswith("t")] == [CASE_PATH_PREFIX]
        with open(copies[16].path("n1.qcow2"), "rb") as f:
            assert (copies[16].directory + "/n0.qcow2").encode() in f.read(4096)
    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    with ImageStore(str(deep)) as store:        # a root too long to pad: names as before
        assert len(os.path.basename(store.checkout(images).directory)) == 16


@pytest.mark.parametrize("image, message", [
    (Image("n0", filename="../x.qcow2"),
     "image 0: filename '../x.qcow2' cannot be used on real QEMU: use a plain file name "
     "(letters, digits, '_', '.', '+', '-')"),
    (Image("n0", format="vmdk"),
     "image 0: format 'vmdk' is not supported here: use qcow2 (raw only for the bottom image)"),
])
def test_images_qemu_cannot_build_are_refused_by_name(tmp_path, image, message):
    with ImageStore(str(tmp_path)) as store, pytest.raises(QemuError) as info:
        store.checkout((image,))
    assert str(info.value) == message


def test_a_qemu_that_stops_answering_is_a_hang_and_is_killed():
    pids: list[int] = []

    def stop(index: int, command: Command, pid: int) -> None:
        pids.append(pid)
        os.kill(pid, signal.SIGSTOP)

    with QemuRunner(timeout=0.3, before_command=stop) as runner:
        obs = runner.run(THROTTLED)
        assert obs.finding is not None
        assert (obs.finding.kind, obs.finding.where, obs.finding.step) == ("hang", "block-commit", 0)
        assert obs.finding.message == ("QEMU did not answer 'block-commit' within 0.3 s; "
                                       "query-jobs: not available, the monitor does not answer")
        assert obs.replies == []
        assert not alive(pids[0]) and runner.pids() == []


def test_a_commit_whose_header_update_fails_kills_qemu_where_the_model_sees_a_use_after_free():
    """corpus/known (docs/qemu-7.2-findings): an intermediate commit with a backing-file longer than
    qcow2 takes. QEMU reports the failed header update, then dies in the completion;
    the model, QEMU 7.2 with no bug put back, has commit_abort touch the commit filter
    bdrv_drop_intermediate freed."""
    from harness.backends.reference import run_case
    from harness.case import load
    case = load(os.path.join(REPO, "corpus", "known",
                             "commit-backing-file-too-long-frees-the-commit-filter.json"))
    model = run_case(case)
    assert (model.finding.kind, model.finding.where) == ("use-after-free", "commit_abort")
    assert "freed at step 1.5 bdrv_drop_intermediate" in model.finding.message
    with QemuRunner() as runner:
        obs = runner.run(case)
    assert obs.finding.kind == "qemu-crash"
    lines = obs.finding.message.splitlines()
    assert "died with signal SIGSEGV (11)" in lines[0] and lines[0].endswith("at the end of the case")
    assert "qemu-system-x86_64: Could not update backing file link: Invalid argument" in \
        [line.strip() for line in lines]


def test_the_commit_use_after_free_through_job_finalize_dies_in_the_qmp_command():
    """docs/qemu-7.2-findings: the same commit, with auto-finalize=false; job-finalize runs
    the completion inside the QMP command, and QEMU dies there, where the model reports
    the same use-after-free as for the bottom half's completion."""
    from harness.backends.reference import run_case as run_model
    from harness.case import load
    from harness.choices import RandomSource
    case = load(os.path.join(REPO, "docs", "qemu-7.2-findings",
                             "qemu-segv-job-finalize-of-commit-with-too-long-backing-file.json"))
    for seed in range(5):
        model = run_model(case, RandomSource(seed))
        assert (model.finding.kind, model.finding.where, model.finding.step) == (
            "use-after-free", "commit_abort", 2)
    with QemuRunner() as runner:
        obs = runner.run(case)
    assert (obs.finding.kind, obs.finding.step) == ("qemu-crash", 2)
    assert obs.replies == [OK, OK]
    first = obs.finding.message.splitlines()[0]
    assert "died with signal SIGSEGV (11)" in first and first.endswith("during command 2 (job-finalize)")
    if cores_possible():
        assert obs.finding.where == "qmp_job_finalize<qmp_marshal_job_finalize"


def test_the_commit_use_after_free_inside_block_streams_drain_dies_in_the_nested_poll():
    """docs/qemu-7.2-findings: the same commit, completing while block-stream inserts its
    copy-on-read filter. The drain of bdrv_insert_node polls, the completion runs there,
    and QEMU dies inside the command (aio_bh_poll<aio_poll) or, when the main loop ran the
    completion first, in the main loop (aio_bh_poll<aio_dispatch): in tries until the
    first, every run one of the two. The model shows both places under its schedules."""
    from harness.backends.reference import run_case as run_model
    from harness.case import load
    from harness.choices import RandomSource
    case = load(os.path.join(REPO, "docs", "qemu-7.2-findings",
                             "qemu-segv-commit-completion-inside-stream-start-drain.json"))
    steps = set()
    for seed in range(12):
        model = run_model(case, RandomSource(seed))
        assert (model.finding.kind, model.finding.where) == ("use-after-free", "commit_abort")
        steps.add(model.finding.step)
    assert steps == {0, 1}          # between the commands, and inside block-stream's drain
    sites = []
    with QemuRunner() as runner:
        while "aio_bh_poll<aio_poll" not in sites and len(sites) < 8:
            obs = runner.run(case)
            assert obs.finding.kind == "qemu-crash"
            lines = obs.finding.message.splitlines()
            assert "died with signal SIGSEGV (11)" in lines[0]
            assert any(line.endswith("Could not update backing file link: Invalid argument")
                       for line in lines)
            if not cores_possible():
                return
            sites.append(obs.finding.where)
    assert set(sites) <= {"aio_bh_poll<aio_poll", "aio_bh_poll<aio_dispatch"}
    assert sites[-1] == "aio_bh_poll<aio_poll"
