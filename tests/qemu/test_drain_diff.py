"""``scripts/drain_diff.py``: generated cases made drain-driven, held to QEMU 7.2."""
import importlib.util
import os

import pytest

from harness import pin
from harness.case import Command
from tests.model.conftest import chain_case

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "drain_diff.py")
spec = importlib.util.spec_from_file_location("drain_diff", SCRIPT)
drain_diff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(drain_diff)


def test_a_case_is_made_drain_driven():
    case = chain_case(4, [("block-commit", {"device": "drive0", "top-node": "node2", "speed": 1048576}),
                          ("block-job-set-speed", {"device": "drive0", "speed": 0}),
                          ("x-guest-write", {"offset": 0, "length": 512, "pattern": 1}),
                          ("x-wait-jobs",), ("x-step", {"count": 2})])
    assert drain_diff.drain_driven(case).commands == (
        Command("block-commit", {"device": "drive0", "top-node": "node2", "speed": 1}), pin.STEP,
        Command("x-guest-write", {"offset": 0, "length": 512, "pattern": 1}), pin.STEP)


@pytest.mark.qemu
def test_generated_drain_driven_cases_agree_with_qemu(tmp_path, capsys):
    from tests.qemu.conftest import require_qemu
    require_qemu()
    assert drain_diff.main(["--cases", "4", "--seed", "3", "--out", str(tmp_path)]) == 0
    compared = capsys.readouterr().out.splitlines()[-1]
    assert compared.endswith(" compared, 0 differ") and not compared.startswith("0 ")
