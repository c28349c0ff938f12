"""A Python model of QEMU 7.2's block layer: nodes, backing chains,
drained sections, a deterministic event loop, the job state machine, and the
block-stream and block-commit jobs, with historical bugs that can be put back.

It knows nothing of fuzzing: its only input besides QMP commands is a
scheduler that asks ``choose(n, label, keys)`` at every decision.
"""

import blockfuzz_fast as _fast

_fast.extend(__name__, __path__)   # the compiled modules, when current (make fast)
