"""Size a training run to a time budget from the measured rate of its pair production, then run it.

    python training_recipes/common/gpu_train.py --config CONFIG.yaml --seconds 380

measures the pairs per second of the config's ``schedule.data_workers``
(:func:`MLVIRNETLib.training.sizing.pair_rate`), writes ``CONFIG_sized.yaml`` beside the config
with ``schedule.level_steps`` scaled, same proportions, to ``rate x seconds`` steps
(:func:`~MLVIRNETLib.training.sizing.write_sized_config`), and trains with it. On a GPU the
steps then take about ``--seconds``: a 96^3 step costs less than its pair there. The sized config
is what reproduces the run (``mlvirnet train --config CONFIG_sized.yaml``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from MLVIRNETLib.training import load_config, train
from MLVIRNETLib.training.sizing import pair_rate, write_sized_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--seconds", type=float, required=True, help="time budget of the training steps")
    ap.add_argument("--calibrate", type=float, default=20.0, help="seconds of pair production measured")
    ap.add_argument("--max-rate", type=float, default=16.0,
                    help="steps per second the device trains at most, validation included (an H100 with "
                         "19 pairs/s ready went at 16.5 steps/s over 7830 steps, 14.6 over 2340)")
    ap.add_argument("--dry-run", action="store_true", help="size and write the config, do not train")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    measured = pair_rate(args.config, args.calibrate)
    rate = min(measured / load_config(args.config).schedule.batch_size, args.max_rate)  # steps per second
    print(f"pair production: {measured:.2f} pairs/s ({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
    sized = write_sized_config(args.config, max(3, int(rate * args.seconds)))
    print(f"sized config: {sized} ({load_config(sized).schedule.steps} steps at {rate:.2f} steps/s)", flush=True)
    if args.dry_run:
        return
    t0 = time.perf_counter()

    def report(step: int, steps: int, terms: dict) -> None:
        if step % 250 == 0 or step == steps:
            print(f"step {step}/{steps}  {time.perf_counter() - t0:.0f} s  loss {terms['total']:.4f}", flush=True)

    result = train(load_config(sized), quiet=True, progress=report)
    print(f"trained in {time.perf_counter() - t0:.0f} s: {result}", flush=True)


if __name__ == "__main__":
    main()
