"""The case: one JSON object, the unit of the corpus, of findings and of replay.

See the README ("The case format") for the fields. This module turns JSON
into frozen records and back; :func:`load` validates and raises
:class:`harness.errors.CaseError` naming the file, the JSON path and what was
expected there.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

from harness.errors import CaseError

FORMAT = "blockfuzz-case/1"
DEFAULT_SIZE = 1 << 20
DEFAULT_CLUSTER_SIZE = 64 << 10


@dataclass(frozen=True)
class Write:
    offset: int
    length: int
    pattern: int


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
            object.__setattr__(self, "filename", f"{self.node_name}.qcow2")


@dataclass(frozen=True)
class Command:
    execute: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        if self.arguments:
            return {"execute": self.execute, "arguments": dict(self.arguments)}
        return {"execute": self.execute}


@dataclass(frozen=True)
class Case:
    images: tuple[Image, ...]
    commands: tuple[Command, ...]
    drive: str | None = "drive0"
    bugs: tuple[str, ...] = ()
    schedule: Mapping[str, Any] = field(default_factory=lambda: {"policy": "random", "seed": 0})
    expect: Mapping[str, Any] | None = None
    description: str = ""
    path: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format": FORMAT}
        if self.description:
            out["description"] = self.description
        out["images"] = [_image_to_dict(img, i, self.images) for i, img in enumerate(self.images)]
        if self.drive != "drive0":
            out["drive"] = self.drive
        out["bugs"] = list(self.bugs)
        out["commands"] = [c.to_dict() for c in self.commands]
        out["schedule"] = dict(self.schedule)
        if self.expect is not None:
            out["expect"] = dict(self.expect)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _image_to_dict(img: Image, index: int, images: tuple[Image, ...]) -> dict:
    out: dict[str, Any] = {"node-name": img.node_name}
    first = images[0]
    if index == 0 or img.size != first.size:
        out["size"] = img.size
    if index == 0 or img.cluster_size != first.cluster_size:
        out["cluster-size"] = img.cluster_size
    if img.format != "qcow2":
        out["format"] = img.format
    if img.filename != f"{img.node_name}.qcow2":
        out["filename"] = img.filename
    if img.writes:
        out["writes"] = [{"offset": w.offset, "length": w.length, "pattern": w.pattern}
                         for w in img.writes]
    return out


def from_dict(data: Any, path: str | None = None) -> Case:
    """Build a :class:`Case` from parsed JSON, validating it."""
    if not isinstance(data, dict):
        raise CaseError(path, "$", "expected a JSON object")
    if data.get("format") != FORMAT:
        raise CaseError(path, "$.format", f"expected \"{FORMAT}\"")
    raw_images = data.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise CaseError(path, "$.images", "expected a non-empty list of images")
    first = raw_images[0] if isinstance(raw_images[0], dict) else {}
    size = first.get("size", DEFAULT_SIZE)
    cluster = first.get("cluster-size", DEFAULT_CLUSTER_SIZE)
    images = []
    for i, raw in enumerate(raw_images):
        writes = tuple(Write(w["offset"], w["length"], w["pattern"]) for w in raw.get("writes", ()))
        images.append(Image(node_name=raw["node-name"], size=raw.get("size", size),
                            cluster_size=raw.get("cluster-size", cluster), writes=writes,
                            filename=raw.get("filename", ""), format=raw.get("format", "qcow2")))
    commands = tuple(Command(c["execute"], dict(c.get("arguments", {})))
                     for c in data.get("commands", ()))
    return Case(images=tuple(images), commands=commands, drive=data.get("drive", "drive0"),
                bugs=tuple(data.get("bugs", ())),
                schedule=dict(data.get("schedule", {"policy": "random", "seed": 0})),
                expect=data.get("expect"), description=data.get("description", ""), path=path)


def load(path: str | os.PathLike) -> Case:
    """Read and validate a case file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CaseError(path, "$", f"cannot read file: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CaseError(path, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None
    return from_dict(data, path)


def save(case: Case, path: str | os.PathLike) -> None:
    """Write a case atomically (temporary file, fsync, rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(case.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
