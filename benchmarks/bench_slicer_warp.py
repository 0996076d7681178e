"""Peak memory and time of the Slicer Logic's warp of a CT-sized volume (RegistrationLogic.warpVolume).

A 512 x 512 x N int16 volume and a smooth grid transform on the same grid are put into a real MRML
scene (slicer-core); the warp reads the transform into a float32 field slab by slab, resamples in
a worker thread and fills a new volume node. Prints the median time and the peak resident memory
above the state before the warp, next to the size of the float32 field.

    python benchmarks/bench_slicer_warp.py --slices 300 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Samples the resident memory every 10 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mb())
            time.sleep(0.01)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import SimpleITK as sitk
    import slicer
    import torch

    from MLVIRNETLib import mrml as L
    from MLVIRNETLib.core.deformation import Deformation
    from MLVIRNETLib.core.geometry import ImageGrid

    grid = ImageGrid((512, 512, args.slices), (0.7, 0.7, 1.0), (-180.0, -180.0, -150.0), tuple(np.eye(3).ravel()))
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 400, size=grid.shape_zyx, dtype=np.int16))
    grid.copy_to_sitk(image)
    z = torch.linspace(0, 3.14, grid.shape_zyx[0])[:, None, None]
    u = torch.zeros((1, 3, *grid.shape_zyx), dtype=torch.float32)
    u[0, 2] = 4.0 * torch.sin(z)
    deformation = Deformation(grid, u)
    scene = slicer.vtkMRMLScene()
    moving = L.imageToNewVolumeNode(scene, image, "moving")
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "T")
    transform.SetAndObserveTransformFromParent(L.deformationToGridTransform(deformation))
    del u, deformation, image
    import gc

    gc.collect()
    fieldMB = 12 * int(np.prod(grid.size)) / 2**20
    logic = L.RegistrationLogic(scene)
    before = current_rss_mb()
    times = []
    with PeakSampler() as sampler:
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = logic.warpVolume(moving, transform, moving, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
            times.append(time.perf_counter() - t)
            scene.RemoveNode(out)
            gc.collect()
    peak = sampler.peak
    print(f"volume 512 x 512 x {args.slices}; float32 field {fieldMB:.0f} MB")
    print(f"warpVolume: median {statistics.median(times):.1f} s over {args.repeats} runs ({', '.join(f'{t:.1f}' for t in times)})")
    print(f"peak resident memory during the warps, above the state before: {peak - before:.0f} MB "
          f"({(peak - before) / fieldMB:.2f} x the field)")


if __name__ == "__main__":
    main()
