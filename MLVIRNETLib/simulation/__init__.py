"""Synthetic motion and phantoms with known ground truth.

Holds:
    breathing  smooth random and breathing-like deformations, synthetic pairs, landmarks.
    phantoms   CT-like phantoms around a lung mask (to test the lung mask).
    acquisition  the same anatomy scanned again: thicker slices, coarser voxels, a lower dose.

May import: :mod:`MLVIRNETLib.core`, :mod:`MLVIRNETLib.preprocessing`.
"""

from .breathing import breathing_deformation, make_synthetic_pair, sample_landmarks

__all__ = ["breathing_deformation", "make_synthetic_pair", "sample_landmarks"]
