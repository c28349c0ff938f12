"""The verdict: the backend's finding first, then the oracle's most serious
violation; and every difference from a case's ``expect``, worded exactly."""
from __future__ import annotations

from dataclasses import replace

from harness.case import Case, Command, Image
from harness.check import PRIORITY, Verdict, check, compare_expect
from harness.observation import ChainNode, Finding, Observation
from harness.oracle import Violation

M = 1 << 20
OK = {"return": {}}


def make_case(commands=(), expect=None) -> Case:
    images = (Image("node0", M, 65536, (), "node0.raw", "raw"), Image("node1"), Image("node2"))
    return Case(images, tuple(commands), expect=expect)


def good_chain(*names) -> list[ChainNode]:
    files = {"node0": "node0.raw", "node1": "node1.qcow2", "node2": "node2.qcow2"}
    out = []
    for k, name in enumerate(names):
        if name == "commit-filter":
            out.append(ChainNode(name, "commit_top", files[names[k + 1]], None))
        else:
            nxt = next((files[n] for n in names[k + 1:] if n in files), None)
            out.append(ChainNode(name, "raw" if name == "node0" else "qcow2", files[name], nxt))
    return out


def observe(replies=(), names=("node2", "node1", "node0"), **kw) -> Observation:
    return Observation(replies=list(replies), chain=good_chain(*names), data=[[0, M, 0]], **kw)


def test_a_clean_run_is_ok():
    verdict = check(make_case(), observe())
    assert verdict == Verdict("ok")
    assert (verdict.ok, str(verdict)) == (True, "ok")


def test_the_backends_finding_wins_and_the_violations_are_kept():
    finding = Finding("use-after-free", "node 'commit-filter' was freed at step 3.7 and touched",
                      "bdrv_set_backing_hd", 3)
    case = make_case([Command("job-dismiss", {"id": "nope"})])
    verdict = check(case, observe([OK], finding=finding))
    assert (verdict.kind, verdict.message, verdict.where) == (
        "use-after-free", "node 'commit-filter' was freed at step 3.7 and touched",
        "bdrv_set_backing_hd")
    assert [v.kind for v in verdict.violations] == ["accept-mismatch"]
    assert str(verdict) == "use-after-free: node 'commit-filter' was freed at step 3.7 and touched"


def test_the_most_serious_violation_names_the_verdict():
    """A job refused wrongly and a chain that lost node1: wrong-backing first."""
    case = make_case([Command("job-dismiss", {"id": "nope"})])
    verdict = check(case, observe([OK], names=("node2", "node0")))
    assert [v.kind for v in verdict.violations] == ["wrong-backing", "accept-mismatch"]
    verdict = check(case, observe([OK], names=("node2", "node0"),
                                  events=[{"event": "JOB_STATUS_CHANGE",
                                           "data": {"id": "x", "status": "running"}}]))
    assert [v.kind for v in verdict.violations] == [
        "illegal-transition", "accept-mismatch", "wrong-backing", "accept-mismatch"]
    assert (verdict.kind, verdict.message, verdict.where) == (
        "illegal-transition", "job 'x': first status is running, expected created",
        "undefined->running")


def test_priority_order():
    assert PRIORITY == ("use-after-free", "crash", "hang", "illegal-transition",
                        "wrong-backing", "data-mismatch", "accept-mismatch")


def test_a_verdict_from_an_accept_mismatch_carries_its_where():
    case = make_case([Command("job-dismiss", {"id": "nope"})])
    verdict = check(case, observe([OK]))
    assert verdict == Verdict(
        "accept-mismatch",
        "command 0 (job-dismiss): expected error GenericError: Job not found, observed success",
        where="job-dismiss:accepted", violations=(Violation(
            "accept-mismatch", 0, "error GenericError: Job not found", "success",
            "command 0 (job-dismiss): expected error GenericError: Job not found, observed success",
            "job-dismiss:accepted"),))


# --- compare_expect ---------------------------------------------------------------

STREAM = Command("block-stream", {"device": "drive0", "job-id": "s"})
DISMISS = Command("job-dismiss", {"id": "s"})


def test_no_expect_means_ok_is_expected():
    case = make_case()
    assert compare_expect(case, observe(), Verdict("ok")) == []
    assert compare_expect(case, observe(), Verdict("hang", "stuck")) == [
        "verdict: expected ok, observed hang"]


def test_the_expected_verdict_is_compared():
    case = make_case(expect={"verdict": "use-after-free"})
    assert compare_expect(case, observe(), Verdict("use-after-free", "x")) == []
    assert compare_expect(case, observe(), Verdict("ok")) == [
        "verdict: expected use-after-free, observed ok"]


def test_replies_success_matches_any_return_and_errors_match_letter_for_letter():
    want_error = {"error": {"class": "GenericError", "desc": "Job not found"}}
    case = make_case([STREAM, DISMISS, DISMISS],
                     expect={"replies": {"0": {"return": {}}, "1": want_error, "2": want_error}})
    got = [{"return": {"anything": 1}}, want_error,
           {"error": {"class": "GenericError", "desc": "Job not found."}}]
    assert compare_expect(case, observe(got), Verdict("ok")) == [
        "reply 2 (job-dismiss): expected error GenericError: Job not found, "
        "observed error GenericError: Job not found."]


def test_reply_differences_in_index_order_with_class_and_missing_replies():
    case = make_case([STREAM, DISMISS, DISMISS], expect={"replies": {
        "10": {"return": {}},
        "2": {"error": {"class": "DeviceNotActive", "desc": "Job not found"}},
        "0": {"return": {}}}})
    got = [{"error": {"class": "GenericError", "desc": "busy"}}, OK,
           {"error": {"class": "GenericError", "desc": "Job not found"}}]
    assert compare_expect(case, observe(got), Verdict("ok")) == [
        "reply 0 (block-stream): expected success, observed error GenericError: busy",
        "reply 2 (job-dismiss): expected error DeviceNotActive: Job not found, "
        "observed error GenericError: Job not found",
        "reply 10 (?): expected success, observed no reply"]


def test_an_error_expected_but_success_observed():
    case = make_case([DISMISS], expect={"replies": {"0": {"error": {"class": "GenericError",
                                                                    "desc": "Job not found"}}}})
    assert compare_expect(case, observe([OK]), Verdict("ok")) == [
        "reply 0 (job-dismiss): expected error GenericError: Job not found, observed success"]


def test_the_final_chain_is_compared_with_filters_collapsed():
    case = make_case(expect={"final-chain": ["node2", "node0"]})
    collapsed = observe(names=("node2", "commit-filter", "node0"))
    assert compare_expect(case, collapsed, Verdict("ok")) == []
    assert compare_expect(case, observe(), Verdict("ok")) == [
        "final-chain: expected node2→node0, observed node2→node1→node0"]
    assert compare_expect(case, observe(names=()), Verdict("ok")) == [
        "final-chain: expected node2→node0, observed (empty)"]


def test_every_difference_is_listed_verdict_first():
    case = replace(make_case([DISMISS]), expect={
        "verdict": "wrong-backing", "replies": {"0": {"return": {}}}, "final-chain": ["node2"]})
    assert compare_expect(case, observe([{"error": {"class": "GenericError", "desc": "no"}}]),
                          Verdict("ok")) == [
        "verdict: expected wrong-backing, observed ok",
        "reply 0 (job-dismiss): expected success, observed error GenericError: no",
        "final-chain: expected node2, observed node2→node1→node0"]
