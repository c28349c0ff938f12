"""The case: one JSON object, the unit of the corpus, of findings and of replay.

``docs/case-format.md`` describes the format for users; ``case_schema.json``
beside this module is its JSON Schema (draft 2020-12). This module turns JSON
into frozen records and back. :func:`from_dict` and :func:`load` validate in
two passes, the schema first and then the rules a schema cannot say (unique
node names, writes inside their image, known bug ids, ...), and raise
:class:`harness.errors.CaseError` for the first problem, naming the file, the
JSON path and what was expected there::

    corpus/x.json: $.commands[3].arguments: unknown key 'base_node'; did you mean 'base-node'?

QMP argument *values* are checked for their JSON type only: a wrong node name
or job id must reach the backend, because that is how QEMU's error paths get
exercised.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping

import jsonschema
from jsonschema.validators import Draft202012Validator, extend

from harness.errors import CaseError
from reference.bugs import BUGS

FORMAT = "blockfuzz-case/1"
DEFAULT_SIZE = 1 << 20
DEFAULT_CLUSTER_SIZE = 64 << 10
DEFAULT_SCHEDULE = {"policy": "random", "seed": 0}
#: schedule keys that are options of the run rather than its choice source
SCHEDULE_OPTIONS = ("metadata-io", "x-step-until")
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "case_schema.json")

#: QMP commands a case may send, with QEMU 7.2's names.
QMP_COMMANDS: tuple[str, ...] = (
    "block-stream", "block-commit",
    "block-job-set-speed", "block-job-cancel", "block-job-pause", "block-job-resume",
    "block-job-complete", "block-job-finalize", "block-job-dismiss",
    "job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize", "job-dismiss",
    "query-jobs", "query-block-jobs", "query-named-block-nodes", "x-debug-query-block-graph",
)
#: Commands the harness runs itself (see docs/case-format.md).
HARNESS_COMMANDS: tuple[str, ...] = ("x-step", "x-wait-jobs", "x-guest-write")
SUPPORTED_COMMANDS: tuple[str, ...] = QMP_COMMANDS + HARNESS_COMMANDS

#: What a run can find; a case's expected verdict is "ok" or one of these.
FINDING_KINDS: tuple[str, ...] = (
    "use-after-free", "wrong-backing", "data-mismatch", "illegal-transition",
    "accept-mismatch", "hang", "crash", "qemu-crash", "qemu-mismatch",
)
VERDICTS: tuple[str, ...] = ("ok",) + FINDING_KINDS


@dataclass(frozen=True)
class Write:
    offset: int
    length: int
    pattern: int

    def to_dict(self) -> dict:
        return {"offset": self.offset, "length": self.length, "pattern": self.pattern}


@dataclass(frozen=True)
class Image:
    node_name: str
    size: int = DEFAULT_SIZE
    cluster_size: int = DEFAULT_CLUSTER_SIZE
    writes: tuple[Write, ...] = ()
    filename: str = ""
    format: str = "qcow2"

    def __post_init__(self) -> None:
        if not self.filename:
            object.__setattr__(self, "filename", self.default_filename)

    @property
    def default_filename(self) -> str:
        """``<node-name>.qcow2``, or ``<node-name>.raw`` for a raw image."""
        return f"{self.node_name}.{'raw' if self.format == 'raw' else 'qcow2'}"


@dataclass(frozen=True)
class Command:
    execute: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        if self.arguments:
            return {"execute": self.execute, "arguments": copy.deepcopy(dict(self.arguments))}
        return {"execute": self.execute}


def record(cls: type, fields: dict) -> Any:
    """What ``cls(**fields)`` makes, for a dataclass ``cls`` and ``fields`` naming every
    field in declaration order: an instance whose ``__dict__`` is ``fields``. A frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (an image:
    six, and ``__post_init__``), which cost the generator more than its choices;
    ``tests/test_generate.py`` checks that records equal the constructors'."""
    made = object.__new__(cls)
    object.__setattr__(made, "__dict__", fields)
    return made


@dataclass(frozen=True)
class Case:
    images: tuple[Image, ...]
    commands: tuple[Command, ...]
    drive: str | None = "drive0"
    bugs: tuple[str, ...] = ()
    schedule: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULE))
    expect: Mapping[str, Any] | None = None
    description: str = ""
    path: str | None = field(default=None, compare=False)

    def schedule_options(self) -> dict[str, Any]:
        """The schedule's options that are not a choice source (``metadata-io``,
        ``x-step-until``), which a new schedule for the same case keeps."""
        return {k: v for k, v in (self.schedule or {}).items() if k in SCHEDULE_OPTIONS}

    def with_schedule(self, schedule: Mapping[str, Any]) -> "Case":
        """``dataclasses.replace(self, schedule=schedule)``, at a twelfth of its cost (the
        engines call it once per run): a copy of the instance's fields (its ``__dict__``,
        which holds nothing else: the class is frozen) with the schedule replaced, given
        to a new instance without the generated ``__init__`` (:func:`record`)."""
        fields = self.__dict__.copy()
        fields["schedule"] = schedule
        return record(Case, fields)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format": FORMAT}
        if self.description:
            out["description"] = self.description
        out["images"] = [_image_to_dict(img, i, self.images) for i, img in enumerate(self.images)]
        if self.drive != "drive0":
            out["drive"] = self.drive
        out["bugs"] = list(self.bugs)
        out["commands"] = [c.to_dict() for c in self.commands]
        out["schedule"] = copy.deepcopy(dict(self.schedule))
        if self.expect is not None:
            out["expect"] = copy.deepcopy(dict(self.expect))
        return out

    def to_json(self) -> str:
        """The case as it is written to a file: a line per command, write and image."""
        return _format_json(self.to_dict(), 0) + "\n"


#: A value whose JSON fits in this many columns (with its indentation) stays on one line.
LINE_WIDTH = 132


def _format_json(value: Any, level: int) -> str:
    """JSON with a line per item where a line would be too long; the case's own
    lists (images, commands, bugs) always get a line per item, like a QMP log."""
    flat = json.dumps(value)
    always_break = level == 1 and isinstance(value, list)
    if not isinstance(value, (dict, list)) or not value or \
            (2 * level + len(flat) <= LINE_WIDTH and not always_break):
        return flat
    pad = "  " * (level + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {_format_json(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    items = [pad + _format_json(v, level + 1) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + "  " * level + "]"


def _image_to_dict(img: Image, index: int, images: tuple[Image, ...]) -> dict:
    out: dict[str, Any] = {"node-name": img.node_name}
    first = images[0]
    if index == 0 or img.size != first.size:
        out["size"] = img.size
    if index == 0 or img.cluster_size != first.cluster_size:
        out["cluster-size"] = img.cluster_size
    if img.format != "qcow2":
        out["format"] = img.format
    if img.filename != img.default_filename:
        out["filename"] = img.filename
    if img.writes:
        out["writes"] = [w.to_dict() for w in img.writes]
    return out


# --------------------------------------------------------------------------
# Building and validating


def from_dict(data: Any, path: str | None = None) -> Case:
    """Build a :class:`Case` from parsed JSON; raise :class:`CaseError` if it does not fit.

    ``path`` only names the file in error messages and is kept in ``Case.path``.
    """
    _check_schema(data, path)
    case = _build(copy.deepcopy(data), path)
    _check_rules(case, path)
    return case


def _build(data: dict, path: str | None) -> Case:
    raw_images = data["images"]
    size = raw_images[0].get("size", DEFAULT_SIZE)
    cluster = raw_images[0].get("cluster-size", DEFAULT_CLUSTER_SIZE)
    images = tuple(
        Image(node_name=raw["node-name"], size=raw.get("size", size),
              cluster_size=raw.get("cluster-size", cluster),
              writes=tuple(Write(w["offset"], w["length"], w["pattern"]) for w in raw.get("writes", ())),
              filename=raw.get("filename", ""), format=raw.get("format", "qcow2"))
        for raw in raw_images)
    commands = tuple(Command(c["execute"], c.get("arguments", {})) for c in data["commands"])
    return Case(images=images, commands=commands, drive=data.get("drive", "drive0"),
                bugs=tuple(data.get("bugs", ())),
                schedule=data.get("schedule", dict(DEFAULT_SCHEDULE)),
                expect=data.get("expect"), description=data.get("description", ""), path=path)


def _check_rules(case: Case, path: str | None) -> None:
    """The rules beyond the schema, in document order; the first broken one raises."""
    for check in (_check_images, _check_drive, _check_bugs, _check_commands, _check_schedule,
                  _check_expect):
        problem = check(case)
        if problem is not None:
            raise CaseError(path, *problem)


def _check_images(case: Case) -> tuple[str, str] | None:
    names: dict[str, int] = {}
    files: dict[str, int] = {}
    for i, img in enumerate(case.images):
        where = f"$.images[{i}]"
        if img.node_name in names:
            return (f"{where}.node-name", f"expected a unique node name, '{img.node_name}' "
                    f"is already used by $.images[{names[img.node_name]}]")
        names[img.node_name] = i
        if img.format == "raw" and i > 0:
            return (f"{where}.format", "expected \"qcow2\": only the bottom image "
                    "($.images[0]) may be raw")
        if img.filename in files:
            return (f"{where}.filename", f"expected a unique file name, '{img.filename}' "
                    f"is already used by $.images[{files[img.filename]}]")
        files[img.filename] = i
        if img.cluster_size & (img.cluster_size - 1):
            return (f"{where}.cluster-size", "expected a cluster size, a power of two from "
                    f"512 to 2097152, got {img.cluster_size}")
        for j, w in enumerate(img.writes):
            if w.offset + w.length > img.size:
                return (f"{where}.writes[{j}]", _outside(w.offset, w.length, img.size,
                                                         f"the size of '{img.node_name}'"))
    return None


def _outside(offset: int, length: int, size: int, what: str) -> str:
    return (f"expected offset + length <= {size} ({what}), "
            f"got {offset} + {length} = {offset + length}")


def _check_drive(case: Case) -> tuple[str, str] | None:
    for i, img in enumerate(case.images):
        if img.node_name == case.drive:
            return ("$.drive", f"expected a device name that is no node name, "
                    f"'{case.drive}' is the node name of $.images[{i}]")
    return None


def _check_bugs(case: Case) -> tuple[str, str] | None:
    for i, bug in enumerate(case.bugs):
        if bug not in BUGS:
            known = ", ".join(f"'{b}'" for b in BUGS)
            return (f"$.bugs[{i}]", f"unknown bug '{bug}'; known bugs: {known}")
    return None


def _check_commands(case: Case) -> tuple[str, str] | None:
    top = case.images[-1]
    for i, cmd in enumerate(case.commands):
        if cmd.execute != "x-guest-write":
            continue
        if case.drive is None:
            return (f"$.commands[{i}]", "expected a device for x-guest-write, "
                    "but this case has \"drive\": null")
        args = cmd.arguments
        if args["offset"] + args["length"] > top.size:
            return (f"$.commands[{i}].arguments",
                    _outside(args["offset"], args["length"], top.size,
                             f"the size of the device's image '{top.node_name}'"))
    return None


def _check_schedule(case: Case) -> tuple[str, str] | None:
    for key in (case.schedule or {}).get("x-step-until", {}):
        index = int(key)
        if index >= len(case.commands) or case.commands[index].execute != "x-step":
            return (f"$.schedule.x-step-until['{key}']", "expected the index of an x-step "
                    f"command, got {index}")
    return None


def _check_expect(case: Case) -> tuple[str, str] | None:
    expect = case.expect or {}
    for key in expect.get("replies", {}):
        if int(key) >= len(case.commands):
            return (f"$.expect.replies['{key}']", "expected the index of a command "
                    f"(0 to {len(case.commands) - 1}), got {key}")
    names = [img.node_name for img in case.images]
    for i, name in enumerate(expect.get("final-chain", ())):
        if name not in names:
            return (f"$.expect.final-chain[{i}]", "expected the node name of one of the "
                    f"case's images, got '{name}'{_did_you_mean(name, names)}")
    return None


# --------------------------------------------------------------------------
# Schema errors to one-line messages


@lru_cache(maxsize=1)
def schema() -> dict:
    """The case format's JSON Schema (``case_schema.json``)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _strict_integer(checker, instance) -> bool:
    # JSON Schema counts 1.0 as an integer; QMP and the model do not.
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = extend(Draft202012Validator,
                    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    return _Validator(schema())


def _check_schema(data: Any, path: str | None) -> None:
    errors = list(_validator().iter_errors(data))
    if errors:
        first = min(errors, key=lambda e: (_position(data, e.absolute_path), _rank(e.validator)))
        raise CaseError(path, _json_path(first.absolute_path), _explain(first))


#: At one place, the problem to report first: a wrong type hides the rest,
#: an unknown key often explains a missing one.
_RANK = {"type": 0, "additionalProperties": 1, "enum": 2, "const": 2, "required": 3}


def _rank(validator: str) -> int:
    return _RANK.get(validator, 4)


def _position(data: Any, path: Iterable) -> tuple[int, ...]:
    """Where ``path`` is in the document, for ordering errors as they appear in the file."""
    out = []
    node = data
    for part in path:
        out.append(list(node).index(part) if isinstance(node, dict) else part)
        node = node[part]
    return tuple(out)


def _json_path(parts: Iterable) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and (part[0].isalpha() or part[0] == "_") and \
                all(c.isalnum() or c in "-_" for c in part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]".replace('"', "'")
    return out


def _explain(error: jsonschema.ValidationError) -> str:
    """One line: what was expected at the error's place, and what was there.

    Every schema that checks a value carries a ``description`` that names what
    is expected ("an integer >= 0"); objects report unknown and missing keys.
    """
    instance, schema_ = error.instance, error.schema
    if error.validator == "additionalProperties":
        return _unknown_key(instance, schema_)
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in instance)
        return f"missing key '{missing}'"
    if error.validator == "uniqueItems":
        seen = set()
        dup = next(x for x in instance if x in seen or seen.add(x))
        return f"expected {schema_['description']}, '{dup}' is listed twice"
    if error.validator == "enum" and isinstance(instance, str):
        options = [o for o in error.validator_value if isinstance(o, str)]
        if error.relative_path and error.relative_path[-1] == "execute":
            return f"unknown command '{instance}'{_did_you_mean(instance, options) or _see_docs()}"
        hint = _did_you_mean(instance, options, quote='"')
        return f"expected {schema_['description']}, got {_show(instance)}{hint}"
    return f"expected {schema_['description']}, got {_show(instance)}"


def _unknown_key(instance: dict, schema_: dict) -> str:
    known = list(schema_.get("properties", {}))
    key = next(k for k in instance if k not in known)
    if not known:
        return f"unknown key '{key}'; no keys are allowed here"
    hint = _did_you_mean(key, known)
    if hint:
        return f"unknown key '{key}'{hint}"
    return f"unknown key '{key}'; expected one of " + ", ".join(f"'{k}'" for k in known)


def _did_you_mean(word: str, options: Iterable[str], quote: str = "'") -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {quote}{match[0]}{quote}?" if match else ""


def _see_docs() -> str:
    return "; the supported commands are listed in docs/case-format.md"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------
# Files


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load(path: str | os.PathLike) -> Case:
    """Read and validate a case file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except OSError as e:
        raise CaseError(path, "$", f"expected a readable file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CaseError(path, "$", "expected UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CaseError(path, "$", f"expected JSON, got an error at line {e.lineno} "
                        f"column {e.colno}: {e.msg}") from None
    except _DuplicateKey as e:
        raise CaseError(path, "$", f"expected each key once per object, got '{e.args[0]}' "
                        "twice") from None
    except ValueError as e:
        raise CaseError(path, "$", f"expected JSON, got {e}") from None
    return from_dict(data, path)


def save(case: Case, path: str | os.PathLike) -> None:
    """Validate ``case`` and write it atomically (temporary file, fsync, rename).

    On any failure the previous file, if any, is left as it was and no
    temporary file remains.
    """
    path = os.fspath(path)
    text = case.to_json()
    from_dict(json.loads(text), path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
