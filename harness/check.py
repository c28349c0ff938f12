"""The verdict on one run: ``ok``, or a finding with a kind and a report.

:func:`check` judges an :class:`~harness.observation.Observation` against
the oracle (:mod:`harness.oracle`); :func:`compare_expect` lists how a run
differs from what its case file says it must show::

    verdict = check(case, observation)
    for line in compare_expect(case, observation, verdict):
        print(line)     # "verdict: expected ok, observed use-after-free"
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.oracle import Violation, describe_reply, violations

if TYPE_CHECKING:
    from harness.case import Case
    from harness.observation import Observation

#: When several things went wrong, the verdict names the first kind here.
PRIORITY = ("use-after-free", "crash", "hang", "illegal-transition",
            "wrong-backing", "data-mismatch", "accept-mismatch")


@dataclass(frozen=True)
class Verdict:
    """``kind`` is "ok" or a finding kind; ``where`` deduplicates findings;
    ``differences`` are filled in by callers that compare with ``expect``."""

    kind: str
    message: str = ""
    differences: tuple[str, ...] = ()
    where: str = ""
    violations: tuple[Violation, ...] = ()

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def __str__(self) -> str:
        return self.kind if self.ok else f"{self.kind}: {self.message}"


def check(case: "Case", observation: "Observation") -> Verdict:
    """The verdict on ``observation``: the backend's own finding wins, else
    the oracle's most serious violation (:data:`PRIORITY`), else ok."""
    found = tuple(violations(case, observation))
    finding = observation.finding
    if finding is not None:
        return Verdict(finding.kind, finding.message, where=finding.where, violations=found)
    if not found:
        return OK
    first = min(found, key=_rank)
    return Verdict(first.kind, first.message, where=first.where, violations=found)


#: the verdict of most runs, made once: a Verdict is immutable
OK = Verdict("ok")


def _rank(violation: Violation) -> int:
    kind = violation.kind
    return PRIORITY.index(kind) if kind in PRIORITY else len(PRIORITY)


def compare_expect(case: "Case", observation: "Observation", verdict: Verdict) -> list[str]:
    """Each way the run differs from ``case.expect``, as "…: expected …, observed …"."""
    expect = case.expect or {}
    out = []
    want = expect.get("verdict", "ok")
    if verdict.kind != want:
        out.append(f"verdict: expected {want}, observed {verdict.kind}")
    for key in sorted(expect.get("replies", {}), key=int):
        line = _compare_reply(case, observation, int(key), expect["replies"][key])
        if line is not None:
            out.append(line)
    if "final-chain" in expect:
        got = observation.chain_names(collapse_filters=True)
        if list(expect["final-chain"]) != got:
            out.append(f"final-chain: expected {_chain(expect['final-chain'])}, "
                       f"observed {_chain(got)}")
    return out


def _compare_reply(case: "Case", observation: "Observation", index: int, want: Any) -> str | None:
    got = observation.replies[index] if index < len(observation.replies) else None
    if _reply_matches(want, got):
        return None
    name = case.commands[index].execute if index < len(case.commands) else "?"
    return (f"reply {index} ({name}): expected {describe_reply(want)}, "
            f"observed {describe_reply(got)}")


def _reply_matches(want: Any, got: dict | None) -> bool:
    """``{"return": …}`` matches any success; errors compare class and desc."""
    if got is None:
        return False
    if "return" in want:
        return "return" in got
    error = got.get("error")
    return error is not None and (error.get("class"), error.get("desc")) == \
        (want["error"].get("class"), want["error"].get("desc"))


def _chain(names) -> str:
    return "→".join(names) if names else "(empty)"
