"""Training checkpoints: atomic, self-describing and safely loadable.

A checkpoint is a ``torch.save`` of plain values only::

    {"format": "mlvirnet-checkpoint", "format_version": 1, "library_version": "...",
     "config": TrainConfig.to_dict(), "step": next global step to run, "stage": stage of that step,
     "optimizer_stage": stage the optimizer state belongs to, "elapsed_s": training seconds so far,
     "model": state_dict, "optimizer": optimizer state_dict, "best": {...}}

It is written to a temporary file in the same directory, flushed, and moved into place with
``os.replace``; a sidecar ``<name>.json`` (step, stage, time) is written the same way after it, for
progress monitors. Reading uses ``torch.load(weights_only=True)``: a foreign or corrupt file gives a
``ValueError`` and never runs code.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..io.atomic import write_atomically

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "atomic_write_bytes"]

CHECKPOINT_FORMAT = "mlvirnet-checkpoint"
CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (never a partial file)."""
    write_atomically(path, lambda fh: fh.write(data))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plain values and tensors) as a checkpoint at ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "library_version": __version__}
    full.update(payload)
    write_atomically(path, lambda fh: torch.save(full, fh))
    info = {k: full[k] for k in ("step", "stage", "elapsed_s", "library_version") if k in full}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(info).encode())
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an MLVIRNET checkpoint (corrupt, truncated, foreign content, other version).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"cannot read checkpoint {path}: it holds objects other than tensors and plain values "
                         "(refused without running them) or is damaged") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: truncated or corrupt ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an MLVIRNET training checkpoint")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {payload.get('format_version')!r}; "
                         f"this library reads version {CHECKPOINT_VERSION}")
    for key in ("config", "step", "stage", "model", "optimizer"):
        if key not in payload:
            raise ValueError(f"checkpoint {path} has no {key!r} entry")
    return payload
