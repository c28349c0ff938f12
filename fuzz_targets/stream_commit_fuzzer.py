#!/usr/bin/env python3
"""atheris target: block-stream and block-commit, concurrently, on the model.

libFuzzer's bytes become choices read from the front
(:class:`harness.choices.BytesSource`), go through the one grammar
(:mod:`harness.generate`) and the scheduler, and each run is judged.
Run it directly with libFuzzer flags::

    python fuzz_targets/stream_commit_fuzzer.py corpus_dir/ -atheris_runs=1000
    BLOCKFUZZ_BUGS=stream-prepare-no-drain python fuzz_targets/stream_commit_fuzzer.py -max_total_time=60

or through ``blockfuzz fuzz --engine atheris``. Environment:

``BLOCKFUZZ_BUGS``       bug ids to put back, comma-separated (default: none, the fixed model)
``BLOCKFUZZ_FINDINGS``   where finding case files go (default: ``findings``)
``BLOCKFUZZ_KEEP_GOING`` ``1``: write a finding and go on instead of crashing
``BLOCKFUZZ_STATUS``     ``1``: JSON status lines on stdout (for ``blockfuzz fuzz``)
``BLOCKFUZZ_ONLY``       a signature (``kind@where``): other findings do not count
``BLOCKFUZZ_KNOWN``      signatures of documented behaviours, comma-separated: they do not count
``BLOCKFUZZ_MUTATOR``    ``structure`` (default): half the mutations drop, duplicate,
                         splice or retarget commands; ``bytes``: libFuzzer's own only
``BLOCKFUZZ_FEEDBACK``   ``cells`` (default): libFuzzer's coverage is the scenario cells
                         and pairs of cells a run reached (:class:`harness.campaign.CellFeedback`),
                         the model runs uninstrumented (compiled, if built);
                         ``code``: atheris instruments the model's bytecode
"""
import gc
import os
import random
import sys

import atheris

FEEDBACK = os.environ.get("BLOCKFUZZ_FEEDBACK", "cells")
if FEEDBACK not in ("cells", "code"):
    sys.exit(f"BLOCKFUZZ_FEEDBACK must be 'cells' or 'code', not {FEEDBACK!r}")
if FEEDBACK == "code":
    # atheris instruments Python bytecode: the model's sources, never its compiled build
    os.environ["BLOCKFUZZ_PURE"] = "1"
    # Coverage of the model guides libFuzzer; the harness (grammar, oracle) is left
    # uninstrumented: it would only slow each run down.
    with atheris.instrument_imports(include=["reference"]):
        import harness.backends.reference  # noqa: F401  (imports the whole model)
from harness.campaign import ByteTarget, CellFeedback  # noqa: E402
from harness.generate import mutate_structure  # noqa: E402
from reference.bugs import validate  # noqa: E402


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.randrange(2):
        return atheris.Mutate(data, max_size)
    return mutate_structure(data, rng)[:max_size]


def custom_crossover(data1: bytes, data2: bytes, max_size: int, seed: int) -> bytes:
    return mutate_structure(data1, random.Random(seed), other=data2)[:max_size]


def main() -> None:
    bugs = validate(b for b in os.environ.get("BLOCKFUZZ_BUGS", "").split(",") if b)
    target = ByteTarget(bugs, os.environ.get("BLOCKFUZZ_FINDINGS", "findings"),
                        keep_going=os.environ.get("BLOCKFUZZ_KEEP_GOING") == "1",
                        status=os.environ.get("BLOCKFUZZ_STATUS") == "1",
                        only=os.environ.get("BLOCKFUZZ_ONLY") or None,
                        known=frozenset(k for k in os.environ.get("BLOCKFUZZ_KNOWN", "").split(",") if k),
                        feedback=CellFeedback(atheris) if FEEDBACK == "cells" else None)
    structure = os.environ.get("BLOCKFUZZ_MUTATOR", "structure") == "structure"
    if target.status:
        import atexit
        atexit.register(target.report, {}, True)
    atheris.Setup(sys.argv, target,
                  custom_mutator=custom_mutator if structure else None,
                  custom_crossover=custom_crossover if structure else None)
    gc.freeze()     # the libraries' objects out of the collector's sight (frozen_heap)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
