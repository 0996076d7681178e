"""Measuring registrations: TRE, Dice, Jacobians, reports, plots, and the evaluation workflows.

Holds:
    metrics            TRE, Dice, folding and Jacobian statistics.
    reports            TRE tables (CSV, Markdown, JSON).
    plots              TRE box plots and overlay PNGs.
    dirlab_evaluation  the DIR-LAB landmark protocol (cases, fields or registration, per-case TRE,
                       reports); the work behind ``mlvirnet evaluate-dirlab``.
    demo               a CT registered against a synthetic-breathing version of itself (TRE,
                       folding, written outputs); the work behind ``mlvirnet demo``.
    cohort             many pairs from a manifest: sharding, resume, per-pair failures, summary;
                       the work behind ``mlvirnet batch``.
    motion             the motion summary of a 4D-CT per phase (lung volume, displacement, lung
                       base excursion, folding, flags) and its plot.
    series_run         a 4D-CT on disk registered to a reference phase, resumable, with the motion
                       summary; the work behind ``mlvirnet register-4d``.

May import: :mod:`MLVIRNETLib.core`, :mod:`MLVIRNETLib.io`; the workflows (``dirlab_evaluation``,
``demo``, ``cohort``, ``series_run``) also :mod:`MLVIRNETLib.registration`, :mod:`MLVIRNETLib.preprocessing`,
:mod:`MLVIRNETLib.simulation` and :mod:`MLVIRNETLib.paths`. Nothing here imports them at package
import time.
"""
