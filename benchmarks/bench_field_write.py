"""Time and size of writing a full-resolution displacement field as ``.nii.gz`` per gzip level.

A float32 field of a 512 x 512 x 126 CT holds 396 MB. The field here is smooth and realistic: the
synthetic breathing motion of the shared TCGA CT (or ``--ct``) evaluated on its grid. For each
level, ``MLVIRNETLib.io.fields.write_field`` writes it (checked before publishing, as always); the
median of ``--repeats`` runs and the file size are printed.

    python benchmarks/bench_field_write.py                  # levels 0, 1 and 6
    python benchmarks/bench_field_write.py --levels 0 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=Path, default=None, help="CT whose grid the field lives on (default: TCGA)")
    parser.add_argument("--levels", nargs="+", type=int, default=[0, 1, 6])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    from MLVIRNETLib.core.deformation import Deformation
    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.io.fields import write_field
    from MLVIRNETLib.io.images import read_image
    from MLVIRNETLib.preprocessing.lungmask import segment_lungs
    from MLVIRNETLib.simulation.breathing import breathing_deformation

    from shared_data import chest_ct_or_default

    ct = chest_ct_or_default(args.ct, "tcga_de_a4ma_chest_ct.nii.gz", "--ct")
    if ct is None:
        return 2
    image = read_image(ct)
    grid = ImageGrid.from_sitk(image)
    coarse = breathing_deformation(grid.resized(tuple(max(4, int(e // 4)) for e in grid.extent)), segment_lungs(image),
                                   peak_mm=20.0)
    field = Deformation(grid, coarse.on_grid(grid).displacement.contiguous())
    megabytes = field.displacement.numel() * 4 / 1e6
    print(f"field: {grid.size} voxels, {megabytes:.0f} MB as float32")
    print("| gzip level | write s (median) | file MB |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_field_write_") as tmp:
        for level in args.levels:
            path = Path(tmp) / f"field_{level}.nii.gz"
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                write_field(field, path, compress_level=level)
                times.append(time.perf_counter() - t0)
            print(f"| {level} | {statistics.median(times):.2f} | {path.stat().st_size / 1e6:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
