"""Compare registration settings side by side on the benchmark pairs, in one process.

Each configuration is a preset with overrides (the groups of ``RegistrationOptions``, as
``options_for`` takes them). The pairs are those of ``bench_register.py`` (a held-out CT moved by
synthetic breathing, clean or with a thick-slice low-dose fixed scan; 100 landmarks). The model is
read once and every registration runs in this process, so the times are ``register()`` only
(no process start, no reading or writing): for comparing settings, not for quoting end-to-end
times (``bench_register.py`` does that).

    python benchmarks/sweep_options.py --cases lungct:30 ibsi:30 --variants clean \\
        --config standard=standard \\
        --config 'plain=standard:{"refinement": {"smoothing_voxels": 0}}' \\
        --config 'no-network=standard:{"model": null}'

A ``"model"`` key in the overrides chooses the model (``null``: no network, refinement alone; a
path: that model file; default: the shipped model). Printed per pair and configuration:
``register()`` seconds, its stages, the TRE mean and 95th percentile (mm), the folding fraction
and the working grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _config(text: str) -> tuple[str, str, dict]:
    """``NAME=PRESET[:JSON overrides]`` -> ``(name, preset, overrides)``."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PRESET[:JSON], got {text!r}")
    preset, _, overrides = rest.partition(":")
    try:
        values = json.loads(overrides) if overrides else {}
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: the overrides are not JSON ({exc})") from exc
    return name, preset, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["lungct:30", "ibsi:30"], metavar="CT:PEAK",
                        help="CT (lungct, ibsi, tcga, or small: the bundled CT at 100 x 100 x 50) and peak motion, mm")
    parser.add_argument("--variants", nargs="+", default=["clean"], choices=("clean", "thick"))
    parser.add_argument("--config", dest="configs", action="append", type=_config, required=True,
                        metavar="NAME=PRESET[:JSON]", help="a configuration (repeat the option for more)")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the generated pairs (kept)")
    args = parser.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk
    import torch

    import bench_register as bench
    from shared_data import shared_data_dir

    from MLVIRNETLib.registration import options_for, register
    from MLVIRNETLib.registration.pipeline import load_registration_model

    configs = []
    for name, preset, overrides in args.configs:
        choice = overrides.pop("model", "default")
        configs.append((name, options_for(preset, **overrides), choice))
    shared = shared_data_dir()
    if shared is None:
        print("shared data not found (../shared/data)", file=sys.stderr)
        return 2
    models = {choice: load_registration_model(choice, "cpu") for _, _, choice in configs}
    with tempfile.TemporaryDirectory(prefix="sweep_options_") as tmp:
        folder = args.cache if args.cache is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print("| CT | variant | configuration | register() s | stages s | TRE mean (p95) mm | folding | grid |")
        print("|---|---|---|---|---|---|---|---|")
        for spec in args.cases:
            name, _, peak = spec.partition(":")
            ct = bench._small_ct(folder) if name == "small" else shared / bench.CTS[name]
            pair = bench._prepare(ct, name, float(peak), folder)
            points = np.load(pair["points"])
            moving = sitk.ReadImage(str(pair["moving"]), sitk.sitkFloat32)
            for variant in args.variants:
                fixed = sitk.ReadImage(str(pair[variant]), sitk.sitkFloat32)
                for label, options, choice in configs:
                    t0 = time.perf_counter()
                    result = register(fixed, moving, model=models[choice], device="cpu", options=options)
                    seconds = time.perf_counter() - t0
                    fixed_points = torch.as_tensor(points["fixed"], dtype=torch.float32)
                    mapped = result.deformation.map_points(fixed_points)[0].double().numpy()
                    error = np.linalg.norm(mapped - points["moving"], axis=1)
                    stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items() if k != "total")
                    print(f"| {name} {peak} mm | {variant} | {label} | {seconds:.2f} | {stages} | "
                          f"{error.mean():.3f} ({np.quantile(error, 0.95):.2f}) | {result.folding_fraction:.1e} | "
                          f"{'x'.join(map(str, result.network_grid.size))} |", flush=True)
                    del result
    return 0


if __name__ == "__main__":
    sys.exit(main())
