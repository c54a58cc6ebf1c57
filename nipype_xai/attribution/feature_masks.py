"""Feature masks for the perturbation methods: supervoxel grids and atlas parcellations.

Perturbation methods that ablate groups of voxels (Shapley value sampling, KernelSHAP, LIME, atlas
occlusion) need one integer label per voxel. captum requires those labels to be consecutive
integers 0..n-1 and the mask to broadcast to the input; :func:`prepare_feature_mask` turns a user's
parcellation (numpy or torch, as loaded from a NIfTI file, where labels are often stored as floats)
into exactly that, and :func:`supervoxel_grid` is the fallback when no parcellation is given.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

GridLike = Union[int, Sequence[int]]
FeatureMaskLike = Union[np.ndarray, torch.Tensor]


def _grid_size(grid: GridLike) -> tuple[int, int, int]:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        sizes = (int(grid),) * 3
    else:
        sizes = tuple(int(g) for g in grid)
    if len(sizes) != 3 or any(g < 1 for g in sizes):
        raise ValueError(f"grid must be a positive int or three positive ints, got {grid!r}")
    return sizes  # type: ignore[return-value]


def supervoxel_grid(
    spatial_shape: Sequence[int], grid: GridLike = 8, device: Union[str, torch.device] = "cpu"
) -> torch.Tensor:
    """Label volume of cubic supervoxels: blocks of ``grid`` voxels along each axis.

    Parameters
    ----------
    spatial_shape
        (X, Y, Z) of the volume.
    grid
        Block edge in voxels, an int or one int per axis. Blocks at the far edges are smaller when
        the shape is not a multiple of ``grid``.
    device
        Device of the returned tensor.

    Returns
    -------
    torch.Tensor
        LongTensor (X, Y, Z) with labels 0..n-1, in C order of the blocks (the last axis varies
        fastest), n = prod(ceil(shape / grid)).
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"spatial_shape must be three positive ints, got {spatial_shape!r}")
    sizes = _grid_size(grid)
    n_blocks = [-(-s // g) for s, g in zip(shape, sizes)]
    axes = [torch.arange(s, device=device) // g for s, g in zip(shape, sizes)]
    bx, by, bz = torch.meshgrid(*axes, indexing="ij")
    return (bx * n_blocks[1] + by) * n_blocks[2] + bz


def _label_volume(feature_mask: FeatureMaskLike, x: torch.Tensor) -> torch.Tensor:
    """Check a parcellation against ``x``; return a LongTensor (1 or B, 1 or C, X, Y, Z).

    Labels keep their original values (so that label 0 can still be recognised as background).
    """
    if isinstance(feature_mask, np.ndarray):
        values = torch.from_numpy(np.ascontiguousarray(feature_mask))
    elif isinstance(feature_mask, torch.Tensor):
        values = feature_mask.detach()
    else:
        raise TypeError(
            "feature_mask must be a numpy array or a torch tensor, "
            f"got {type(feature_mask).__name__}"
        )
    batch, channels = x.shape[:2]
    spatial = tuple(x.shape[2:])
    if values.ndim == 3:
        values = values.reshape((1, 1) + tuple(values.shape))
    if (
        values.ndim != 5
        or tuple(values.shape[2:]) != spatial
        or values.shape[0] not in (1, batch)
        or values.shape[1] not in (1, channels)
    ):
        raise ValueError(
            f"feature_mask: expected shape {spatial}, (1, 1, *{spatial}) or "
            f"({batch}, 1, *{spatial}) for input of shape {tuple(x.shape)}, "
            f"got {tuple(feature_mask.shape)}"
        )
    if values.dtype == torch.bool:
        values = values.long()
    elif torch.is_floating_point(values):
        # NIfTI parcellations are usually read as floats (nibabel's get_fdata): accept them when
        # every value is a whole number, refuse anything else rather than truncating labels.
        if not bool(torch.isfinite(values).all()) or not bool((values == values.round()).all()):
            raise ValueError(
                "feature_mask: parcellation labels must be integers; got non-integer values "
                "(a probabilistic atlas or a resampled label image with linear interpolation?)"
            )
        values = values.long()
    elif torch.is_complex(values):
        raise ValueError(f"feature_mask: parcellation labels must be integers, got {values.dtype}")
    else:
        values = values.long()
    if values.numel() and int(values.min()) < 0:
        raise ValueError(
            "feature_mask: parcellation labels must be non-negative, "
            f"got minimum {int(values.min())}"
        )
    return values.to(x.device)


def relabel_consecutive(labels: torch.Tensor) -> torch.Tensor:
    """Map the labels present in ``labels`` to 0..n-1 in sorted order (captum needs this)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape)


def prepare_feature_mask(feature_mask: FeatureMaskLike, x: torch.Tensor) -> torch.Tensor:
    """A parcellation as captum needs it: consecutive labels, broadcast to ``x``'s channels.

    Parameters
    ----------
    feature_mask
        Integer label volume, numpy or torch, of shape (X, Y, Z), (1, 1, X, Y, Z) or
        (B, 1, X, Y, Z) (one parcellation per sample); (1, C, X, Y, Z) / (B, C, X, Y, Z) give each
        channel its own labels. Floating-point arrays are accepted when every value is a whole
        number (labels read from NIfTI files are floats). Labels must be non-negative.
    x
        The input batch (B, C, X, Y, Z) the mask is for.

    Returns
    -------
    torch.Tensor
        LongTensor (1 or B, C, X, Y, Z) on ``x``'s device with labels 0..n-1 (the sorted original
        labels, so an original label 0 stays 0). A voxel's label is shared by all its channels: the
        channels of a voxel are perturbed together.

    Raises
    ------
    ValueError
        On a shape that does not match ``x``, non-integer or negative labels.
    """
    labels = relabel_consecutive(_label_volume(feature_mask, x))
    return labels.expand(labels.shape[0], x.shape[1], *labels.shape[2:]).contiguous()
