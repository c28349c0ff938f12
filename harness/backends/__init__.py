"""Backends run a case and return an :class:`harness.observation.Observation`:
``reference`` (the in-process model) and ``qemu`` (real QEMU 7.2 over QMP)."""

import blockfuzz_fast as _fast

_fast.extend(__name__, __path__)   # the compiled modules, when current (make fast)
