"""One step of ``git bisect run`` over a QEMU tree: build it, run a case on it.

From the QEMU source tree, configured once into a meson build directory (QEMU
5.2 or later; ``scripts/qemu-with-bug.sh`` shows a small configuration)::

    git bisect start BAD GOOD
    git bisect run /path/to/blockfuzz/.venv/bin/python /path/to/blockfuzz/scripts/qemu_bisect_run.py \\
        --build build /path/to/case.json [--repeat 5]

Each step builds the four tools the QEMU backend runs (``qemu-system-x86_64``,
``qemu-img``, ``qemu-io`` and, where the tree has it, the storage daemon)
with ninja, then runs ``blockfuzz diff CASE --only qemu --repeat N
--qemu-build DIR``: QEMU's own crashes and hangs and the oracle's verdict on
its runs. Exit codes, as ``git bisect run`` reads them:

- 0: every run passed (good);
- 1: one failed (bad);
- 125: this commit does not build, or its tree has no meson build (skip it);
- 255: the case or the command line is wrong (bisect stops).

``--fixed`` swaps 0 and 1, to find the commit that fixed a case rather than
the one that broke it (``git bisect start --term-old=broken --term-new=fixed``).
A race shows on every run only in a pinned case (``blockfuzz pin``); with any
other case, give ``--repeat`` enough runs that a bad commit is not called good.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

#: what the QEMU backend runs, as ninja targets in a meson build directory
TARGETS = ("qemu-system-x86_64", "qemu-img", "qemu-io",
           os.path.join("storage-daemon", "qemu-storage-daemon"))
GOOD, BAD, SKIP, STOP = 0, 1, 125, 255


def known_targets(build: str) -> list[str]:
    """The targets of :data:`TARGETS` this tree's build knows (the storage daemon
    came in QEMU 5.0)."""
    return [t for t in TARGETS
            if subprocess.run(["ninja", "-C", build, "-t", "query", t],
                              capture_output=True).returncode == 0]


def build_tree(build: str) -> str | None:
    """Build the tools; None when that worked, else why not (one line)."""
    if not os.path.isfile(os.path.join(build, "build.ninja")):
        return f"{build}: no build.ninja (configure the tree with meson first; QEMU < 5.2 is not supported)"
    targets = known_targets(build)
    if "qemu-img" not in targets:
        return f"{build}: the build knows no qemu-img target"
    log = os.path.join(build, "blockfuzz-bisect-build.log")
    with open(log, "w") as out:
        done = subprocess.run(["ninja", "-C", build, *targets], stdout=out, stderr=subprocess.STDOUT)
    return None if done.returncode == 0 else f"the build failed: see {log}"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blockfuzz_main():
    """``harness.cli.main`` of this tree, or None when this Python cannot import it
    (not the interpreter of blockfuzz's ``.venv``): a failed import must stop the
    bisection, not mark a commit bad."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        from harness.cli import main as cli_main
    except ImportError:
        return None
    return cli_main


def run_case(cli_main, build: str, case: str, repeat: int) -> int:
    """``blockfuzz diff CASE --only qemu``'s exit code on this build."""
    return cli_main(["diff", case, "--only", "qemu", "--repeat", str(repeat), "--qemu-build", build])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", metavar="CASE", help="the case file that tells good from bad")
    p.add_argument("--build", required=True, metavar="DIR", help="the tree's meson build directory")
    p.add_argument("--repeat", type=int, default=5, metavar="N", help="runs of the case (default 5)")
    p.add_argument("--fixed", action="store_true",
                   help="bisect for the fix: a failing case is the old state (exit 0)")
    args = p.parse_args(argv)
    if args.repeat < 1 or not os.path.isfile(args.case):
        print(f"qemu_bisect_run: {args.case}: no such case file" if args.repeat >= 1
              else "qemu_bisect_run: --repeat must be at least 1", file=sys.stderr)
        return STOP
    cli_main = blockfuzz_main()
    if cli_main is None:
        print(f"qemu_bisect_run: this Python ({sys.executable}) cannot import blockfuzz: run the "
              f"script with {os.path.join(ROOT, '.venv', 'bin', 'python')}", file=sys.stderr)
        return STOP
    build = os.path.abspath(args.build)
    why = build_tree(build)
    if why is not None:
        print(f"qemu_bisect_run: skipping this commit: {why}", file=sys.stderr)
        return SKIP
    try:
        code = run_case(cli_main, build, os.path.abspath(args.case), args.repeat)
    except Exception as exc:    # blockfuzz itself broken here (a missing package): not the commit's fault
        print(f"qemu_bisect_run: blockfuzz failed: {type(exc).__name__}: {exc}: stopping the "
              "bisection", file=sys.stderr)
        return STOP
    if code not in (GOOD, BAD):
        print(f"qemu_bisect_run: blockfuzz diff exited {code}: stopping the bisection", file=sys.stderr)
        return STOP
    return (BAD if code == GOOD else GOOD) if args.fixed else code


if __name__ == "__main__":
    sys.exit(main())
