"""Findings on disk: atomic case files named by kind and content hash, one per signature."""
import json
import os
from dataclasses import replace

from harness import case as case_mod
from harness.backends.reference import run_case
from harness.case import Case, Command, Image
from harness.corpus import FindingStore, Outcome, content_hash, iter_cases, judge, signature

CASE = Case(images=(Image("node0"), Image("node1")),
            commands=(Command("block-stream", {"device": "drive0"}),),
            schedule={"choices": [1, 0, 2]})
UAF = Outcome("use-after-free", "bdrv_set_backing_hd", "node 'commit-filter' was freed")


def replaying(*kinds):
    """A replay function that answers ``kinds`` in turn and records what it ran."""
    calls = []

    def replay(case):
        calls.append(case)
        return Outcome(kinds[(len(calls) - 1) % len(kinds)], UAF.where)
    replay.calls = calls
    return replay


def test_signature_is_kind_and_where():
    assert signature("use-after-free", "bdrv_set_backing_hd") == "use-after-free@bdrv_set_backing_hd"
    assert signature("hang", "") == "hang"
    assert UAF.signature == "use-after-free@bdrv_set_backing_hd"


def test_content_hash_ignores_the_path_and_sees_the_content():
    assert content_hash(CASE) == content_hash(replace(CASE, path="elsewhere.json"))
    assert content_hash(CASE) != content_hash(replace(CASE, schedule={"choices": [1]}))
    assert len(content_hash(CASE)) == 12


def test_a_finding_is_replayed_twice_and_written_with_its_expectation(tmp_path):
    replay = replaying("use-after-free")
    store = FindingStore(str(tmp_path), replay)
    stored = store.add(CASE, UAF)
    assert len(replay.calls) == 2
    assert replay.calls[0].expect == {"verdict": "use-after-free"}
    assert not stored.flaky and stored.replays == ("use-after-free", "use-after-free")
    name = os.path.basename(stored.path)
    assert name.startswith("use-after-free-") and name.endswith(".json")
    saved = case_mod.load(stored.path)
    assert name == f"use-after-free-{content_hash(replace(saved, path=None))}.json"
    assert saved.expect == {"verdict": "use-after-free"}
    assert saved.schedule == {"choices": [1, 0, 2]}
    assert saved.description == ("signature: use-after-free@bdrv_set_backing_hd\n"
                                 "node 'commit-filter' was freed")
    assert [p.name for p in tmp_path.iterdir()] == [name]     # no temporary file left


def test_a_second_finding_with_the_same_signature_is_a_duplicate(tmp_path):
    store = FindingStore(str(tmp_path), replaying("use-after-free"))
    assert store.add(CASE, UAF) is not None
    other = replace(CASE, commands=CASE.commands * 2)
    assert store.add(other, UAF) is None
    assert store.duplicates == 1
    assert len(list(tmp_path.iterdir())) == 1


def test_aliases_file_more_signatures_under_one_finding(tmp_path):
    store = FindingStore(str(tmp_path), replaying("use-after-free"))
    stored = store.add(CASE, UAF, aliases=("use-after-free@bdrv_attach_child",))
    assert store.signatures == {UAF.signature: stored.path,
                                "use-after-free@bdrv_attach_child": stored.path}


def test_a_finding_that_does_not_replay_is_kept_as_flaky(tmp_path):
    store = FindingStore(str(tmp_path), replaying("ok", "use-after-free"))
    stored = store.add(CASE, UAF)
    assert stored.flaky and stored.replays == ("ok", "use-after-free")
    saved = case_mod.load(stored.path)
    assert saved.description.split("\n")[:2] == ["signature: use-after-free@bdrv_set_backing_hd",
                                                 "flaky: replayed as ok, use-after-free"]
    assert saved.expect == {"verdict": "use-after-free"}


def test_a_store_knows_the_findings_already_on_disk(tmp_path):
    FindingStore(str(tmp_path), replaying("use-after-free")).add(CASE, UAF)
    plain = replace(CASE, description="written by hand", expect={"verdict": "hang"})
    case_mod.save(plain, str(tmp_path / "hand.json"))
    replay = replaying("hang")
    again = FindingStore(str(tmp_path), replay)
    assert set(again.signatures) == {UAF.signature, "hang@bdrv_set_backing_hd"}
    assert len(replay.calls) == 1            # only the file without a signature line
    assert again.known(UAF)


def test_iter_cases_walks_in_path_order_skipping_hidden_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/2.json", "a.json", ".hidden/x.json", ".tmp-1.json"):
        case_mod.save(CASE, str(tmp_path / rel))
    (tmp_path / "notes.txt").write_text("not a case")
    assert [os.path.relpath(c.path, tmp_path) for c in iter_cases(str(tmp_path))] == ["a.json", "b/2.json"]


def test_judge_takes_the_model_fault_first(tmp_path):
    with open("corpus/regressions/overlapping_5-stream-prepare-no-drain.json") as f:
        case = case_mod.from_dict(json.load(f))
    outcome = judge(case, run_case(case))
    assert (outcome.kind, outcome.where) == ("use-after-free", "bdrv_set_backing_hd")
    assert outcome.message.startswith("node 'commit-filter' was freed")
    assert judge(case, run_case(replace(case, bugs=()))) == Outcome("ok")
