"""Tests against real QEMU 7.2: skipped, with the reason, where its binaries are
missing; a failure instead under ``CI=true``, where ``make test`` installs them."""
from __future__ import annotations

import os

import pytest


def missing_binaries() -> list[str]:
    """The QEMU tools not found where the backend looks (iotests' variables, a
    build directory, PATH): a block developer's own QEMU is tested the same way."""
    from harness.backends.qemu_binaries import TOOLS, find_binary
    from harness.errors import QemuError
    missing = []
    for name, (_, _, package) in TOOLS.items():
        try:
            find_binary(name)
        except QemuError:
            missing.append(f"{name} ({package})")
    return missing


def require_qemu() -> None:
    """Skip (or, under CI=true, fail) when a QEMU binary is missing."""
    missing = missing_binaries()
    if not missing:
        return
    reason = f"real QEMU 7.2 is not installed: missing {', '.join(missing)} (make qemu installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _needs_qemu(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("qemu") is not None:
        require_qemu()


@pytest.fixture(scope="module")
def runner():
    """One runner (and so one reused QEMU per binary) for a test module."""
    require_qemu()
    from harness.backends.qemu import QemuRunner

    with QemuRunner(timeout=10.0) as r:
        yield r
