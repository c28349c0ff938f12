"""``blockfuzz bugs``: the historical bugs that can be put back into the model."""
from __future__ import annotations

import argparse

from reference.bugs import BUGS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ids", action="store_true", help="print only the ids, one per line")


def run(args: argparse.Namespace) -> int:
    for bug in BUGS.values():
        if args.ids:
            print(bug.id)
            continue
        print(f"{bug.id}  (undoes {bug.fix}, fixed in QEMU {bug.release}; finding: {bug.finding})")
        print(f"    {bug.mechanism}")
    return 0
