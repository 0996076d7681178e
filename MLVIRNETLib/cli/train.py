"""``mlvirnet train``: progressive training of the mlVIRNET cascade from a YAML config.

Multi-GPU: ``torchrun --nproc_per_node N -m MLVIRNETLib.cli train --config CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model (progressive, coarse to fine) from a YAML config",
        description=(
            "Progressive training as in the mlVIRNET paper: the coarsest level first, then each finer level with "
            "the coarser nets frozen and its weights initialised from the previous level. Writes checkpoints, "
            "metrics.csv, TensorBoard logs and model.pt into the config's output_dir."
        ),
    )
    p.add_argument("--config", required=True, type=Path, metavar="CONFIG.yaml", help="training configuration")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--output-dir", type=Path, metavar="DIR", help="override the config's output_dir")
    p.add_argument("--device", metavar="DEV", help="override the config's device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, metavar="N", help="override the config's schedule.num_threads (CPU threads)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..training import load_config, train

    config = load_config(args.config)
    if args.output_dir is not None:
        config.output_dir = str(args.output_dir.expanduser().resolve())
    if args.device is not None:
        config.device = args.device
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        config.schedule.num_threads = args.threads
    result = train(config, resume=args.resume, quiet=args.quiet)
    summary = {"model": str(result.model_path), "output_dir": str(result.output_dir), "steps": result.steps,
               "training_time_s": round(result.elapsed_s, 1), "validation": result.validation}
    print(json.dumps(summary) if args.json else f"wrote {result.model_path} ({result.steps} steps, {result.elapsed_s:.0f} s)")
    return 0
