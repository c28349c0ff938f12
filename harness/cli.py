"""``blockfuzz``: the command line.

Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises
:class:`harness.errors.UsageError` (or a subclass): printed on one line,
exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from reference.errors import BlockfuzzError
from harness.errors import UsageError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fuzz": ("harness.campaign", "run a fuzz campaign on the model (or on QEMU)"),
    "replay": ("harness.replay", "replay case files and check their verdicts"),
    "minimize": ("harness.minimize", "shrink a finding to its smallest form"),
    "pin": ("harness.pin", "make a finding show under every schedule, for real QEMU"),
    "diff": ("harness.differential", "run cases on the model and on real QEMU and compare"),
    "show": ("harness.report", "show a case: transcript, trace, graph, iotest reproducer"),
    "bugs": ("harness.bugs_cmd", "list the historical bugs that can be put back"),
    "bench": ("harness.bench", "measure the model's speed"),
}


class _Parser(argparse.ArgumentParser):
    """No abbreviated options: with them ``diff CASE --qemu PATH`` would be taken as
    ``--qemu-trace PATH`` and run the QEMU on PATH; a misspelt option is bad input."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, as for every bad input
        if message.startswith("unrecognized arguments"):
            message += f" (options are spelt out in full: `{self.prog} COMMAND --help` lists them)"
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blockfuzz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = _load(module_name)
        if module is not None:
            module.add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        module = _load(args._module)
        if module is None:
            raise UsageError(f"blockfuzz {args.command}: not available in this build")
        return int(module.run(args) or 0)
    except UsageError as e:
        print(f"blockfuzz: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `blockfuzz show ... | head`: the reader has had enough
        try:                         # nothing more to flush at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except BlockfuzzError as e:
        print(f"blockfuzz: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
