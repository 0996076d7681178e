"""Registration time when another multithreaded job shares the CPU (#15, "under load").

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels). By default its
threads spin for a while at every barrier instead of sleeping; next to another job that wants
the same cores, the spinning threads take turns with that job's threads and a barrier waits for
the slowest one, so the registration can take many times longer than the load alone explains.

This script registers one pair (``register()`` with the default preset, read from files, each run
in a fresh process so that the OpenMP settings take effect) for each configuration:

* alone on the machine;
* next to a competing job: a SimpleITK Gaussian filter on a 256^3 volume in a loop, on as many ITK
  threads as the machine has cores (ITK's own thread pool, as in a Slicer CLI module).

Configurations (environment of the registering process):

* ``spin``: ``OMP_WAIT_POLICY=ACTIVE`` (threads always spin);
* ``default``: nothing set (what ``import torch`` in a plain Python gives);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once; what ``mlvirnet`` sets unless
  the variable is already set, see ``MLVIRNETLib.core.threads``).

It prints the median and the range of ``--repeats`` runs, and the ratio loaded / alone.

    python benchmarks/bench_load.py                      # the bundled Sample Data pair (3 mm)
    python benchmarks/bench_load.py --repeats 5 --configs default passive
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "spin": {"OMP_WAIT_POLICY": "ACTIVE"},
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}

_REGISTER = """
import json, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from MLVIRNETLib.io.images import read_image
from MLVIRNETLib.registration import register
fixed, moving = read_image({fixed!r}), read_image({moving!r})
result = register(fixed, moving)
print(json.dumps({{"wall_s": time.perf_counter() - t0, "register_s": result.timings["total"]}}))
"""

_COMPETITOR = """
import SimpleITK as sitk, os
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(os.cpu_count())
image = sitk.GaussianSource(sitk.sitkFloat32, [256, 256, 256], [40.0] * 3, [128.0] * 3)
while True:
    sitk.DiscreteGaussian(image, 4.0)
"""


def _sample_pair(workdir: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from MLVIRNETLib.simulation.cases import sample_pair_files

    files = sample_pair_files(workdir)
    return files.fixed, files.moving


def _run_once(fixed: Path, moving: Path, env_changes: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_changes)
    code = _REGISTER.format(root=str(ROOT), fixed=str(fixed), moving=str(moving))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(fixed: Path, moving: Path, env_changes: dict[str, str], repeats: int, loaded: bool) -> list[float]:
    competitor = subprocess.Popen([sys.executable, "-c", _COMPETITOR]) if loaded else None
    try:
        if competitor is not None:
            time.sleep(2.0)  # let it reach its loop
        return [_run_once(fixed, moving, env_changes)["wall_s"] for _ in range(repeats)]
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed", type=Path, help="fixed CT (default: the Sample Data pair)")
    parser.add_argument("--moving", type=Path, help="moving CT (with --fixed)")
    args = parser.parse_args(argv)
    if (args.fixed is None) != (args.moving is None):
        parser.error("give both --fixed and --moving, or neither")
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        fixed, moving = (args.fixed, args.moving) if args.fixed is not None else _sample_pair(Path(tmp))
        print(f"pair: {fixed.name} / {moving.name}; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
        print("| configuration | alone: median (min-max) s | with a competing ITK job: median (min-max) s | ratio |")
        print("|---|---|---|---|")
        for name in args.configs:
            alone = _measure(fixed, moving, CONFIGS[name], args.repeats, loaded=False)
            loaded = _measure(fixed, moving, CONFIGS[name], args.repeats, loaded=True)
            a, b = statistics.median(alone), statistics.median(loaded)
            print(f"| {name} | {a:.1f} ({min(alone):.1f}-{max(alone):.1f}) | {b:.1f} ({min(loaded):.1f}-{max(loaded):.1f}) "
                  f"| {b / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
