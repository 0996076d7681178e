"""Times of the refinement's inner work on one level, and of the field stage's Jacobian (a script,
not a test): medians over repeats, this process, default torch threads.

* one value and gradient of the fused level objective (``registration.fused_objective``);
* one use of the L-BFGS smoothing preconditioner (``registration.refine.smoothing_preconditioner``:
  one FFT pair on lengths padded to multiples of 8), and the same FFT pair on the unpadded lengths;
* the folding fraction of a working-grid field (``core.deformation.jacobian_determinant``).

    python benchmarks/bench_refine_level.py                       # the levels of standard on a 224 grid
    python benchmarks/bench_refine_level.py --level 80 80 80 --grid 160 160 160
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, nargs=3, default=(112, 108, 112), metavar=("NX", "NY", "NZ"),
                        help="the level grid (default: the finest level of a 224 x 216 x 224 working grid)")
    parser.add_argument("--grid", type=int, nargs=3, default=(224, 216, 224), metavar=("NX", "NY", "NZ"),
                        help="the working grid of the folding check")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from MLVIRNETLib.core.deformation import Deformation
    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.registration.fused_objective import FusedLevel, fused_level_loss
    from MLVIRNETLib.registration.refine import smoothing_preconditioner

    nx, ny, nz = args.level
    grid = ImageGrid((nx, ny, nz), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), np.eye(3))
    g = torch.Generator().manual_seed(0)
    level = FusedLevel(grid, torch.rand((1, 1, nz, ny, nx), generator=g), torch.rand((1, 1, nz, ny, nx), generator=g),
                       100.0, 0.003)
    u = (0.5 * torch.randn((1, 3, nz - 2, ny - 2, nx - 2), generator=g)).requires_grad_(True)

    def value_and_gradient() -> None:
        loss, _ = fused_level_loss(level, u)
        loss.backward()
        u.grad = None

    inner = (nz - 2, ny - 2, nx - 2)
    precondition = smoothing_preconditioner(inner, grid.spacing, 2.0)
    v = torch.randn((1, 3) + inner, generator=g)
    dims = (-3, -2, -1)
    print(f"level {nx} x {ny} x {nz}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  fused value and gradient: {_median_ms(value_and_gradient, args.repeats):.1f} ms")
    print(f"  preconditioner (FFT pair padded to multiples of 8): {_median_ms(lambda: precondition(v), args.repeats):.1f} ms")
    unpadded = lambda: torch.fft.irfftn(torch.fft.rfftn(v, dim=dims), s=inner, dim=dims)  # noqa: E731
    print(f"  the same FFT pair on the unpadded lengths {inner[::-1]}: {_median_ms(unpadded, args.repeats):.1f} ms")
    gx, gy, gz = args.grid
    field = Deformation(ImageGrid((gx, gy, gz), (1.1, 1.1, 1.2), (0.0, 0.0, 0.0), np.eye(3)),
                        0.1 * torch.randn((1, 3, gz, gy, gx), generator=g))
    print(f"folding fraction of a {gx} x {gy} x {gz} field: {_median_ms(field.folding_fraction, 3):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
