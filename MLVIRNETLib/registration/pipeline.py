"""The one high-level registration API of MLVIRNET (CLI, Slicer logic, validation, evaluation).

:func:`register` runs, in order (each stage timed in ``RegistrationResult.timings``):

``lung_mask``
    the fixed lung mask for the crop box (computed with :func:`MLVIRNETLib.preprocessing.lungmask.segment_lungs`
    on a 3 mm working grid when ``crop_to_lungs`` and no mask was given); the moving mask only
    when the mask term is on (``beta > 0``).
``affine``
    :func:`MLVIRNETLib.registration.affine.affine_register`: ``A`` with ``x_moving = A x_fixed`` (skipped with
    ``affine=False``).
``preprocess``
    :func:`MLVIRNETLib.preprocessing.pair.preprocess_pair`: HU window ``[-1000, 300] -> [0, 1]``, crop to
    the fixed lung box + margin, anti-aliased resampling to the network grid; the moving image is
    sampled at ``A x``.
``network``
    the mlVIRNET cascade (inference mode; autocast as ``network.precision`` says: fp16 on CUDA by default)
    -> ``phi`` on the network grid. Network alone (no refinement), ``phi`` gives way to no motion
    where that fits the pair better, after a second pass with the images swapped has had its
    chance (``network.both_ways_fallback``).
``refine``
    :func:`MLVIRNETLib.registration.refine.refine`: instance optimisation of ``phi`` (or of the identity when
    there is no model) on 1/4 and 1/2 of the network grid.
``field``
    the final map ``y(x) = A (x + u_phi(x))`` evaluated at every voxel of the full-resolution fixed
    grid, slab by slab (bounded memory). Outside the crop box ``u_phi`` continues its border value.

The returned :class:`RegistrationResult.deformation` therefore lives on the full fixed grid and
maps fixed to moving points (LPS mm, ``x_moving = x_fixed + u(x_fixed)``): warp the moving image
with it, or map fixed landmarks to moving ones.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation, folding_fraction
from ..core.devices import resolve_device, synchronize
from ..core.filters import resample_antialiased
from ..core.geometry import ImageGrid
from ..core.memo import Memo, no_memo
from ..core.progress import CancelFn, Progress, ProgressFn
from ..preprocessing.pair import PreprocessedPair, image_to_hu_tensor, mask_to_tensor, preprocess_pair
from .affine import affine_register, compose_affine
from .fixed_cache import FixedImageCache
from .options import (RegistrationOptions, RegistrationResult, as_options, field_of_view_lps, hu_messages,
                      validate_pair)
from .quality import check_quality
from .refine import identity_if_better, refine
from .warp import full_field

if TYPE_CHECKING:
    from ..networks.cascade import MultilevelNet


@dataclass(frozen=True)
class LoadedModel:
    """A model read once (:func:`load_registration_model`) for registering many pairs with it.

    Attributes:
        net: the network in eval mode, or ``None`` (no network: refinement alone).
        label: what ``RegistrationResult.model_used`` reports (the model file), or ``None``.
        input_size: the model's own input grid size (from its file), or ``None``.
        messages: notes of the loading (e.g. the default model is not installed), repeated in
            every result registered with it.
    """

    net: "MultilevelNet | None"
    label: str | None
    input_size: tuple[int, ...] | None
    messages: tuple[str, ...] = ()


def load_registration_model(
    model: "MultilevelNet | str | Path | None" = "default", device: str | torch.device = "auto"
) -> LoadedModel:
    """Read ``model`` (as :func:`register` takes it) once, onto ``device``; pass the result as the
    ``model`` of :func:`register` to register many pairs without reading the file again.

    Raises:
        FileNotFoundError: an explicit model path that does not exist.
        ValueError: an unreadable model, a bad ``model`` type or a CUDA device without a GPU.
    """
    messages: list[str] = []
    net, label, size = _resolve_model(model, resolve_device(device), messages)
    return LoadedModel(net, label, size, tuple(messages))


def _resolve_model(model, device: torch.device, messages: list[str]):
    """``(net or None, label or None, input_size or None)`` for the ``model`` argument of :func:`register`."""
    from ..networks.cascade import MultilevelNet
    from ..paths import default_model_path

    if isinstance(model, LoadedModel):
        messages.extend(model.messages)
        net = model.net.to(device).eval() if model.net is not None else None
        return net, model.label, model.input_size
    if model is None:
        return None, None, None
    if isinstance(model, MultilevelNet):
        return model.to(device).eval(), "<in-memory>", None
    if isinstance(model, (str, Path)):
        from ..networks.model_files import load_model

        if isinstance(model, str) and model == "default":
            path = default_model_path()
            if not path.is_file():
                messages.append(
                    f"the default model {path} is not installed; registering by refinement alone "
                    "(variational multilevel registration without a network)"
                )
                return None, None, None
        else:
            path = Path(model)
        net, info = load_model(path, map_location=device)
        size = tuple(info["config"].input_size) if "config" in info else None
        return net.eval(), str(path), size
    raise ValueError(f"model must be a MultilevelNet, a path, 'default' or None, got {type(model).__name__}")


def cpu_bf16_supported() -> bool:
    """True when the CPU has native bf16 support for oneDNN convolutions (AVX512-BF16 or AMX).

    Without it, bf16 autocast is emulated and far slower than float32 (docs/performance.md), so
    :func:`register` falls back to float32 with ``precision="auto-bfloat16"``.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _elapsed(t0: float, device: torch.device) -> float:
    """Seconds since ``t0`` once the work queued on ``device`` has finished (honest GPU stage times)."""
    synchronize(device)
    return time.perf_counter() - t0


def _autocast(device: torch.device, opts: RegistrationOptions, messages: list[str]):
    precision = opts.network.precision
    if precision == "float32":
        return contextlib.nullcontext()
    if precision in ("bfloat16", "float16"):
        return torch.autocast(device.type, dtype=getattr(torch, precision))
    if device.type == "cpu" and precision == "auto-bfloat16":
        if not cpu_bf16_supported():
            messages.append("precision auto-bfloat16: this CPU has no native bf16 support; the network runs in float32")
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# the registration
# ----------------------------------------------------------------------------------------------
def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    model: "MultilevelNet | LoadedModel | str | Path | None" = "default",
    device: str | torch.device = "auto",
    options: RegistrationOptions | Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    fixed_cache: FixedImageCache | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (CT in HU); see the module docstring for the stages.

    Args:
        fixed, moving: 3-D scalar CT images in HU, any geometry (grids may differ).
        fixed_mask, moving_mask: optional lung masks (nonzero = lung) on the grid of their image.
        model: a ``MultilevelNet``, a model file path, ``"default"`` (the shipped model; when it is
            not installed a message says so and refinement alone registers) or ``None`` (no network).
            An in-memory net runs in eval mode on ``device`` and is returned to its own mode and
            device afterwards. A :class:`LoadedModel` (:func:`load_registration_model`) is used as
            it was read, without reading its file again.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        options: :class:`RegistrationOptions`, or a ``dict`` of its fields (read with
            :meth:`RegistrationOptions.from_dict`: unknown keys are an error), or ``None`` for the
            defaults. An object is validated again here (its attributes may have been changed).
        progress: called with ``(fraction in [0, 1], message)``.
        cancel: polled often; returning True raises :class:`RegistrationCancelled`.
        fixed_cache: a :class:`~MLVIRNETLib.registration.fixed_cache.FixedImageCache` to register
            several moving images to this ``fixed`` (and ``fixed_mask``): the fixed image's share
            of the work (its automatic lung mask, affine working copies, crop box and working-grid
            inputs) is done once and the results are the same as without it.

    Returns:
        :class:`RegistrationResult`. Its ``messages`` include a warning for an image whose values
        do not look like CT in HU (e.g. normalised to 0..1, or HU + 1024) and for a pair whose
        fields of view overlap little after the affine stage.

    Raises:
        TypeError: ``options`` is not a ``RegistrationOptions``, a ``dict`` or ``None``.
        ValueError: bad inputs (see :func:`validate_pair`), bad options (see
            :meth:`RegistrationOptions.validate`), a CUDA device without a GPU, an unreadable
            model, or a pair whose fields of view do not overlap (fewer than
            ``MIN_OVERLAP_ERROR`` of the fixed crop box samples the moving image, after the affine
            stage when it runs).
        FileNotFoundError: an explicit model path that does not exist.
        RegistrationCancelled: ``cancel()`` returned True.
    """
    opts = as_options(options)
    t_start = time.perf_counter()
    prog = Progress(progress, cancel)
    prog(0.0, "checking the inputs", force=True)  # a progress display's clock starts with ``total``'s
    validate_pair(fixed, moving, fixed_mask, moving_mask)
    if fixed_cache is not None:
        fixed_cache.bind(fixed, fixed_mask)
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    if opts.runtime.num_threads is not None:
        torch.set_num_threads(int(opts.runtime.num_threads))
    # an in-memory model runs in eval mode on ``dev``; the caller gets it back as it was
    restore = _ModelState.of(model)
    try:
        return _register(fixed, moving, fixed_mask, moving_mask, model, dev, opts, prog, t_start,
                         fixed_cache if fixed_cache is not None else no_memo)
    finally:
        if opts.runtime.num_threads is not None:
            torch.set_num_threads(old_threads)
        if restore is not None:
            restore()


@dataclass
class _ModelState:
    """The training flag and device of an in-memory model, restorable by calling it."""

    net: torch.nn.Module
    training: bool
    device: torch.device | None

    @classmethod
    def of(cls, model) -> "_ModelState | None":
        if not isinstance(model, torch.nn.Module):
            return None
        first = next(model.parameters(), None)
        return cls(model, model.training, first.device if first is not None else None)

    def __call__(self) -> None:
        self.net.train(self.training)
        if self.device is not None:
            self.net.to(self.device)


def _register(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    model,
    dev: torch.device,
    opts: RegistrationOptions,
    prog: Progress,
    t_start: float,
    memo: Memo = no_memo,
) -> RegistrationResult:
    """The stages of :func:`register` in order, each timed (inputs already checked); ``memo`` keeps
    the fixed image's share for the next moving image (see :mod:`.fixed_cache`)."""
    messages: list[str] = hu_messages(fixed, moving)
    timings: dict[str, float] = {}
    net, model_label, model_size = _resolve_model(model, dev, messages)
    for msg in messages:
        prog(0.0, msg, force=True)  # each note reaches the caller (not throttled)
    refine_opts = opts.refine_options()
    n_refine = sum(refine_opts.iterations_per_level())
    # the grid of preprocessing and refinement: network_size; a model runs at its own input size
    # (its inputs are resampled from that grid), and without refinement the images are
    # preprocessed straight to the model's size
    network_size = opts.grid.size
    if model_size is not None and n_refine == 0:
        network_size = tuple(model_size)
    if net is None and n_refine == 0:
        messages.append("no network and refine_iterations=0: the result is the affine pre-alignment only")

    with _timed("lung_mask", timings, dev):
        prog.stage(0.0, 0.05, "lung masks")
        given_mask = fixed_mask is not None
        fixed_mask, moving_mask = _lung_masks(fixed, moving, fixed_mask, moving_mask, opts, prog, messages, memo)
    # what depends on the fixed mask depends on how it was made when it is automatic
    mask_origin = "given" if given_mask else repr(opts.lung_mask)

    def fixed_memo(key, compute):
        return memo((mask_origin, key), compute)

    f_hu, f_grid = memo(("fixed HU", str(dev)), lambda: image_to_hu_tensor(fixed, dev))
    m_hu, m_grid = image_to_hu_tensor(moving, dev)
    f_mask_t = mask_to_tensor(fixed_mask, f_grid, "fixed mask").to(dev) if fixed_mask is not None else None
    m_mask_t = mask_to_tensor(moving_mask, m_grid, "moving mask").to(dev) if moving_mask is not None else None

    affine: np.ndarray | None = None
    with _timed("affine", timings, dev):
        if opts.affine is not None:
            prog.stage(0.05, 0.15, "affine pre-alignment")
            affine = affine_register(f_hu, f_grid, m_hu, m_grid, f_mask_t, m_mask_t, opts.affine, progress=prog,
                                     memo=fixed_memo)

    with _timed("preprocess", timings, dev):
        prog.stage(0.20, 0.05, "preprocessing")
        pp_opts = opts.preprocess_options(network_size, f_grid.spacing)
        pp = preprocess_pair(  # the moving mask also serves the quality check's lung Dice
            (f_hu, f_grid), (m_hu, m_grid), f_mask_t, m_mask_t, pp_opts, affine=affine, device=dev, progress=prog,
            memo=fixed_memo,
        )
        del f_hu, m_hu, f_mask_t, m_mask_t  # the full-resolution inputs are not needed again
        _check_overlap(pp, f_grid, m_grid, affine, opts, prog, messages)

    phi: Deformation | None = None
    levels: list[Deformation] = []
    with _timed("network", timings, dev):
        if net is not None:
            prog.stage(0.25, 0.10, "network")
            fixed_input = functools.partial(fixed_memo, ("model input", model_size, repr(pp_opts), str(dev)))
            phi, levels = _network_stage(net, model_size, pp.grid, pp.fixed, pp.moving, dev, opts, prog, messages,
                                         fixed_input=fixed_input)
            if n_refine == 0:
                phi = _network_alone_choice(phi, net, model_size, pp, dev, opts, refine_opts, prog, messages)

    with _timed("refine", timings, dev):
        if n_refine > 0:
            prog.stage(0.35, 0.55, "refinement")
            r = refine(
                pp.fixed, pp.moving, pp.grid, initial=phi, options=refine_opts,
                fixed_mask=pp.fixed_mask, moving_mask=pp.moving_mask, progress=prog, moving_valid=_partial_moving_view(pp),
                memo=lambda key, compute: fixed_memo(("refinement", repr(pp_opts), str(dev), key), compute),
            )
            phi = r.deformation
            levels.extend(r.levels)
        if phi is None:
            phi = Deformation.identity(pp.grid, device=dev)

    with _timed("quality", timings, dev):
        quality = check_quality(pp.fixed, pp.moving, pp.grid, phi, pp.fixed_mask, pp.moving_mask)
        if quality.message is not None:
            messages.append(quality.message)
    network_grid = pp.grid
    del pp  # the working-grid images are not needed for the full-resolution field
    with _timed("field", timings, dev):
        prog.stage(0.90, 0.10, "full-resolution field")
        deformation, folding, levels = _field_stage(phi, affine, levels, f_grid, opts, dev, prog)
    timings["total"] = _elapsed(t_start, dev)
    prog(1.0, "registration done")
    if folding > 0:
        messages.append(f"{100 * folding:.3f} % of the network-grid voxels fold (det J <= 0)")
    return RegistrationResult(
        deformation=deformation,
        level_deformations=levels,
        affine=affine,
        timings=timings,
        folding_fraction=folding,
        model_used=model_label,
        messages=messages,
        network_grid=network_grid,
        quality=quality,
    )


MIN_OVERLAP_ERROR = 0.01
"""Below this fraction of the fixed crop box sampling the moving image, :func:`register` refuses the pair."""

MIN_OVERLAP_WARNING = 0.10
"""Below this fraction of the fixed crop box sampling the moving image, :func:`register` warns."""


def _check_overlap(
    pp: PreprocessedPair,
    f_grid: ImageGrid,
    m_grid: ImageGrid,
    affine: np.ndarray | None,
    opts: RegistrationOptions,
    prog: Progress,
    messages: list[str],
) -> None:
    """Refuse (``ValueError``) or warn about a pair whose fields of view overlap little.

    The overlap is the fraction of the network grid (the fixed crop box) whose points, mapped by
    the affine pre-alignment (identity without it), fall inside the moving field of view.
    """
    if pp.moving_valid is None:
        return
    fraction = float(pp.moving_valid.float().mean())
    if fraction >= MIN_OVERLAP_WARNING:
        return
    box = "lung box" if opts.grid.crop_to_lungs and pp.crop_index != ((0, 0, 0), tuple(f_grid.size)) else "field of view"
    how = "after the affine pre-alignment" if affine is not None else "without an affine pre-alignment (affine=False)"
    text = (
        f"the images barely overlap: {100 * fraction:.1f} % of the fixed {box} "
        f"({field_of_view_lps(pp.grid)}) lies inside the moving field of view ({field_of_view_lps(m_grid)}) "
        f"{how}"
    )
    if affine is not None:
        text += f"; the fixed {box} maps to {field_of_view_lps(pp.grid, affine)}"
    if fraction < MIN_OVERLAP_ERROR:
        hint = (" Check that both scans share the scanner frame (origin, direction)"
                + (", or run with the affine pre-alignment" if affine is None else "") + ".")
        raise ValueError(text.replace("barely overlap", "do not overlap") + "; nothing to register." + hint)
    messages.append(text + "; the result outside the overlap is padding")
    prog(1.0, messages[-1])


def _field_stage(
    phi: Deformation,
    affine: np.ndarray | None,
    levels: list[Deformation],
    grid: ImageGrid,
    opts: RegistrationOptions,
    dev: torch.device,
    prog: Progress,
) -> tuple[Deformation, float, list[Deformation]]:
    """The full-resolution map ``A (x + u_phi(x))`` on the fixed ``grid``, the folding fraction of
    the network-grid map, and the level deformations with the affine composed in."""
    # sub-steps of under a second each on a CPU (a cancel is checked between them)
    prog(0.1, "folding")
    folding = _folding_of_composition(phi, affine, progress=lambda f, m: prog(0.1 + 0.3 * f, m))
    if affine is not None:
        levels = [compose_affine(affine, lv) for lv in levels]
    prog(0.5, "full-resolution field: slabs")
    deformation = full_field(phi, affine, grid, opts.runtime.slab_voxels, dev, progress=lambda f, m: prog(0.5 + 0.5 * f, m))
    return deformation, folding, levels


def _folding_of_composition(phi: Deformation, affine: np.ndarray | None, progress: ProgressFn | None = None) -> float:
    """The fraction of ``phi``'s grid where ``y(x) = A (x + u_phi(x))`` folds (``det J <= 0``).

    ``J = A_lin (I + grad u_phi)``, so ``det J = det(A_lin) det(I + grad u_phi)``: the sign of
    ``det(A_lin)`` and the Jacobian of ``phi`` decide, without composing the affine map in.
    """
    det = phi.jacobian_determinant(progress)
    if affine is not None and float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])) < 0:
        det = -det
    return float(folding_fraction(det)[0])


@contextlib.contextmanager
def _timed(stage: str, timings: dict[str, float], device: torch.device) -> Iterator[None]:
    """Record the seconds the ``with`` block takes, once ``device`` has finished, as ``timings[stage]``."""
    t0 = time.perf_counter()
    yield
    timings[stage] = _elapsed(t0, device)


def _lung_masks(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    opts: RegistrationOptions,
    prog: Progress,
    messages: list[str],
    memo: Memo = no_memo,
) -> tuple[sitk.Image | None, sitk.Image | None]:
    """The masks given, or automatic ones where needed: the fixed one for the crop box (or the mask
    term, kept in ``memo``), the moving one for the mask term. A scan without detectable lungs gets
    a message."""
    need_fixed = fixed_mask is None and (opts.grid.crop_to_lungs or opts.refinement.beta > 0)
    need_moving = moving_mask is None and opts.refinement.beta > 0
    if not (need_fixed or need_moving):
        return fixed_mask, moving_mask
    from ..preprocessing.lungmask import segment_lungs

    lm_opts = opts.lung_mask
    if need_fixed:
        try:
            fixed_mask = memo(("fixed lung mask", repr(lm_opts)), lambda: segment_lungs(fixed, lm_opts, progress=prog))
        except ValueError as exc:
            messages.append(f"no automatic fixed lung mask ({exc}); using the whole fixed field of view")
            prog(0.5, messages[-1])
    if need_moving:
        try:
            moving_mask = segment_lungs(moving, lm_opts, progress=prog)
        except ValueError as exc:
            messages.append(f"no automatic moving lung mask ({exc}); mask term off")
            prog(1.0, messages[-1])
    return fixed_mask, moving_mask


def _partial_moving_view(pp: PreprocessedPair):
    """``pp.moving_valid`` where the moving data miss part of the working grid, else None (the
    objective then needs no field-of-view weights)."""
    if pp.moving_valid is not None and bool((pp.moving_valid < 0.999).any()):
        return pp.moving_valid
    return None


SWAPPED_PASS = "network, images swapped"
"""The progress report of the network alone's second pass, and of its convolutions (``...: convolution k/n``)."""


def _network_alone_choice(
    phi: Deformation,
    net: "MultilevelNet",
    model_size: tuple[int, ...] | None,
    pp: PreprocessedPair,
    dev: torch.device,
    opts: RegistrationOptions,
    refine_opts,
    prog: Progress,
    messages: list[str],
) -> Deformation:
    """What the network alone returns: the network's ``phi``, unless no motion fits the pair better.

    One way, the shipped network moves scans that did not move by a few millimetres, so for
    small motions its bias can outweigh the motion. When the identity has the lower objective
    (:func:`~MLVIRNETLib.registration.refine.identity_if_better`) and ``opts.network.both_ways_fallback``
    is on (and the cascade ran one way), the cascade runs once more with the images swapped and
    :func:`~MLVIRNETLib.networks.cascade.symmetric_correction` averages the two directions, which
    cancels the bias; that is kept when it fits better than no motion, else the identity is.
    """
    factor = max(refine_opts.level_factors)
    if any(n % factor or n // factor < 3 for n in pp.grid.size):
        return phi
    valid = _partial_moving_view(pp)
    _, identity = identity_if_better(pp.fixed, pp.moving, pp.grid, phi, refine_opts, valid)
    if not identity:
        return phi
    rejected = "the network's deformation fitted the images worse than no motion"
    if opts.network.both_ways_fallback and not opts._network_symmetric:
        from ..networks.cascade import symmetric_correction

        prog.stage(0.35, 0.10, SWAPPED_PASS)
        backward, _ = _network_stage(net, model_size, pp.grid, pp.moving, pp.fixed, dev, opts, prog,
                                     [], SWAPPED_PASS)  # its notes were said by the first pass
        with torch.no_grad():
            both = symmetric_correction(phi, backward)
        chosen, identity = identity_if_better(pp.fixed, pp.moving, pp.grid, both, refine_opts, valid)
        if not identity:
            messages.append(f"{rejected}; kept the network run both ways (the images swapped too), which fitted better")
            return chosen
        rejected += " one way and both ways"
    messages.append(f"{rejected}; kept the identity")
    return Deformation.identity(pp.grid, device=dev)


def _network_stage(
    net: "MultilevelNet",
    model_size: tuple[int, ...] | None,
    grid: ImageGrid,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    dev: torch.device,
    opts: RegistrationOptions,
    prog: Progress,
    messages: list[str],
    label: str = "network",
    fixed_input: Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None = None,
) -> tuple[Deformation, list[Deformation]]:
    """The cascade on a preprocessed pair (``(1, 1, D, H, W)`` images on ``grid``, run at the model's
    own input size on the same box): ``phi`` and the composed deformation of every level, coarse
    to fine. Reports ``"{label}: convolution k/n"`` after every convolution. ``fixed_input(compute)``
    (a memo keyed to ``fixed``) keeps the fixed image at the model's size for the next moving image."""
    from ..networks.cascade import convolution_progress

    net_grid, net_fixed, net_moving = grid, fixed, moving
    if model_size is not None and tuple(model_size) != tuple(grid.size):
        net_grid = grid.resized(model_size)  # same box, the model's input size
        def resized_fixed() -> torch.Tensor:
            return resample_antialiased(fixed, grid, net_grid)

        net_fixed = fixed_input(resized_fixed) if fixed_input is not None else resized_fixed()
        net_moving = resample_antialiased(moving, grid, net_grid)
    with torch.inference_mode(), _autocast(dev, opts, messages), convolution_progress(net, prog, label):
        out = net(net_fixed, net_moving, net_grid, symmetric=opts._network_symmetric)
    phi = Deformation(out.deformation.grid, out.deformation.displacement.float().clone())
    levels = []
    for i in range(len(out.levels)):
        composed = out.composed(i)
        levels.append(Deformation(composed.grid, composed.displacement.float().clone()))
    return phi, levels
