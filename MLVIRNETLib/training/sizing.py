"""Size a training run to a time budget from the measured rate of its pair production.

On a GPU a training step of the 96^3 cascade costs less than making its pair on the CPU
(``schedule.data_workers`` processes make them), so the steps per second of a run are those of its
pair production, which depend on the machine. :func:`pair_rate` measures them and
:func:`write_sized_config` scales a config's ``schedule.level_steps`` to a number of steps, keeping
their proportions (``training_recipes/common/gpu_train.py`` does both on a lent GPU machine). The
sized config is what reproduces the run.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from ..io.atomic import atomic_output
from .config import config_from_dict, load_config

__all__ = ["pair_rate", "scaled_level_steps", "write_sized_config"]


def pair_rate(config_path: str | Path, seconds: float) -> float:
    """Training pairs (not steps: a step takes ``schedule.batch_size`` of them) per second that the config's ``schedule.data_workers`` processes make (one
    with 0 workers), measured for ``seconds`` after each worker has delivered two pairs.

    The pairs are drawn with another seed than the run's; only their rate is wanted.
    """
    from .trainer import StepPairs, build_sources, iterate_pairs

    cfg = load_config(config_path)
    workers = cfg.schedule.data_workers
    it = iterate_pairs(StepPairs(build_sources(cfg), cfg.seed + 1, 0, 1, 0, 10**9), workers)
    for _ in range(2 * max(1, workers)):  # the pairs made while the workers started
        next(it)
    t0, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    rate = n / (time.perf_counter() - t0)
    del it  # stops the workers
    return rate


def scaled_level_steps(level_steps: list[int], total: int) -> list[int]:
    """``level_steps`` scaled to about ``total`` steps in all, in the same proportions; a level with
    steps keeps at least one, a level without stays at 0.

    Raises:
        ValueError: no level has steps, or ``total`` is not positive.
    """
    if total < 1 or sum(level_steps) < 1:
        raise ValueError(f"cannot scale level steps {level_steps} to {total} steps")
    return [max(1, round(total * s / sum(level_steps))) if s else 0 for s in level_steps]


def write_sized_config(config_path: str | Path, total: int, out_path: str | Path | None = None) -> Path:
    """Write the config at ``config_path`` with ``schedule.steps`` and ``schedule.level_steps``
    scaled to about ``total`` steps (:func:`scaled_level_steps`), as ``<name>_sized.yaml`` beside it
    by default, so that its relative paths stay valid. The rest of the text is kept as it is.

    Raises:
        ValueError: the config has no ``steps:`` and ``level_steps: [...]`` lines (both are
            needed, indented under ``schedule``); nothing is written.
        OSError: the file could not be written, or did not read back with the new steps
            (:class:`~MLVIRNETLib.io.integrity.IncompleteWriteError`); no file is left at the path.
    """
    src = Path(config_path)
    cfg = load_config(src)
    new = scaled_level_steps(cfg.schedule.steps_per_level(cfg.network.levels), total)
    text = src.read_text(encoding="utf-8")
    text, n1 = re.subn(r"(?m)^([ \t]+steps:)[ \t]*\d+", rf"\g<1> {sum(new)}", text, count=1)
    text, n2 = re.subn(r"(?m)^([ \t]+level_steps:)[ \t]*\[[\d, ]*\]", rf"\g<1> [{', '.join(map(str, new))}]", text, count=1)
    if n1 != 1 or n2 != 1:
        raise ValueError(f"{src}: the schedule needs 'steps:' and 'level_steps: [...]' lines to be sized")
    out = Path(out_path) if out_path is not None else src.with_name(src.stem + "_sized.yaml")

    def verify(written: Path, final: Path) -> None:
        import yaml

        check = config_from_dict(yaml.safe_load(written.read_text(encoding="utf-8")), final.parent).schedule
        if check.steps != sum(new) or check.level_steps != new:
            raise ValueError(f"{final}: the sized config did not read back with level_steps {new}")

    with atomic_output(out, verify) as tmp:
        tmp.write_text(f"# sized to {sum(new)} steps from {src.name}\n" + text, encoding="utf-8")
    return out
