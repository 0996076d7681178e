"""Saving and loading trained mlVIRNET models as plain, safely loadable files.

A model file is written with ``torch.save`` and holds only a ``dict`` of plain values::

    {
        "format": "mlvirnet-model",
        "format_version": 1,
        "config": {"levels": 3, "features": 16, "depth": 3, "input_size": [160, 160, 160]},
        "metadata": {..., "library_version": "0.1.0"},
        "state_dict": {name: tensor, ...},
    }

It is read back with ``torch.load(..., weights_only=True)``, which only rebuilds tensors and
plain containers and never runs code from the file. Anything that is not such a file -- missing,
truncated, corrupt, a pickle of arbitrary objects, a state dict of another architecture -- gives
one ``FileNotFoundError`` or ``ValueError`` naming the path and the problem.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .cascade import MultilevelNet, NetworkConfig, build_network

__all__ = [
    "MAX_INPUT_SIZE", "MAX_NETWORK_MEMORY_GB", "MODEL_FORMAT", "MODEL_FORMAT_VERSION", "estimated_network_memory_gb",
    "load_model", "save_model", "to_plain",
]

MODEL_FORMAT = "mlvirnet-model"
MODEL_FORMAT_VERSION = 1

MAX_INPUT_SIZE = 512
"""Largest ``input_size`` per axis of a model that :func:`load_model` accepts."""

MAX_NETWORK_MEMORY_GB = 32.0
"""Largest estimated inference memory (:func:`estimated_network_memory_gb`) of a model that
:func:`load_model` accepts; a model asking for more is refused before anything is allocated."""

_LIVE_FEATURE_MAPS = 6
"""Full-resolution feature maps alive at once during inference (input, skip, upsampled, concatenated)."""

_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
"""How files written by ``torch.save`` start: a zip archive (the default since torch 1.6) or a
pickle of protocol 2 or later (the legacy format)."""

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``value`` is built from str/int/float/bool/None, lists, tuples and
    dicts with string keys (what ``weights_only`` loading can rebuild)."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"metadata key {k!r} at {where} must be a string")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(
        f"metadata value at {where} has type {type(value).__name__}; only str, int, float, bool, None, "
        "lists and dicts are allowed"
    )


def to_plain(value: Any) -> Any:
    """``value`` with subclasses of str/int/float (``torch.__version__``, numpy scalars) turned into the
    built-in types, which ``weights_only`` loading rebuilds (it refuses any other class)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def _state_differences(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], tuple[str, tuple, tuple] | None]:
    """``(missing keys, unexpected keys, first (key, shape, expected shape) that differs or None)``
    of ``state`` against ``reference``; the shapes are compared only when the keys agree."""
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if not missing and not unexpected:
        for k, v in reference.items():
            if tuple(state[k].shape) != tuple(v.shape):
                return missing, unexpected, (k, tuple(state[k].shape), tuple(v.shape))
    return missing, unexpected, None


def _architecture_mismatch(net: MultilevelNet, config: NetworkConfig) -> str | None:
    """Describe how ``net``'s parameters differ from a network built from ``config`` (None if they fit)."""
    missing, unexpected, shape = _state_differences(net.state_dict(), build_network(config).state_dict())
    if missing or unexpected:
        return f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]} (first 5 of each)"
    if shape is not None:
        return f"parameter {shape[0]!r} has shape {shape[1]}, expected {shape[2]}"
    return None


def estimated_network_memory_gb(config: NetworkConfig) -> float:
    """A rough estimate (GB) of the float32 activations a network of ``config`` holds at once
    during inference on one pair: ``features`` channels at ``input_size``, a few maps at a time."""
    voxels = math.prod(int(n) for n in config.input_size)
    return 4.0 * voxels * config.features * _LIVE_FEATURE_MAPS / 1e9


def _check_input_size(config: NetworkConfig, where: str) -> None:
    """Raise ``ValueError`` when ``config`` asks for an input size too large to run (before any allocation)."""
    size = tuple(int(n) for n in config.input_size)
    gb = estimated_network_memory_gb(config)
    if max(size) > MAX_INPUT_SIZE or gb > MAX_NETWORK_MEMORY_GB:
        raise ValueError(
            f"{where}: the model asks for an input size of {size} voxels ({math.prod(size) / 1e6:.0f} million), "
            f"which would need about {gb:.0f} GB for the network alone; at most {MAX_INPUT_SIZE} voxels per axis and "
            f"{MAX_NETWORK_MEMORY_GB:g} GB are accepted"
        )


def save_model(path: str | os.PathLike, net: MultilevelNet, config: NetworkConfig, metadata: dict | None = None) -> Path:
    """Write ``net``'s weights with its ``config`` and ``metadata`` to ``path`` atomically.

    The file is first written to a temporary file in the same directory and then moved into place
    with ``os.replace``, so ``path`` never holds a partial file; an existing file at ``path`` is
    replaced only when the write succeeded.

    Args:
        path: destination file (conventionally ``*.pt``); its directory must exist.
        net: the network; its parameters must fit ``config``.
        config: the architecture.
        metadata: plain JSON-like values (str/int/float/bool/None, lists, dicts with string keys),
            e.g. training settings and data description. ``library_version`` is added (it
            overrides a key of that name).

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ValueError: ``net`` does not fit ``config``, ``metadata`` is not plain, or ``config`` asks
            for an input size that :func:`load_model` would refuse.
        FileNotFoundError: the directory of ``path`` does not exist.
    """
    path = Path(path)
    if not isinstance(net, MultilevelNet):
        raise ValueError(f"net must be a MultilevelNet, got {type(net).__name__}")
    if not isinstance(config, NetworkConfig):
        raise ValueError(f"config must be a NetworkConfig, got {type(config).__name__}")
    meta = dict(metadata or {})
    _check_plain(meta, "metadata")
    meta = to_plain(meta)
    meta["library_version"] = __version__
    _check_input_size(config, f"cannot save {path}")
    problem = _architecture_mismatch(net, config)
    if problem is not None:
        raise ValueError(f"network does not match config {config.to_dict()}: {problem}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory for the model file does not exist: {path.parent}")
    if path.is_dir():
        raise ValueError(f"model path is a directory: {path}")
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "config": config.to_dict(),
        "metadata": meta,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()},
    }
    from ..io.atomic import write_atomically

    return write_atomically(path, lambda fh: torch.save(payload, fh))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[MultilevelNet, dict]:
    """Read a model written by :func:`save_model`.

    Args:
        path: the model file.
        map_location: device for the weights (``"cpu"``, ``"cuda"``, a ``torch.device``).

    Returns:
        ``(net, info)``: the network in eval mode on ``map_location`` and
        ``info = {"config": NetworkConfig, "metadata": dict, "library_version": str,
        "format_version": int}`` (``library_version`` is the version that wrote the file).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, or the file is not a readable MLVIRNET model (not a torch
            file at all, e.g. text; truncated, corrupt, foreign content, unsupported format version,
            weights of another architecture, non-finite weights), or its config asks for an input
            size above ``MAX_INPUT_SIZE`` per axis or ``MAX_NETWORK_MEMORY_GB`` of activations.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))[:3]
        hint = f" (model files in it: {inside})" if inside else ""
        raise ValueError(f"{path} is a folder, not a model file; give the model file itself{hint}")
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"model path is not a regular file: {path}")
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid map_location {map_location!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"map_location {map_location!r} asks for CUDA, but CUDA is not available")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read model file {path}: the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head.startswith(_TORCH_MAGIC):
        raise ValueError(
            f"cannot read model file {path}: not an MLVIRNET model file (it was not written by torch.save: it "
            f"starts with {head!r}, a model file is a zip archive starting with b'PK')"
        )
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (PermissionError, MemoryError):
        raise
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"cannot read model file {path}: it holds objects other than tensors and plain values, which are "
            "refused without being run (or the file is damaged)"
        ) from exc
    except Exception as exc:  # torch.load reports damaged files with many exception types
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        first = text.splitlines()[0][:300] if text else ""
        raise ValueError(
            f"cannot read model file {path}: not a readable torch file (truncated or corrupt): "
            f"{type(exc).__name__}{': ' + first if first else ''}"
        ) from exc

    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        keys = sorted(map(str, payload))[:6] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not an MLVIRNET model file (expected format {MODEL_FORMAT!r}; found {keys})")
    version = payload.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {version!r}; this library reads version {MODEL_FORMAT_VERSION}")
    for key, kind in (("config", dict), ("metadata", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path}: entry {key!r} must be a {kind.__name__}, got {type(payload.get(key)).__name__}")
    try:
        config = NetworkConfig.from_dict(payload["config"])
    except ValueError as exc:
        raise ValueError(f"{path}: invalid network config: {exc}") from exc
    _check_input_size(config, str(path))
    state = payload["state_dict"]
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: state_dict entry {k!r} is a {type(v).__name__}, expected a tensor")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{path}: weights {k!r} contain non-finite values")

    net = build_network(config)
    missing, unexpected, shape = _state_differences(state, net.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the architecture {config.to_dict()}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    if shape is not None:
        raise ValueError(
            f"{path}: weights {shape[0]!r} have shape {shape[1]} but the architecture "
            f"{config.to_dict()} needs {shape[2]}"
        )
    net.load_state_dict(state, strict=True)
    net = net.to(device).eval()
    metadata = payload["metadata"]
    info = {
        "config": config,
        "metadata": metadata,
        "library_version": metadata.get("library_version"),
        "format_version": version,
    }
    if info["library_version"] is not None and not isinstance(info["library_version"], str):
        raise ValueError(f"{path}: metadata library_version must be a string, got {info['library_version']!r}")
    return net, info
