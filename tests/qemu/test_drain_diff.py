"""``scripts/drain_diff.py``: generated cases made drain-driven, held to QEMU 7.2."""
import importlib.util
import os

import pytest


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "drain_diff.py")
spec = importlib.util.spec_from_file_location("drain_diff", SCRIPT)
drain_diff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(drain_diff)


@pytest.mark.qemu
def test_generated_drain_driven_cases_agree_with_qemu(tmp_path, capsys):
    from tests.qemu.conftest import require_qemu
    require_qemu()
    assert drain_diff.main(["--cases", "4", "--seed", "3", "--out", str(tmp_path)]) == 0
    compared = capsys.readouterr().out.splitlines()[-1]
    assert compared.endswith(" compared, 0 differ") and not compared.startswith("0 ")
