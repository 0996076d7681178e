"""Stage times of ``register()`` for named configurations on one CT with known breathing motion.

The preset benchmark of the README is ``bench_register.py``; this one compares configurations
(random or shipped network, refinement only, ...) in-process, also on a GPU with a warm-up run.

The fixed scan is ``shared/data/chest_ct/cptac_c3n00247_chest_ct.nii.gz`` (512 x 512 x 99,
0.56 x 0.56 x 3 mm). The moving scan is the same CT deformed by a synthetic breathing motion
(``MLVIRNETLib.simulation.breathing.breathing_deformation``, 15 mm peak inside the lungs, lung density change
and 10 HU noise), so the ground truth is known; TRE is measured at distinctive lung points.

Every configuration runs in a fresh Python process (so its peak RSS is its own), reading the two
scans from files, and reports the time of every stage of ``register``, the peak RSS
(``ru_maxrss``) and the TRE. The ``cli`` configuration runs ``mlvirnet register`` end to end
(reading, registering, writing the field) and reports its wall time and peak RSS.

Usage::

    python benchmarks/bench_stages.py                      # the standard set
    python benchmarks/bench_stages.py --configs default network
    python benchmarks/bench_stages.py --list
    python benchmarks/bench_stages.py --configs shipped-network shipped --device cuda --warmup 1   # on a GPU

The ``network*`` configurations use a randomly initialised network of the default 160^3 architecture
(their timings are real, their TRE is meaningless); the ``shipped*`` configurations use the shipped
model (``Resources/Models/mlvirnet_default.pt``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS: dict[str, dict] = {
    # name: RegistrationOptions overrides (+ "model": "none" | "random")
    "default": {"model": "none"},
    "no-affine": {"model": "none", "affine": None},
    "network": {"model": "random", "refinement": {"iterations": 0}},
    "network-bf16": {"model": "random", "refinement": {"iterations": 0}, "network": {"precision": "auto-bfloat16"}},
    "network+refine": {"model": "random"},
    "affine-only": {"model": "none", "refinement": {"iterations": 0}},
    "shipped": {"model": "default"},
    "shipped-network": {"model": "default", "refinement": {"iterations": 0}},
}
CLI_CONFIGS = {
    # name: extra mlvirnet register arguments ("RANDOM" = the random model file)
    "cli": ["--model", "none"],
    "cli-network": ["--model", "RANDOM", "--refine", "0"],
    "cli-shipped": ["--model", "default"],
    "cli-shipped-network": ["--model", "default", "--refine", "0"],
}
STANDARD = ["default", "network", "cli", "cli-network"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(spec: dict) -> None:
    """Run one configuration (in its own process) and print one JSON line."""
    import numpy as np
    import torch

    from MLVIRNETLib.io.images import read_image
    from MLVIRNETLib.registration import RegistrationOptions, register

    t0 = time.perf_counter()
    fixed = read_image(spec["fixed"])
    moving = read_image(spec["moving"])
    fixed_mask = read_image(spec["fixed_mask"]) if spec.get("fixed_mask") else None
    t_read = time.perf_counter() - t0
    overrides = dict(spec["options"])
    model_kind = overrides.pop("model", "none")
    model = {"random": spec["random_model"], "default": "default"}.get(model_kind)
    options = RegistrationOptions.from_dict(overrides)
    device = spec.get("device", "cpu")
    for _ in range(int(spec.get("warmup", 0))):  # untimed: CUDA context, cuDNN set-up, caches
        register(fixed, moving, fixed_mask, model=model, device=device, options=options)
    result = register(fixed, moving, fixed_mask, model=model, device=device, options=options)
    pts = torch.as_tensor(np.load(spec["points"]), dtype=torch.float32)
    target = torch.as_tensor(np.load(spec["targets"]), dtype=torch.float32)
    err = (result.deformation.to("cpu").map_points(pts)[0] - target).norm(dim=-1)
    print(json.dumps({
        "read_s": round(t_read, 3),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "tre_mean": round(float(err.mean()), 3),
        "tre_p95": round(float(err.quantile(0.95)), 3),
        "folding_fraction": result.folding_fraction,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "device": str(result.deformation.displacement.device),
        "gpu": torch.cuda.get_device_name() if result.deformation.displacement.is_cuda else None,
        "cuda_max_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                  if result.deformation.displacement.is_cuda else None),
        "messages": result.messages,
    }))


def _prepare(workdir: Path, data: Path, seed: int) -> dict:
    """Write the fixed/moving pair, the fixed lung mask, landmarks and a random model into ``workdir``."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.io.images import read_image, write_image
    from MLVIRNETLib.networks.cascade import NetworkConfig, build_network
    from MLVIRNETLib.networks.model_files import save_model
    from MLVIRNETLib.preprocessing.lungmask import LungMaskOptions, segment_lungs
    from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks

    fixed = read_image(data)
    mask = segment_lungs(fixed, LungMaskOptions(working_spacing_mm=3.0))
    grid = ImageGrid.from_sitk(fixed)
    field_grid = grid.resized(tuple(max(4, int(round(e / 2.0))) for e in grid.extent))  # ~2 mm
    truth = breathing_deformation(field_grid, mask, peak_mm=15.0, seed=seed)
    moving, _ = make_synthetic_pair(fixed, truth, mask, noise_hu=10.0, seed=seed)
    rounded = sitk.GetImageFromArray(np.clip(np.rint(sitk.GetArrayViewFromImage(moving)), -32768, 32767).astype(np.int16))
    rounded.CopyInformation(moving)
    moving = rounded
    points = sample_landmarks(fixed, mask, n=300, seed=seed)
    targets = truth.map_points(torch.as_tensor(points, dtype=torch.float32))[0].numpy()
    paths = {
        "fixed": str(data),
        "moving": str(workdir / "moving.nii.gz"),
        "fixed_mask": str(workdir / "fixed_mask.nii.gz"),
        "points": str(workdir / "points.npy"),
        "targets": str(workdir / "targets.npy"),
        "random_model": str(workdir / "random_model.pt"),
    }
    write_image(moving, paths["moving"])
    write_image(mask, paths["fixed_mask"])
    np.save(paths["points"], points)
    np.save(paths["targets"], targets)
    torch.manual_seed(seed)
    config = NetworkConfig()
    save_model(paths["random_model"], build_network(config), config, {"note": "random weights (benchmark)"})
    initial = np.linalg.norm(targets - points, axis=1)
    peak = float(truth.displacement[0].norm(dim=0).max())
    print(f"pair: {grid.size} voxels, breathing peak {peak:.1f} mm, {len(points)} landmarks, "
          f"initial error {initial.mean():.2f} mm (p95 {np.quantile(initial, 0.95):.2f}, max {initial.max():.2f})")
    return paths


_CLI_WRAPPER = (
    "import json, resource, sys\n"
    "from MLVIRNETLib.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _run_cli(paths: dict, workdir: Path, extra_args: list[str]) -> dict:
    """``mlvirnet register`` end to end in a fresh process; its own peak RSS comes back on stderr."""
    field = workdir / "field.nii.gz"
    cmd = [sys.executable, "-c", _CLI_WRAPPER, "register", paths["fixed"], paths["moving"], "-o", str(field),
           "--model", "none", "--json", "--quiet", *extra_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mlvirnet register failed: {proc.stderr.strip()}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = json.loads(proc.stderr.strip().splitlines()[-1])["peak_rss_mb"]
    field.unlink()
    return {"wall_s": round(wall, 2), "timings": info["timings"], "peak_rss_mb": round(rss, 1),
            "folding_fraction": info["folding_fraction"]}


def _refine_sweep(paths: dict, sweep: list[dict]) -> None:
    """Preprocess the pair once (fixed mask given, no affine), then time ``refine`` for each option set."""
    import numpy as np
    import torch

    from MLVIRNETLib.io.images import read_image
    from MLVIRNETLib.preprocessing.pair import PreprocessOptions, preprocess_pair
    from MLVIRNETLib.registration.refine import RefineOptions, refine

    pp = preprocess_pair(read_image(paths["fixed"]), read_image(paths["moving"]), read_image(paths["fixed_mask"]),
                         options=PreprocessOptions())
    pts = torch.as_tensor(np.load(paths["points"]), dtype=torch.float32)
    target = torch.as_tensor(np.load(paths["targets"]), dtype=torch.float32)
    for overrides in sweep:
        opts = RefineOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        t0 = time.perf_counter()
        result = refine(pp.fixed, pp.moving, pp.grid, options=opts)
        seconds = time.perf_counter() - t0
        err = (result.deformation.map_points(pts)[0] - target).norm(dim=-1)
        print(f"refine {json.dumps(overrides)}: {seconds:.1f} s, TRE {float(err.mean()):.2f} / p95 "
              f"{float(err.quantile(0.95)):.2f} mm, folding {float(result.deformation.folding_fraction()):.5f}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=STANDARD, help=f"configurations (default {STANDARD})")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--data", type=Path, default=None, help="fixed CT (default: the shared CPTAC scan)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", default="{}", help="JSON dict of RegistrationOptions overrides for every config")
    parser.add_argument("--refine-sweep", default=None, metavar="JSON",
                        help="instead of the configurations: time the refinement stage alone for each RefineOptions "
                             "override in this JSON list, e.g. '[{\"iterations\": [80, 40]}, {\"optimizer\": \"adam\"}]'")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N for the register() configurations "
                        "(the cli* ones pass it as --device)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed register() runs before the timed one, in the same process (use 1 on a GPU: "
                             "the first call pays CUDA start-up); peak RSS then includes them")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.child is not None:
        _child(json.loads(args.child))
        return 0
    if args.list:
        for name, spec in CONFIGS.items():
            print(f"{name}: {spec}")
        for name, extra_args in CLI_CONFIGS.items():
            print(f"{name}: mlvirnet register end to end (automatic lung mask) with {' '.join(extra_args)}")
        return 0
    from shared_data import chest_ct_or_default

    data = chest_ct_or_default(args.data, "cptac_c3n00247_chest_ct.nii.gz", "--data FIXED_CT")
    if data is None:
        return 2
    extra = json.loads(args.options)
    with tempfile.TemporaryDirectory(prefix="bench_register_") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        paths = _prepare(workdir, data, args.seed)
        print(f"prepared in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")
        if args.refine_sweep is not None:
            _refine_sweep(paths, json.loads(args.refine_sweep))
            return 0
        for name in args.configs:
            if name in CLI_CONFIGS:
                extra_args = [paths["random_model"] if a == "RANDOM" else a for a in CLI_CONFIGS[name]]
                extra_args += ["--device", args.device]
                out = _run_cli(paths, workdir, extra_args)
                print(f"{name}: {json.dumps(out)}", flush=True)
                continue
            spec = dict(paths)
            spec["options"] = {**CONFIGS[name], **extra}
            spec["device"] = args.device
            spec["warmup"] = args.warmup
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name}: FAILED: {proc.stderr.strip()[-2000:]}", flush=True)
                continue
            print(f"{name}: {proc.stdout.strip().splitlines()[-1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
