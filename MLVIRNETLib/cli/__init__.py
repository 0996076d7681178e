"""The ``mlvirnet`` command line: one module per sub-command, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

# sub-command name -> module (inside MLVIRNETLib.cli) providing add_parser(subparsers) and run(args) -> int
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "register": "register",
    "warp": "warp",
    "tre": "tre",
    "evaluate-dirlab": "evaluate_dirlab",
    "train": "train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlvirnet", description="mlVIRNET lung CT registration")
    parser.add_argument("--version", action="version", version=f"mlvirnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __name__)
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        print(f"mlvirnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
