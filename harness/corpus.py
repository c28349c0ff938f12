"""Cases on disk: the seed corpus a campaign starts from, and the findings it keeps.

A finding is a case file: the commands, the recorded scheduler choices as
its ``schedule`` and ``expect: {"verdict": kind}``, so ``blockfuzz replay``
reproduces it on any machine. Files are written atomically and named
``<kind>-<content hash>.json``. Findings are deduplicated by their
*signature*, the kind plus where in the model it happened (the function a
use-after-free touched a node in, the transition a job made, ...), not by
message text. Before a finding is reported it is replayed twice: one that
does not reproduce both times is still kept, marked *flaky* in its
description and in the report, never dropped.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from harness import case as case_mod
from harness.case import Case
from harness.check import OK, check

SIGNATURE_PREFIX = "signature: "


@dataclass(frozen=True)
class Outcome:
    """What one run of a case showed, as far as the store cares."""

    kind: str           # "ok" or a finding kind
    where: str = ""
    message: str = ""

    @property
    def signature(self) -> str:
        return signature(self.kind, self.where)


OK_OUTCOME = Outcome("ok")


@dataclass(frozen=True)
class StoredFinding:
    """A finding as the store reports it."""

    outcome: Outcome
    path: str
    replays: tuple[str, ...]        # the kinds the two replays showed
    needs: tuple[str, ...] = ()     # minimized on the model: the schedule's forced decisions

    @property
    def flaky(self) -> bool:
        return any(kind != self.outcome.kind for kind in self.replays)


def judge(case: Case, observation) -> Outcome:
    """The verdict on one run (:func:`harness.check.check`) as the store keeps it
    (most runs are ok: their outcome is one immutable object, made once)."""
    verdict = check(case, observation)
    if verdict is OK:
        return OK_OUTCOME
    return Outcome(verdict.kind, verdict.where, verdict.message)


def signature(kind: str, where: str) -> str:
    """The deduplication key of a finding: its kind and where it happened."""
    return f"{kind}@{where}" if where else kind


def content_hash(case: Case) -> str:
    """12 hex digits of SHA-256 over the case as JSON (its path left out)."""
    return hashlib.sha256(replace(case, path=None).to_json().encode()).hexdigest()[:12]


def iter_cases(directory: str) -> Iterator[Case]:
    """Every ``*.json`` case under ``directory``, recursively, in path order."""
    paths = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths += [os.path.join(root, f) for f in files if f.endswith(".json") and not f.startswith(".")]
    for path in sorted(paths):
        yield case_mod.load(path)


class FindingStore:
    """The findings directory of a campaign.

    ``replay(case) -> Outcome`` runs a case on its own schedule; the store
    calls it twice for every new finding.
    """

    def __init__(self, directory: str, replay: Callable[[Case], Outcome]):
        self.directory = directory
        self.replay = replay
        self.signatures: dict[str, str] = {}     # signature -> path
        self.duplicates = 0
        if os.path.isdir(directory):
            for case in iter_cases(directory):
                self.signatures.setdefault(self._stored_signature(case), case.path or "")

    def _stored_signature(self, case: Case) -> str:
        first = case.description.split("\n", 1)[0]
        if first.startswith(SIGNATURE_PREFIX):
            return first[len(SIGNATURE_PREFIX):]
        return self.replay(case).signature

    def known(self, outcome: Outcome) -> bool:
        return outcome.signature in self.signatures

    def add(self, case: Case, outcome: Outcome, aliases: tuple[str, ...] = ()) -> StoredFinding | None:
        """Replay ``case`` twice and write it; None if its signature is already stored.

        ``aliases`` are more signatures to file under it (a finding found as
        one signature and minimized into another is known by both).
        """
        if self.known(outcome):
            self.duplicates += 1
            return None
        case = replace(case, expect={"verdict": outcome.kind}, path=None)
        replays = tuple(self.replay(case).kind for _ in range(2))
        note = "" if all(k == outcome.kind for k in replays) else \
            f"\nflaky: replayed as {', '.join(replays)}"
        case = replace(case, description=f"{SIGNATURE_PREFIX}{outcome.signature}{note}\n{outcome.message}")
        path = os.path.join(self.directory, f"{outcome.kind}-{content_hash(case)}.json")
        case_mod.save(case, path)
        for sig in (outcome.signature,) + aliases:
            self.signatures.setdefault(sig, path)
        return StoredFinding(outcome, path, replays)
