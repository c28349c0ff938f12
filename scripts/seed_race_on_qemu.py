"""From an empty corpus to the seed race on real QEMU, on every run.

For each form of the seed bug: ``--seeds`` pct campaigns on the model with the
bug put back (``--runs`` each), the seed bug's findings among what they kept
(minimized) pinned with ``blockfuzz pin``, and each pinned case run
``--repeat`` times on QEMU 7.2 with that form of the bug (``make qemu-bug``)
and once on the QEMU on PATH, every run judged by the oracle::

    python scripts/seed_race_on_qemu.py --seeds 10 --runs 1000 --repeat 3

One line per form: campaigns that found the bug, findings pinned, runs on the
bugged QEMU that showed it, runs on the fixed QEMU that were ok. Exit 1 when a
pinned case did not show the bug on the bugged QEMU or did on the fixed one.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import sys
import tempfile
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from harness.case import load  # noqa: E402
from harness.cli import main as blockfuzz  # noqa: E402
from harness.corpus import judge  # noqa: E402
from harness.pin import outcome, pin  # noqa: E402

#: form -> (its finding on the model, what the oracle says of QEMU with it)
FORMS = {
    "stream-prepare-no-drain": ("use-after-free@bdrv_set_backing_hd", "qemu-crash"),
    "stream-prepare-ref-only": ("wrong-backing@backing:filter-left", "wrong-backing"),
}


def campaign_findings(bug: str, seed: int, runs: int, directory: str) -> list:
    out = os.path.join(directory, f"{bug}-{seed}")
    with contextlib.redirect_stdout(io.StringIO()):
        blockfuzz(["fuzz", "--engine", "pct", "--bugs", bug, "--runs", str(runs),
                   "--seed", str(seed), "--findings", out])
    return [load(f) for f in sorted(glob.glob(os.path.join(out, "*.json")))]


def kinds_on_qemu(cases: list, runs: int, build: str | None) -> list[str]:
    from harness.backends.qemu import QemuRunner
    if build is not None:
        os.environ["BLOCKFUZZ_QEMU_BUILD"] = build
    else:
        os.environ.pop("BLOCKFUZZ_QEMU_BUILD", None)
    with QemuRunner(timeout=10.0) as runner:
        return [judge(c, runner.run(c)).kind for c in cases for _ in range(runs)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--builds", default=os.path.join(ROOT, ".qemu-bug"),
                   help="where `make qemu-bug` put the builds (default: .qemu-bug)")
    args = p.parse_args(argv)
    bad = False
    with tempfile.TemporaryDirectory() as tmp:
        for bug, (signature, on_qemu) in FORMS.items():
            build = os.path.join(os.path.abspath(args.builds), bug, "qemu-7.2", "build")
            if not os.path.isdir(build):
                print(f"{bug}: no build in {build}: run `make qemu-bug`")
                return 2
            found = pinned = 0
            cases = []
            for seed in range(args.seeds):
                hits = [c for c in campaign_findings(bug, seed, args.runs, tmp)
                        if outcome(c, None, tuple(c.bugs)).signature == signature]
                found += bool(hits)
                for c in hits:
                    result = pin(c)
                    if result is not None:
                        pinned += 1
                        cases.append(replace(result.case, bugs=()))
            bugged = kinds_on_qemu(cases, args.repeat, build)
            fixed = kinds_on_qemu(cases, 1, None)
            shown, ok = bugged.count(on_qemu), fixed.count("ok")
            bad |= shown != len(bugged) or ok != len(fixed)
            print(f"{bug}: {found}/{args.seeds} campaigns found {signature}; "
                  f"{pinned} of their findings pinned; {shown}/{len(bugged)} runs on the bugged QEMU "
                  f"gave {on_qemu}; {ok}/{len(fixed)} runs on the fixed QEMU ok", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
