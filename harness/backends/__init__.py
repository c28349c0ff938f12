"""Backends run a case and return an :class:`harness.observation.Observation`:
``reference`` (the in-process model) and ``qemu`` (real QEMU 7.2 over QMP)."""
