"""Node filenames as QEMU 7.2 derives them (block.c ``bdrv_refresh_filename``).

A node's ``filename`` is a *cache*: QEMU recomputes it only where it calls
``bdrv_refresh_filename`` (a backing child being attached, the lookup of a
backing image by filename, ``bdrv_drop_intermediate``, the query commands),
and reads the cached string everywhere else. ``stream_prepare`` and
``bdrv_drop_intermediate`` write that string into image headers, so what
lands on disk depends on when the cache was last refreshed.

A refresh works bottom-up: children first; an implicit filter copies its
child; any other node gathers its options (``full_open_options``: the
driver, each child's options under the child's name, the backing child only
when the image header would not open it by itself) and takes a plain
filename when it can (a format node over its protocol file, a commit_top or
mirror_top filter from its backing node), else ``json:`` and the options.

The model has no protocol nodes: a format node's ``image_file`` stands for
its ``file`` child (driver ``file``), whose filename never changes.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reference.graph import BlockDriverState

#: qobject/qdict.c: the number of hash buckets of a QDict
QDICT_BUCKET_MAX = 512
#: filters whose driver sets exact_filename to the backing node's filename
#: (block/commit.c and block/mirror.c's .bdrv_refresh_filename)
FILENAME_FROM_BACKING = ("commit_top", "mirror_top")
#: block/qcow2.c qcow2_change_backing_file: a longer backing string is refused (-EINVAL)
QCOW2_BACKING_FILE_MAX = 1023
#: what a ``json:`` filename holds each image filename under
_PATH_KEY = '"filename": "'


def bdrv_refresh_filename(bs: "BlockDriverState") -> None:
    """Recompute ``bs``'s cached filename and those of everything below it."""
    for c in bs.children:
        bdrv_refresh_filename(c.bs)
    if bs.implicit and bs.children:
        child = bs.children[0].bs
        bs.exact_filename, bs.filename = child.exact_filename, child.filename
        bs.full_open_options = child.full_open_options
        return
    overridden = bdrv_backing_overridden(bs)
    bs.full_open_options = _gather_options(bs, overridden)
    bs.exact_filename = _exact_filename(bs, overridden)
    bs.filename = bs.exact_filename or "json:" + qobject_to_json(bs.full_open_options)


def bdrv_backing_overridden(bs: "BlockDriverState") -> bool:
    """Whether opening the image as its header says would give another backing
    node than ``bs`` has (compared by cached filename, as QEMU does)."""
    backing = bs.backing
    if backing is not None:
        return bs.auto_backing_relative or bs.auto_backing_file != backing.bs.filename
    return bs.auto_backing_file != ""


def _gather_options(bs: "BlockDriverState", overridden: bool) -> dict[str, Any]:
    """The strong options (``driver``) and each child's options under its name;
    the backing child only when overridden, ``"backing": null`` when it is
    overridden by its absence."""
    opts: dict[str, Any] = {"driver": bs.drv}
    for c in bs.children:                    # newest first, as QEMU's list
        if c.name != "backing" or overridden:
            opts[c.name] = c.bs.full_open_options
    if bs.image_file:                        # the protocol child, attached first
        opts["file"] = bs.file_options
    if overridden and bs.backing is None:
        opts["backing"] = None
    return opts


def _exact_filename(bs: "BlockDriverState", overridden: bool) -> str:
    """A plain filename, or "" when only a ``json:`` one describes ``bs``."""
    if bs.drv in FILENAME_FROM_BACKING:
        backing = bs.backing
        return backing.bs.filename if backing is not None else ""
    if bs.is_filter or overridden:
        return ""
    return bs.image_file


def qemu_length(text: str | None, given: bool, path_prefix: int) -> int:
    """How long ``text`` is as QEMU has it: the model names images by their bare
    filenames, QEMU by absolute paths ``path_prefix`` characters longer, in a plain
    filename and in each ``"filename"`` of a ``json:`` one. A string the user gave
    (``backing-file``) QEMU takes as it is."""
    if not text or given:
        return len(text or "")
    if text.startswith("json:"):
        return len(text) + path_prefix * text.count(_PATH_KEY)
    return len(text) + path_prefix


def qobject_to_json(obj: Any) -> str:
    """qobject_to_json: ``{"key": value, ...}`` with a QDict's keys in its
    iteration order (hash bucket, then newest first within a bucket)."""
    if isinstance(obj, dict):
        items = []
        for k in qdict_order(obj):
            items.append(_string(k)[1] + ": " + qobject_to_json(obj[k]))
        return "{" + ", ".join(items) + "}"
    if isinstance(obj, str):
        return _string(obj)[1]
    return json.dumps(obj)


def qdict_order(d: dict[str, Any]) -> list[str]:
    """The order qdict_first/qdict_next visit ``d``'s keys (inserted in dict order)."""
    order = []
    for i, k in enumerate(d):
        order.append((_string(k)[0], -i, k))
    order.sort()
    return [k for _, _, k in order]


#: per string, its QDict bucket and its JSON quoting (:func:`_string`): a run refreshes
#: json: filenames of the same few keys and names over and over (a tenth of a run with
#: filters went to hashing and quoting them again); cleared when it grows past
#: :data:`_MEMO_MAX`, which no case's names come near
_STRINGS: dict[str, tuple[int, str]] = {}
_MEMO_MAX = 4096


def _string(text: str) -> tuple[int, str]:
    """``text``'s QDict hash bucket and its JSON form, remembered."""
    known = _STRINGS.get(text)
    if known is None:
        if len(_STRINGS) >= _MEMO_MAX:
            _STRINGS.clear()
        known = _STRINGS[text] = (tdb_hash(text) % QDICT_BUCKET_MAX, json.dumps(text))
    return known


def tdb_hash(key: str) -> int:
    """qobject/qdict.c's tdb_hash, on 32-bit unsigned arithmetic."""
    data = key.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF
