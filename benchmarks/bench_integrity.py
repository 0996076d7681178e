"""Time of the integrity check of a ``.nii.gz`` (``MLVIRNETLib.io.integrity.check_nifti``).

Every input image and every written field is checked before use or publication (a truncated
NIfTI would otherwise be read with zeros). The check decompresses the whole file once. This
prints, for the shared TCGA CT (512 x 512 x 126, int16, 28 MB compressed) and for a float32
field on its grid written with gzip level 0 (396 MB), the median of ``--repeats`` runs of:

* ``check_nifti`` (zlib on 1 MiB input chunks; zlib checks the CRC-32 and length itself);
* the reader it replaced: Python's ``gzip`` module read 1 MiB at a time, which checks the same;

and for the CT, ``MLVIRNETLib.io.images.read_image`` (the check beside SimpleITK's read, in a second
thread) against the check followed by ``SimpleITK.ReadImage``, as before.

    python benchmarks/bench_integrity.py --repeats 5
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _gzip_module_read(path: Path) -> int:
    total = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            total += len(chunk)
    return total


def _median_time(fn, path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=Path, default=None, help="a .nii.gz CT (default: the shared TCGA CT)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import SimpleITK as sitk
    import torch

    from MLVIRNETLib.core.deformation import Deformation
    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.io.fields import write_field
    from MLVIRNETLib.io.images import read_image
    from MLVIRNETLib.io.integrity import check_input, check_nifti

    from shared_data import chest_ct_or_default

    ct = chest_ct_or_default(args.ct, "tcga_de_a4ma_chest_ct.nii.gz", "--ct")
    if ct is None:
        return 2
    grid = ImageGrid.from_sitk(read_image(ct))
    z, y, x = grid.shape_zyx
    ramp = torch.linspace(0.0, 5.0, x).expand(1, 3, z, y, x)  # smooth, like a real field
    with tempfile.TemporaryDirectory(prefix="bench_integrity_") as tmp:
        field = write_field(Deformation(grid, ramp.contiguous()), Path(tmp) / "field.nii.gz", compress_level=0)
        print("| file | size MB | decompressed MB | check_nifti s | Python gzip reader s |")
        print("|---|---|---|---|---|")
        for name, path in (("CT " + ct.name, ct), ("field, gzip level 0", field)):
            new = _median_time(check_nifti, path, args.repeats)
            old = _median_time(_gzip_module_read, path, args.repeats)
            print(f"| {name} | {path.stat().st_size / 1e6:.0f} | {_gzip_module_read(path) / 1e6:.0f} | {new:.2f} | "
                  f"{old:.2f} |", flush=True)
        beside = _median_time(read_image, ct, args.repeats)
        after = _median_time(lambda p: (check_input(p), sitk.ReadImage(str(p))), ct, args.repeats)
        print(f"\nreading the CT: read_image (check beside the read) {beside:.2f} s; "
              f"check, then SimpleITK.ReadImage {after:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
