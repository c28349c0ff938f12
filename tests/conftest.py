"""The suite runs the model from its Python sources: coverage (and atheris) need
them, even where ``make fast`` has compiled it (``tests/test_fast.py`` compares both)."""
import os

os.environ["BLOCKFUZZ_PURE"] = "1"
