"""The registration settings every sub-command that registers shares (``register``, ``batch``,
``demo``, ``evaluate-dirlab``, ``register-4d``): the arguments, their checks, and the
:class:`~MLVIRNETLib.registration.options.RegistrationOptions` they give through
:func:`~MLVIRNETLib.registration.presets.options_for`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import CLIError

if TYPE_CHECKING:
    from ..registration.options import RegistrationOptions


def add_registration_arguments(p: argparse.ArgumentParser) -> None:
    """The registration settings shared by ``register``, ``batch``, ``demo`` and ``evaluate-dirlab``:
    --preset, --model, --device, --refine, --no-affine, --grid-size (read back with
    :func:`registration_settings`)."""
    add_preset_argument(p)
    add_model_and_device_arguments(p)
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="refinement iterations per level (0 = network only; default: those of the preset)")
    p.add_argument("--no-affine", action="store_true", help="skip the affine pre-alignment")
    p.add_argument("--grid-size", "--network-size", dest="grid_size", type=int, nargs=3, default=None,
                   metavar=("NX", "NY", "NZ"), action=_GridSizeAction,
                   help="working grid of preprocessing and refinement (default: follows the lung box and the "
                        "image, at most 160 per axis; a model runs at its own input size). --network-size is "
                        "its former, deprecated spelling")


class _GridSizeAction(argparse.Action):
    """Stores ``--grid-size``; its former spelling ``--network-size`` works with a note on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == "--network-size":
            print("note: --network-size is deprecated; use --grid-size", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_preset_argument(p) -> None:
    """--preset, the same in every sub-command that registers."""
    from ..registration.presets import DEFAULT_PRESET, PRESETS

    p.add_argument("--preset", default=DEFAULT_PRESET, choices=tuple(PRESETS),
                   help="speed/accuracy: fast = network only, standard = network + refinement, accurate = network + "
                        f"finer refinement (default {DEFAULT_PRESET}; the options below override it)")


def add_model_and_device_arguments(p: argparse.ArgumentParser) -> None:
    """--model and --device, spelled the same in every sub-command that registers."""
    p.add_argument("--model", default="default", metavar="PATH",
                   help="model file, 'default' (the shipped model, used when the option is left out) or 'none' "
                        "(refinement only)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="compute device: auto, cpu, cuda or cuda:N (default auto: the first GPU, else the CPU)")


def check_registration_arguments(args) -> None:
    """Raise one clear error for a bad value of the arguments of :func:`add_registration_arguments`."""
    if args.model not in ("default", "none"):
        model = Path(args.model)
        if model.is_dir():
            raise CLIError(f"--model {model} is a folder, not a model file")
        if not model.exists():
            raise FileNotFoundError(f"model file not found: {model}")
    if args.refine is not None and args.refine < 0:
        raise CLIError(f"--refine must be >= 0, got {args.refine}")


def registration_settings(args) -> tuple["RegistrationOptions", str | Path | None]:
    """``(RegistrationOptions, model)`` from the arguments of :func:`add_registration_arguments`;
    ``model`` is ``"default"``, ``None`` (no network) or a ``Path``."""
    from ..registration.presets import options_for

    options = options_for(  # the one translation; it checks every setting (ValueError)
        args.preset,
        grid={"size": tuple(args.grid_size) if args.grid_size is not None else None},
        refinement={"iterations": args.refine},
        **({"affine": None} if args.no_affine else {}),
    )
    model = None if args.model == "none" else ("default" if args.model == "default" else Path(args.model))
    return options, model


def add_output_arguments(p: argparse.ArgumentParser, json_help: str = "print one JSON object with the outcome on stdout") -> None:
    """--json and --quiet, spelled the same in every sub-command that registers."""
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--quiet", action="store_true",
                   help="no progress (default: a bar on a terminal, else a line every 5 s)")
