"""Speed and plausibility of the automatic lung mask (a script, not a test).

Three parts, each printing a Markdown table:

* default: wall and process CPU time of :func:`segment_lungs` on the 512x512x99 CPTAC chest CT
  (median of ``--repeats`` runs after one warm-up). On a shared machine the CPU time divided by
  the number of cores used is a better guess of the uncontended wall time than a contended wall
  time.
* ``--real``: every real CT in the shared data (no reference masks exist for them): time, lung
  volume, right/left volumes from :func:`split_left_right`, number of components, the rule that
  found the lungs and whether the trachea was found; with ``--out`` a QC picture per image.
* ``--copd``: the synthetic check against the DIR-LAB COPDgene lung masks. The COPD images are
  not available, so a CT-like image is synthesised from each reference mask
  (:func:`synthetic_chest_ct`) and the recovered mask is compared with it (Dice). This checks
  the pipeline on real lung *shapes*; it is not a clinical Dice. The masks are stored with slice
  0 at the apex but an identity direction (z pointing to the head); the direction is set to
  ``diag(1, 1, -1)`` so that "superior" is where the apex is.

Examples::

    python benchmarks/bench_lungmask.py
    python benchmarks/bench_lungmask.py --real --out /tmp/lungmask_qc
    python benchmarks/bench_lungmask.py --copd --out /tmp/lungmask_qc
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from shared_data import shared_data_dir

from MLVIRNETLib.evaluation.metrics import dice
from MLVIRNETLib.preprocessing.lung_labels import LEFT_LUNG, RIGHT_LUNG, lung_volume_ml, split_left_right
from MLVIRNETLib.preprocessing.lungmask import (
    LungMaskOptions,
    segment_lungs_with_info,
)
from MLVIRNETLib.simulation.phantoms import synthetic_chest_ct

REAL_IMAGES = (
    "chest_ct/cptac_c3n00247_chest_ct.nii.gz",
    "chest_ct/totalseg_chest_ct.nii.gz",
    "chest_ct/lungct_0001_0005.nii.gz",
    "chest_ct/lungct_0103_0005.nii.gz",
    "chest_ct/ibsi_nsclc_ct.nii.gz",
    "4dct/tcia4dlung_117/phase01.nii.gz",
    "4dct/tcia4dlung_117/phase06.nii.gz",
)
COPD_MASKS = tuple(f"copd{i}_{s}" for i in range(1, 5) for s in ("iBHCT", "eBHCT"))


def _timed(image: sitk.Image, options: LungMaskOptions) -> tuple[sitk.Image, dict, float, float]:
    """Mask, diagnostics, wall seconds, process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    mask, info = segment_lungs_with_info(image, options)
    return mask, info, time.perf_counter() - wall, time.process_time() - cpu


def _centroid(labels: sitk.Image, label: int) -> tuple[float, float, float]:
    """LPS centroid (mm) of one label (the QC slices pass through the right lung, not the midline)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(labels, sitk.sitkUInt8))
    return stats.GetCentroid(label if label in stats.GetLabels() else stats.GetLabels()[0])


def _data() -> Path:
    data = shared_data_dir()
    if data is None:
        sys.exit("the shared data folder (../shared/data) is not present")
    return data


def bench_speed(repeats: int) -> None:
    path = _data() / "chest_ct" / "cptac_c3n00247_chest_ct.nii.gz"
    image = sitk.ReadImage(str(path))
    options = LungMaskOptions()
    _timed(image, options)  # warm-up
    runs = [_timed(image, options) for _ in range(repeats)]
    walls = [r[2] for r in runs]
    cpus = [r[3] for r in runs]
    mask = runs[0][0]
    print(f"image: {path.name} size {image.GetSize()} spacing {tuple(round(s, 3) for s in image.GetSpacing())}")
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    print(f"working grid: {runs[0][1]['working_size']}, threads: {threads}")
    print("| repeats | wall median s | wall min s | CPU median s | lung volume l |")
    print("|---|---|---|---|---|")
    print(f"| {repeats} | {statistics.median(walls):.2f} | {min(walls):.2f} | {statistics.median(cpus):.2f} "
          f"| {lung_volume_ml(mask) / 1000:.2f} |")


def bench_real(out: Path | None) -> None:
    data = _data()
    print("| image | size | time s | lungs l | right l | left l | components | rule | trachea |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rel in REAL_IMAGES:
        image = sitk.ReadImage(str(data / rel))
        mask, info, wall, _ = _timed(image, LungMaskOptions())
        voxel_l = float(np.prod(image.GetSpacing())) / 1e6
        try:
            labels = split_left_right(mask)
            arr = sitk.GetArrayViewFromImage(labels)
            right = f"{(arr == RIGHT_LUNG).sum() * voxel_l:.2f}"
            left = f"{(arr == LEFT_LUNG).sum() * voxel_l:.2f}"
        except ValueError:
            labels, right, left = mask, "-", "- (one lung)"
        components = int(sitk.GetArrayFromImage(sitk.ConnectedComponent(mask)).max())
        print(f"| {rel} | {'x'.join(map(str, image.GetSize()))} | {wall:.2f} | {lung_volume_ml(mask) / 1000:.2f} "
              f"| {right} | {left} | {components} | {info.get('lung_rule')} | {info.get('trachea_found')} |")
        if out is not None:
            from MLVIRNETLib.evaluation.plots import mask_overlay_png

            name = rel.replace("/", "_").replace(".nii.gz", "")
            mask_overlay_png(image, labels, out / f"lungmask_{name}.png", centre=_centroid(labels, RIGHT_LUNG),
                             title=f"{rel}: right cyan, left magenta")


def bench_copd(out: Path | None, seed: int) -> None:
    data = _data() / "dirlab" / "copd"
    print("| mask | size | reference l | time s | Dice | trachea |")
    print("|---|---|---|---|---|---|")
    scores = []
    for name in COPD_MASKS:
        reference = sitk.ReadImage(str(data / f"{name}_masks.nii.gz"))
        reference.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # slice 0 is the apex
        ct = synthetic_chest_ct(reference, seed=seed)
        mask, info, wall, _ = _timed(ct, LungMaskOptions())
        score = dice(sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(reference) > 0, labels=[1])[1]
        scores.append(score)
        print(f"| {name} | {'x'.join(map(str, reference.GetSize()))} | {lung_volume_ml(reference) / 1000:.2f} "
              f"| {wall:.2f} | {score:.4f} | {info.get('trachea_found')} |")
        if out is not None:
            from MLVIRNETLib.evaluation.plots import mask_overlay_png

            both = sitk.Cast(mask, sitk.sitkUInt8) + 2 * sitk.Cast(reference > 0, sitk.sitkUInt8)
            mask_overlay_png(ct, both, out / f"lungmask_synthetic_{name}.png", centre=_centroid(both, 3),
                             title=f"synthetic {name}: found only cyan, reference only magenta, both yellow")
    print(f"\nDice mean {np.mean(scores):.4f}, min {np.min(scores):.4f} over {len(scores)} masks (synthetic images)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="plausibility on every real CT of the shared data")
    parser.add_argument("--copd", action="store_true", help="synthetic Dice check on the COPD reference masks")
    parser.add_argument("--out", type=Path, help="folder for QC pictures (needs matplotlib)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic images")
    args = parser.parse_args(argv)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    if not (args.real or args.copd):
        bench_speed(args.repeats)
    if args.real:
        bench_real(args.out)
    if args.copd:
        bench_copd(args.out, args.seed)


if __name__ == "__main__":
    main()
