"""Registering a series of images (the breathing phases of a 4D-CT) to one reference phase.

:func:`register_series` registers every phase (the *moving* image) to the reference phase (the
*fixed* image) with :func:`~MLVIRNETLib.registration.pipeline.register`, and yields one
:class:`PhaseResult` per phase, in phase order, as soon as that phase is done: the caller writes
or summarises it and drops it, so that one field at a time is held in memory. Phases given as
loaders (zero-argument callables returning the image) are read only when their turn comes.

Done once for the whole series, not per phase:

* the model is read once (:func:`~MLVIRNETLib.registration.pipeline.load_registration_model`);
* the reference phase's lung mask (which sets the crop box) is computed once, or taken as given;
* the reference phase's share of each registration (its affine working copies, the crop box and
  the working grid, the reference image and mask resampled onto it and onto the model's input
  grid, the refinement's pyramids) is computed for the first phase and kept for the others
  (:class:`~MLVIRNETLib.registration.fixed_cache.FixedImageCache`).

Every phase's own automatic lung mask is computed too (``phase_masks=True``), for the motion
summary (:mod:`MLVIRNETLib.evaluation.motion`: lung volume from the mask, lung Dice); the
registration uses it only when its mask term is on (``refinement.beta > 0``), so that each phase
gets exactly the result a single-pair ``register`` of the same two images gives.

The reference phase itself gets the identity (a zero field on its grid).

Each phase is registered to the reference directly; ``chain=True`` registers each phase to its
neighbour nearer the reference instead and composes the maps along the chain (then two fields,
the last composed map and the one being made, are held at a time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import SimpleITK as sitk

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from ..core.progress import CancelFn, Progress, ProgressFn
from .options import RegistrationOptions, RegistrationResult, as_options

if TYPE_CHECKING:
    from ..networks.cascade import MultilevelNet

PhaseSource = sitk.Image | Callable[[], sitk.Image]
"""A phase: the image itself, or a zero-argument callable that reads it when its turn comes."""

REFERENCE_MASK_SHARE = 0.03
"""The share of the overall progress given to the reference phase's lung mask."""

__all__ = ["PhaseResult", "PhaseSource", "register_series"]


@dataclass
class PhaseResult:
    """One phase of :func:`register_series`.

    Attributes:
        index: the phase's position in the series (0-based).
        name: its name (``names[index]``, default ``"phase{index:02d}"``).
        is_reference: True for the reference phase (its deformation is the identity).
        deformation: the map reference -> phase on the reference grid (LPS mm,
            ``x_phase = x_reference + u(x_reference)``): warp the phase onto the reference with it.
        result: the :class:`RegistrationResult` (timings, quality, messages); ``None`` for the
            reference phase.
        reference_mask: the reference phase's lung mask (the same object in every result), or
            ``None`` when no lungs were found there.
        phase_mask: this phase's automatic lung mask on its own grid, or ``None`` (not asked for,
            or no lungs found: see ``messages``).
        messages: notes about this phase (the registration's messages included).
        seconds: wall time of this phase (reading, lung mask, registration).
    """

    index: int
    name: str
    is_reference: bool
    deformation: Deformation
    result: RegistrationResult | None
    reference_mask: sitk.Image | None
    phase_mask: sitk.Image | None
    messages: list[str]
    seconds: float


def _load(source: PhaseSource, name: str) -> sitk.Image:
    image = source() if callable(source) and not isinstance(source, sitk.Image) else source
    if not isinstance(image, sitk.Image):
        raise ValueError(f"phase {name}: expected a SimpleITK image (or a loader returning one), got "
                         f"{type(image).__name__}")
    ImageGrid.from_sitk(image)  # a 3-D image (ValueError otherwise)
    return image


def _check_series(phases: Sequence[PhaseSource], reference: int, names: Sequence[str] | None,
                  which: Sequence[int] | None) -> tuple[list[str], list[int]]:
    """The phase names and the indices to register, after checking the arguments (see :func:`register_series`)."""
    n = len(phases)
    if n < 2:
        raise ValueError(f"a series needs at least 2 phases, got {n}")
    if isinstance(reference, bool) or not isinstance(reference, int) or not 0 <= reference < n:
        raise ValueError(f"reference phase {reference!r} is out of range: the series has {n} phases (0..{n - 1})")
    labels = [f"phase{i:02d}" for i in range(n)] if names is None else [str(v) for v in names]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} names for {n} phases")
    if len(set(labels)) != n:
        raise ValueError(f"phase names must be unique, got {labels}")
    todo = list(range(n)) if which is None else sorted({int(i) for i in which})
    bad = [i for i in todo if not 0 <= i < n]
    if bad:
        raise ValueError(f"phase indices {bad} are out of range (0..{n - 1})")
    for i, source in enumerate(phases):
        if not isinstance(source, sitk.Image) and not callable(source):
            raise ValueError(f"phase {labels[i]}: expected a SimpleITK image or a loader, got {type(source).__name__}")
    return labels, todo


def register_series(
    phases: Sequence[PhaseSource],
    reference: int = 0,
    *,
    names: Sequence[str] | None = None,
    which: Sequence[int] | None = None,
    reference_mask: sitk.Image | None = None,
    phase_masks: bool = True,
    chain: bool = False,
    model: "MultilevelNet | str | Path | None" = "default",
    device: str = "auto",
    options: RegistrationOptions | Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Iterator[PhaseResult]:
    """Register every phase to ``phases[reference]``; yields one :class:`PhaseResult` per phase.

    The arguments are checked when this function is called (before anything is computed); the
    work happens as the returned iterator is consumed.

    Args:
        phases: the phase images (3-D CT in HU, any geometry each), or loaders returning them.
        reference: the index of the reference (fixed) phase.
        names: a name per phase (default ``phase00``, ``phase01``, ...); progress messages use them.
        which: the indices to register and yield (default every phase), e.g. the phases a resumed
            run has not done yet; the reference's mask is computed only when one of them needs it.
        reference_mask: the reference phase's lung mask (on its grid); default: automatic.
        phase_masks: compute each phase's automatic lung mask (``PhaseResult.phase_mask``).
        chain: register each phase to its neighbour nearer the reference (fixed) instead of to the
            reference, and compose the maps: ``y_ref->k = y_(k-1)->k o y_ref->(k-1)``. Phases are
            then yielded in chain order (the reference, the phases after it, then those before it,
            going away from it), ``PhaseResult.result`` is the last step's registration, and every
            phase is registered (``which`` must be None).
        model, device, options: as for :func:`~MLVIRNETLib.registration.pipeline.register`; the
            model is read once for the whole series.
        progress: ``(fraction, message)`` over the whole series; each message starts with the
            phase's name and its place, e.g. ``"phase05 (5/10): refinement ..."`` (the reference
            counts as one).
        cancel: polled often; returning True raises ``RegistrationCancelled`` from the iterator.

    Raises:
        ValueError: fewer than 2 phases, a reference out of range, names that are not one per
            phase or not unique, indices out of range, a phase that is not a SimpleITK image or a
            loader; from the iterator also what ``register`` raises for a phase (a 2-D image, a
            pair that does not overlap, ...), its message starting with ``"phase NAME: "``.
        FileNotFoundError: an explicit model path that does not exist (from the iterator).
        RegistrationCancelled: ``cancel()`` returned True (from the iterator).
    """
    labels, todo = _check_series(phases, reference, names, which)
    if chain:
        if which is not None:
            raise ValueError("a chain registers every phase: which must be None")
        todo = [reference] + list(range(reference + 1, len(phases))) + list(range(reference - 1, -1, -1))
    opts = as_options(options)
    return _series(list(phases), reference, labels, todo, reference_mask, phase_masks or chain, chain, model, device,
                   opts, Progress(progress, cancel), cancel)


def _series(phases: list[PhaseSource], reference: int, names: list[str], todo: list[int],
            reference_mask: sitk.Image | None, phase_masks: bool, chain: bool, model, device: str,
            opts: RegistrationOptions, outer: Progress, cancel: CancelFn | None) -> Iterator[PhaseResult]:
    from ..preprocessing.lungmask import segment_lungs
    from .fixed_cache import FixedImageCache
    from .pipeline import load_registration_model, register

    if not todo:
        return
    outer.stage(0.0, REFERENCE_MASK_SHARE, f"{names[reference]} (reference): lung mask")
    try:
        fixed = _load(phases[reference], names[reference])
    except (ValueError, RuntimeError, OSError) as exc:
        raise type(exc)(f"reference phase {names[reference]}: {exc}") from exc
    ref_notes: list[str] = []
    if reference_mask is None:
        try:
            reference_mask = segment_lungs(fixed, opts.lung_mask, progress=outer)
        except ValueError as exc:
            ref_notes.append(f"no automatic lung mask of the reference phase ({exc}); registering the whole field of view")
    loaded = load_registration_model(model, device)
    cache = FixedImageCache()  # the reference's share of every registration to it
    share = (1.0 - REFERENCE_MASK_SHARE) / len(todo)
    previous: tuple[sitk.Image, sitk.Image | None, Deformation | None] = (fixed, reference_mask, None)
    for k, i in enumerate(todo):
        if chain and abs(i - reference) == 1:
            previous = (fixed, reference_mask, None)  # a chain starts at the reference, each way
        t0 = time.perf_counter()
        label = f"{names[i]} ({k + 1}/{len(todo)})"
        outer.stage(REFERENCE_MASK_SHARE + k * share, share, f"{label}: reading")
        if i == reference:
            outer(1.0, f"{label}: reference phase (identity)")
            yield PhaseResult(i, names[i], True, Deformation.identity(ImageGrid.from_sitk(fixed)), None,
                              reference_mask, reference_mask if phase_masks else None, list(ref_notes),
                              time.perf_counter() - t0)
            continue
        try:
            moving = _load(phases[i], names[i])
        except (ValueError, RuntimeError, OSError) as exc:
            raise type(exc)(f"phase {names[i]}: {exc}") from exc
        notes = list(ref_notes)
        phase_mask = None
        if phase_masks or opts.refinement.beta > 0:
            outer(0.0, f"{label}: lung mask", force=True)
            try:  # its steps report progress, so that cancel is heard while it runs
                phase_mask = segment_lungs(moving, opts.lung_mask,
                                           progress=lambda f, m, lab=label: outer(0.0, f"{lab}: lung mask: {m}"))
            except ValueError as exc:
                notes.append(f"no automatic lung mask of {names[i]} ({exc})")
        step_fixed, step_mask, before = previous if chain else (fixed, reference_mask, None)
        try:
            result = register(
                step_fixed, moving, step_mask, phase_mask if opts.refinement.beta > 0 else None, model=loaded,
                device=device, options=opts, progress=lambda f, m, lab=label: outer(f, f"{lab}: {m}"), cancel=cancel,
                fixed_cache=cache if step_fixed is fixed else None,
            )
        except ValueError as exc:  # which phase could not be registered, in the one message
            raise ValueError(f"phase {names[i]}: {exc}") from exc
        notes.extend(result.messages)
        deformation = result.deformation if before is None else result.deformation.compose(before)
        outer(1.0, f"{label}: done")
        item = PhaseResult(i, names[i], False, deformation, result, reference_mask,
                           phase_mask if phase_masks else None, notes, time.perf_counter() - t0)
        previous = (moving, phase_mask, deformation) if chain else previous
        del moving, result, phase_mask, deformation, before  # not held while the next phase registers
        yield item
        del item  # the caller has it (or dropped it): not held here while the next phase registers
