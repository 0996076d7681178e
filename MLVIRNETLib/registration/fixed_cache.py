"""The work that depends on the fixed image alone, done once when many moving images are registered to it.

Registering the phases of a 4D-CT to one reference phase (:mod:`MLVIRNETLib.registration.series`)
repeats, for every phase, stages whose fixed half does not change: the fixed image as a tensor,
its automatic lung mask, its downsampled copies for the affine pre-alignment, the working grid
(the crop box), the fixed image and mask resampled onto it and onto the model's input grid, and
the refinement's pyramids of them. A :class:`FixedImageCache` passed to
:func:`~MLVIRNETLib.registration.pipeline.register` keeps each of these after its first use, so the
next moving image reuses them. The results are the same as without the cache: each value
is computed by the same function from the same inputs, and nothing downstream changes a cached
tensor in place.

The stages ask for a value through a memo (:mod:`MLVIRNETLib.core.memo`), ``memo(key, compute)``:
the cache returns what it holds under ``key`` or calls ``compute()`` once and keeps the result. A
key names the value and everything it depends on besides the fixed image and mask (options,
device), so that other settings never reuse it.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, TypeVar

import SimpleITK as sitk

T = TypeVar("T")

__all__ = ["FixedImageCache"]


class FixedImageCache:
    """The fixed image's share of a registration, kept for the next moving image.

    One cache serves one fixed image and one fixed mask (``None`` included): the first
    :func:`~MLVIRNETLib.registration.pipeline.register` it is passed to binds it to the objects given
    there, and passing it with another fixed image or mask object raises ``ValueError`` (an image
    is compared by identity: a cache never has to read a volume to know it is the same).

    It holds its tensors (the fixed image as float32 at full resolution, and smaller copies) until
    it is dropped; the number of moving images does not change that.

    Example::

        cache = FixedImageCache()
        for moving in phases:
            result = register(reference, moving, model=loaded, fixed_cache=cache)
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._fixed: sitk.Image | None = None
        self._mask: sitk.Image | None = None
        self._bound = False

    def bind(self, fixed: sitk.Image, fixed_mask: sitk.Image | None) -> None:
        """Tie the cache to ``fixed`` and ``fixed_mask`` on first use; check them on every later use.

        Raises:
            ValueError: the cache already serves another fixed image or mask.
        """
        if not self._bound:
            self._fixed, self._mask, self._bound = fixed, fixed_mask, True
            return
        if fixed is not self._fixed:
            raise ValueError("this FixedImageCache serves another fixed image; use one cache per fixed image")
        if fixed_mask is not self._mask:
            raise ValueError("this FixedImageCache serves the same fixed image with another fixed mask; "
                             "use one cache per fixed image and mask")

    def __call__(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value kept under ``key``, computed by ``compute()`` the first time it is asked for."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)
