"""What the QEMU backend knows about a case's jobs, from events and from its own commands.

QEMU reports job status changes as ``JOB_STATUS_CHANGE`` events (``job.c``'s
``job_state_transition``). Whether a job *waits on a verb* (and so is settled
for ``x-wait-jobs``) also depends on things only the sender knows: a job
created with ``auto-finalize: false`` waits in ``pending`` for
``job-finalize``; a job paused by ``job-pause`` (or by ``on-error: stop``)
waits in ``paused``/``standby`` for ``job-resume``, whereas a drain's pause is
transient. A ``ready`` job (mirror, active commit) waits for
``job-complete``.
"""
from __future__ import annotations

from harness.case import Command
from harness.observation import fold_drain_pairs

#: commands that create a job (block/monitor/block-hmp-cmds.c, blockdev.c)
JOB_COMMANDS = ("block-stream", "block-commit", "drive-mirror", "blockdev-mirror",
                "drive-backup", "blockdev-backup")
PAUSE_COMMANDS = {"job-pause": "id", "block-job-pause": "device"}
RESUME_COMMANDS = {"job-resume": "id", "block-job-resume": "device"}


class JobTracker:
    """Job statuses, per job, for one case."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.sequences: dict[str, list[str]] = {}
        self.auto_finalize: dict[str, bool] = {}
        self.user_paused: dict[str, bool] = {}

    def on_event(self, event: dict) -> None:
        data = event.get("data", {})
        if event["event"] == "JOB_STATUS_CHANGE":
            job, status = data["id"], data["status"]
            self.status[job] = status
            self.sequences.setdefault(job, []).append(status)
            if status == "null":
                self.user_paused.pop(job, None)
        elif event["event"] == "BLOCK_JOB_ERROR" and data.get("action") == "stop":
            self.user_paused[data["device"]] = True

    def on_reply(self, command: Command, ok: bool, drive: str | None) -> None:
        """Note what a successful command did: the auto-finalize setting of a job it
        created (its id: ``job-id``, else the device's name), user pauses and resumes."""
        if not ok:
            return
        args = command.arguments
        if command.execute in JOB_COMMANDS:
            job = args.get("job-id") or drive
            if job:
                self.auto_finalize[str(job)] = bool(args.get("auto-finalize", True))
        elif command.execute in PAUSE_COMMANDS:
            self.user_paused[str(args.get(PAUSE_COMMANDS[command.execute]))] = True
        elif command.execute in RESUME_COMMANDS:
            self.user_paused[str(args.get(RESUME_COMMANDS[command.execute]))] = False

    def waits_on_verb(self, job: str, status: str) -> bool:
        """Whether a job in ``status`` can only move on when someone sends a verb."""
        if status in ("concluded", "null", "ready"):
            return True
        if status == "pending":
            return not self.auto_finalize.get(job, True)
        if status in ("paused", "standby"):
            return self.user_paused.get(job, False)
        return False

    def settled(self, jobs: dict[str, str] | None = None) -> bool:
        """Every job concluded, gone, or waiting on a verb (``jobs``: id -> status,
        e.g. from ``query-jobs``; default: the statuses the events gave)."""
        jobs = self.status if jobs is None else jobs
        return all(self.waits_on_verb(job, status) for job, status in jobs.items())

    def folded(self) -> dict[str, list[str]]:
        """Each job's status sequence with drain pause pairs folded away."""
        return {job: fold_drain_pairs(seq) for job, seq in self.sequences.items()}
