"""The ``mlvirnet`` command line: one module per sub-command, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

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


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (the same inode when both exist, else the same
    resolved path): the check that keeps an output from overwriting an input."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


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
