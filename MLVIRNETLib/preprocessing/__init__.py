"""Preparing CT for registration: intensity normalisation, cropping, resampling, lung masks.

Holds:
    pair        HU window -> [0, 1], crop to the lung box, anti-aliased resampling of a pair to
                the network grid (:func:`preprocess_pair`).
    lungmask    automatic lung masks with SimpleITK (:func:`segment_lungs`).
    morphology  the lung mask's array helpers (components, distances, morphology in mm).

May import: :mod:`MLVIRNETLib.core`.
"""

from .lungmask import LungMaskOptions, segment_lungs
from .pair import PreprocessOptions, image_to_hu_tensor, preprocess_pair

__all__ = ["LungMaskOptions", "PreprocessOptions", "image_to_hu_tensor", "preprocess_pair", "segment_lungs"]
