"""Where the residual misalignment of real pairs lies (a script, not a test).

For real pairs of the shared data (the breathing phases of the two 4D-CTs in ``../shared/data/4dct``:
the reference phase against the phase farthest from it, and against a phase half-way), each pair is
registered both ways in one process (``register(A, B)`` and ``register(B, A)``) and measured inside
the fixed lung mask, split into regions:

* ``fov edge``: lung voxels within ``--band`` mm of the image's outer faces (the crops of the 4D-CTs
  cut through the lungs; what moves in or out of the field of view there has no counterpart);
* ``border``: the other lung voxels within ``--band`` mm of the lung surface (pleura, diaphragm,
  mediastinum: where the lungs slide along the chest wall);
* ``vessels``: the other lung voxels brighter than -500 HU (vessels and airway walls);
* ``parenchyma``: the rest of the lung.

Per region: the inverse-consistency error ``|y_BA(y_AB(x)) - x|`` (mm; a registration that is right
both ways gives 0), the absolute intensity residual ``|F(x) - M(y_AB(x))|`` (HU) before and after,
and the share of the lung voxels. The lung Dice of the fixed and warped moving masks, and the
pair's registration time, are printed too. An overlay (fixed in magenta, warped moving in green, a
coronal and a sagittal slice, before and after) is written per pair with ``--overlays DIR``.

    python benchmarks/residuals_real.py --preset standard --overlays /tmp/residuals
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import shared_data_dir  # noqa: E402


def _regions(fixed_hu: np.ndarray, lungs: np.ndarray, distance_mm: np.ndarray, spacing_zyx: np.ndarray,
             band_mm: float) -> dict[str, np.ndarray]:
    """The lung regions (module docstring), boolean ``(D, H, W)`` arrays."""
    edge = np.zeros_like(lungs)
    for axis, step in enumerate(spacing_zyx):
        n = int(np.ceil(band_mm / step))
        near = [slice(None)] * 3
        near[axis] = slice(0, n)
        edge[tuple(near)] = True
        near[axis] = slice(lungs.shape[axis] - n, None)
        edge[tuple(near)] = True
    edge &= lungs
    border = lungs & ~edge & (distance_mm <= band_mm)
    vessels = lungs & ~edge & ~border & (fixed_hu > -500)
    rest = lungs & ~edge & ~border & ~vessels
    return {"fov edge": edge, "border": border, "vessels": vessels, "parenchyma": rest, "all lung": lungs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--band", type=float, default=5.0, help="width of the border region, mm")
    parser.add_argument("--overlays", type=Path, default=None, help="folder for the overlay PNGs")
    parser.add_argument("--beta", type=float, default=None, help="the mask term's weight (default: the preset's)")
    parser.add_argument("--alpha", type=float, default=None, help="the curvature weight, mm^2 (default: the preset's)")
    parser.add_argument("--series", nargs="+", default=None, help="4D-CT folder names (default: every one)")
    args = parser.parse_args(argv)
    shared = shared_data_dir()
    if shared is None:
        print("shared data not found (../shared/data)", file=sys.stderr)
        return 2

    import SimpleITK as sitk
    import torch

    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.preprocessing.lungmask import segment_lungs
    from MLVIRNETLib.preprocessing.pair import image_to_hu_tensor
    from MLVIRNETLib.registration import options_for, register
    from MLVIRNETLib.registration.pipeline import load_registration_model

    options = options_for(args.preset, refinement={"beta": args.beta, "alpha": args.alpha})
    model = load_registration_model("default", "cpu")
    print(f"preset {args.preset}, curvature alpha {options.refinement.alpha:g} mm^2, mask term beta "
          f"{options.refinement.beta:g}; border band {args.band:g} mm")
    print("| pair | region | share of lung | inverse consistency mm mean (p95) | |F - M| HU before | after | lung Dice |")
    print("|---|---|---|---|---|---|---|")
    for series in sorted((shared / "4dct").iterdir()):
        phases = sorted(series.glob("phase*.nii.gz"))
        if len(phases) < 3 or (args.series is not None and series.name not in args.series):
            continue
        images = [sitk.ReadImage(str(p), sitk.sitkFloat32) for p in phases]
        lungs = [segment_lungs(im) for im in images]
        reference = 0
        # the phase whose lung volume differs most from the reference's, and one half-way to it
        volumes = [float(sitk.GetArrayViewFromImage(m).sum()) for m in lungs]
        far = int(np.argmax([abs(v - volumes[reference]) for v in volumes]))
        half = max(1, far // 2) if far > 1 else min(len(phases) - 1, far + 1)
        for k in (far, half):
            a, b = images[reference], images[k]
            t0 = time.perf_counter()
            ab = register(a, b, lungs[reference], model=model, device="cpu", options=options)
            seconds = time.perf_counter() - t0
            ba = register(b, a, lungs[k], model=model, device="cpu", options=options)
            grid = ImageGrid.from_sitk(a)
            back = ba.deformation.compose(ab.deformation)  # y_BA o y_AB on A's grid: the identity if consistent
            ic = back.displacement[0].norm(dim=0).numpy()
            f_hu = sitk.GetArrayFromImage(a)
            m_hu, m_grid = image_to_hu_tensor(b)
            before_t = ab.deformation.__class__.identity(grid).warp(m_hu, m_grid)[0, 0].numpy()
            warped = ab.deformation.warp(m_hu, m_grid)[0, 0].numpy()
            fixed_lungs = sitk.GetArrayFromImage(lungs[reference]) > 0
            moving_lungs_t = torch.as_tensor((sitk.GetArrayFromImage(lungs[k]) > 0).astype(np.float32))[None, None]
            warped_lungs = ab.deformation.warp_labels(moving_lungs_t, m_grid)[0, 0].numpy() > 0.5
            dice = 2.0 * (fixed_lungs & warped_lungs).sum() / (fixed_lungs.sum() + warped_lungs.sum())
            inside = sitk.SignedMaurerDistanceMap(lungs[reference] > 0, insideIsPositive=True, squaredDistance=False,
                                                  useImageSpacing=True)
            distance = sitk.GetArrayFromImage(inside)
            label = f"{series.name} {phases[reference].stem.split('.')[0]}->{phases[k].stem.split('.')[0]} ({seconds:.1f} s)"
            spacing_zyx = np.asarray(a.GetSpacing())[::-1]
            for name, region in _regions(f_hu, fixed_lungs, distance, spacing_zyx, args.band).items():
                if not region.any():
                    continue
                share = region.sum() / fixed_lungs.sum()
                e = ic[region]
                print(f"| {label} | {name} | {share:.2f} | {e.mean():.2f} ({np.quantile(e, 0.95):.2f}) | "
                      f"{np.abs(f_hu - before_t)[region].mean():.0f} | {np.abs(f_hu - warped)[region].mean():.0f} | "
                      f"{dice:.3f} |", flush=True)
            if args.overlays is not None:
                _overlay(f_hu, before_t, warped, fixed_lungs, args.overlays / f"{series.name}_{k}.png", label)
    return 0


def _overlay(fixed: np.ndarray, before: np.ndarray, after: np.ndarray, lungs: np.ndarray, path: Path, title: str) -> None:
    """Coronal and sagittal slices through the lung centre: fixed in magenta, moving in green
    (grey where they agree), before and after registration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def rgb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        na, nb = (np.clip((v + 1000.0) / 1300.0, 0, 1) for v in (a, b))
        return np.stack([na, nb, na], axis=-1)

    z, y, x = (int(round(c)) for c in np.argwhere(lungs).mean(axis=0))
    fig = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(fig)
    views = (("coronal", lambda v: v[::-1, y, :]), ("sagittal", lambda v: v[::-1, :, x]))
    for row, (name, cut) in enumerate(views):
        for col, (when, moving) in enumerate((("before", before), ("after", after))):
            ax = fig.add_subplot(2, 2, 2 * row + col + 1)
            ax.imshow(rgb(cut(fixed), cut(moving)), aspect="auto")
            ax.set_title(f"{name}, {when}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
