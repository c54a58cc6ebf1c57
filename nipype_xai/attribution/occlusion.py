"""Occlusion methods through captum: a sliding window, and one atlas parcel at a time.

Batching, targets and chunking as in :mod:`._captum`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from captum.attr import FeatureAblation, Occlusion
import torch
from torch import nn

from ._captum import (
    _attribute_in_chunks,
    _copies_per_sample,
    _feature_mask_or_grid,
    _forward_function,
    _mask_rows,
    _positive_int,
)
from .feature_masks import FeatureMaskLike, GridLike, _label_volume
from .registry import register_method


WindowLike = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Occlusion
# --------------------------------------------------------------------------------------------


def _triple(value: WindowLike, name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} must be an int or three ints, got {value!r}")
    return tuple(_positive_int(v, name) for v in values)  # type: ignore[return-value]


@register_method(
    "occlusion",
    row=17,
    description=(
        "drop in y_t when a 3D window (default 8^3 voxels, stride = window) is set to 0, "
        "given to every voxel of the window (captum Occlusion)"
    ),
    reference=(
        "Zeiler & Fergus (2014). Visualizing and understanding convolutional networks. ECCV."
    ),
)
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    window: WindowLike = 8,
    stride: Optional[WindowLike] = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Sliding-window occlusion with a zero baseline (Zeiler & Fergus, 2014), via captum.

    Each window position is set to 0 in all channels at once and the drop y_t(x) - y_t(x
    occluded) is given to every voxel of the window; a voxel covered by several windows
    (stride < window) gets the mean of their drops. With the default stride = window every voxel
    lies in exactly one window, so the map is piecewise constant and its sum is the window's drop
    times its voxel count, not the total drop. Windows at the far edges are cropped, so every
    voxel is covered even when the shape is not a multiple of the stride.

    Parameters
    ----------
    model, x, target
        As every registered method.
    window
        Window edge in voxels, int or one per axis; clipped to the volume's shape.
    stride
        Step between windows, int or one per axis; ``None`` means ``window``. Must not exceed the
        window (voxels would never be occluded).
    batch_size
        Largest number of occluded copies per forward pass.

    Returns
    -------
    torch.Tensor
        Map of x's shape, equal across channels.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    n_samples, channels, *spatial = x.shape
    window3 = tuple(min(w, s) for w, s in zip(_triple(window, "window"), spatial))
    stride3 = window3 if stride is None else _triple(stride, "stride")
    for w, st, s in zip(window3, stride3, spatial):
        if st > w and w < s:
            raise ValueError(
                f"occlusion: stride {stride3} larger than window {window3} would leave voxels "
                "never occluded"
            )
    return _attribute_in_chunks(
        Occlusion(_forward_function(model)), x, target, min(n_samples, batch_size),
        lambda rows: {"sliding_window_shapes": (channels,) + window3,
                      "strides": (1,) + stride3,
                      "perturbations_per_eval": _copies_per_sample(batch_size, rows)},
    )


# --------------------------------------------------------------------------------------------
# Atlas occlusion
# --------------------------------------------------------------------------------------------


@register_method(
    "atlas_occlusion",
    row=22,
    description=(
        "drop in y_t when one parcel of a parcellation is set to 0, given to every voxel of the "
        "parcel; supervoxel grid when no parcellation is given (captum FeatureAblation)"
    ),
    reference="Siegel et al. (2025), atlas-based occlusion of brain regions (SPEC §3).",
)
def atlas_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike] = None,
    grid: GridLike = 8,
    ignore_background: bool = False,
    batch_size: int = 16,
) -> torch.Tensor:
    """Occlude one atlas parcel at a time (Siegel et al., 2025), via captum's FeatureAblation.

    For each parcel p, every voxel of p (all channels) is set to 0 and y_t(x) - y_t(x without
    p) is given to every voxel of p. One forward pass per parcel and sample.

    Parameters
    ----------
    model, x, target
        As every registered method.
    feature_mask
        The parcellation (numpy or torch integer labels, shapes as
        :func:`~nipype_xai.attribution.feature_masks.prepare_feature_mask` accepts). ``None``:
        cubic supervoxels of ``grid`` voxels, so that the method computes with its defaults alone.
    grid
        Supervoxel edge in voxels when no ``feature_mask`` is given.
    ignore_background
        Label 0 of an atlas (usually everything outside the brain) is by default a parcel like
        any other: it is occluded and gets its drop. With ``True`` its voxels get 0. Has no
        effect on the supervoxel grid, whose block 0 is not background.
    batch_size
        Largest number of occluded copies per forward pass.

    Returns
    -------
    torch.Tensor
        Map of x's shape, constant over each parcel.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    background = None
    if feature_mask is not None:
        raw = _label_volume(feature_mask, x)
        if ignore_background:
            background = raw == 0
    masks = _feature_mask_or_grid(feature_mask, grid, x)
    result = _attribute_in_chunks(
        FeatureAblation(_forward_function(model)), x, target, min(x.shape[0], batch_size),
        lambda rows: {"feature_mask": _mask_rows(masks, rows),
                      "perturbations_per_eval": _copies_per_sample(batch_size, rows)},
    )
    if background is not None:
        # The background parcel was occluded too (captum ablates every label); its drop is
        # discarded rather than relabelling, which keeps the other parcels' numbers identical.
        result = result.masked_fill(background.expand_as(result), 0.0)
    return result
