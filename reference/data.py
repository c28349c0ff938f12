# cython: annotation_typing=False
"""Image contents as extents (block/qcow2-cluster.c, block/raw-format.c, in outline).

Each layer keeps sorted, disjoint runs ``(start, end, byte)``; a byte is
allocated in the layer iff a run covers it. A raw image is allocated
everywhere. A qcow2 write allocates whole clusters: the parts of a newly
touched cluster that the write does not cover are filled from what the
chain below reads (copy-on-write), as qcow2 does.

Data is a pattern byte per run, as ``qemu-io -c "write -P pattern"`` writes
it; this keeps the model fast (no per-byte storage) and is what the case
format can express.

A qcow2 layer also remembers where its clusters went in the image file:
qcow2 appends newly allocated clusters, so host clusters follow the order of
allocation, and its block status (``count_contiguous_subclusters``) ends an
allocated extent where the next cluster's host offset does not follow. A
layer written out of order (960K, then 832K..960K) answers in two pieces, and
a job copies it in two chunks, with a rate-limit sleep between them.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Callable

Run = tuple[int, int, int]


class ImageData:
    __slots__ = ("size", "cluster_size", "runs", "raw", "host", "breaks")

    def __init__(self, size: int, cluster_size: int, raw: bool = False):
        self.size = size
        self.cluster_size = cluster_size
        self.raw = raw
        self.runs: list[Run] = [(0, size, 0)] if raw else []
        #: qcow2: guest cluster index -> host cluster number, in order of allocation
        self.host: dict[int, int] = {}
        #: qcow2: offsets of allocated clusters whose host cluster does not follow
        #: the host cluster of the (allocated) guest cluster before them
        self.breaks: list[int] = []

    def _first(self, offset: int) -> int:
        """Index of the first run that ends after ``offset``."""
        runs = self.runs
        i = bisect_right(runs, (offset, 1 << 62, 0)) - 1
        if i >= 0 and runs[i][1] > offset:
            return i
        return i + 1

    def block_status(self, offset: int, max_bytes: int) -> tuple[bool, int]:
        """bdrv_is_allocated: (allocated?, length of that status from offset, <= max_bytes)."""
        end = min(offset + max_bytes, self.size)
        runs = self.runs
        i = self._first(offset)
        if i < len(runs) and runs[i][0] <= offset:
            pos = offset
            while i < len(runs) and runs[i][0] <= pos < end:
                pos = runs[i][1]
                i += 1
            breaks = self.breaks
            if breaks:
                j = bisect_right(breaks, offset)
                if j < len(breaks) and breaks[j] < pos:
                    pos = breaks[j]
            return True, min(pos, end) - offset
        nxt = runs[i][0] if i < len(runs) else end
        return False, min(nxt, end) - offset

    def read(self, start: int, end: int) -> list[tuple[int, int, int | None]]:
        """The layer's own view of [start, end): runs, ``None`` where unallocated."""
        out: list[tuple[int, int, int | None]] = []
        pos = start
        runs = self.runs
        i = self._first(start)
        while pos < end:
            if i < len(runs) and runs[i][0] <= pos:
                e = min(runs[i][1], end)
                out.append((pos, e, runs[i][2]))
                pos = e
                i += 1
            else:
                e = min(runs[i][0], end) if i < len(runs) else end
                out.append((pos, e, None))
                pos = e
        return out

    def overwrite(self, start: int, end: int, data: list[Run]) -> None:
        """Replace [start, end) of this layer by ``data`` (which covers it exactly)."""
        runs = self.runs
        i = self._first(start)
        j = i
        keep_head: list[Run] = []
        keep_tail: list[Run] = []
        while j < len(runs) and runs[j][0] < end:
            s, e, b = runs[j]
            if s < start:
                keep_head.append((s, start, b))
            if e > end:
                keep_tail.append((end, e, b))
            j += 1
        runs[i:j] = _merge(keep_head + data + keep_tail)

    def write(self, start: int, end: int, data: list[Run],
              read_below: Callable[[int, int], list[Run]]) -> None:
        """A guest or job write: allocate clusters, fill the rest from below."""
        end = min(end, self.size)
        if start >= end:
            return
        if self.raw:
            self.overwrite(start, end, data)
            return
        c = self.cluster_size
        cs = start - start % c
        ce = min(-(-end // c) * c, self.size)
        head = self._cow_fill(cs, start, read_below)
        tail = self._cow_fill(end, ce, read_below)
        self.overwrite(cs, ce, head + data + tail)
        self._allocate(cs // c, -(-ce // c))

    def _allocate(self, first: int, last: int) -> None:
        """Give guest clusters ``first`` .. ``last - 1`` not allocated yet the next host
        clusters, in guest order, and note where host contiguity now breaks."""
        host = self.host
        new = [k for k in range(first, last) if k not in host]
        for k in new:
            host[k] = len(host)
        for k in new:
            self._note_break(k)
            self._note_break(k + 1)

    def _note_break(self, k: int) -> None:
        """Cluster ``k`` and the one before it are both allocated now and not
        neighbours in the file: an extent of block status ends before ``k``."""
        host = self.host
        if k in host and k - 1 in host and host[k] != host[k - 1] + 1:
            offset = k * self.cluster_size
            j = bisect_left(self.breaks, offset)
            if j == len(self.breaks) or self.breaks[j] != offset:
                self.breaks.insert(j, offset)

    def _cow_fill(self, start: int, end: int, read_below) -> list[Run]:
        out: list[Run] = []
        for s, e, b in self.read(start, end):
            if b is None:
                out.extend(read_below(s, e))
            else:
                out.append((s, e, b))
        return out

    def copy(self) -> ImageData:
        new = ImageData(self.size, self.cluster_size, self.raw)
        new.runs = list(self.runs)
        new.host = dict(self.host)
        new.breaks = list(self.breaks)
        return new


def _merge(runs: list[Run]) -> list[Run]:
    out: list[Run] = []
    for r in runs:
        if r[0] >= r[1]:
            continue
        if out and out[-1][1] == r[0] and out[-1][2] == r[2]:
            out[-1] = (out[-1][0], r[1], r[2])
        else:
            out.append(r)
    return out


def merge_runs(runs: list[Run]) -> list[Run]:
    """Coalesce adjacent runs with the same byte."""
    return _merge(runs)
