"""Progressive training of the mlVIRNET cascade (section 2.3 of the paper).

Stage ``s = 0 .. L-1`` trains level ``L-1-s`` (coarsest first) with the ``s+1`` coarsest levels
active: the coarser nets are frozen (no gradients, batch norms in eval mode) and the loss, eq. (2)
of :func:`MLVIRNETLib.losses.registration_loss`, is evaluated on the active finest level's grid for
the whole composed deformation. The coarsest net starts from its Xavier initialisation; each finer
net is initialised from the weights of the level trained before it (``warm_start``; off for the
ablation). ``network.levels: 1`` is the single-level net of the ablation.

Reproducibility and resume: the net is initialised from ``seed`` and the data of step ``t`` on
process ``r`` come from a generator seeded with ``(seed, t, r, i)``; the learning rate is a
function of the step. A checkpoint therefore fixes everything that follows it, and ``resume``
continues a killed run exactly (same weights as an uninterrupted run, on the same hardware and
thread count).

Multi-GPU: started with ``torchrun --nproc_per_node N``, every process trains on its own data
and :class:`torch.nn.parallel.DistributedDataParallel` averages the gradients (NCCL on CUDA, Gloo
on CPU); only rank 0 validates and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..core.devices import resolve_device
from ..core.pyramid import build_pyramid
from ..losses import displacement_error, registration_loss
from ..networks.cascade import MultilevelNet, build_network, freeze_levels, init_level_from, parameter_count
from ..networks.model_files import save_model
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_dict
from .pairs import ManifestSource, MixedSource, PhaseSource, TrainingPair
from .run_log import RunLog
from .synthetic_pairs import SyntheticSource
from .validation import RegistrationCase, registration_cases, validate, validate_by_registration

__all__ = ["train", "TrainResult", "build_sources", "build_validation_pairs", "initial_network", "step_seed"]

# configuration entries that may differ when a run is resumed (where the files are, which device,
# how many CPU threads)
_RESUME_MAY_DIFFER = ("output_dir", "device", "schedule.num_threads", "schedule.data_workers")


@dataclass
class TrainResult:
    """Summary of a finished run."""

    model_path: Path
    output_dir: Path
    steps: int
    elapsed_s: float
    validation: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def step_seed(seed: int, step: int, rank: int, index: int) -> int:
    """The data seed of pair ``index`` of ``step`` on process ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def initial_network(config: TrainConfig) -> MultilevelNet:
    """The untrained net: Xavier initialisation from ``config.seed`` (global RNG untouched), heads
    scaled by ``schedule.head_scale``; or, with ``schedule.init_model``, that model's weights.

    Raises:
        ValueError: ``init_model`` has another architecture than ``config.network``.
    """
    if config.schedule.init_model:
        from ..networks.model_files import load_model

        net, info = load_model(config.schedule.init_model)
        mine = {k: v for k, v in config.network.to_dict().items() if k != "input_size"}
        theirs = {k: v for k, v in info["config"].to_dict().items() if k != "input_size"}
        if mine != theirs:
            raise ValueError(f"schedule.init_model {config.schedule.init_model} has the network {theirs}, "
                             f"the config asks for {mine}")
        return net
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_network(config.network)
    with torch.no_grad():
        for unet in net.nets:
            unet.head.weight.mul_(config.schedule.head_scale)
    return net


def build_sources(config: TrainConfig) -> MixedSource:
    """The training data of ``config`` as one weighted source."""
    size = tuple(config.network.input_size)
    sources, weights = [], []
    for src in config.data.train:
        source = _make_source(src, size)
        if isinstance(source, SyntheticSource):
            source.with_truth = config.loss.truth > 0  # the supervised term needs the known motion
        sources.append(source)
        weights.append(src.weight)
    return MixedSource(sources, weights)


def _make_source(src, size):
    if src.kind == "synthetic":
        return SyntheticSource(src.images, size, src.motion, src.masks, src.labels, src.appearance)
    if src.kind == "phases":
        return PhaseSource(src.images, size, src.masks, src.auto_masks)
    return ManifestSource(src.csv, size, src.auto_masks)


def build_validation_pairs(config: TrainConfig) -> list[TrainingPair]:
    """Fixed validation pairs: synthetic sources give every image x peak x direction with truth;
    phase sources every pair of consecutive phases; manifests every listed pair."""
    size = tuple(config.network.input_size)
    pairs: list[TrainingPair] = []
    for src in config.data.validation:
        source = _make_source(src, size)
        if isinstance(source, SyntheticSource):
            pairs.extend(source.validation_pairs(src.peaks_mm, config.seed + 1))
        elif isinstance(source, PhaseSource):
            n = len(source.images)
            pairs.extend(TrainingPair(source.grid, source.images[i], source.images[(i + 1) % n], source.masks[i],
                                      source.masks[(i + 1) % n], name=f"phase {i + 1} -> {(i + 1) % n + 1}")
                         for i in range(n))
        else:
            pairs.extend(source.pairs)
    return pairs


def build_registration_cases(config: TrainConfig) -> list[RegistrationCase]:
    """The full-resolution cases of the validation sources with ``register_landmarks > 0``."""
    cases: list[RegistrationCase] = []
    for src in config.data.validation:
        if src.register_landmarks > 0:
            cases.extend(registration_cases(src.images, src.masks, src.peaks_mm, src.register_landmarks,
                                            config.seed + 1))
    return cases


def _set_trainable(net: MultilevelNet, level: int) -> list[torch.nn.Parameter]:
    """Only ``net.nets[level]`` trains; every other level is frozen. Returns its parameters."""
    freeze_levels(net, [l for l in range(net.num_levels) if l != level], True)
    freeze_levels(net, [level], False)
    return list(net.nets[level].parameters())


def _learning_rate(config: TrainConfig, step_in_stage: int, stage_steps: int) -> float:
    s = config.schedule
    t = step_in_stage / max(stage_steps, 1)
    return s.learning_rate * (s.final_lr_fraction + (1 - s.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def pair_loss(model, pair: TrainingPair, config: TrainConfig, active: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (2) for one pair with the ``active`` coarsest levels, on the finest active grid, plus the
    supervised term (``loss.truth``, pairs with a known deformation) and the identity term
    (``loss.identity``) where they are weighted.

    Returns:
        ``(loss, terms)``: the scalar loss (with graph) and its terms as detached scalar tensors on
        the pair's device (read them with ``float``; each read waits for a GPU).
    """
    net = model.module if hasattr(model, "module") else model
    out = model(pair.fixed, pair.moving, pair.grid, active_levels=active)
    level = net.num_levels - active
    grid = out.grids[-1]
    fm = wm = None
    if pair.fixed_masks is not None and pair.moving_masks is not None:
        fm = build_pyramid(pair.fixed_masks, pair.grid, level + 1)[level][0]  # down to the active level only
        mm = build_pyramid(pair.moving_masks, pair.grid, level + 1)[level][0]
        wm = out.deformation.warp(mm, grid, padding_mode="zeros")
    loss, terms = registration_loss(out.fixed_levels[-1], out.warped, out.deformation.displacement, grid.spacing,
                                    config.loss, fm, wm)
    lungs = None if fm is None else fm.sum(dim=1, keepdim=True).clamp(0, 1)
    if config.loss.truth > 0 and pair.truth is not None:
        err = displacement_error(out.deformation.displacement, pair.truth.on_grid(grid).displacement, lungs)
        loss = loss + config.loss.truth * err
        terms = {**terms, "truth": err, "total": loss}
    if config.loss.identity > 0:
        # the fixed image against itself: the whole composed deformation should be the identity,
        # so the active level learns to cancel what the frozen coarser ones predict there
        # (the bare net: under DistributedDataParallel one wrapped forward per backward; the
        # gradients of both passes meet in the same parameters before the reduction). Batch
        # norms normalise with this pass's statistics but keep their running ones: those stay
        # the statistics of real pairs, which inference uses.
        with _running_stats_kept(net):
            same = net(pair.fixed, pair.fixed, pair.grid, active_levels=active).deformation.displacement
        err = displacement_error(same, torch.zeros_like(same), lungs)
        loss = loss + config.loss.identity * err
        terms = {**terms, "identity": err, "total": loss}
    return loss, {k: v.detach() for k, v in terms.items()}


@contextlib.contextmanager
def _running_stats_kept(net: torch.nn.Module) -> Iterator[None]:
    """Batch norms in training mode that leave their running statistics as they are (momentum 0)."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


# ----------------------------------------------------------------------------------------------
# distributed context
# ----------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "_Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if f"{prefix}{k}" in _RESUME_MAY_DIFFER:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_config_differences(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {va!r} vs config {vb!r}")
    return out


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train(config: TrainConfig, resume: bool = False, quiet: bool = False,
          progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Run (or with ``resume`` continue) the training described by ``config``.

    Writes into ``config.output_dir``: ``checkpoints/last.pt`` (+ ``last.json``), ``stages/stage{s}.pt``
    (model file after each level), ``model.pt`` (final model, :func:`MLVIRNETLib.networks.model_files.save_model`),
    ``config.yaml``, ``metrics.csv`` and ``tensorboard/``.

    Args:
        config: the run.
        resume: continue from ``checkpoints/last.pt`` (its configuration must equal ``config``
            except ``output_dir`` and ``device``).
        quiet: no tqdm progress bar.
        progress: optional callback ``(step, total_steps, last_terms)`` after every step.

    Raises:
        ValueError: an output directory that already holds a run (without ``resume``), a missing
            or different checkpoint (with ``resume``), bad data.
    """
    dist = _Dist.from_env()
    device = resolve_device(config.device)
    if dist.world > 1:
        import torch.distributed as tdist

        if device.type == "cuda":
            device = torch.device(f"cuda:{dist.local_rank}")
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    old_threads = torch.get_num_threads()
    if config.schedule.num_threads is not None:
        torch.set_num_threads(config.schedule.num_threads)
    try:
        return _train(config, resume, quiet, progress, dist, device)
    finally:
        torch.set_num_threads(old_threads)
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.destroy_process_group()


@dataclass
class _Run:
    """The state of a run shared by its stages and steps (``step`` and ``last_val`` advance)."""

    config: TrainConfig
    dist: _Dist
    device: torch.device
    net: MultilevelNet
    out_dir: Path
    ckpt: dict | None
    step: int
    total: int
    elapsed0: float
    t0: float
    data: MixedSource
    val_pairs: list[TrainingPair]
    log: RunLog | None
    bar: Any
    last_val: dict[str, float]
    progress: Callable[[int, int, dict], None] | None
    val_cases: list[RegistrationCase] = field(default_factory=list)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    def elapsed(self) -> float:
        """Training time so far in s, including that of the run resumed from."""
        return self.elapsed0 + time.perf_counter() - self.t0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()


def _train(config: TrainConfig, resume: bool, quiet: bool, progress, dist: _Dist, device: torch.device) -> TrainResult:
    run, bounds = _open_run(config, resume, quiet, progress, dist, device)
    try:
        for stage in range(run.net.num_levels):
            if run.step < bounds[stage + 1]:
                _train_stage(run, stage, bounds[stage], bounds[stage + 1])
        return _finish(run)
    finally:
        run.close()


def _prepare_output(config: TrainConfig, resume: bool, out_dir: Path, ckpt_path: Path, dist: _Dist) -> dict | None:
    """The checkpoint to resume (``None`` for a new run) after checking ``out_dir``; writes ``config.yaml``."""
    ckpt = None
    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        # through the schema, so that keys added since the checkpoint was written take their defaults
        saved = config_from_dict(copy.deepcopy(ckpt["config"])).to_dict()
        diffs = _config_differences(saved, config.to_dict())
        if diffs:
            raise ValueError(f"cannot resume {ckpt_path}: the configuration differs: " + "; ".join(diffs[:5]))
    elif ckpt_path.exists() or (out_dir / "model.pt").exists():
        raise ValueError(f"{out_dir} already holds a training run; resume it with --resume or choose another output_dir")
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return ckpt


def _open_run(config: TrainConfig, resume: bool, quiet: bool, progress, dist: _Dist,
              device: torch.device) -> tuple[_Run, list[int]]:
    """The net (from the checkpoint when resuming), data, log and progress bar of a run, and the
    step bounds of its stages (``bounds[s] .. bounds[s + 1]`` is stage ``s``)."""
    out_dir = Path(config.output_dir)
    ckpt = _prepare_output(config, resume, out_dir, out_dir / "checkpoints" / "last.pt", dist)
    net = initial_network(config)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
    net = net.to(device)
    levels = net.num_levels
    stage_steps = config.schedule.steps_per_level(levels)
    bounds = np.concatenate([[0], np.cumsum(stage_steps)]).astype(int).tolist()
    total = bounds[-1]
    step = int(ckpt["step"]) if ckpt is not None else 0
    elapsed0 = float(ckpt.get("elapsed_s", 0.0)) if ckpt is not None else 0.0
    t0 = time.perf_counter()

    data = build_sources(config)
    val_pairs = build_validation_pairs(config) if dist.main and config.data.validation else []
    log = RunLog(out_dir, resume_step=step if resume else None, tensorboard=config.tensorboard) if dist.main else None
    if log is not None and not resume:
        log.log(0, 0, levels - 1, "info", {"world_size": dist.world, "parameters": parameter_count(net)}, 0.0)
    bar = _progress_bar(total, step, quiet or not dist.main)
    last_val: dict[str, float] = dict(ckpt.get("validation", {})) if ckpt is not None else {}
    run = _Run(config, dist, device, net, out_dir, ckpt, step, total, elapsed0, t0, data, val_pairs, log, bar,
               last_val, progress, build_registration_cases(config) if dist.main else [])
    return run, bounds


def _train_stage(run: _Run, stage: int, start: int, end: int) -> None:
    """Steps ``run.step .. end - 1`` of stage ``stage`` (steps ``start .. end - 1``): level
    ``L-1-stage`` trains with the ``stage + 1`` coarsest levels active."""
    config, net = run.config, run.net
    level, active = net.num_levels - 1 - stage, stage + 1
    if run.step == start and stage > 0 and config.schedule.warm_start and not config.schedule.init_model:
        init_level_from(net, level + 1, level)
    params = _set_trainable(net, level)
    net.train()
    optimizer = torch.optim.Adam(params, lr=config.schedule.learning_rate)
    if run.ckpt is not None and run.step > start and run.ckpt.get("optimizer_stage") == stage:
        optimizer.load_state_dict(run.ckpt["optimizer"])
    model = _parallel_model(net, run.dist, run.device)
    pairs = _pair_stream(run, end)
    while run.step < end:
        lr = _learning_rate(config, run.step - start, end - start)
        terms_sum = _optimizer_step(run, model, optimizer, lr, active, pairs)
        run.step += 1
        _after_step(run, optimizer, stage, level, active, lr, terms_sum, at_end=run.step == end)
    if run.dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def _parallel_model(net: MultilevelNet, dist: _Dist, device: torch.device) -> torch.nn.Module:
    """``net`` itself, or wrapped in ``DistributedDataParallel`` when there are several processes."""
    if dist.world <= 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


class StepPairs(torch.utils.data.Dataset):
    """The training pairs of steps ``first .. last - 1``, ``batch`` per step, in order: item ``k`` is
    pair ``k % batch`` of step ``first + k // batch``, drawn with :func:`step_seed` (so any process
    makes the same pair)."""

    def __init__(self, data: MixedSource, seed: int, rank: int, batch: int, first: int, last: int) -> None:
        self.data, self.seed, self.rank, self.batch, self.first, self.last = data, seed, rank, batch, first, last

    def __len__(self) -> int:
        return max(0, self.last - self.first) * self.batch

    def __getitem__(self, k: int) -> TrainingPair:
        step, i = self.first + k // self.batch, k % self.batch
        return self.data.sample(torch.Generator().manual_seed(step_seed(self.seed, step, self.rank, i)))


def _pair_stream(run: _Run, end: int) -> Iterator[TrainingPair]:
    """The pairs of steps ``run.step .. end - 1`` in order, made by ``schedule.data_workers``
    processes ahead of time (or here, one by one, with none)."""
    schedule = run.config.schedule
    pairs = StepPairs(run.data, run.config.seed, run.dist.rank, schedule.batch_size, run.step, end)
    return iterate_pairs(pairs, schedule.data_workers)


def iterate_pairs(pairs: StepPairs, workers: int) -> Iterator[TrainingPair]:
    """The items of ``pairs`` in order, made by ``workers`` processes ahead of time (one CPU thread
    each), or here one by one with ``workers == 0``."""
    if workers == 0:
        return (pairs[k] for k in range(len(pairs)))
    loader = torch.utils.data.DataLoader(pairs, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_as_is, worker_init_fn=_one_thread)
    return iter(loader)


def _as_is(pair: TrainingPair) -> TrainingPair:
    return pair


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the workers share the CPU with each other and with the training process


def _optimizer_step(run: _Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float,
                    active: int, pairs: Iterator[TrainingPair]) -> dict[str, float]:
    """One step of ``optimizer`` at learning rate ``lr`` on the batch of step ``run.step``, the next
    ``batch_size`` pairs of ``pairs`` (gradients of the batch mean loss); returns the batch means of
    the loss terms."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    terms_sum: dict[str, float] = {}
    b = run.config.schedule.batch_size
    for i in range(b):
        pair = next(pairs).to(run.device)
        sync = model.no_sync() if (run.dist.world > 1 and i < b - 1) else contextlib.nullcontext()
        with sync:
            loss, terms = pair_loss(model, pair, run.config, active)
            (loss / b).backward()
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0.0) + float(v) / b
    optimizer.step()
    return terms_sum


def _after_step(run: _Run, optimizer: torch.optim.Optimizer, stage: int, level: int, active: int, lr: float,
                terms_sum: dict[str, float], at_end: bool) -> None:
    """Log and report step ``run.step``; validate, checkpoint and (``at_end`` of a stage) save the
    stage's model when due (on the main process)."""
    step, dist, schedule = run.step, run.dist, run.config.schedule
    elapsed = run.elapsed()
    if run.log is not None:
        run.log.log(step, stage, level, "train", {**terms_sum, "lr": lr}, elapsed)
    if run.bar is not None:
        run.bar.set_postfix_str(f"level {level} loss {terms_sum['total']:.4f}", refresh=False)
        run.bar.update(1)
    if run.progress is not None:
        run.progress(step, run.total, terms_sum)
    if dist.main and (run.val_pairs or run.val_cases) and (step % schedule.validate_every == 0 or at_end):
        run.last_val = validate(run.net, run.val_pairs, active) if run.val_pairs else {}
        if run.val_cases and active == run.net.num_levels:  # register() runs every level of the net
            run.last_val.update(validate_by_registration(run.net, run.val_cases))
        run.log.log(step, stage, level, "val", run.last_val, elapsed)
    if dist.main and (step % schedule.checkpoint_every == 0 or at_end):
        save_checkpoint(run.ckpt_path, {
            "config": run.config.to_dict(), "step": step, "stage": stage + 1 if at_end else stage,
            "optimizer_stage": stage, "elapsed_s": elapsed,
            "model": {k: v.detach().cpu() for k, v in run.net.state_dict().items()},
            "optimizer": optimizer.state_dict(), "validation": run.last_val,
        })
    if at_end and dist.main:
        (run.out_dir / "stages").mkdir(exist_ok=True)
        save_model(run.out_dir / "stages" / f"stage{stage}.pt", run.net, run.config.network,
                   _metadata(run.config, step, elapsed, run.last_val, dist, run.device, active))


def _finish(run: _Run) -> TrainResult:
    """Save the final ``model.pt`` (main process) and summarise the run."""
    elapsed = run.elapsed()
    model_path = run.out_dir / "model.pt"
    if run.dist.main:
        save_model(model_path, run.net, run.config.network,
                   _metadata(run.config, run.step, elapsed, run.last_val, run.dist, run.device, run.net.num_levels))
    return TrainResult(model_path, run.out_dir, run.step, elapsed, run.last_val)


def _metadata(config: TrainConfig, step: int, elapsed: float, val: dict, dist: _Dist, device: torch.device,
              active_levels: int) -> dict:
    import platform

    return {
        "training": config.to_dict(file_names_only=True),
        "steps": step,
        "active_levels": active_levels,
        "training_time_s": round(elapsed, 1),
        "hardware": {"device": str(device), "processes": dist.world, "cpu_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                     "machine": platform.machine()},
        "validation": {k: round(float(v), 4) for k, v in val.items()},
        "torch_version": str(torch.__version__),
    }


def _progress_bar(total: int, initial: int, quiet: bool):
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, file=sys.stderr, desc="train", unit="step")
