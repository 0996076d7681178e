"""The demo: register a real chest CT against a synthetic-breathing version of itself.

The CT (by default the bundled TotalSegmentator test image, Apache-2.0) is the fixed image; a
realistic breathing deformation (diaphragm-dominated, decaying toward the apex, sliding at the chest
wall, :func:`MLVIRNETLib.simulation.breathing.breathing_deformation`) gives the moving image and the
ground truth. :func:`run_demo` registers the pair, measures the landmark TRE before and after and
the folding, and writes the field, the fixed, moving and warped images, an overlay PNG and a JSON
report into one folder. ``mlvirnet demo`` is a thin wrapper around it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.devices import resolve_device
from ..core.geometry import ImageGrid
from ..core.progress import ProgressFn
from ..io.fields import write_field
from ..io.images import read_image, write_image
from ..paths import bundled_ct_path
from ..registration.presets import options_for
from ..registration.pipeline import register
from ..registration.warp import warp_image
from ..simulation.cases import synthetic_breathing_case
from .metrics import TREResult, tre
from .reports import write_json

PathLike = str | os.PathLike

OUTPUT_NAMES = ("fixed.nii.gz", "moving.nii.gz", "warped.nii.gz", "field.nii.gz", "overlay.png", "report.json")
"""The files :func:`run_demo` writes into its output folder (``overlay.png`` needs matplotlib)."""

DIRECTION = "fixed -> moving (fixed = bundled CT, moving = synthetic breathing)"
NOISE_HU = 10.0
"""Standard deviation of the noise added to the synthetic moving image, HU."""


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        image: CT in HU used as the fixed image; ``None`` = the bundled chest CT.
        peak_mm: peak breathing displacement in mm (``> 0``).
        seed: seed of the synthetic deformation, the noise and the landmark sampling.
        landmarks: number of evaluation landmarks sampled in the lungs.
        model: model file, ``"default"`` (the shipped model) or ``None`` (refinement only).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        refine_iterations: refinement iterations per level (``0`` = network only); ``None`` keeps
            the :class:`~MLVIRNETLib.registration.options.RegistrationOptions` default.
    """

    image: Path | None = None
    peak_mm: float = 20.0
    seed: int = 0
    landmarks: int = 100
    model: str | Path | None = "default"
    device: str = "auto"
    refine_iterations: int | None = None
    preset: str | None = None


@dataclass
class DemoResult:
    """What :func:`run_demo` measured and wrote.

    Attributes:
        image: the CT that was the fixed image.
        size: its size ``(nx, ny, nz)`` in voxels.
        peak_displacement_mm: largest displacement of the synthetic breathing deformation, mm.
        tre_before, tre_after: landmark TRE fixed -> moving without and through the registration.
        folding_percent: percentage of voxels where the registration folds (Jacobian <= 0).
        timings_s: seconds per registration stage (``"total"`` included), unrounded.
        synthesis_s: seconds taken to build the synthetic pair and the landmarks.
        model_used: the model file that ran, ``None`` for refinement only.
        messages: the registration's messages to the user.
        outputs: file name -> written path; ``overlay.png`` is ``None`` when it could not be drawn.
        overlay_error: why there is no overlay PNG (matplotlib missing), else ``None``.
        report: the content of ``report.json``.
    """

    image: Path
    size: tuple[int, int, int]
    peak_displacement_mm: float
    tre_before: TREResult
    tre_after: TREResult
    folding_percent: float
    timings_s: dict[str, float]
    synthesis_s: float
    model_used: str | None
    messages: list[str]
    outputs: dict[str, Path | None]
    overlay_error: str | None = None
    report: dict = field(default_factory=dict)


def _check(config: DemoConfig, output_dir: Path) -> Path:
    """Validate ``config`` and ``output_dir`` before any work -> the CT path."""
    if not config.peak_mm > 0:
        raise ValueError(f"peak_mm must be > 0, got {config.peak_mm}")
    if config.refine_iterations is not None and config.refine_iterations < 0:
        raise ValueError(f"refine_iterations must be >= 0, got {config.refine_iterations}")
    if config.landmarks < 1:
        raise ValueError(f"landmarks must be >= 1, got {config.landmarks}")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {output_dir} exists and is not a folder")
    resolve_device(config.device)
    image_path = Path(config.image) if config.image is not None else bundled_ct_path()
    if not image_path.exists():
        raise FileNotFoundError(f"CT not found: {image_path}")
    if any((output_dir / name).resolve() == image_path.resolve() for name in OUTPUT_NAMES):
        raise ValueError(f"the output folder {output_dir} would overwrite the input {image_path}")
    return image_path


def run_demo(output_dir: PathLike, config: DemoConfig | None = None, progress: ProgressFn | None = None) -> DemoResult:
    """Register a CT against a synthetic-breathing version of itself and write the results.

    Args:
        output_dir: folder for the files of :data:`OUTPUT_NAMES` (created; existing files are replaced).
        config: :class:`DemoConfig` (defaults: bundled CT, 20 mm peak, 100 landmarks, shipped model).
        progress: called with ``(fraction in [0, 1], message)`` during the registration.

    Returns:
        :class:`DemoResult`.

    Raises:
        ValueError: ``peak_mm <= 0``, ``refine_iterations < 0``, ``landmarks < 1``, an output path
            that is a file or would overwrite the input CT, or an unusable device.
        FileNotFoundError: the CT does not exist.
    """
    config = config if config is not None else DemoConfig()
    out_dir = Path(output_dir)
    image_path = _check(config, out_dir)
    out = {name: out_dir / name for name in OUTPUT_NAMES}

    fixed = read_image(image_path)
    grid = ImageGrid.from_sitk(fixed)
    t0 = time.perf_counter()
    case = synthetic_breathing_case(fixed, config.peak_mm, config.seed, config.landmarks, NOISE_HU)
    lungs, truth, moving = case.lungs, case.truth, case.moving
    fixed_points, moving_points = case.fixed_points, case.moving_points
    synth_time = time.perf_counter() - t0

    options = options_for(
        config.preset or "standard",
        refinement={"iterations": None if config.refine_iterations is None else int(config.refine_iterations)},
    )
    result = register(fixed, moving, lungs, None, model=config.model, device=config.device, options=options,
                      progress=progress)

    before = tre(fixed_points, moving_points)
    after = tre(fixed_points, moving_points, result.deformation)
    warped = warp_image(moving, result.deformation, padding_value=-1024.0)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_image(fixed, out["fixed.nii.gz"])
    write_image(moving, out["moving.nii.gz"])
    write_image(warped, out["warped.nii.gz"])
    write_field(result.deformation, out["field.nii.gz"])
    overlay: Path | None = None
    overlay_error = None
    try:
        from .plots import overlay_png

        overlay_png(fixed, moving, warped, out["overlay.png"])
        overlay = out["overlay.png"]
    except ImportError as exc:  # matplotlib is optional
        overlay_error = str(exc)

    outputs: dict[str, Path | None] = {k: v for k, v in out.items() if k != "overlay.png"} | {"overlay.png": overlay}
    peak = float(truth.displacement.norm(dim=1).max())
    report = {
        "image": str(image_path),
        "peak_displacement_mm": peak,
        "landmarks": int(before.n),
        "tre_before_mm": {k: before.to_dict()[k] for k in ("mean", "std", "p95", "max")},
        "tre_after_mm": {k: after.to_dict()[k] for k in ("mean", "std", "p95", "max")},
        "direction": DIRECTION,
        "folding_percent": 100.0 * result.folding_fraction,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "synthesis_s": round(synth_time, 3),
        "model_used": result.model_used,
        "quality": result.quality.to_dict() if result.quality is not None else None,
        "messages": result.messages,
        "outputs": {k: (str(v) if v is not None else None) for k, v in outputs.items()},
    }
    write_json(report, out["report.json"])
    return DemoResult(
        image=image_path,
        size=tuple(int(s) for s in grid.size),
        peak_displacement_mm=peak,
        tre_before=before,
        tre_after=after,
        folding_percent=report["folding_percent"],
        timings_s=dict(result.timings),
        synthesis_s=synth_time,
        model_used=result.model_used,
        messages=list(result.messages),
        outputs=outputs,
        overlay_error=overlay_error,
        report=report,
    )
