"""Training configuration: dataclasses read from (and written back to) a YAML file.

A config file looks like ``training_recipes/model_v6/config.yaml``::

    seed: 0
    output_dir: runs/default            # relative paths are relative to the config file
    network: {levels: 3, features: 16, depth: 3, input_size: [96, 96, 96]}
    schedule: {steps: 1200, warm_start: true, learning_rate: 0.001}
    loss: {alpha: 100.0, beta: 1.0, ngf_eps: 0.003}
    data:
      train:
        - {kind: synthetic, images: [ct1.nii.gz, ct2.nii.gz], weight: 1.0}
        - {kind: phases, images: [phase01.nii.gz, phase02.nii.gz], weight: 0.2}
        - {kind: manifest, csv: pairs.csv}
      validation:
        - {kind: synthetic, images: [held_out.nii.gz], peaks_mm: [10, 20, 30]}

Unknown keys are errors (a typo must not silently fall back to a default). Every path is stored
absolute after loading, so the config embedded in a checkpoint is self-contained.

The paper's ablations are settings of the same schema: ``network.levels: 1`` is the single-level
net; ``schedule.warm_start: false`` is the multilevel net without warm starts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..losses import LossWeights
from ..networks.cascade import NetworkConfig
from ..networks.model_files import to_plain

__all__ = [
    "ScheduleConfig",
    "SyntheticMotionConfig",
    "AppearanceConfig",
    "SourceConfig",
    "DataConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
]

SOURCE_KINDS = ("synthetic", "phases", "manifest")


def _check_keys(d: Any, cls: type, where: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(known)}")
    return d


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def _range(value: Any, name: str, low: float = 0.0) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a number or [min, max], got {value!r}")
    lo, hi = (_finite(v, name, low) for v in value)
    if hi < lo:
        raise ValueError(f"{name} must be [min, max] with min <= max, got {list(value)}")
    return lo, hi


# ----------------------------------------------------------------------------------------------
@dataclass
class ScheduleConfig:
    """How long and how the levels are trained.

    Attributes:
        steps: total optimisation steps over all levels (one step = one batch).
        level_steps: steps per level, coarse to fine; default: ``steps`` split equally.
        warm_start: initialise each newly trained finer net from the previous (coarser) level's
            weights (the paper); ``False`` keeps its own Xavier initialisation (ablation).
        learning_rate: Adam step size at the start of every level.
        final_lr_fraction: the rate decays with a cosine to this fraction at the end of each level.
        batch_size: pairs per step (per process under ``torchrun``).
        head_scale: the Xavier-initialised final 1x1x1 convolution of every net is multiplied by
            this (1 = plain Xavier; the default 0.01 starts near the identity instead of with
            displacements of tens of mm).
        validate_every: steps between validations (and at the end of every level).
        checkpoint_every: steps between checkpoints (and at the end of every level).
        num_threads: torch CPU threads (``None`` leaves torch's default).
        data_workers: processes that make the training pairs ahead of the steps (0: the training
            process makes each pair itself). Each pair depends only on the seed, the step and the
            rank, so the run is the same for any number. Worth it where pairs cost more than a
            step, e.g. on a GPU; each worker uses one CPU thread.
        init_model: a model file (same network architecture) whose weights start the run instead
            of the Xavier initialisation: fine-tuning. Every level then continues from its own
            weights (``warm_start`` copies nothing). Relative to the config file.
    """

    steps: int = 1200
    level_steps: list[int] | None = None
    warm_start: bool = True
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.1
    batch_size: int = 1
    head_scale: float = 0.01
    validate_every: int = 100
    checkpoint_every: int = 25
    num_threads: int | None = None
    data_workers: int = 0
    init_model: str | None = None

    def __post_init__(self) -> None:
        if self.init_model is not None and (not isinstance(self.init_model, str) or not self.init_model):
            raise ValueError(f"schedule.init_model must be a model file path, got {self.init_model!r}")
        self.steps = _positive_int(self.steps, "schedule.steps")
        if self.level_steps is not None:
            if not isinstance(self.level_steps, (list, tuple)) or not self.level_steps:
                raise ValueError(f"schedule.level_steps must be a list of step counts, got {self.level_steps!r}")
            self.level_steps = [_positive_int(s, "schedule.level_steps[]", 0) for s in self.level_steps]
        if not isinstance(self.warm_start, bool):
            raise ValueError(f"schedule.warm_start must be true or false, got {self.warm_start!r}")
        self.learning_rate = _finite(self.learning_rate, "schedule.learning_rate", 0.0)
        if self.learning_rate <= 0:
            raise ValueError(f"schedule.learning_rate must be > 0, got {self.learning_rate}")
        self.final_lr_fraction = _finite(self.final_lr_fraction, "schedule.final_lr_fraction", 0.0, 1.0)
        self.batch_size = _positive_int(self.batch_size, "schedule.batch_size")
        self.head_scale = _finite(self.head_scale, "schedule.head_scale", 0.0)
        self.validate_every = _positive_int(self.validate_every, "schedule.validate_every")
        self.checkpoint_every = _positive_int(self.checkpoint_every, "schedule.checkpoint_every")
        if self.num_threads is not None:
            self.num_threads = _positive_int(self.num_threads, "schedule.num_threads")
        self.data_workers = _positive_int(self.data_workers, "schedule.data_workers", 0)

    def steps_per_level(self, levels: int) -> list[int]:
        """Steps of each level, coarse to fine (``level_steps`` or ``steps`` split equally)."""
        if self.level_steps is not None:
            if len(self.level_steps) != levels:
                raise ValueError(
                    f"schedule.level_steps has {len(self.level_steps)} entries but the network has {levels} levels"
                )
            return list(self.level_steps)
        base, extra = divmod(self.steps, levels)
        return [base + (1 if i < extra else 0) for i in range(levels)]


@dataclass
class SyntheticMotionConfig:
    """Random motion of self-supervised pairs (see :mod:`MLVIRNETLib.training.synthetic_pairs`).

    Ranges ``[min, max]`` are sampled uniformly per pair.

    Attributes:
        peak_mm: peak breathing displacement inside the lungs (diaphragm), mm.
        random_mm: peak of an extra random smooth deformation, mm.
        random_smoothness_mm: Gaussian width of that random field, mm.
        translation_mm: largest rigid translation per axis (residual after affine pre-alignment), mm.
        rotation_deg: largest rigid rotation per axis, degrees.
        crop_margin_mm: margin around the lung box that defines the network field of view, mm.
        noise_hu: standard deviation of Gaussian noise added to each image, HU.
        density_change: lung density follows the volume change (mass conservation).
        swap_probability: probability that the original CT is the fixed image (otherwise the
            deformed one is).
        velocity_spacing_mm: voxel size of the velocity grid the motion is built on, mm.
        sliding_mm: width of the lung/chest-wall transition of the breathing model, mm
            (:func:`MLVIRNETLib.simulation.breathing.breathing_deformation`; smaller = sharper sliding).
        identical_probability: probability of a pair without motion (the same scan twice, each with
            its own noise and acquisition), so that no motion maps to no displacement.
    """

    peak_mm: tuple[float, float] = (4.0, 32.0)
    random_mm: tuple[float, float] = (0.0, 4.0)
    random_smoothness_mm: float = 40.0
    translation_mm: float = 3.0
    rotation_deg: float = 2.0
    crop_margin_mm: tuple[float, float] = (5.0, 20.0)
    noise_hu: tuple[float, float] = (0.0, 20.0)
    density_change: bool = True
    swap_probability: float = 0.5
    velocity_spacing_mm: float = 8.0
    sliding_mm: tuple[float, float] = (6.0, 6.0)
    identical_probability: float = 0.0

    def __post_init__(self) -> None:
        self.peak_mm = _range(self.peak_mm, "motion.peak_mm")
        self.sliding_mm = _range(self.sliding_mm, "motion.sliding_mm")
        self.identical_probability = _finite(self.identical_probability, "motion.identical_probability", 0.0, 1.0)
        self.random_mm = _range(self.random_mm, "motion.random_mm")
        self.random_smoothness_mm = _finite(self.random_smoothness_mm, "motion.random_smoothness_mm", 1.0)
        self.translation_mm = _finite(self.translation_mm, "motion.translation_mm", 0.0)
        self.rotation_deg = _finite(self.rotation_deg, "motion.rotation_deg", 0.0, 45.0)
        self.crop_margin_mm = _range(self.crop_margin_mm, "motion.crop_margin_mm")
        self.noise_hu = _range(self.noise_hu, "motion.noise_hu")
        if not isinstance(self.density_change, bool):
            raise ValueError(f"motion.density_change must be true or false, got {self.density_change!r}")
        self.swap_probability = _finite(self.swap_probability, "motion.swap_probability", 0.0, 1.0)
        self.velocity_spacing_mm = _finite(self.velocity_spacing_mm, "motion.velocity_spacing_mm", 1.0)


@dataclass
class AppearanceConfig:
    """How the two scans of a synthetic pair differ besides the motion (real pairs come from
    different acquisitions). Applied on the network grid, each to one image of the pair chosen at
    random (:mod:`MLVIRNETLib.training.appearance`); the default changes nothing.

    Attributes:
        thick_slice_probability: probability that one image gets thicker slices.
        slice_thickness_mm: its slice thickness ``[min, max]``, mm (a box slice profile along the
            grid's third axis, the slice direction).
        low_dose_probability: probability that one image gets low-dose noise.
        low_dose_noise_hu: its extra noise ``[min, max]``, HU on the network grid, correlated over
            about one voxel.
        hu_offset_hu: largest calibration offset added to each image, HU.
        fov_cut_probability: probability that one image has a smaller field of view.
        fov_cut_fraction: the part of the box it misses ``[min, max]``, at one face along one axis
            (air there, as the preprocessing pads a scan outside its field of view).
    """

    thick_slice_probability: float = 0.0
    slice_thickness_mm: tuple[float, float] = (2.5, 8.0)
    low_dose_probability: float = 0.0
    low_dose_noise_hu: tuple[float, float] = (10.0, 40.0)
    hu_offset_hu: float = 0.0
    fov_cut_probability: float = 0.0
    fov_cut_fraction: tuple[float, float] = (0.05, 0.25)

    def __post_init__(self) -> None:
        for name in ("thick_slice_probability", "low_dose_probability", "fov_cut_probability"):
            setattr(self, name, _finite(getattr(self, name), f"appearance.{name}", 0.0, 1.0))
        self.slice_thickness_mm = _range(self.slice_thickness_mm, "appearance.slice_thickness_mm")
        self.low_dose_noise_hu = _range(self.low_dose_noise_hu, "appearance.low_dose_noise_hu")
        self.hu_offset_hu = _finite(self.hu_offset_hu, "appearance.hu_offset_hu", 0.0)
        self.fov_cut_fraction = _range(self.fov_cut_fraction, "appearance.fov_cut_fraction")
        if self.fov_cut_fraction[1] >= 0.9:
            raise ValueError(f"appearance.fov_cut_fraction must stay below 0.9, got {list(self.fov_cut_fraction)}")

    @property
    def enabled(self) -> bool:
        """Whether any difference is drawn at all."""
        return (self.thick_slice_probability > 0 or self.low_dose_probability > 0 or self.hu_offset_hu > 0
                or self.fov_cut_probability > 0)


@dataclass
class SourceConfig:
    """One data source.

    Attributes:
        kind: ``"synthetic"`` (self-supervised pairs from single CTs), ``"phases"`` (all ordered
            pairs of the phases of one 4D-CT) or ``"manifest"`` (pairs listed in a CSV file).
        images: CT files (synthetic, phases).
        masks: lung masks for ``images`` (same order; default: computed automatically for
            synthetic sources, none for phases).
        labels: label maps for ``images`` (e.g. lobes; default for synthetic sources: left and
            right lung split from the mask).
        csv: the manifest (manifest sources); columns ``fixed, moving`` and optionally
            ``fixed_mask, moving_mask, fixed_labels, moving_labels, fixed_landmarks,
            moving_landmarks`` (paths relative to the CSV file).
        weight: relative sampling frequency among the training sources.
        motion: synthetic motion settings.
        appearance: synthetic sources: acquisition differences between the two scans of a pair.
        peaks_mm: validation only: one synthetic pair per peak (and per image and direction).
        register_landmarks: validation only, synthetic sources: when > 0, each image at each peak
            also becomes a full-resolution synthetic breathing case with this many landmarks
            (:func:`~MLVIRNETLib.simulation.cases.synthetic_breathing_case`, the cases of the model
            card's acceptance), which :func:`~MLVIRNETLib.registration.register` aligns with the
            net alone (affine + network, no refinement) once every level is active. Reported as
            ``register_tre_mm``, ``register_tre_p95_mm`` and ``register_initial_tre_mm``.
        auto_masks: phases and manifest sources: compute lung masks where none are given (a scan
            where that fails, e.g. a crop without the whole lung, trains without the mask term).
            Synthetic sources always compute missing masks.
    """

    kind: str = "synthetic"
    images: list[str] = field(default_factory=list)
    masks: list[str] | None = None
    labels: list[str] | None = None
    csv: str | None = None
    weight: float = 1.0
    motion: SyntheticMotionConfig = field(default_factory=SyntheticMotionConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    peaks_mm: list[float] = field(default_factory=lambda: [10.0, 20.0, 30.0])
    register_landmarks: int = 0
    auto_masks: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data source kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if isinstance(self.motion, dict):
            self.motion = SyntheticMotionConfig(**_check_keys(self.motion, SyntheticMotionConfig, "motion"))
        if isinstance(self.appearance, dict):
            self.appearance = AppearanceConfig(**_check_keys(self.appearance, AppearanceConfig, "appearance"))
        if self.kind in ("synthetic", "phases"):
            if not isinstance(self.images, list) or not self.images:
                raise ValueError(f"a {self.kind!r} source needs a non-empty list 'images'")
            if self.kind == "phases" and len(self.images) < 2:
                raise ValueError(f"a 'phases' source needs at least 2 images, got {len(self.images)}")
            for name in ("masks", "labels"):
                value = getattr(self, name)
                if value is not None and (not isinstance(value, list) or len(value) != len(self.images)):
                    raise ValueError(f"'{name}' must list one file per image ({len(self.images)}), got {value!r}")
        elif not self.csv:
            raise ValueError("a 'manifest' source needs 'csv'")
        self.weight = _finite(self.weight, "source weight", 0.0)
        if not isinstance(self.peaks_mm, list) or not self.peaks_mm:
            raise ValueError(f"peaks_mm must be a non-empty list, got {self.peaks_mm!r}")
        self.peaks_mm = [_finite(p, "peaks_mm[]", 0.0) for p in self.peaks_mm]
        self.register_landmarks = _positive_int(self.register_landmarks, "register_landmarks", 0)
        if self.register_landmarks and self.kind != "synthetic":
            raise ValueError(f"register_landmarks needs a 'synthetic' validation source, not {self.kind!r}")

    def map_paths(self, fn: Callable[[str], str]) -> None:
        """Replace every file path of the source (images, masks, labels, csv) by ``fn(path)``."""
        self.images = [fn(p) for p in self.images]
        if self.masks is not None:
            self.masks = [fn(p) for p in self.masks]
        if self.labels is not None:
            self.labels = [fn(p) for p in self.labels]
        if self.csv:
            self.csv = fn(self.csv)

    def resolve_paths(self, base: Path) -> None:
        """Make every relative path absolute with respect to ``base``."""

        def res(p: str) -> str:
            q = Path(str(p)).expanduser()
            return str(q if q.is_absolute() else (base / q).resolve())

        self.map_paths(res)


@dataclass
class DataConfig:
    """Training and validation sources."""

    train: list[SourceConfig] = field(default_factory=list)
    validation: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("train", "validation"):
            items = getattr(self, name)
            if not isinstance(items, list):
                raise ValueError(f"data.{name} must be a list of sources, got {type(items).__name__}")
            setattr(self, name, [s if isinstance(s, SourceConfig) else SourceConfig(**_check_keys(s, SourceConfig, f"data.{name}[]")) for s in items])
        if not self.train:
            raise ValueError("data.train must list at least one source")
        if sum(s.weight for s in self.train) <= 0:
            raise ValueError("the weights of data.train sum to 0")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint and model file)."""

    data: DataConfig
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(input_size=(96, 96, 96)))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossWeights = field(default_factory=lambda: LossWeights(alpha=100.0, beta=1.0, ngf_eps=0.003))
    seed: int = 0
    output_dir: str = "runs/mlvirnet"
    device: str = "auto"
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string ('auto', 'cpu', 'cuda'), got {self.device!r}")
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"tensorboard must be true or false, got {self.tensorboard!r}")
        self.schedule.steps_per_level(self.network.levels)  # checks level_steps against levels

    def to_dict(self, file_names_only: bool = False) -> dict:
        """Plain values only (safe to store in a checkpoint loaded with ``weights_only=True``).

        Args:
            file_names_only: replace every data path and ``output_dir`` by its last component.
                Model files are shared beyond the machine that trained them, so they record which
                files were used, not where they lay (checkpoints keep full paths for ``--resume``).
        """
        if file_names_only:
            named = copy.deepcopy(self)
            for src in named.data.train + named.data.validation:
                src.map_paths(lambda p: Path(p).name)
            named.output_dir = Path(named.output_dir).name
            if named.schedule.init_model:
                named.schedule.init_model = Path(named.schedule.init_model).name
            return named.to_dict()
        return to_plain({**asdict(self), "network": self.network.to_dict()})


def config_from_dict(d: dict, base_dir: str | Path | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from plain values; relative paths resolve against ``base_dir``."""
    d = dict(_check_keys(d, TrainConfig, "the config"))
    if "data" not in d:
        raise ValueError("the config has no 'data' section")
    data = DataConfig(**_check_keys(d.pop("data"), DataConfig, "data"))
    kwargs: dict[str, Any] = {"data": data}
    if "network" in d:
        kwargs["network"] = NetworkConfig.from_dict(d.pop("network"))
    if "schedule" in d:
        kwargs["schedule"] = ScheduleConfig(**_check_keys(d.pop("schedule"), ScheduleConfig, "schedule"))
    if "loss" in d:
        kwargs["loss"] = LossWeights(**_check_keys(d.pop("loss"), LossWeights, "loss"))
    kwargs.update(d)
    cfg = TrainConfig(**kwargs)
    if base_dir is not None:
        base = Path(base_dir).resolve()
        for src in cfg.data.train + cfg.data.validation:
            src.resolve_paths(base)
        out = Path(cfg.output_dir).expanduser()
        cfg.output_dir = str(out if out.is_absolute() else (base / out).resolve())
        if cfg.schedule.init_model:
            init = Path(cfg.schedule.init_model).expanduser()
            cfg.schedule.init_model = str(init if init.is_absolute() else (base / init).resolve())
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config; relative paths in it are relative to the file's directory.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, not a mapping, unknown keys or invalid values (one message naming them).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return config_from_dict(d, path.parent)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
