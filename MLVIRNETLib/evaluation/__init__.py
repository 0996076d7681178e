"""Measuring registrations: TRE, Dice, Jacobians, reports, plots.

Holds:
    metrics  TRE, Dice, folding and Jacobian statistics.
    reports  TRE tables (CSV, Markdown, JSON).
    plots    TRE box plots and overlay PNGs.

May import: :mod:`MLVIRNETLib.core`, :mod:`MLVIRNETLib.io`.
"""
