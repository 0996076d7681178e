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
pair's registration time, are printed too. With ``--overlays DIR`` each pair's overlay is written
there (``evaluation.plots.overlay_png``: coronal and sagittal slices, before and after).

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

    from MLVIRNETLib.core.deformation import Deformation
    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.evaluation.metrics import dice
    from MLVIRNETLib.evaluation.plots import overlay_png
    from MLVIRNETLib.preprocessing.lungmask import segment_lungs
    from MLVIRNETLib.registration import options_for, register, warp_image
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
            back = ba.deformation.compose(ab.deformation)  # y_BA o y_AB on A's grid: the identity if consistent
            ic = back.displacement[0].norm(dim=0).numpy()
            # outside the moving field of view the border continues (no artificial air edge)
            before_image = warp_image(b, Deformation.identity(ImageGrid.from_sitk(a)))
            warped_image = warp_image(b, ab.deformation)
            f_hu = sitk.GetArrayFromImage(a)
            before, warped = sitk.GetArrayFromImage(before_image), sitk.GetArrayFromImage(warped_image)
            fixed_lungs = sitk.GetArrayFromImage(lungs[reference]) > 0
            warped_lungs = warp_image(lungs[k], ab.deformation, padding_value=0.0, mode="nearest")
            lung_dice = dice(fixed_lungs, sitk.GetArrayFromImage(warped_lungs) > 0, labels=[1])[1]
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
                      f"{np.abs(f_hu - before)[region].mean():.0f} | {np.abs(f_hu - warped)[region].mean():.0f} | "
                      f"{lung_dice:.3f} |", flush=True)
            if args.overlays is not None:
                args.overlays.mkdir(parents=True, exist_ok=True)
                overlay_png(a, b, warped_image, args.overlays / f"{series.name}_{k}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
