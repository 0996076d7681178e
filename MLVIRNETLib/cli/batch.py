"""``mlvirnet batch``: register every pair of a manifest CSV (a cohort), resumable and shardable.

Argument parsing and printing only; the work is :func:`MLVIRNETLib.evaluation.cohort.run_cohort`
(the manifest format, the output layout and the shards are described there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .progress import progress_bar
from .settings import add_output_arguments, add_registration_arguments, check_registration_arguments, registration_settings

EPILOG = """\
manifest: a CSV with a header row; lower-case columns id, fixed, moving and optionally fixed_mask,
moving_mask, fixed_landmarks, moving_landmarks, separated by commas (paths absolute or relative to the
manifest's folder). The whole manifest, every id and every output path are checked before any work;
no output may replace an input (the manifest included).

outputs: OUTDIR/<id>/field.nii.gz and OUTDIR/<id>/result.json per pair; OUTDIR/<id>/error.txt for a
pair that failed; OUTDIR/summary.csv, summary.json and tre_boxplot.png (TRE before/after where
landmarks exist, folding, quality, seconds) over the whole manifest. A pair is done when its
result.json parses, records the same inputs (path, size, modification time) and settings, and its
field exists: a rerun skips it, and registers again (saying why) any other pair. Landmarks marked
missing in Slicer are left out; pairs match by label, else by position.

concurrent runs: each pair is locked while a run registers it (released when the process ends, even
by kill -9); another run on the same OUTDIR comes back to it at the end instead of doing it twice.

shards: --shard I/N (1 <= I <= N) registers the pairs at positions I, I+N, I+2N, ... of the manifest,
e.g. a Slurm array --array=1-N with --shard $SLURM_ARRAY_TASK_ID/N, or SGE -t 1-N with $SGE_TASK_ID/N.

prints: one line per failed pair and per quality warning on stderr; the counts of this run and of the
cohort and the files written on stdout (one JSON object with --json).

exit status: 0 when every pair of this run is done, 1 when a pair failed, 2 for bad input (nothing is
registered) or a full disk (the run stops at once; pairs done so far stay done), 130 after Ctrl-C.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch",
        help="register the pairs of a manifest CSV (a cohort): resumable, shardable, with a summary",
        description=(
            "Register every pair of MANIFEST (skipping pairs already done), record failures and go on, and write a "
            "summary (CSV, JSON, TRE box plot) of the whole cohort."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="CSV with columns id, fixed, moving, ...")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--shard", default="1/1", metavar="I/N",
                   help="register only shard I of N (1-based; default 1/1 = every pair)")
    add_registration_arguments(p)
    add_output_arguments(p)
    return p


def run(args) -> int:
    from ..evaluation.cohort import CohortConfig, Shard, read_manifest, run_cohort

    check_registration_arguments(args)
    shard = Shard.parse(args.shard)
    pairs = read_manifest(args.manifest)
    options, model = registration_settings(args)
    config = CohortConfig(options=options, model=model, device=args.device, shard=shard)
    with progress_bar("batch", quiet=args.quiet) as progress:
        result = run_cohort(pairs, args.output, config, progress=progress)

    for outcome in result.outcomes:
        if outcome.note:
            print(f"mlvirnet batch: pair {outcome.id}: {outcome.note}", file=sys.stderr)
    warned = [r for r in result.rows if r.get("quality_ok") is False]
    for row in warned:
        print(f"mlvirnet batch: pair {row['id']}: quality check failed (lung NCC {row['quality_ncc']:.2f}); "
              f"see {args.output / row['id'] / 'result.json'}", file=sys.stderr)
    for outcome in result.failed:
        print(f"mlvirnet batch: pair {outcome.id} failed: {outcome.error} "
              f"(see {args.output / outcome.id / 'error.txt'})", file=sys.stderr)
    if result.plot_note is not None:
        print(f"mlvirnet batch: no TRE box plot ({result.plot_note})", file=sys.stderr)
    cohort = {s: sum(r["status"] == s for r in result.rows) for s in ("done", "failed", "pending")}
    written = [str(p) for p in result.outputs.values() if p is not None]
    if args.json:
        print(json.dumps({
            "shard": str(shard),
            "run": {s: result.count(s) for s in ("done", "skipped", "failed")},
            "cohort": cohort,
            "failed": {o.id: o.error for o in result.failed},
            "registered": [o.id for o in result.outcomes if o.status == "done"],
            "redone": {o.id: o.note for o in result.outcomes if o.note},
            "quality_warnings": [r["id"] for r in warned],
            "outputs": written,
        }))
    else:
        print(f"shard {shard}: {len(result.outcomes)} pairs: {result.count('done')} registered, "
              f"{result.count('skipped')} done before, {result.count('failed')} failed")
        print(f"cohort of {len(result.rows)} pairs: {cohort['done']} done, {cohort['failed']} failed, "
              f"{cohort['pending']} pending")
        print("wrote " + ", ".join(written))
    return 1 if result.failed else 0
