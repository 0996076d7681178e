"""How often a registration reports progress, and how fast Cancel takes effect, per stage.

The Slicer panel repaints and reads the Cancel button only when the library calls its progress
callback, so the largest gap between two callbacks is the longest the GUI freezes, and a Cancel
takes effect at the next check. This script registers the Sample Data pair (the bundled CT and
its 15 mm synthetic-breathing partner, ``MLVIRNETLib.simulation.cases.sample_pair_files``) with
the default settings through the Slicer Logic on real MRML (``slicer-core``; without it, through
``register()``), and prints per stage:

- the time, the number of callbacks the GUI gets and the largest gap between two of them;
- the delay from a Cancel request to the end of the run, with the request made by a timer thread
  (like a button press) ``--cancel-after`` seconds into the stage.

Usage::

    python benchmarks/bench_progress.py                   # 2 threads, the shipped model, defaults
    python benchmarks/bench_progress.py --threads 1 --cancel-repeats 3 --json
    python benchmarks/bench_progress.py --image ../shared/data/chest_ct/cptac_c3n00247_chest_ct.nii.gz
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

STAGES = (
    "Reading volumes",
    "lung masks",
    "affine pre-alignment",
    "preprocessing",
    "network",
    "refinement",
    "full-resolution field",
    "Creating the grid transform",
)
"""The stage messages, in order (the Logic's first and last, ``register()``'s in between)."""


class Runner:
    """Registers the pair once per call, through the Logic when MRML is available."""

    def __init__(self, fixed, moving, threads: int) -> None:
        from MLVIRNETLib.registration import RegistrationOptions

        self.fixed = fixed
        self.moving = moving
        self.options = RegistrationOptions(runtime={"num_threads": threads})
        try:
            import slicer

            from MLVIRNETLib.mrml import RegistrationLogic, imageToNewVolumeNode

            self.scene = slicer.vtkMRMLScene()
            self.logic = RegistrationLogic(self.scene)
            self.nodes = (imageToNewVolumeNode(self.scene, self.fixed, "fixed"),
                          imageToNewVolumeNode(self.scene, self.moving, "moving"))
            self.via = "RegistrationLogic.register (slicer-core)"
        except ImportError:
            self.logic = None
            self.via = "MLVIRNETLib.registration.register (no slicer-core)"

    def __call__(self, callback, cancel_flag: threading.Event) -> None:
        if self.logic is not None:
            self.logic._cancelRequested = False

            def on_progress(fraction: float, message: str) -> None:
                if cancel_flag.is_set():
                    self.logic.cancel()  # what the Cancel button does
                callback(fraction, message)

            transform = self.logic.register(*self.nodes, options=self.options, progressCallback=on_progress)
            self.scene.RemoveNode(transform)
        else:
            from MLVIRNETLib.core.progress import Progress
            from MLVIRNETLib.registration import register

            register(self.fixed, self.moving, options=self.options,
                     progress=Progress(callback, cancel_flag.is_set, min_interval_s=0.1))


def stage_of(message: str, current: str | None) -> str | None:
    return message if message in STAGES else current


def measure_cadence(run: Runner) -> tuple[dict, float]:
    events: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    run(lambda f, m: events.append((time.perf_counter(), m)), threading.Event())
    total = time.perf_counter() - t0
    per_stage: dict[str, dict] = {}
    current, last = None, t0
    for t, message in events:
        stage = stage_of(message, current)
        entry = per_stage.setdefault(stage or "(start)", {"start": t, "callbacks": 0, "max_gap_s": 0.0})
        if stage != current and current is not None:
            per_stage[current]["seconds"] = t - per_stage[current]["start"]
        gap = t - last
        # a gap belongs to the stage that was running during it
        owner = per_stage[current] if current is not None else entry
        owner["max_gap_s"] = max(owner["max_gap_s"], gap)
        entry["callbacks"] += 1
        current, last = stage, t
    if current is not None:
        per_stage[current]["seconds"] = time.perf_counter() - per_stage[current]["start"]
        per_stage[current]["max_gap_s"] = max(per_stage[current]["max_gap_s"], time.perf_counter() - last)
    for entry in per_stage.values():
        entry.pop("start")
    return per_stage, total


def measure_cancel(run: Runner, stage: str, after_s: float) -> float | None:
    """Seconds from the Cancel request (``after_s`` into ``stage``) to the end of the run."""
    from MLVIRNETLib.core.progress import RegistrationCancelled

    flag = threading.Event()
    requested: dict[str, float] = {}
    state = {"stage": None, "timer": None}

    def request() -> None:
        requested["t"] = time.perf_counter()
        flag.set()

    def callback(fraction: float, message: str) -> None:
        state["stage"] = stage_of(message, state["stage"])
        if state["stage"] == stage and state["timer"] is None:
            state["timer"] = threading.Timer(after_s, request)
            state["timer"].start()

    try:
        run(callback, flag)
    except RegistrationCancelled:
        return time.perf_counter() - requested["t"]
    finally:
        if state["timer"] is not None:
            state["timer"].cancel()
    return None  # the stage ended before the request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cancel-after", type=float, default=0.2, help="seconds into a stage (default 0.2)")
    parser.add_argument("--cancel-repeats", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="folder for the sample pair (default: a temp folder)")
    parser.add_argument("--image", type=Path, default=None,
                        help="another CT (HU) to use as the fixed image, with a 15 mm breathing partner made in memory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch

    from MLVIRNETLib.simulation.cases import sample_pair_files, synthetic_breathing_case

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.image is not None:
            fixed = sitk.ReadImage(str(args.image))
            moving = synthetic_breathing_case(fixed, peak_mm=15.0, n_landmarks=10).moving
        else:
            files = sample_pair_files(args.cache or Path(tmp))
            fixed, moving = sitk.ReadImage(str(files.fixed)), sitk.ReadImage(str(files.moving))
        run = Runner(fixed, moving, args.threads)
        run(lambda f, m: None, threading.Event())  # warm-up: model load, allocator
        cadence, total = measure_cadence(run)
        cancel = {
            stage: [measure_cancel(run, stage, args.cancel_after) for _ in range(args.cancel_repeats)]
            for stage in STAGES
            if stage in cadence and cadence[stage].get("seconds", 0.0) > args.cancel_after
        }
    report = {"via": run.via, "threads": args.threads, "total_s": round(total, 2), "stages": cadence,
              "cancel_delay_s": cancel, "cancel_after_s": args.cancel_after}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    size = "x".join(str(n) for n in run.fixed.GetSize())
    print(f"{run.via}, {size} voxels, {args.threads} threads, whole registration {total:.1f} s")
    print(f"{'stage':30s} {'seconds':>8s} {'callbacks':>9s} {'largest gap s':>13s} {'cancel delay s (med/max)':>24s}")
    for stage in STAGES:
        if stage not in cadence:
            continue
        entry = cadence[stage]
        delays = [d for d in cancel.get(stage, []) if d is not None]
        delay = f"{statistics.median(delays):.2f} / {max(delays):.2f}" if delays else "-"
        print(f"{stage:30s} {entry.get('seconds', 0.0):8.2f} {entry['callbacks']:9d} {entry['max_gap_s']:13.2f} {delay:>24s}")


if __name__ == "__main__":
    main()
