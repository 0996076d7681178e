"""``mlvirnet register-4d``: register every phase of a 4D-CT to a reference phase, with a motion summary.

Argument parsing and printing only; the work is :func:`MLVIRNETLib.evaluation.series_run.run_series`
(the inputs, the output layout and the resume rule are described there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .progress import progress_bar
from .settings import add_output_arguments, add_registration_arguments, check_registration_arguments, registration_settings

EPILOG = """\
phases: image files (one per phase; or one DICOM folder per phase), a folder of image files, a glob
pattern (quote it), one 4-D image whose volumes are the phases, or one DICOM folder holding the
phases (one series per phase, or one series with several temporal positions). A folder's or a glob's
files are taken in natural order (phase2 before phase10); files named one by one in the order given.
Each phase is named after its file (phase05.nii.gz -> phase05), a 4-D image's volumes and the
temporal positions of one DICOM series phase00, phase01, ..., a DICOM series after its description.
Phases may differ in size and geometry: each is registered to the reference.

outputs: OUTDIR/<phase>/field.nii.gz (reference -> phase on the reference grid, LPS mm,
x_phase = x_reference + u; the identity for the reference phase) and OUTDIR/<phase>/result.json;
OUTDIR/summary.csv and summary.json (per phase: lung volume from the Jacobian and from the phase's
lung mask, lung Dice, displacement mean/p95/max, lung base superior-inferior excursion, folding, the
quality check, TRE with landmarks, flags), motion.png (breathing curve, displacement, flagged
phases, end-inhale / end-exhale; TRE and landmark trajectories with landmarks) and report.json.
A phase is done when its result.json parses, records the same inputs (path, size, modification
time) and settings, and its field exists: a rerun skips it and registers any other phase again.
Landmarks are not part of that: changed landmarks give done phases new TRE from their stored fields.

landmarks: one folder of DIR-LAB 4D-75 files (caseN_4D-75_T00.txt ... T50: 75 voxel-index points per
phase; a file goes to the phase whose name holds its tag; only when no phase name holds a tag,
T10 -> the second phase; a tag no phase holds is left out with a note), or one file
per phase in phase order (.txt/.pts DIR-LAB voxel indices of that phase, .mrk.json, .fcsv, .csv).
The reference phase needs landmarks.

prints: notes and flagged phases on stderr; the counts, end-inhale / end-exhale phases and the files
written on stdout (one JSON object with --json).

exit status: 0 when every phase is done, 2 for bad input (nothing is written; a reference phase in
which no lungs are found is bad input: the motion summary is measured in its lungs), a failed phase or
write (phases done before it stay done; a rerun goes on from there), 130 after Ctrl-C.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "register-4d",
        help="register every phase of a 4D-CT to a reference phase, with a motion summary (resumable)",
        description=(
            "Register every breathing phase of a 4D-CT (PHASES) to the reference phase, write one deformation "
            "field per phase, and summarise the motion per phase (CSV, JSON, plot)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("phases", nargs="+", metavar="PHASES",
                   help="phase images: files, a folder, a glob, one 4-D image or one DICOM folder of phases")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--reference", default="0", metavar="K",
                   help="the reference phase: its name, or else its position among PHASES counted from 0 (default 0)")
    p.add_argument("--landmarks", nargs="+", type=Path, default=None, metavar="L",
                   help="landmarks that follow the phases: a folder of DIR-LAB 4D-75 files or one file per phase")
    add_registration_arguments(p)
    add_output_arguments(p)
    return p


def run(args) -> int:
    from ..evaluation.series_run import SeriesConfig, find_phases, run_series

    check_registration_arguments(args)
    phases = find_phases(args.phases)
    options, model = registration_settings(args)
    config = SeriesConfig(options=options, model=model, device=args.device, reference=args.reference,
                          landmarks=args.landmarks or ())
    with progress_bar("register-4d", quiet=args.quiet) as progress:
        result = run_series(phases, args.output, config, progress=progress)

    for note in result.notes:
        print(f"mlvirnet register-4d: {note}", file=sys.stderr)
    for name, why in result.redone.items():
        print(f"mlvirnet register-4d: {name}: {why}", file=sys.stderr)
    for name, why in result.summary.flagged.items():
        print(f"mlvirnet register-4d: {name} flagged: {why}; see {args.output / name / 'result.json'}", file=sys.stderr)
    if result.plot_note is not None:
        print(f"mlvirnet register-4d: no plot ({result.plot_note})", file=sys.stderr)
    written = [str(p) for p in result.outputs.values() if p is not None]
    s = result.summary
    if args.json:
        print(json.dumps({
            "phases": len(s.rows), "reference": s.reference, "registered": result.registered,
            "done_before": result.skipped, "redone": result.redone, "end_inhale": s.end_inhale,
            "end_exhale": s.end_exhale, "flagged": s.flagged, "outputs": written,
        }))
    else:
        print(f"{len(s.rows)} phases, reference {s.reference}: {len(result.registered)} registered, "
              f"{len(result.skipped)} done before; end-inhale {s.end_inhale}, end-exhale {s.end_exhale}, "
              f"{len(s.flagged)} flagged")
        print("wrote " + ", ".join(written))
    return 0
