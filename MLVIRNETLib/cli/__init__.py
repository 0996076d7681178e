"""The ``mlvirnet`` command line: one module per sub-command, each with ``add_parser`` and ``run``.

Every command reports a problem the user can fix as one line ``mlvirnet CMD: error: ...`` (exit 2),
and Ctrl-C as one line ``mlvirnet CMD: interrupted`` (exit 130); outputs are written atomically by
the library, so neither leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

from .. import __version__
from ..io.atomic import same_file  # noqa: F401 (part of the CLI helpers)

# sub-command name -> module (inside MLVIRNETLib.cli) providing add_parser(subparsers) and run(args) -> int
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "register": "register",
    "batch": "batch",
    "register-4d": "register_4d",
    "warp": "warp",
    "tre": "tre",
    "evaluate-dirlab": "evaluate_dirlab",
    "train": "train",
}

EXIT_ERROR = 2
"""Exit status of a usage or input error (as argparse's)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, the shell convention)."""


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


def check_output(path: Path, inputs: dict[str, Path | None], name: str) -> None:
    """Raise a ``CLIError``/``FileNotFoundError`` unless ``path`` can be written without harming an input.

    Checks, before any work: ``path`` is not one of ``inputs`` (label -> path), not a folder, its
    folder exists and a file can be created there (a probe file is created and removed at once).
    """
    for label, src in inputs.items():
        if src is not None and same_file(path, src):
            raise CLIError(f"{name} {path} is the same file as the {label} input; refusing to overwrite an input")
    if path.is_dir():
        raise CLIError(f"{name} {path} is a folder; give a file name such as out.nii.gz")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} folder does not exist: {folder}")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{name} {path} exists and is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise CLIError(f"{name} folder {folder} is not writable: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an ``OSError`` as ``reason: file``)."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, (FileNotFoundError, PermissionError)):
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one ``mlvirnet`` command; returns its exit status (0 ok, 2 error, 130 interrupted)."""
    from ..core.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before anything imports torch (see MLVIRNETLib.core.threads)
    command = ""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"mlvirnet{' ' + command if command else ''}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (CLIError, ValueError, OSError, RuntimeError) as exc:
        print(f"mlvirnet {command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
