"""Smaller copies of the shared training CTs, for a training run on a lent GPU machine (issue #13).

The device machine receives the repository and at most 64 MiB in all, so the training CTs travel as
anti-aliased copies with voxels of about ``--spacing`` mm (int16 NIfTI; a coarser axis is
kept; :mod:`MLVIRNETLib.training.data_copies`). The configs of models v4 to v6 read these copies.

    python training_recipes/common/make_copies.py --data ../shared/data --out .gpudata

writes ``OUT/chest_ct/NAME`` and ``OUT/4dct/PATIENT/phaseNN.nii.gz`` for the files that
``training_recipes/model_v4/stage1.yaml``, ``training_recipes/model_v4/stage2.yaml``,
``training_recipes/model_v5/config.yaml`` and ``training_recipes/model_v6/config.yaml`` (model
v6; the four name the same files) name, and prints each file's size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from MLVIRNETLib.io.images import read_image, write_image
from MLVIRNETLib.training.data_copies import coarser_copy

CHEST = ["cptac_c3n00247_chest_ct.nii.gz", "tcga_de_a4ma_chest_ct.nii.gz", "lungdx_a0002_chest_ct_8mm.nii.gz",
         "lungct_0001_0005.nii.gz"]
PHASES = {"tcia4dlung_117": 1.0, "tcia4dlung_118": 1.5}  # 4D-CT crops: smaller voxels, as their network grids


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (holds chest_ct/ and 4dct/)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the copies")
    ap.add_argument("--spacing", type=float, default=2.0, help="voxel size of the chest CT copies where the originals are finer, mm")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    jobs = [(args.data / "chest_ct" / n, args.out / "chest_ct" / n, args.spacing) for n in CHEST]
    for patient, spacing in PHASES.items():
        for src in sorted((args.data / "4dct" / patient).glob("phase*.nii.gz")):
            jobs.append((src, args.out / "4dct" / patient / src.name, spacing))
    total = 0
    for src, dst, spacing in jobs:
        img = coarser_copy(read_image(src), spacing)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_image(img, dst)
        total += dst.stat().st_size
        print(f"{dst}  {img.GetSize()}  {np.round(img.GetSpacing(), 2).tolist()}  {dst.stat().st_size / 2**20:.1f} MiB")
    print(f"total {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
