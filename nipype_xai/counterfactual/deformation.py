"""Diffeomorphic deformations on a model grid, in torch: velocity -> displacement, warping, volume.

Conventions
-----------
* A field is a tensor ``(B, 3, X, Y, Z)``, component-first as in :mod:`nipype_xai.synth.warps`.
  In *voxel units* (what the simulator predicts and MONAI's layers take) component ``a`` moves
  along array axis ``a``; in *world units* it is a RAS vector in mm. ``affine`` (the grid's 4 x 4
  voxel-to-world matrix) converts one into the other: ``u_mm = A[:3, :3] @ u_voxel``.
* A displacement ``u`` stands for the point map ``phi(p) = p + u(p)``, and warping an image
  *pulls* it through ``phi``: ``warped(p) = image(p + u(p))`` (the semantics of ANTs' displacement
  fields and of :func:`nipype_xai.synth.warps.apply_displacement_field`).

Scaling and squaring (Arsigny et al. 2006) is MONAI's :class:`~monai.networks.blocks.DVF2DDF`,
and warping is MONAI's :class:`~monai.networks.blocks.Warp` (trilinear ``grid_sample`` with
``align_corners=True``: voxel centres on the grid's nodes). Both fit as they are; the one choice
is the padding while integrating: ``"border"`` reads the nearest node outside the grid, as the
numpy reference :func:`nipype_xai.synth.warps.integrate_velocity` does, where MONAI's default
``"zeros"`` would pull the displacement towards 0 at the edges. The log-Jacobian is written here
(MONAI has none for a displacement): finite differences, central inside and one-sided at the
borders, as :func:`nipype_xai.synth.warps.jacobian_determinant` computes them.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

__all__ = [
    "integrate_velocity",
    "jacobian_determinant",
    "log_jacobian_determinant",
    "to_voxel_units",
    "to_world_units",
    "warp_image",
]


def _monai_blocks():
    # MONAI says once per construction that it uses PyTorch's grid_sample rather than its compiled
    # extension: true and harmless here (the results are the same), so it is not passed on.
    from monai.networks.blocks import DVF2DDF, Warp

    return DVF2DDF, Warp


def _linear(affine: Optional[np.ndarray | torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if affine is None:
        return torch.eye(3, dtype=like.dtype, device=like.device)
    matrix = torch.as_tensor(np.asarray(affine, dtype=np.float64)[:3, :3])
    return matrix.to(dtype=like.dtype, device=like.device)


def _check_field(field: torch.Tensor, name: str) -> None:
    if field.ndim != 5 or field.shape[1] != 3:
        raise ValueError(f"{name}: expected a field of shape (B, 3, X, Y, Z), got "
                         f"{tuple(field.shape)}")


def to_world_units(field: torch.Tensor, affine: Optional[np.ndarray] = None) -> torch.Tensor:
    """A voxel-unit field as RAS mm vectors (``A[:3, :3] @ u``); ``affine`` None: 1 mm voxels."""
    _check_field(field, "field")
    return torch.einsum("ij,bj...->bi...", _linear(affine, field), field)


def to_voxel_units(field: torch.Tensor, affine: Optional[np.ndarray] = None) -> torch.Tensor:
    """A RAS mm field as voxel-unit vectors (``A[:3, :3]^-1 @ u``); ``affine`` None: 1 mm voxels."""
    _check_field(field, "field")
    return torch.einsum("ij,bj...->bi...", torch.linalg.inv(_linear(affine, field)), field)


def integrate_velocity(velocity: torch.Tensor, n_squarings: int = 7) -> torch.Tensor:
    """Displacement of ``exp(velocity)`` by scaling and squaring, in voxel units.

    Parameters
    ----------
    velocity
        Stationary velocity field ``(B, 3, X, Y, Z)``, voxel units.
    n_squarings
        The velocity is divided by ``2**n_squarings`` and the result composed with itself that
        many times (``u <- u + u o (id + u)``). Differentiable.

    Returns
    -------
    torch.Tensor
        ``(B, 3, X, Y, Z)``: ``exp(v)(p) = p + u(p)`` at every voxel, voxel units. The exponential
        of ``-velocity`` is its inverse.
    """
    _check_field(velocity, "velocity")
    DVF2DDF, _ = _monai_blocks()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        layer = DVF2DDF(num_steps=int(n_squarings), mode="bilinear", padding_mode="border")
    return layer(velocity)


def warp_image(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Pull ``image`` ``(B, C, X, Y, Z)`` through ``p -> p + u(p)`` (voxel units), trilinearly.

    Outside the image the value is 0 (the background of a skull-stripped, ``mask="nonzero"``
    normalised input). Differentiable in both arguments.
    """
    _check_field(displacement, "displacement")
    if image.ndim != 5 or image.shape[0] != displacement.shape[0] \
            or image.shape[2:] != displacement.shape[2:]:
        raise ValueError(f"image of shape {tuple(image.shape)} does not fit a displacement of "
                         f"shape {tuple(displacement.shape)}")
    _, Warp = _monai_blocks()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        layer = Warp(mode="bilinear", padding_mode="zeros")
    return layer(image, displacement)


def jacobian_determinant(displacement: torch.Tensor,
                         affine: Optional[np.ndarray] = None) -> torch.Tensor:
    """Jacobian determinant of ``p -> p + u(p)`` at every voxel, ``(B, X, Y, Z)``.

    Parameters
    ----------
    displacement
        ``(B, 3, X, Y, Z)`` RAS mm on the grid of ``affine`` (None: voxel units, 1 mm voxels).

    Notes
    -----
    Derivatives are taken along the array axes (central differences inside, one-sided at the
    borders, :func:`torch.gradient`) and carried to mm by the chain rule, as the numpy reference
    does. The determinant does not depend on the units: a field in voxel units with
    ``affine=None`` gives the same values as its mm form with the grid's affine.
    """
    _check_field(displacement, "displacement")
    to_voxel = torch.linalg.inv(_linear(affine, displacement))
    grads = [torch.gradient(displacement[:, c], dim=(1, 2, 3)) for c in range(3)]
    jac = [[None] * 3 for _ in range(3)]
    for c in range(3):
        for b in range(3):
            # d u_c / d x_b = sum_a (d u_c / d i_a)(d i_a / d x_b).
            column = (grads[c][0] * to_voxel[0, b] + grads[c][1] * to_voxel[1, b]
                      + grads[c][2] * to_voxel[2, b])
            jac[c][b] = column + 1.0 if b == c else column
    (a, b, c), (d, e, f), (g, h, i) = jac
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def log_jacobian_determinant(displacement: torch.Tensor,
                             affine: Optional[np.ndarray] = None) -> tuple[torch.Tensor, int]:
    """``log det`` of the Jacobian of ``p -> p + u(p)``, and the number of folded voxels.

    A voxel where the determinant is not positive (the discrete map folds there) has no
    logarithm; it gets the log of the smallest positive float32 (about -87) so that a map stays
    finite, and it is counted.

    Returns
    -------
    log_jacobian : torch.Tensor
        ``(B, X, Y, Z)``; > 0 where the map expands a neighbourhood, < 0 where it contracts it.
    n_folded : int
        Voxels (over the batch) with a determinant <= 0.
    """
    det = jacobian_determinant(displacement, affine)
    folded = det <= 0
    tiny = torch.finfo(torch.float32).tiny
    return torch.log(det.clamp_min(tiny)), int(folded.sum())
