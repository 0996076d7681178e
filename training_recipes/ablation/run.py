"""The paper's ablation: single level vs. multilevel vs. multilevel without warm start, same budget.

Trains the three configs in ``training_recipes/ablation/`` (same data, seed, loss and number of steps;
they differ only in ``network.levels`` and ``schedule.warm_start``) unless their run folder already
holds a ``model.pt``, then prints one Markdown table of the final validation metrics on the
held-out CT of the configs (synthetic breathing at 10/20/30 mm, both directions).

    python training_recipes/ablation/run.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MLVIRNETLib.networks.model_files import load_model  # noqa: E402
from MLVIRNETLib.training import load_config, train  # noqa: E402

CONFIGS = ("single_level", "multilevel", "no_warm_start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        config = load_config(ROOT / "training_recipes" / "ablation" / f"{name}.yaml")
        if args.threads is not None:
            config.schedule.num_threads = args.threads
        model = Path(config.output_dir) / "model.pt"
        if not model.exists():
            train(config, resume=(Path(config.output_dir) / "checkpoints" / "last.pt").exists(), quiet=True)
        _, info = load_model(model)
        meta = info["metadata"]
        rows.append((name, meta["validation"], meta["training_time_s"], meta["steps"]))
    print("| variant | steps | training time (s) | initial error (mm) | error (mm) | Dice | folding (%) |")
    print("|---|---|---|---|---|---|---|")
    for name, val, secs, steps in rows:
        print(f"| {name} | {steps} | {secs:.0f} | {val.get('initial_error_mm', float('nan')):.2f} | "
              f"{val.get('error_mm', float('nan')):.2f} | {val.get('dice', float('nan')):.3f} | "
              f"{val.get('folding_percent', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
