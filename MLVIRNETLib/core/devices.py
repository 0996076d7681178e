"""Choosing the torch device a registration runs on.

There is no global device state in MLVIRNET: every function that computes takes a ``device``
argument, and :func:`resolve_device` turns the user's choice into a ``torch.device``.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""The device names accepted by the CLI and the Slicer module."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``) into a device.

    ``"auto"`` picks the first CUDA GPU when one is usable and the CPU otherwise.

    Raises:
        ValueError: an unknown name, or a CUDA device requested on a machine without a usable GPU
            (or with fewer GPUs than the index asks for).
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise ValueError(f"device must be one of {DEVICE_CHOICES} or 'cuda:N', got {device!r}")
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but no CUDA GPU is available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
        index = 0
        if name.startswith("cuda:"):
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"bad CUDA device {name!r}: expected 'cuda' or 'cuda:N' with an integer N") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise ValueError(f"CUDA device {name!r} does not exist: this machine has {count} GPU(s)")
        return torch.device("cuda", index)
    raise ValueError(f"device must be one of {DEVICE_CHOICES} or 'cuda:N', got {device!r}")


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (a no-op on the CPU).

    CUDA kernels run asynchronously: without this, a wall-clock stage time on a GPU measures only
    the launch of its kernels and the wait lands in whichever stage next reads a result.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
