"""The case format: records, defaults, round trips, every error message, atomic save, seeds."""
from __future__ import annotations

import copy
import glob
import json
import os

import jsonschema
import pytest

from harness import case as case_mod
from harness.case import (FINDING_KINDS, SUPPORTED_COMMANDS, Case, Command, Image, Write,
                          from_dict, load, save)
from harness.errors import CaseError, UsageError
from reference.bugs import BUGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS_030 = os.path.join(REPO, "corpus", "seeds", "030")
TESTS_030 = ("test_stream_parallel", "test_overlapping_1", "test_overlapping_2",
             "test_overlapping_3", "test_overlapping_4", "test_overlapping_5",
             "test_stream_commit_1", "test_stream_commit_2", "test_stream_base_node_name")

MINIMAL = {
    "format": "blockfuzz-case/1",
    "images": [{"node-name": "node0"}, {"node-name": "node1"}, {"node-name": "node2"}],
    "commands": [
        {"execute": "block-stream", "arguments": {"device": "node1", "job-id": "s"}},
        {"execute": "x-wait-jobs"},
    ],
}

FULL = {
    "format": "blockfuzz-case/1",
    "description": "every field",
    "images": [
        {"node-name": "base", "size": 2097152, "cluster-size": 65536, "format": "raw",
         "writes": [{"offset": 0, "length": 512, "pattern": 1}]},
        {"node-name": "mid", "cluster-size": 512, "filename": "mid.img"},
        {"node-name": "top", "size": 1048576},
    ],
    "drive": "disk",
    "bugs": sorted(BUGS)[:1],
    "commands": [
        {"execute": "block-commit",
         "arguments": {"device": "disk", "top-node": "mid", "base-node": "base", "speed": 0,
                       "auto-finalize": False, "filter-node-name": "cf"}},
        {"execute": "x-step", "arguments": {"count": 3}},
        {"execute": "x-guest-write", "arguments": {"offset": 0, "length": 1048576, "pattern": 9}},
        {"execute": "job-finalize", "arguments": {"id": "disk"}},
        {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
        {"execute": "x-wait-jobs"},
    ],
    "schedule": {"choices": [0, 2, 1]},
    "expect": {"verdict": "use-after-free",
               "replies": {"0": {"return": {}},
                           "3": {"error": {"class": "GenericError", "desc": "Job not found"}}},
               "final-chain": ["top", "base"]},
}


def changed(edit, base=MINIMAL):
    data = copy.deepcopy(base)
    edit(data)
    return data


def message(data) -> str:
    with pytest.raises(CaseError) as info:
        from_dict(data, "c.json")
    return str(info.value)


# --------------------------------------------------------------------------
# Records and defaults


def test_defaults_of_a_minimal_case():
    case = from_dict(MINIMAL, "c.json")
    assert case.images == (Image("node0", 1 << 20, 64 << 10, (), "node0.qcow2", "qcow2"),
                           Image("node1", 1 << 20, 64 << 10, (), "node1.qcow2", "qcow2"),
                           Image("node2", 1 << 20, 64 << 10, (), "node2.qcow2", "qcow2"))
    assert case.commands == (Command("block-stream", {"device": "node1", "job-id": "s"}),
                             Command("x-wait-jobs", {}))
    assert (case.drive, case.bugs, case.schedule, case.expect, case.description, case.path) == \
        ("drive0", (), {"policy": "random", "seed": 0}, None, "", "c.json")


def test_size_and_cluster_size_default_to_the_first_image():
    case = from_dict(FULL)
    assert [(i.size, i.cluster_size) for i in case.images] == \
        [(2097152, 65536), (2097152, 512), (1048576, 65536)]


def test_filenames_default_by_format():
    case = from_dict(FULL)
    assert [i.filename for i in case.images] == ["base.raw", "mid.img", "top.qcow2"]
    assert Image("n", format="raw").filename == "n.raw"
    assert Image("n").filename == "n.qcow2"


def test_full_case_records():
    case = from_dict(FULL)
    assert case.images[0].writes == (Write(0, 512, 1),)
    assert case.drive == "disk"
    assert case.bugs == tuple(sorted(BUGS)[:1])
    assert case.schedule == {"choices": [0, 2, 1]}
    assert case.expect["final-chain"] == ["top", "base"]


def test_from_dict_does_not_alias_its_input():
    data = copy.deepcopy(FULL)
    case = from_dict(data)
    data["commands"][0]["arguments"]["speed"] = 7
    data["expect"]["final-chain"].append("mid")
    assert case.commands[0].arguments["speed"] == 0
    assert case.expect["final-chain"] == ["top", "base"]


def test_null_drive_is_kept():
    case = from_dict(changed(lambda d: d.update(drive=None)))
    assert case.drive is None
    assert case.to_dict()["drive"] is None


def test_exported_names_match_the_schema():
    schema = case_mod.schema()
    assert list(SUPPORTED_COMMANDS) == schema["$defs"]["command"]["properties"]["execute"]["enum"]
    assert SUPPORTED_COMMANDS[-3:] == ("x-step", "x-wait-jobs", "x-guest-write")
    assert ["ok", *FINDING_KINDS] == schema["$defs"]["expect"]["properties"]["verdict"]["enum"]


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(case_mod.schema())
    assert case_mod.schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


VALUE_KEYWORDS = {"type", "enum", "const", "pattern", "minimum", "maximum", "multipleOf",
                  "minItems", "maxItems", "uniqueItems"}


def test_every_value_check_in_the_schema_says_what_it_expects():
    # _explain builds "expected <description>, got <value>" from these. Conditions
    # ("if", and the "is-..." definitions they use) never report errors themselves.
    schema = case_mod.schema()
    seen = []

    def walk(node, where):
        if isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")
        elif isinstance(node, dict):
            if VALUE_KEYWORDS & node.keys():
                seen.append(where)
                assert node.get("description"), where
            for key, value in node.items():
                if key in ("properties", "$defs"):
                    for name, sub in value.items():
                        if not name.startswith("is-"):
                            walk(sub, f"{where}/{key}/{name}")
                elif key != "if":
                    walk(value, f"{where}/{key}")

    walk(schema, "#")
    assert "#/$defs/write/properties/length" in seen and "#/properties/format" in seen


# --------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("data", [MINIMAL, FULL], ids=["minimal", "full"])
def test_round_trip_through_dict(data):
    case = from_dict(data)
    assert from_dict(case.to_dict()) == case


def test_round_trip_of_a_case_built_in_python():
    case = Case(images=(Image("a", size=4096, cluster_size=512, format="raw"),
                        Image("b", size=8192, writes=(Write(4096, 4096, 255),)),
                        Image("c", filename="c.img")),
                commands=(Command("block-stream", {"device": "b", "job-id": "j"}),
                          Command("x-step", {"count": 1})),
                drive=None, schedule={"policy": "pct", "seed": 3, "depth": 2},
                expect={"verdict": "ok"}, description="built")
    again = from_dict(case.to_dict())
    assert again == case
    # c keeps Image's own defaults, which differ from the first image's: written out.
    assert case.to_dict()["images"][2] == \
        {"node-name": "c", "size": 1048576, "cluster-size": 65536, "filename": "c.img"}


def test_to_dict_omits_what_defaults_give_back():
    out = from_dict(MINIMAL).to_dict()
    assert out == {
        "format": "blockfuzz-case/1",
        "images": [{"node-name": "node0", "size": 1048576, "cluster-size": 65536},
                   {"node-name": "node1"}, {"node-name": "node2"}],
        "bugs": [],
        "commands": [{"execute": "block-stream", "arguments": {"device": "node1", "job-id": "s"}},
                     {"execute": "x-wait-jobs"}],
        "schedule": {"policy": "random", "seed": 0},
    }


def test_to_json_keeps_short_values_on_one_line():
    text = from_dict(MINIMAL).to_json()
    assert text == (
        '{\n'
        '  "format": "blockfuzz-case/1",\n'
        '  "images": [\n'
        '    {"node-name": "node0", "size": 1048576, "cluster-size": 65536},\n'
        '    {"node-name": "node1"},\n'
        '    {"node-name": "node2"}\n'
        '  ],\n'
        '  "bugs": [],\n'
        '  "commands": [\n'
        '    {"execute": "block-stream", "arguments": {"device": "node1", "job-id": "s"}},\n'
        '    {"execute": "x-wait-jobs"}\n'
        '  ],\n'
        '  "schedule": {"policy": "random", "seed": 0}\n'
        '}\n')
    assert json.loads(text) == from_dict(MINIMAL).to_dict()


def test_to_json_breaks_long_values():
    long_desc = {"execute": "block-stream", "arguments": {"device": "d" * 140}}
    text = from_dict(changed(lambda d: d["commands"].insert(0, long_desc))).to_json()
    assert '    {\n      "execute": "block-stream",\n      "arguments": {\n' in text
    assert json.loads(text)["commands"][0] == long_desc


# --------------------------------------------------------------------------
# Every error message, exactly

CMD0 = "c.json: $.commands[0]"

SCHEMA_ERRORS = [
    # the document and its keys
    (lambda d: d.clear() or d.update(x=[1, 2]),
     "c.json: $: unknown key 'x'; expected one of 'format', 'description', 'images', 'drive', "
     "'bugs', 'commands', 'schedule', 'expect'"),
    (lambda d: d.update(base_node=1),
     "c.json: $: unknown key 'base_node'; expected one of 'format', 'description', 'images', "
     "'drive', 'bugs', 'commands', 'schedule', 'expect'"),
    (lambda d: d.update(image=[]), "c.json: $: unknown key 'image'; did you mean 'images'?"),
    (lambda d: d.pop("commands"), "c.json: $: missing key 'commands'"),
    (lambda d: d.update(format="blockfuzz-case/2"),
     'c.json: $.format: expected "blockfuzz-case/1", got "blockfuzz-case/2"'),
    (lambda d: d.update(description=["x"]), "c.json: $.description: expected a string, got a list of 1 item"),
    # images
    (lambda d: d.update(images=[]),
     "c.json: $.images: expected a list of 1 to 16 images, bottom first, got a list of 0 items"),
    (lambda d: d.update(images=[{"node-name": f"n{i}"} for i in range(17)]),
     "c.json: $.images: expected a list of 1 to 16 images, bottom first, got a list of 17 items"),
    (lambda d: d["images"].__setitem__(1, "node1"),
     'c.json: $.images[1]: expected an image object, got "node1"'),
    (lambda d: d["images"][1].update({"node_name": "x"}),
     "c.json: $.images[1]: unknown key 'node_name'; did you mean 'node-name'?"),
    (lambda d: d["images"][1].pop("node-name"), "c.json: $.images[1]: missing key 'node-name'"),
    (lambda d: d["images"][0].update({"node-name": "0node"}),
     "c.json: $.images[0].node-name: expected a QEMU node name (a letter, then letters, digits, "
     "'-', '.', '_'; at most 31 characters), got \"0node\""),
    (lambda d: d["images"][0].update({"node-name": "n" * 32}),
     "c.json: $.images[0].node-name: expected a QEMU node name (a letter, then letters, digits, "
     "'-', '.', '_'; at most 31 characters), got \"" + "n" * 32 + "\""),
    (lambda d: d["images"][0].update({"node-name": "#block1"}),
     "c.json: $.images[0].node-name: expected a QEMU node name (a letter, then letters, digits, "
     "'-', '.', '_'; at most 31 characters), got \"#block1\""),
    (lambda d: d["images"][0].update(size=1000),
     "c.json: $.images[0].size: expected a size in bytes, a positive multiple of 512, got 1000"),
    (lambda d: d["images"][0].update(size=0),
     "c.json: $.images[0].size: expected a size in bytes, a positive multiple of 512, got 0"),
    (lambda d: d["images"][0].update(size=1048576.0),
     "c.json: $.images[0].size: expected a size in bytes, a positive multiple of 512, got 1048576.0"),
    (lambda d: d["images"][0].update(size=True),
     "c.json: $.images[0].size: expected a size in bytes, a positive multiple of 512, got true"),
    (lambda d: d["images"][0].update({"cluster-size": 256}),
     "c.json: $.images[0].cluster-size: expected a cluster size, a power of two from 512 to "
     "2097152, got 256"),
    (lambda d: d["images"][0].update({"cluster-size": 4194304}),
     "c.json: $.images[0].cluster-size: expected a cluster size, a power of two from 512 to "
     "2097152, got 4194304"),
    (lambda d: d["images"][0].update(format="qcow"),
     "c.json: $.images[0].format: expected \"qcow2\" or \"raw\", got \"qcow\"; did you mean \"qcow2\"?"),
    (lambda d: d["images"][0].update(format="vmdk"),
     "c.json: $.images[0].format: expected \"qcow2\" or \"raw\", got \"vmdk\""),
    (lambda d: d["images"][0].update(format=2),
     "c.json: $.images[0].format: expected \"qcow2\" or \"raw\", got 2"),
    (lambda d: d["images"][0].update(filename="/tmp/x.qcow2"),
     "c.json: $.images[0].filename: expected a plain file name (no directory), got \"/tmp/x.qcow2\""),
    (lambda d: d["images"][0].update(filename=".."),
     "c.json: $.images[0].filename: expected a plain file name (no directory), got \"..\""),
    (lambda d: d["images"][0].update(writes=[{"offset": 0, "length": 0, "pattern": 1}]),
     "c.json: $.images[0].writes[0].length: expected an integer >= 1, got 0"),
    (lambda d: d["images"][0].update(writes=[{"offset": -1, "length": 1, "pattern": 1}]),
     "c.json: $.images[0].writes[0].offset: expected an integer >= 0, got -1"),
    (lambda d: d["images"][0].update(writes=[{"offset": 0, "length": 1, "pattern": 256}]),
     "c.json: $.images[0].writes[0].pattern: expected a byte value 0..255, got 256"),
    (lambda d: d["images"][0].update(writes=[{"offset": 0, "length": 1, "pattern": "0xff"}]),
     "c.json: $.images[0].writes[0].pattern: expected a byte value 0..255, got \"0xff\""),
    (lambda d: d["images"][0].update(writes=[{"offset": 0, "length": 1}]),
     "c.json: $.images[0].writes[0]: missing key 'pattern'"),
    (lambda d: d["images"][0].update(writes=[{"offset": 0, "len": 1, "pattern": 1}]),
     "c.json: $.images[0].writes[0]: unknown key 'len'; did you mean 'length'?"),
    (lambda d: d["images"][0].update(writes={"offset": 0}),
     "c.json: $.images[0].writes: expected a list of writes, got an object"),
    # drive and bugs
    (lambda d: d.update(drive="0drive"),
     "c.json: $.drive: expected a device name (a letter, then letters, digits, '-', '.', '_') "
     "or null, got \"0drive\""),
    (lambda d: d.update(drive=0),
     "c.json: $.drive: expected a device name (a letter, then letters, digits, '-', '.', '_') "
     "or null, got 0"),
    (lambda d: d.update(bugs="stream-prepare-no-drain"),
     "c.json: $.bugs: expected a list of distinct bug ids, got \"stream-prepare-no-drain\""),
    (lambda d: d.update(bugs=[1]), "c.json: $.bugs[0]: expected a bug id (see `blockfuzz bugs`), got 1"),
    (lambda d: d.update(bugs=["a", "b", "a"]),
     "c.json: $.bugs: expected a list of distinct bug ids, 'a' is listed twice"),
    # commands
    (lambda d: d.update(commands={}), "c.json: $.commands: expected a list of commands, got an object"),
    (lambda d: d["commands"].__setitem__(0, []), f"{CMD0}: expected a command object "
     "{\"execute\", \"arguments\"}, got a list of 0 items"),
    (lambda d: d["commands"][0].pop("execute"), f"{CMD0}: missing key 'execute'"),
    (lambda d: d["commands"][0].update(execute="block-stram"),
     f"{CMD0}.execute: unknown command 'block-stram'; did you mean 'block-stream'?"),
    (lambda d: d["commands"][0].update(execute="blockdev-add"),
     f"{CMD0}.execute: unknown command 'blockdev-add'; the supported commands are listed in "
     "docs/case-format.md"),
    (lambda d: d["commands"][0].update(execute=7), f"{CMD0}.execute: expected a supported command, got 7"),
    (lambda d: d["commands"][0].update(argument={}), f"{CMD0}: unknown key 'argument'; did you mean 'arguments'?"),
    (lambda d: d["commands"][0].update(arguments=[]), f"{CMD0}.arguments: expected an arguments object, got a list of 0 items"),
    (lambda d: d["commands"][0].pop("arguments"), f"{CMD0}: missing key 'arguments'"),
    (lambda d: d["commands"][0]["arguments"].pop("device"), f"{CMD0}.arguments: missing key 'device'"),
    (lambda d: d["commands"][0]["arguments"].update(base_node="node0"),
     f"{CMD0}.arguments: unknown key 'base_node'; did you mean 'base-node'?"),
    (lambda d: d["commands"][0]["arguments"].update(foo="x"),
     f"{CMD0}.arguments: unknown key 'foo'; expected one of 'job-id', 'device', 'base', 'base-node', "
     "'backing-file', 'bottom', 'speed', 'on-error', 'filter-node-name', 'auto-finalize', 'auto-dismiss'"),
    (lambda d: d["commands"][0]["arguments"].update(speed="1M"), f"{CMD0}.arguments.speed: expected an integer, got \"1M\""),
    (lambda d: d["commands"][0]["arguments"].update(speed=1.5), f"{CMD0}.arguments.speed: expected an integer, got 1.5"),
    (lambda d: d["commands"][0]["arguments"].update({"auto-finalize": "no"}),
     f"{CMD0}.arguments.auto-finalize: expected true or false, got \"no\""),
    (lambda d: d["commands"][0]["arguments"].update(device=None), f"{CMD0}.arguments.device: expected a string, got null"),
    (lambda d: d["commands"][0].update(execute="block-commit", arguments={"device": "drive0", "top_node": "n"}),
     f"{CMD0}.arguments: unknown key 'top_node'; did you mean 'top-node'?"),
    (lambda d: d["commands"][0].update(execute="block-job-set-speed", arguments={"device": "j"}),
     f"{CMD0}.arguments: missing key 'speed'"),
    (lambda d: d["commands"][0].update(execute="block-job-set-speed", arguments={"device": "j", "sped": 0}),
     f"{CMD0}.arguments: unknown key 'sped'; did you mean 'speed'?"),
    (lambda d: d["commands"][0].update(execute="block-job-cancel", arguments={"device": "j", "force": 1}),
     f"{CMD0}.arguments.force: expected true or false, got 1"),
    (lambda d: d["commands"][0].update(execute="block-job-complete", arguments={"id": "j"}),
     f"{CMD0}.arguments: unknown key 'id'; expected one of 'device'"),
    (lambda d: d["commands"][0].update(execute="job-dismiss", arguments={"device": "j"}),
     f"{CMD0}.arguments: unknown key 'device'; expected one of 'id'"),
    (lambda d: d["commands"][0].update(execute="block-job-finalize", arguments={}),
     f"{CMD0}.arguments: missing key 'id'"),
    (lambda d: d["commands"][0].update(execute="query-named-block-nodes", arguments={"flat": "yes"}),
     f"{CMD0}.arguments.flat: expected true or false, got \"yes\""),
    (lambda d: d["commands"][0].update(execute="query-jobs", arguments={"id": "x"}),
     f"{CMD0}.arguments: unknown key 'id'; no keys are allowed here"),
    (lambda d: d["commands"][1].update(arguments={"count": 1}),
     "c.json: $.commands[1].arguments: unknown key 'count'; no keys are allowed here"),
    (lambda d: d["commands"][0].update(execute="x-step", arguments={}), f"{CMD0}.arguments: missing key 'count'"),
    (lambda d: d["commands"][0].update(execute="x-step", arguments={"count": 0}),
     f"{CMD0}.arguments.count: expected an integer >= 1, got 0"),
    (lambda d: d["commands"][0].update(execute="x-step", arguments={"cnt": 1}),
     f"{CMD0}.arguments: unknown key 'cnt'; did you mean 'count'?"),
    (lambda d: d["commands"].__setitem__(0, {"execute": "x-step"}), f"{CMD0}: missing key 'arguments'"),
    (lambda d: d["commands"][0].update(execute="x-guest-write", arguments={"offset": 0, "length": 1}),
     f"{CMD0}.arguments: missing key 'pattern'"),
    (lambda d: d["commands"][0].update(execute="x-guest-write",
                                       arguments={"offset": 0, "length": 1, "pattern": -1}),
     f"{CMD0}.arguments.pattern: expected a byte value 0..255, got -1"),
    # schedule
    (lambda d: d.update(schedule=[]), "c.json: $.schedule: expected a schedule object, got a list of 0 items"),
    (lambda d: d.update(schedule={"policy": "rand", "seed": 0}),
     "c.json: $.schedule.policy: expected \"random\" or \"pct\", got \"rand\"; did you mean \"random\"?"),
    (lambda d: d.update(schedule={"policy": "random"}), "c.json: $.schedule: missing key 'seed'"),
    (lambda d: d.update(schedule={"policy": "random", "seed": -1}),
     "c.json: $.schedule.seed: expected an integer >= 0, got -1"),
    (lambda d: d.update(schedule={"policy": "pct", "seed": 1, "depth": 0}),
     "c.json: $.schedule.depth: expected an integer >= 1, got 0"),
    (lambda d: d.update(schedule={"policy": "pct", "seed": 1, "deep": 2}),
     "c.json: $.schedule: unknown key 'deep'; did you mean 'depth'?"),
    (lambda d: d.update(schedule={"choices": [0, "1"]}),
     "c.json: $.schedule.choices[1]: expected an integer >= 0, got \"1\""),
    (lambda d: d.update(schedule={"choices": 3}),
     "c.json: $.schedule.choices: expected a list of integers >= 0, got 3"),
    (lambda d: d.update(schedule={"choices": [], "seed": 0}),
     "c.json: $.schedule: unknown key 'seed'; expected one of 'choices', 'metadata-io', 'x-step-until'"),
    (lambda d: d.update(schedule={"choices": [], "metadata-io": "yes"}),
     "c.json: $.schedule.metadata-io: expected true or false, got \"yes\""),
    (lambda d: d.update(schedule={"policy": "pct", "seed": 1, "metadata_io": True}),
     "c.json: $.schedule: unknown key 'metadata_io'; did you mean 'metadata-io'?"),
    (lambda d: d.update(schedule={"choices": [], "x-step-until": [5]}),
     "c.json: $.schedule.x-step-until: expected an object from x-step command indices to "
     "nanoseconds, got a list of 1 item"),
    (lambda d: d.update(schedule={"choices": [], "x-step-until": {"second": 5}}),
     "c.json: $.schedule.x-step-until: expected a command index, e.g. \"3\", got \"second\""),
    (lambda d: d.update(schedule={"policy": "random", "seed": 0, "x-step-until": {"1": -5}}),
     "c.json: $.schedule.x-step-until['1']: expected an integer >= 0, got -5"),
    # expect
    (lambda d: d.update(expect="ok"), "c.json: $.expect: expected an expect object, got \"ok\""),
    (lambda d: d.update(expect={"verdict": "uaf"}),
     "c.json: $.expect.verdict: expected \"ok\" or a finding kind, got \"uaf\""),
    (lambda d: d.update(expect={"verdict": "use-after-fre"}),
     "c.json: $.expect.verdict: expected \"ok\" or a finding kind, got \"use-after-fre\"; "
     "did you mean \"use-after-free\"?"),
    (lambda d: d.update(expect={"final_chain": []}),
     "c.json: $.expect: unknown key 'final_chain'; did you mean 'final-chain'?"),
    (lambda d: d.update(expect={"replies": []}),
     "c.json: $.expect.replies: expected an object from command index to reply, got a list of 0 items"),
    (lambda d: d.update(expect={"replies": {"first": {"return": {}}}}),
     "c.json: $.expect.replies: expected a command index written as a string, such as \"3\", got \"first\""),
    (lambda d: d.update(expect={"replies": {"01": {"return": {}}}}),
     "c.json: $.expect.replies: expected a command index written as a string, such as \"3\", got \"01\""),
    (lambda d: d.update(expect={"replies": {"0": {}}}), "c.json: $.expect.replies['0']: missing key 'return'"),
    (lambda d: d.update(expect={"replies": {"0": {"return": {}, "id": 1}}}),
     "c.json: $.expect.replies['0']: unknown key 'id'; expected one of 'return'"),
    (lambda d: d.update(expect={"replies": {"0": {"error": {"class": "GenericError"}}}}),
     "c.json: $.expect.replies['0'].error: missing key 'desc'"),
    (lambda d: d.update(expect={"replies": {"0": {"error": "boom"}}}),
     "c.json: $.expect.replies['0'].error: expected an error object {\"class\", \"desc\"}, got \"boom\""),
    (lambda d: d.update(expect={"replies": {"0": {"error": {"class": "GenericEror", "desc": "x"}}}}),
     "c.json: $.expect.replies['0'].error.class: expected a QMP error class, got \"GenericEror\"; "
     "did you mean \"GenericError\"?"),
    (lambda d: d.update(expect={"replies": {"0": {"error": {"class": "GenericError", "desc": "x"},
                                                  "return": {}}}}),
     "c.json: $.expect.replies['0']: unknown key 'return'; expected one of 'error'"),
    (lambda d: d.update(expect={"final-chain": []}),
     "c.json: $.expect.final-chain: expected a non-empty list of node names, top first, got a list of 0 items"),
    (lambda d: d.update(expect={"final-chain": ["node2", 1]}),
     "c.json: $.expect.final-chain[1]: expected a QEMU node name (a letter, then letters, digits, "
     "'-', '.', '_'; at most 31 characters), got 1"),
]

RULE_ERRORS = [
    (lambda d: d["images"][2].update({"node-name": "node0"}),
     "c.json: $.images[2].node-name: expected a unique node name, 'node0' is already used by $.images[0]"),
    (lambda d: d["images"][1].update(format="raw"),
     "c.json: $.images[1].format: expected \"qcow2\": only the bottom image ($.images[0]) may be raw"),
    (lambda d: d["images"][2].update(filename="node0.qcow2"),
     "c.json: $.images[2].filename: expected a unique file name, 'node0.qcow2' is already used by $.images[0]"),
    (lambda d: d["images"][1].update({"cluster-size": 1536}),
     "c.json: $.images[1].cluster-size: expected a cluster size, a power of two from 512 to 2097152, got 1536"),
    (lambda d: d["images"][1].update(writes=[{"offset": 0, "length": 1, "pattern": 0},
                                             {"offset": 1048064, "length": 1024, "pattern": 0}]),
     "c.json: $.images[1].writes[1]: expected offset + length <= 1048576 (the size of 'node1'), "
     "got 1048064 + 1024 = 1049088"),
    (lambda d: d["images"][1].update(size=512, writes=[{"offset": 0, "length": 1024, "pattern": 0}]),
     "c.json: $.images[1].writes[0]: expected offset + length <= 512 (the size of 'node1'), "
     "got 0 + 1024 = 1024"),
    (lambda d: d.update(drive="node2"),
     "c.json: $.drive: expected a device name that is no node name, 'node2' is the node name of $.images[2]"),
    (lambda d: d.update(bugs=["stream-prepare-nodrain"]),
     "c.json: $.bugs[0]: unknown bug 'stream-prepare-nodrain'; known bugs: "
     + ", ".join(f"'{b}'" for b in BUGS)),
    (lambda d: d["commands"].append({"execute": "x-guest-write",
                                     "arguments": {"offset": 1048576, "length": 1, "pattern": 1}}),
     "c.json: $.commands[2].arguments: expected offset + length <= 1048576 (the size of the "
     "device's image 'node2'), got 1048576 + 1 = 1048577"),
    (lambda d: d.update(drive=None) or d["commands"].append(
        {"execute": "x-guest-write", "arguments": {"offset": 0, "length": 1, "pattern": 1}}),
     "c.json: $.commands[2]: expected a device for x-guest-write, but this case has \"drive\": null"),
    (lambda d: d.update(schedule={"choices": [], "x-step-until": {"1": 50_000_000}}),
     "c.json: $.schedule.x-step-until['1']: expected the index of an x-step command, got 1"),
    (lambda d: d.update(schedule={"choices": [], "x-step-until": {"7": 50_000_000}}),
     "c.json: $.schedule.x-step-until['7']: expected the index of an x-step command, got 7"),
    (lambda d: d.update(expect={"replies": {"2": {"return": {}}}}),
     "c.json: $.expect.replies['2']: expected the index of a command (0 to 1), got 2"),
    (lambda d: d.update(expect={"final-chain": ["node2", "nod0"]}),
     "c.json: $.expect.final-chain[1]: expected the node name of one of the case's images, got "
     "'nod0'; did you mean 'node0'?"),
    (lambda d: d.update(expect={"final-chain": ["commit-filter"]}),
     "c.json: $.expect.final-chain[0]: expected the node name of one of the case's images, got "
     "'commit-filter'"),
]


@pytest.mark.parametrize("edit,expected", SCHEMA_ERRORS + RULE_ERRORS,
                         ids=[f"e{i}" for i in range(len(SCHEMA_ERRORS) + len(RULE_ERRORS))])
def test_error_message(edit, expected):
    assert message(changed(edit)) == expected


def test_error_for_a_document_that_is_no_object():
    assert message([1]) == "c.json: $: expected a blockfuzz case object, got a list of 1 item"


def test_error_without_a_path_names_no_file():
    with pytest.raises(CaseError) as info:
        from_dict(changed(lambda d: d.update(format=1)))
    assert str(info.value) == '$.format: expected "blockfuzz-case/1", got 1'
    assert info.value.path is None


def test_error_carries_its_parts_and_is_a_usage_error():
    with pytest.raises(CaseError) as info:
        from_dict(changed(lambda d: d["commands"][0]["arguments"].update(base_node="n")), "x.json")
    err = info.value
    assert isinstance(err, UsageError)
    assert (err.path, err.json_path, err.expected) == \
        ("x.json", "$.commands[0].arguments", "unknown key 'base_node'; did you mean 'base-node'?")


def test_the_first_error_in_document_order_wins():
    def edit(d):
        d["images"][1]["size"] = 3           # later in the file
        d["images"][0]["node-name"] = "0"    # earlier in the file
        d["expect"] = {"verdict": "nope"}
    assert message(changed(edit)).startswith("c.json: $.images[0].node-name: ")


def test_an_unknown_key_is_reported_before_a_missing_one_at_the_same_place():
    edit = lambda d: d["commands"][0].update(execute="block-job-set-speed",
                                             arguments={"device": "j", "sped": 0})
    assert message(changed(edit)) == f"{CMD0}.arguments: unknown key 'sped'; did you mean 'speed'?"


def test_an_object_is_reported_before_its_members():
    edit = lambda d: d["commands"][0]["arguments"].update(device=None, sped=0)
    assert message(changed(edit)) == f"{CMD0}.arguments: unknown key 'sped'; did you mean 'speed'?"


def test_messages_are_one_line():
    for edit, _ in SCHEMA_ERRORS + RULE_ERRORS:
        assert "\n" not in message(changed(edit))


def test_qmp_argument_values_are_not_validated():
    # Wrong node names and job ids must reach the backend: that is how error paths get exercised.
    case = from_dict(changed(lambda d: d["commands"][0]["arguments"].update(
        device="nonexistent", **{"base-node": "none", "job-id": "#x", "on-error": "bogus"})))
    assert case.commands[0].arguments["device"] == "nonexistent"


def test_every_supported_command_is_accepted():
    required = {"block-stream": {"device": "d"}, "block-commit": {"device": "d"},
                "block-job-set-speed": {"device": "d", "speed": 0},
                "x-step": {"count": 1}, "x-guest-write": {"offset": 0, "length": 1, "pattern": 0}}
    for name in SUPPORTED_COMMANDS:
        if name in required:
            args = required[name]
        elif name.startswith("block-job-") and name not in ("block-job-finalize", "block-job-dismiss"):
            args = {"device": "d"}
        elif name.startswith("job-") or name in ("block-job-finalize", "block-job-dismiss"):
            args = {"id": "j"}
        else:
            args = {}
        cmd = {"execute": name, "arguments": args} if args else {"execute": name}
        case = from_dict(changed(lambda d: d["commands"].append(cmd)))
        assert case.commands[-1] == Command(name, args)


def test_cluster_size_limits_are_accepted():
    for size in (512, 2097152):
        case = from_dict(changed(lambda d: d["images"][0].update({"cluster-size": size})))
        assert case.images[2].cluster_size == size


# --------------------------------------------------------------------------
# Files: load and save


def write(tmp_path, text: str | bytes, name: str = "bad.json") -> str:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def test_load_reads_a_valid_file(tmp_path):
    p = write(tmp_path, json.dumps(FULL))
    case = load(p)
    assert case == from_dict(FULL)
    assert case.path == p


@pytest.mark.parametrize("text,expected", [
    ('{"format": ', "$: expected JSON, got an error at line 1 column 12: Expecting value"),
    ('{"format": "blockfuzz-case/1",\n "format": "x"}',
     "$: expected each key once per object, got 'format' twice"),
    ('{"format": NaN}', "$: expected JSON, got NaN is not JSON"),
    (b'{"description": "\xff"}', "$: expected UTF-8 text"),
    ('[]', "$: expected a blockfuzz case object, got a list of 0 items"),
    (json.dumps(changed(lambda d: d["commands"][0]["arguments"].update(base_node="node0"))),
     "$.commands[0].arguments: unknown key 'base_node'; did you mean 'base-node'?"),
], ids=["truncated", "duplicate-key", "nan", "not-utf8", "not-an-object", "unknown-key"])
def test_load_errors_name_the_file(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(CaseError) as info:
        load(p)
    assert str(info.value) == f"{p}: {expected}"


def test_load_of_a_missing_file(tmp_path):
    p = str(tmp_path / "missing.json")
    with pytest.raises(CaseError) as info:
        load(p)
    assert str(info.value) == f"{p}: $: expected a readable file: No such file or directory"


def test_save_writes_to_json_and_loads_back(tmp_path):
    case = from_dict(FULL)
    p = tmp_path / "sub" / "case.json"
    save(case, p)
    assert p.read_text() == case.to_json()
    assert load(p) == case
    assert os.listdir(tmp_path / "sub") == ["case.json"]
    assert (p.stat().st_mode & 0o777) == 0o644


def test_save_replaces_an_existing_file(tmp_path):
    p = tmp_path / "case.json"
    p.write_text("old")
    save(from_dict(MINIMAL), p)
    assert load(p) == from_dict(MINIMAL)


def test_save_leaves_no_temp_file_and_the_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "case.json"
    p.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(case_mod.os, "replace", fail)
    with pytest.raises(OSError):
        save(from_dict(MINIMAL), p)
    assert os.listdir(tmp_path) == ["case.json"]
    assert p.read_text() == "old"


def test_save_refuses_an_invalid_case_and_writes_nothing(tmp_path):
    bad = Case(images=(Image("n"), Image("n")), commands=())
    p = tmp_path / "case.json"
    with pytest.raises(CaseError) as info:
        save(bad, p)
    assert str(info.value) == \
        f"{p}: $.images[1].node-name: expected a unique node name, 'n' is already used by $.images[0]"
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# The 030 seeds


def seed(name: str) -> Case:
    return load(os.path.join(SEEDS_030, f"{name}.json"))


def test_one_seed_per_parallel_ops_test():
    names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(SEEDS_030, "*.json")))
    assert names == sorted(TESTS_030)


@pytest.mark.parametrize("name", TESTS_030)
def test_seed_is_canonical_and_follows_030_setup(name):
    path = os.path.join(SEEDS_030, f"{name}.json")
    case = load(path)
    with open(path, encoding="utf-8") as f:
        assert f.read() == case.to_json()     # saved by save(): re-saving changes nothing
    assert [(i.node_name, i.filename, i.format, i.size, i.cluster_size) for i in case.images] == \
        [(f"node{i}", f"node{i}.raw" if i == 0 else f"node{i}.qcow2", "raw" if i == 0 else "qcow2",
          16 << 20, 64 << 10) for i in range(9)]
    M = 1 << 20
    assert {i.node_name: i.writes for i in case.images if i.writes} == {
        "node1": (Write(12 * M, 4 * M, 255),), "node3": (Write(8 * M, 2 * M, 255),),
        "node5": (Write(4 * M, 4 * M, 255),), "node7": (Write(0, 2 * M, 255),)}
    assert case.drive == "drive0" and case.bugs == ()
    assert case.schedule == {"policy": "random", "seed": 0}
    assert case.commands[-1] == Command("x-wait-jobs")
    assert case.expect["verdict"] == "ok"
    assert case.description.startswith(f"iotest 030 TestParallelOps.{name} ")
    assert "zero-filled" in case.description


def _errors(case: Case) -> dict[int, str]:
    return {int(k): v["error"]["desc"] for k, v in case.expect.get("replies", {}).items()}


def test_seed_overlapping_5_is_the_race():
    case = seed("test_overlapping_5")
    assert [c.to_dict() for c in case.commands] == [
        {"execute": "block-commit", "arguments": {"device": "drive0", "top-node": "node2", "base-node": "node0",
                                                  "filter-node-name": "commit-filter", "speed": 1048576}},
        {"execute": "block-stream", "arguments": {"device": "node4", "base-node": "commit-filter", "job-id": "node4"}},
        {"execute": "block-job-set-speed", "arguments": {"device": "drive0", "speed": 0}},
        {"execute": "x-wait-jobs"}]
    assert _errors(case) == {}
    assert case.expect["final-chain"] == ["node8", "node7", "node6", "node5", "node4", "node0"]


def test_seed_errors_and_final_chains():
    # The texts and chains as QEMU 7.2 (qemu-system-x86_64, drive_add) gave them.
    busy = "Node '{}' is busy: block device is in use by block job: {}"
    expected = {
        "test_stream_parallel": ({}, [8, 6, 4, 2, 0]),
        "test_overlapping_1": ({1: busy.format("stream-filter", "stream"), 2: busy.format("node3", "stream"),
                                3: busy.format("node4", "stream"), 4: busy.format("stream-filter", "stream"),
                                5: busy.format("node3", "stream"), 6: busy.format("node2", "stream")},
                               [8, 7, 6, 5, 4, 1, 0]),
        "test_overlapping_2": ({1: busy.format("node3", "commit"), 2: busy.format("node5", "commit"),
                                3: busy.format("node4", "commit"), 4: busy.format("node5", "commit"),
                                5: busy.format("drive0", "commit")}, [8, 7, 6, 3, 2, 1, 0]),
        "test_overlapping_3": ({1: busy.format("node5", "commit")}, [3, 2, 1, 0]),
        "test_overlapping_4": ({1: "Cannot freeze 'backing' link to 'commit-filter'"}, [8, 7, 6, 5, 4, 3, 0]),
        "test_overlapping_5": ({}, [8, 7, 6, 5, 4, 0]),
        "test_stream_commit_1": ({}, [3, 2, 0]),
        "test_stream_commit_2": ({}, [5, 4, 0]),
        "test_stream_base_node_name": ({0: "Cannot find device='' nor node-name='none'",
                                        1: "Node 'node6' is not a backing image of 'node4'",
                                        2: "Node 'node4' is not a backing image of 'node4'",
                                        3: "'base' and 'base-node' cannot be specified at the same time"},
                                       [8, 7, 6, 5, 4, 2, 1, 0]),
    }
    for name, (errors, chain) in expected.items():
        case = seed(name)
        assert _errors(case) == errors, name
        assert all(r["error"]["class"] == "GenericError" for r in case.expect.get("replies", {}).values())
        assert case.expect["final-chain"] == [f"node{n}" for n in chain], name


def test_active_commit_seeds_complete_after_ready():
    for name, job in (("test_overlapping_3", "commit-drive0"), ("test_stream_commit_1", "drive0"),
                      ("test_stream_commit_2", "drive0")):
        tail = seed(name).commands[-3:]
        assert tail == (Command("x-wait-jobs"), Command("block-job-complete", {"device": job}),
                        Command("x-wait-jobs")), name


def test_seed_filename_arguments_name_case_files():
    filenames = {f"node{i}.qcow2" for i in range(1, 9)} | {"node0.raw"}
    for name in TESTS_030:
        for cmd in seed(name).commands:
            for key in ("base", "top"):
                if key in cmd.arguments:
                    assert cmd.arguments[key] in filenames, (name, cmd)


@pytest.mark.parametrize("name", TESTS_030)
def test_seed_on_the_model(name):
    from harness.backends import reference as backend
    case = seed(name)
    observation = backend.run_case(case)
    assert observation.finding is None
    errors = {str(i): r for i, r in enumerate(observation.replies) if "error" in r}
    assert errors == case.expect.get("replies", {})
    assert [n.node_name for n in observation.chain if not n.is_filter] == case.expect["final-chain"]


# --------------------------------------------------------------------------
# The schema's QMP arguments against QEMU 7.2's own schema


def _schema_arguments(name: str) -> dict[str, tuple[str, bool]]:
    """Our schema's arguments of a QMP command: name -> (JSON type, required)."""
    schema = case_mod.schema()
    defs = schema["$defs"]
    for rule in defs["command"]["allOf"]:
        cond = defs[rule["if"]["$ref"].rsplit("/", 1)[1]]["properties"]["execute"]
        if name in cond.get("enum", [cond.get("const")]):
            args = defs[rule["then"]["$ref"].rsplit("/", 1)[1]]["properties"]["arguments"]
            required = set(args.get("required", ()))
            return {k: (defs[v["$ref"].rsplit("/", 1)[1]]["type"], k in required)
                    for k, v in args.get("properties", {}).items()}
    return {}


async def _qemu_arguments(names) -> dict[str, dict[str, tuple[str, bool]]]:
    import socket
    import subprocess

    from qemu.qmp import QMPClient

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
         "-chardev", f"socket,id=mon0,fd={theirs.fileno()}", "-mon", "chardev=mon0,mode=control"],
        pass_fds=[theirs.fileno()])
    theirs.close()
    client = QMPClient("schema")
    try:
        await client.connect(ours)
        entries = {e["name"]: e for e in await client.execute("query-qmp-schema")}
    finally:
        await client.disconnect()
        proc.kill()
        proc.wait()
    json_type = {"string": "string", "int": "integer", "boolean": "boolean"}
    out = {}
    for name in names:
        members = entries[entries[name]["arg-type"]].get("members", [])
        out[name] = {}
        for m in members:
            t = entries[m["type"]]   # an enum is a string on the wire
            kind = "string" if t["meta-type"] == "enum" else json_type[t["json-type"]]
            out[name][m["name"]] = (kind, "default" not in m)   # introspection: optional has "default"
    return out


@pytest.mark.qemu
def test_qmp_arguments_match_qemu_7_2():
    import asyncio
    import shutil

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (make qemu installs it)")
    qemu = asyncio.run(_qemu_arguments(case_mod.QMP_COMMANDS))
    for name in case_mod.QMP_COMMANDS:
        assert _schema_arguments(name) == qemu[name], name


def test_with_schedule_keeps_every_other_field():
    """Case.with_schedule passes each field on by name: one forgotten (or a field added
    later and not passed on) would silently reset it in every generated case."""
    import dataclasses
    case = Case(images=(Image("node0", writes=(Write(0, 65536, 3),)), Image("node1")),
                commands=(Command("x-wait-jobs"),), drive=None, bugs=("stream-prepare-no-drain",),
                schedule={"policy": "pct", "seed": 4}, expect={"verdict": "ok"},
                description="d", path="/p.json")
    got = case.with_schedule({"choices": [1, 0]})
    want = dataclasses.replace(case, schedule={"choices": [1, 0]})
    for f in dataclasses.fields(Case):
        assert getattr(got, f.name) == getattr(want, f.name), f.name
