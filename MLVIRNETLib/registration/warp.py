"""Full-resolution fields and warped images from a registration result, computed in z slabs
(bounded memory)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid, index_affine_terms
from ..core.progress import ProgressFn
from ..core.sampling import sample_on_grid
from ..preprocessing.pair import image_to_hu_tensor


def full_field(
    phi: Deformation,
    affine: np.ndarray | None,
    grid: ImageGrid,
    slab_voxels: int,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> Deformation:
    """``u(x) = A (x + u_phi(x)) - x`` at every voxel of ``grid``, computed in z slabs.

    With ``A = [L | t]``: ``u = L u_phi(x) + ((L - I) x + t)``; the second term is an affine
    function of the voxel index, built by broadcasting. ``progress(fraction, message)`` is called
    after every slab.
    """
    nx, ny, nz = grid.size
    out = torch.empty((1, 3, *grid.shape_zyx), dtype=torch.float32, device=device)
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
        if progress is not None:
            progress(z1 / nz, f"full-resolution field: slices {z1}/{nz}")
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
    mode: str = "bilinear",
    progress: ProgressFn | None = None,
) -> sitk.Image:
    """``M(y(x))`` on the deformation's grid, computed in z slabs (bounded memory).

    Args:
        moving: scalar image (any grid).
        deformation: fixed -> moving map, e.g. ``RegistrationResult.deformation``.
        slab_voxels: voxels per slab.
        padding_value: value outside ``moving``; ``None`` continues the border.
        pixel_type: SimpleITK pixel type of the output (default: the moving image's; integer
            types are rounded and clipped).
        mode: ``"bilinear"`` (trilinear) or ``"nearest"`` (label maps).
        progress: ``progress(fraction, message)`` after every slab (a
            :class:`~MLVIRNETLib.core.progress.Progress` also stops the work when cancelled).

    Returns:
        ``sitk.Image`` on ``deformation.grid``.
    """
    from ..io.images import cast_to_pixel_type, numpy_type_of

    m, m_grid = image_to_hu_tensor(moving, deformation.displacement.device)
    grid = deformation.grid
    nx, ny, nz = grid.size
    # each slab goes straight into the output's pixel type: no float copy of the whole output
    pixel_type = pixel_type if pixel_type is not None else moving.GetPixelID()
    out = np.empty(grid.shape_zyx, dtype=numpy_type_of(pixel_type))
    slab = max(1, int(slab_voxels) // max(nx * ny, 1))
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        sgrid = grid.cropped((0, 0, z0), (nx, ny, z1))
        offset = deformation.displacement[:, :, z0:z1]
        if padding_value is None:
            w = sample_on_grid(m, m_grid, sgrid, offset=offset, mode=mode)
        else:
            w = sample_on_grid(m - padding_value, m_grid, sgrid, offset=offset, mode=mode, padding_mode="zeros")
            w += padding_value
        out[z0:z1] = cast_to_pixel_type(w[0, 0].cpu().numpy(), pixel_type)
        if progress is not None:
            progress(z1 / nz, f"warped image: slices {z1}/{nz}")
    del m
    image = sitk.GetImageFromArray(out, isVector=False)
    grid.copy_to_sitk(image)
    return image

