"""The one high-level registration API of MLVIRNET (CLI, Slicer logic, validation, evaluation).

:func:`register` runs, in order (each stage timed in ``RegistrationResult.timings``):

``lung_mask``
    the fixed lung mask for the crop box (computed with :func:`MLVIRNETLib.lungmask.segment_lungs`
    on a 3 mm working grid when ``crop_to_lungs`` and no mask was given); the moving mask only
    when the mask term is on (``beta > 0``).
``affine``
    :func:`MLVIRNETLib.affine.affine_register`: ``A`` with ``x_moving = A x_fixed`` (skipped with
    ``affine=False``).
``preprocess``
    :func:`MLVIRNETLib.preprocessing.preprocess_pair`: HU window ``[-1000, 300] -> [0, 1]``, crop to
    the fixed lung box + margin, anti-aliased resampling to the network grid; the moving image is
    sampled at ``A x``.
``network``
    the mlVIRNET cascade (inference mode; bf16 autocast on CPU if ``use_bf16``, fp16 AMP on CUDA)
    -> ``phi`` on the network grid.
``refine``
    :func:`MLVIRNETLib.refine.refine`: instance optimisation of ``phi`` (or of the identity when
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from .affine import AffineOptions, affine_register, compose_affine
from .deformation import Deformation
from .devices import resolve_device, synchronize
from .geometry import ImageGrid, index_affine_terms, sample_on_grid
from .preprocessing import (
    HU_WINDOW,
    PreprocessOptions,
    image_to_hu_tensor,
    mask_to_tensor,
    preprocess_pair,
    resample_antialiased,
)
from .refine import RefineOptions, RegistrationCancelled, refine

if TYPE_CHECKING:
    from .networks import MultilevelNet

__all__ = [
    "RegistrationOptions",
    "RegistrationResult",
    "RegistrationCancelled",
    "register",
    "validate_pair",
    "warp_image",
    "cpu_bf16_supported",
    "NETWORK_PRECISIONS",
]

NETWORK_PRECISIONS = ("auto", "float32", "bfloat16", "float16")

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class RegistrationOptions:
    """Settings of :func:`register` (defaults chosen by measurement, see ``docs/registration.md``).

    Attributes:
        network_size: grid ``(nx, ny, nz)`` of preprocessing and refinement over the crop box. A
            model runs at its own input size on the same box (resampled from this grid; with
            ``refine_iterations=0`` the images are preprocessed straight to the model's size).
        refine_iterations: L-BFGS iterations per refinement level (int, or one per level);
            ``0`` = network only.
        refine_levels: refinement levels as downsampling factors of the network grid, coarse to fine.
        refine_optimizer: ``"lbfgs"`` or ``"adam"``.
        affine: run the affine pre-alignment.
        crop_to_lungs: crop the fixed field of view to the lung box (+ ``crop_margin_mm``).
        crop_margin_mm: margin around the lung box, mm.
        alpha: curvature weight of the refinement, mm^2.
        beta: mask-alignment weight of the refinement (``> 0`` computes missing moving masks).
        ngf_eps: NGF edge parameter, normalised intensity per mm.
        use_bf16: bf16 autocast for the network on CPU (only where the CPU supports bf16 natively,
            see :func:`cpu_bf16_supported`; otherwise a message says it was ignored).
        use_amp: fp16 autocast for the network on CUDA.
        network_precision: ``"auto"`` (what ``use_bf16`` and ``use_amp`` say), or force the
            network's autocast dtype on any device: ``"float32"`` (none), ``"bfloat16"`` or
            ``"float16"``. A forced reduced precision runs even where it is emulated (far slower
            on CPUs without native support; used to measure its accuracy, e.g. CUDA's fp16 on a CPU).
        hu_window: intensity window mapped to ``[0, 1]``.
        lung_mask_spacing_mm: working voxel size of the automatic lung mask.
        affine_options: settings of the affine stage.
        slab_voxels: voxels per slab when evaluating the full-resolution field.
        num_threads: torch CPU threads during the call (restored afterwards); ``None`` leaves them.
    """

    network_size: tuple[int, int, int] = (160, 160, 160)
    refine_iterations: int | Sequence[int] = (150, 60)
    refine_levels: tuple[int, ...] = (4, 2)
    refine_optimizer: str = "lbfgs"
    affine: bool = True
    crop_to_lungs: bool = True
    crop_margin_mm: float = 10.0
    alpha: float = 100.0
    beta: float = 0.0
    ngf_eps: float = 0.003
    use_bf16: bool = False
    use_amp: bool = True
    network_precision: str = "auto"
    hu_window: tuple[float, float] = HU_WINDOW
    lung_mask_spacing_mm: float = 3.0
    affine_options: AffineOptions = field(default_factory=AffineOptions)
    slab_voxels: int = 4_000_000
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.preprocess_options()  # validates size, window, margin
        self.refine_options()  # validates iterations, levels, weights
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.network_precision not in NETWORK_PRECISIONS:
            raise ValueError(f"network_precision must be one of {NETWORK_PRECISIONS}, got {self.network_precision!r}")
        if int(self.slab_voxels) < 1:
            raise ValueError(f"slab_voxels must be >= 1, got {self.slab_voxels}")
        factor = max(self.refine_options().level_factors)
        if sum(self.refine_options().iterations_per_level()) > 0 and any(int(n) % factor for n in self.network_size):
            raise ValueError(
                f"network_size {tuple(self.network_size)} must be divisible by the largest refinement level "
                f"factor {factor} (refine_levels {tuple(self.refine_levels)})"
            )

    def preprocess_options(self, network_size: Sequence[int] | None = None) -> PreprocessOptions:
        return PreprocessOptions(
            network_size=tuple(network_size if network_size is not None else self.network_size),  # type: ignore[arg-type]
            hu_window=self.hu_window,
            crop_to_lungs=self.crop_to_lungs,
            crop_margin_mm=self.crop_margin_mm,
        )

    def refine_options(self) -> RefineOptions:
        return RefineOptions(
            iterations=self.refine_iterations,
            level_factors=self.refine_levels,
            alpha=self.alpha,
            beta=self.beta,
            ngf_eps=self.ngf_eps,
            optimizer=self.refine_optimizer,
        )


@dataclass
class RegistrationResult:
    """Output of :func:`register`.

    Attributes:
        deformation: fixed -> moving map on the full-resolution fixed grid (full field of view),
            displacement ``(1, 3, D, H, W)`` LPS mm, ``x_moving = x_fixed + u(x_fixed)``.
        level_deformations: the full map (affine included) after each network level and each
            refinement level, coarse to fine, each on its own grid inside the crop box.
        affine: the 4x4 LPS pre-alignment (``x_moving = A x_fixed``) or ``None``.
        timings: seconds per stage (``lung_mask``, ``affine``, ``preprocess``, ``network``,
            ``refine``, ``field``) and ``total``.
        folding_fraction: fraction of network-grid voxels with ``det J <= 0`` of the final map.
        model_used: path of the model file (or ``"<in-memory>"``), ``None`` without a network.
        messages: notes for the user (missing default model, fallbacks).
        network_grid: the grid the network and the refinement worked on.
    """

    deformation: Deformation
    level_deformations: list[Deformation] = field(default_factory=list)
    affine: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    folding_fraction: float = 0.0
    model_used: str | None = None
    messages: list[str] = field(default_factory=list)
    network_grid: ImageGrid | None = None


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _check_image(image: sitk.Image, name: str) -> None:
    if not isinstance(image, sitk.Image):
        raise ValueError(f"{name} image must be a SimpleITK.Image, got {type(image).__name__}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name} image must be scalar, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} image contains {bad} NaN or infinite voxels (size {image.GetSize()})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise ValueError(f"{name} image is constant ({lo:g} everywhere, size {image.GetSize()}): nothing to register")
    if min(image.GetSize()) < 4:
        raise ValueError(f"{name} image is too small to register: size {image.GetSize()} (need >= 4 voxels per axis)")


def _check_mask(mask: sitk.Image | None, image: sitk.Image, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, sitk.Image):
        raise ValueError(f"{name} must be a SimpleITK.Image, got {type(mask).__name__}")
    if mask.GetDimension() != 3:
        raise ValueError(f"{name} is {mask.GetDimension()}-D (size {mask.GetSize()}); a 3-D mask is required")
    g_mask = ImageGrid.from_sitk(mask)
    g_image = ImageGrid.from_sitk(image)
    if not g_mask.is_close(g_image, tol_mm=1e-3 * min(g_image.spacing)):
        raise ValueError(f"{name} is on a different grid than its image: mask {g_mask.describe()}, image {g_image.describe()}")
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError(f"{name} is empty (no nonzero voxel)")


def validate_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> None:
    """Raise one ``ValueError`` naming the problem unless the inputs can be registered.

    Checks: both are 3-D scalar images of at least 4 voxels per axis, neither is constant or
    contains NaN/inf, and each mask (if given) is a non-empty 3-D image on its image's grid.
    """
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if not isinstance(image, sitk.Image):
            raise ValueError(f"{name} image must be a SimpleITK.Image, got {type(image).__name__}")
    if fixed.GetDimension() != moving.GetDimension() or fixed.GetDimension() != 3:
        raise ValueError(
            f"fixed and moving images must both be 3-D, got {fixed.GetDimension()}-D (size {fixed.GetSize()}) and "
            f"{moving.GetDimension()}-D (size {moving.GetSize()})"
        )
    _check_image(fixed, "fixed")
    _check_image(moving, "moving")
    _check_mask(fixed_mask, fixed, "fixed mask")
    _check_mask(moving_mask, moving, "moving mask")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class _Progress:
    """Maps stage-local progress to the overall fraction and forwards it (never goes backwards)."""

    def __init__(self, fn: ProgressFn | None, cancel: CancelFn | None) -> None:
        self.fn = fn
        self.cancel = cancel
        self.start = 0.0
        self.width = 0.0
        self.last = 0.0

    def stage(self, start: float, width: float, message: str) -> None:
        self.check_cancel()
        self.start, self.width = start, width
        self(0.0, message)

    def __call__(self, fraction: float, message: str) -> None:
        value = min(1.0, max(self.last, self.start + self.width * min(max(fraction, 0.0), 1.0)))
        self.last = value
        if self.fn is not None:
            self.fn(value, message)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise RegistrationCancelled("registration cancelled")


def _resolve_model(model, device: torch.device, messages: list[str]):
    """``(net or None, label or None, input_size or None)`` for the ``model`` argument of :func:`register`."""
    from .networks import MultilevelNet
    from .paths import default_model_path

    if model is None:
        return None, None, None
    if isinstance(model, MultilevelNet):
        return model.to(device).eval(), "<in-memory>", None
    if isinstance(model, (str, Path)):
        from .model_io import load_model

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

    Without it, bf16 autocast is emulated and far slower than float32 (measured: > 60 times
    slower for the default network on a 2-core AVX2 EPYC), so :func:`register` falls back to float32.
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
    if opts.network_precision == "float32":
        return contextlib.nullcontext()
    if opts.network_precision in ("bfloat16", "float16"):
        return torch.autocast(device.type, dtype=getattr(torch, opts.network_precision))
    if device.type == "cpu" and opts.use_bf16:
        if not cpu_bf16_supported():
            messages.append("use_bf16 ignored: this CPU has no native bf16 support; the network runs in float32")
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type == "cuda" and opts.use_amp:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _full_field(
    phi: Deformation, affine: np.ndarray | None, grid: ImageGrid, slab_voxels: int, device: torch.device
) -> Deformation:
    """``u(x) = A (x + u_phi(x)) - x`` at every voxel of ``grid``, computed in z slabs.

    With ``A = [L | t]``: ``u = L u_phi(x) + ((L - I) x + t)``; the second term is an affine
    function of the voxel index, built by broadcasting.
    """
    nx, ny, nz = grid.size
    out = torch.empty((1, 3, nz, ny, nx), dtype=torch.float32, device=device)
    slab = max(1, int(slab_voxels) // max(nx * ny, 1))
    u_phi = phi.displacement.to(device=device, dtype=torch.float32)
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        sgrid = grid.cropped((0, 0, z0), (nx, ny, z1))
        u = sample_on_grid(u_phi, phi.grid, sgrid)[0]  # (3, d, h, w), border continuation
        if affine is not None:
            lin = torch.as_tensor(affine[:3, :3], dtype=torch.float32, device=device)
            u = torch.einsum("ck,k...->c...", lin, u)
            u += _affine_of_index((affine - np.eye(4)) @ sgrid.index_to_world_matrix(), sgrid, device)
        out[0, :, z0:z1] = u
    return Deformation(grid, out)


def _affine_of_index(matrix: np.ndarray, grid: ImageGrid, device: torch.device) -> torch.Tensor:
    """``matrix[:3, :3] @ (i, j, k) + matrix[:3, 3]`` at every voxel, ``(3, D, H, W)`` float32, by broadcasting."""
    k, j, i = index_affine_terms(matrix, grid.size, device)
    return ((k.float() + j.float()) + i.float()).movedim(-1, 0)


def warp_image(
    moving: sitk.Image,
    deformation: Deformation,
    slab_voxels: int = 4_000_000,
    padding_value: float | None = None,
    pixel_type: int | None = None,
) -> sitk.Image:
    """``M(y(x))`` on the deformation's grid, computed in z slabs (bounded memory).

    Args:
        moving: scalar image (any grid).
        deformation: fixed -> moving map, e.g. ``RegistrationResult.deformation``.
        slab_voxels: voxels per slab.
        padding_value: value outside ``moving``; ``None`` continues the border.
        pixel_type: SimpleITK pixel type of the output (default: the moving image's; integer
            types are rounded and clipped).

    Returns:
        ``sitk.Image`` on ``deformation.grid``.
    """
    from .io.images import tensor_to_image

    m, m_grid = image_to_hu_tensor(moving, deformation.displacement.device)
    grid = deformation.grid
    nx, ny, nz = grid.size
    out = torch.empty((1, 1, nz, ny, nx), dtype=torch.float32)
    slab = max(1, int(slab_voxels) // max(nx * ny, 1))
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        sgrid = grid.cropped((0, 0, z0), (nx, ny, z1))
        offset = deformation.displacement[:, :, z0:z1]
        if padding_value is None:
            w = sample_on_grid(m, m_grid, sgrid, offset=offset)
        else:
            w = sample_on_grid(m - padding_value, m_grid, sgrid, offset=offset, padding_mode="zeros") + padding_value
        out[:, :, z0:z1] = w.cpu()
    return tensor_to_image(out, grid, pixel_type=pixel_type if pixel_type is not None else moving.GetPixelID())


# ----------------------------------------------------------------------------------------------
# the registration
# ----------------------------------------------------------------------------------------------
def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    model: "MultilevelNet | str | Path | None" = "default",
    device: str | torch.device = "auto",
    options: RegistrationOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (CT in HU); see the module docstring for the stages.

    Args:
        fixed, moving: 3-D scalar CT images in HU, any geometry (grids may differ).
        fixed_mask, moving_mask: optional lung masks (nonzero = lung) on the grid of their image.
        model: a ``MultilevelNet``, a model file path, ``"default"`` (the shipped model; when it is
            not installed a message says so and refinement alone registers) or ``None`` (no network).
            An in-memory net runs in eval mode on ``device`` and is returned to its own mode and
            device afterwards.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        options: :class:`RegistrationOptions`.
        progress: called with ``(fraction in [0, 1], message)``.
        cancel: polled often; returning True raises :class:`RegistrationCancelled`.

    Returns:
        :class:`RegistrationResult`.

    Raises:
        ValueError: bad inputs (see :func:`validate_pair`), a CUDA device without a GPU, an
            unreadable model.
        FileNotFoundError: an explicit model path that does not exist.
        RegistrationCancelled: ``cancel()`` returned True.
    """
    opts = options if options is not None else RegistrationOptions()
    t_start = time.perf_counter()
    validate_pair(fixed, moving, fixed_mask, moving_mask)
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    if opts.num_threads is not None:
        torch.set_num_threads(int(opts.num_threads))
    # an in-memory model runs in eval mode on ``dev``; the caller gets it back as it was
    restore = _ModelState.of(model)
    try:
        return _register(fixed, moving, fixed_mask, moving_mask, model, dev, opts, _Progress(progress, cancel), t_start)
    finally:
        if opts.num_threads is not None:
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
    prog: _Progress,
    t_start: float,
) -> RegistrationResult:
    messages: list[str] = []
    timings: dict[str, float] = {}
    net, model_label, model_size = _resolve_model(model, dev, messages)
    for msg in messages:
        prog(0.0, msg)
    refine_opts = opts.refine_options()
    n_refine = sum(refine_opts.iterations_per_level())
    # the grid of preprocessing and refinement: network_size; a model runs at its own input size
    # (its inputs are resampled from that grid), and without refinement the images are
    # preprocessed straight to the model's size
    network_size = tuple(opts.network_size)
    if model_size is not None and n_refine == 0:
        network_size = tuple(model_size)
    if net is None and n_refine == 0:
        messages.append("no network and refine_iterations=0: the result is the affine pre-alignment only")

    # -- lung masks ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    prog.stage(0.0, 0.05, "lung masks")
    need_fixed = fixed_mask is None and (opts.crop_to_lungs or opts.beta > 0)
    need_moving = moving_mask is None and opts.beta > 0
    if need_fixed or need_moving:
        from .lungmask import LungMaskOptions, segment_lungs

        lm_opts = LungMaskOptions(working_spacing_mm=opts.lung_mask_spacing_mm)
        if need_fixed:
            try:
                fixed_mask = segment_lungs(fixed, lm_opts)
            except ValueError as exc:
                messages.append(f"no automatic fixed lung mask ({exc}); using the whole fixed field of view")
                prog(0.5, messages[-1])
        if need_moving:
            try:
                moving_mask = segment_lungs(moving, lm_opts)
            except ValueError as exc:
                messages.append(f"no automatic moving lung mask ({exc}); mask term off")
                prog(1.0, messages[-1])
    timings["lung_mask"] = _elapsed(t0, dev)

    f_hu, f_grid = image_to_hu_tensor(fixed, dev)
    m_hu, m_grid = image_to_hu_tensor(moving, dev)
    f_mask_t = mask_to_tensor(fixed_mask, f_grid, "fixed mask").to(dev) if fixed_mask is not None else None
    m_mask_t = mask_to_tensor(moving_mask, m_grid, "moving mask").to(dev) if moving_mask is not None else None

    # -- affine ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    affine: np.ndarray | None = None
    if opts.affine:
        prog.stage(0.05, 0.15, "affine pre-alignment")
        affine = affine_register(
            f_hu, f_grid, m_hu, m_grid, f_mask_t, m_mask_t, opts.affine_options, progress=prog, cancel=prog.cancel
        )
    timings["affine"] = _elapsed(t0, dev)

    # -- preprocessing -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    prog.stage(0.20, 0.05, "preprocessing")
    pp = preprocess_pair(
        (f_hu, f_grid), (m_hu, m_grid), f_mask_t, m_mask_t if opts.beta > 0 else None,
        opts.preprocess_options(network_size), affine=affine, device=dev,
    )
    del m_hu
    timings["preprocess"] = _elapsed(t0, dev)

    # -- network -----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    phi: Deformation | None = None
    levels: list[Deformation] = []
    if net is not None:
        prog.stage(0.25, 0.10, "network")
        net_grid, net_fixed, net_moving = pp.grid, pp.fixed, pp.moving
        if model_size is not None and tuple(model_size) != tuple(pp.grid.size):
            net_grid = pp.grid.resized(model_size)  # same box, the model's input size
            net_fixed = resample_antialiased(pp.fixed, pp.grid, net_grid)
            net_moving = resample_antialiased(pp.moving, pp.grid, net_grid)
        with torch.inference_mode(), _autocast(dev, opts, messages):
            out = net(net_fixed, net_moving, net_grid)
        phi = Deformation(out.deformation.grid, out.deformation.displacement.float().clone())
        for i in range(len(out.levels)):
            composed = out.composed(i)
            levels.append(Deformation(composed.grid, composed.displacement.float().clone()))
        del out
    timings["network"] = _elapsed(t0, dev)

    # -- refinement --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if n_refine > 0:
        prog.stage(0.35, 0.55, "refinement")
        r = refine(
            pp.fixed, pp.moving, pp.grid, initial=phi, options=refine_opts,
            fixed_mask=pp.fixed_mask, moving_mask=pp.moving_mask, progress=prog, cancel=prog.cancel,
            moving_valid=pp.moving_valid if pp.moving_valid is not None and bool((pp.moving_valid < 0.999).any()) else None,
        )
        phi = r.deformation
        levels.extend(r.levels)
    if phi is None:
        phi = Deformation.identity(pp.grid, device=dev)
    timings["refine"] = _elapsed(t0, dev)

    # -- full-resolution field -----------------------------------------------------------------------
    t0 = time.perf_counter()
    prog.stage(0.90, 0.10, "full-resolution field")
    total_net = compose_affine(affine, phi) if affine is not None else phi
    folding = float(total_net.folding_fraction()[0])
    if affine is not None:
        levels = [compose_affine(affine, lv) for lv in levels]
    deformation = _full_field(phi, affine, f_grid, opts.slab_voxels, dev)
    timings["field"] = _elapsed(t0, dev)
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
        network_grid=pp.grid,
    )
