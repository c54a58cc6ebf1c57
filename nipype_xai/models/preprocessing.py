"""From an image to the model's input grid and back, with affines kept (nilearn resampling only).

The model grid is the spec's shape at the spec's resolution and orientation, centred on the centre of
the image's field of view: for an image already in the spec's space this is a centre crop or pad,
and world coordinates are preserved, so a map computed on the model grid can be put back on the
image's own grid by resampling (not by reshaping arrays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import axcodes2ornt
from nilearn.image import resample_img

from .spec import ModelSpec

__all__ = ["ModelGrid", "from_model_grid", "model_grid_for", "normalize_intensity", "to_model_grid"]


@dataclass(frozen=True)
class ModelGrid:
    """The voxel grid the model sees: a 4×4 voxel-to-world affine and a 3D shape."""

    affine: np.ndarray
    shape: tuple[int, int, int]

    def to_image(self, data: np.ndarray) -> nib.Nifti1Image:
        """``data`` on this grid as a float32 NIfTI image."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape != self.shape:
            raise ValueError(f"expected an array of shape {self.shape}, got {data.shape}")
        return nib.Nifti1Image(data, self.affine)


def model_grid_for(img: nib.spatialimages.SpatialImage, spec: ModelSpec) -> ModelGrid:
    """The model grid for ``img``: the spec's grid centred on the image's field-of-view centre.

    When the image's voxel axes already match the spec's (same voxel size and orientation), the grid
    origin is snapped to the image's voxel grid, so going to the model grid is an exact crop / pad
    with no interpolation.
    """
    shape = tuple(int(n) for n in spec.input.shape)
    zooms = np.asarray(spec.input.resolution_mm, dtype=float)
    # Linear part: axis i of the model grid points along world axis ornt[i, 0] with sign ornt[i, 1]
    # (RAS+ world, as NIfTI's scanner / template coordinates are).
    ornt = axcodes2ornt(tuple(spec.input.orientation))
    linear = np.zeros((3, 3))
    for axis, (world_axis, sign) in enumerate(ornt):
        linear[int(world_axis), axis] = sign * zooms[axis]

    img_shape = np.asarray(img.shape[:3], dtype=float)
    fov_centre = nib.affines.apply_affine(img.affine, (img_shape - 1) / 2)
    translation = fov_centre - linear @ ((np.asarray(shape, dtype=float) - 1) / 2)

    if np.allclose(img.affine[:3, :3], linear, atol=1e-4 * zooms.min()):
        # Same axes: move the origin onto an image voxel centre (a half-voxel shift would blur the
        # whole volume through linear interpolation for nothing).
        origin_voxel = np.linalg.solve(img.affine[:3, :3], translation - img.affine[:3, 3])
        translation = img.affine[:3, :3] @ np.round(origin_voxel) + img.affine[:3, 3]

    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = translation
    return ModelGrid(affine=affine, shape=shape)


def normalize_intensity(data: np.ndarray, normalization: str, mask: str | None = None) -> np.ndarray:
    """Normalise intensities as a spec asks.

    Parameters
    ----------
    data
        The volume on the model grid.
    normalization
        ``"zscore"`` ((x − mean) / std), ``"minmax"`` ((x − min) / (max − min)) or ``"none"``.
    mask
        ``"nonzero"``: statistics over nonzero voxels, and zero voxels stay zero (background of a
        skull-stripped image, padding); ``None``: statistics and normalisation over every voxel.

    Raises
    ------
    ValueError
        No voxel to compute the statistics over (an all-zero volume with ``mask="nonzero"``).
    """
    data = np.asarray(data, dtype=np.float32)
    if normalization == "none":
        return data.copy()
    select = data != 0 if mask == "nonzero" else np.ones(data.shape, dtype=bool)
    values = data[select].astype(np.float64)
    if values.size == 0:
        raise ValueError("no nonzero voxel inside the model's field of view to normalise over")
    if normalization == "zscore":
        offset, scale = values.mean(), values.std()
    elif normalization == "minmax":
        offset, scale = values.min(), values.max() - values.min()
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    # A constant volume has no spread: only the offset is removed rather than dividing by zero.
    scale = scale if scale > 0 else 1.0
    out = np.zeros_like(data)
    out[select] = ((values - offset) / scale).astype(np.float32)
    return out


def to_model_grid(
    img: nib.spatialimages.SpatialImage, spec: ModelSpec
) -> tuple[torch.Tensor, ModelGrid]:
    """Resample a 3D image (assumed to be in the spec's space) to the model grid and normalise it.

    Parameters
    ----------
    img
        A 3D image, e.g. from :func:`nipype_xai.images.load_volume`.
    spec
        The model spec: resolution, shape, orientation and normalisation of the input.

    Returns
    -------
    x : torch.Tensor
        float32, (1, C, X, Y, Z) with C = ``spec.input.channels`` (the volume repeated per channel).
    grid : ModelGrid
        The grid of ``x``, for :func:`from_model_grid`.
    """
    if len(img.shape) != 3:
        raise ValueError(f"expected a 3D image, got shape {img.shape}")
    grid = model_grid_for(img, spec)
    # Linear interpolation: cubic splines ring at the brain edge and would make up intensities the
    # image does not have. Outside the image's field of view the grid is padded with 0.
    resampled = resample_img(
        img,
        target_affine=grid.affine,
        target_shape=grid.shape,
        interpolation="linear",
        fill_value=0.0,
        force_resample=True,
        copy_header=True,
    )
    data = normalize_intensity(
        np.asarray(resampled.get_fdata(dtype=np.float32)),
        spec.input.normalization,
        spec.input.mask,
    )
    x = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    if spec.input.channels > 1:
        x = x.repeat(1, spec.input.channels, 1, 1, 1)
    return x, grid


def from_model_grid(
    map_array: np.ndarray | torch.Tensor,
    grid: ModelGrid,
    reference_img: nib.spatialimages.SpatialImage,
    interpolation: Literal["linear", "nearest", "continuous"] = "linear",
) -> nib.Nifti1Image:
    """Put a map computed on the model grid back on ``reference_img``'s grid.

    Parameters
    ----------
    map_array
        (X, Y, Z) array on ``grid`` (a (1, 1, X, Y, Z) or (1, X, Y, Z) tensor is squeezed).
    grid
        The model grid returned by :func:`to_model_grid`.
    reference_img
        The image whose grid (affine and shape) the output takes.
    interpolation
        ``"linear"`` for maps, ``"nearest"`` for masks and labels.

    Returns
    -------
    nibabel.Nifti1Image
        float32 map with the reference image's affine and shape; 0 where the model grid does not
        cover the reference grid.
    """
    if isinstance(map_array, torch.Tensor):
        map_array = map_array.detach().cpu().numpy()
    data = np.asarray(map_array, dtype=np.float32)
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    source = grid.to_image(data)
    # Target given as affine + shape rather than resample_to_img(reference_img): the reference's
    # data need not be read, and its header's scaling / intent must not leak onto the map.
    resampled = resample_img(
        source,
        target_affine=reference_img.affine,
        target_shape=tuple(int(n) for n in reference_img.shape[:3]),
        interpolation=interpolation,
        fill_value=0.0,
        clip=False,
        force_resample=True,
        copy_header=True,
    )
    out_data = np.asarray(resampled.get_fdata(dtype=np.float32))
    # Only a NIfTI-1 header carries over as is (Nifti2Image subclasses Nifti1Image).
    header = reference_img.header.copy() if type(reference_img) is nib.Nifti1Image else None
    out = nib.Nifti1Image(out_data, reference_img.affine, header=header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    out.header.set_intent("none")
    out.header["cal_min"] = 0
    out.header["cal_max"] = 0
    return out
