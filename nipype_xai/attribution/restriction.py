"""Restricting an attribution map to the voxels that hold the subject's data.

A model sees the subject's brain padded with zeros (the brain extracted, registered and put on
the model grid). Gradients and perturbations still give values on the padding: relevance of voxels
that hold no subject data, which an overlay shows around the brain as if it meant something
(measured on a real head: 10-61 % of a map's absolute mass outside the brain, by method). The
workflows therefore keep each map on its domain -- the model input's nonzero voxels on the model
grid, the subject's brain mask on the T1w grid -- and write the mass that lay outside in the
sidecar, so nothing is hidden (``--unrestricted-maps`` keeps the raw maps). Metrics that score a
map inside a brain mask (:mod:`nipype_xai.metrics`) are unaffected.
"""

from __future__ import annotations

import numpy as np

__all__ = ["restrict_to_mask"]


def restrict_to_mask(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The map inside ``mask`` (0 elsewhere) and the share of its absolute mass that was outside.

    Parameters
    ----------
    values : numpy.ndarray
        A map (any real dtype).
    mask : numpy.ndarray
        The domain, same shape: voxels ``> 0`` (or ``True``) are kept.

    Returns
    -------
    restricted : numpy.ndarray
        ``values`` where ``mask``, 0 elsewhere, in ``values``'s dtype.
    mass_outside : float
        ``sum |values| outside mask / sum |values|``, in [0, 1]; 0 for an all-zero map.

    Raises
    ------
    ValueError
        The shapes differ.
    """
    values = np.asarray(values)
    inside = np.asarray(mask) > 0
    if inside.shape != values.shape:
        raise ValueError(f"mask shape {inside.shape} differs from the map's {values.shape}")
    magnitude = np.abs(values, dtype=np.float64)
    total = float(magnitude.sum())
    outside = total - float(magnitude[inside].sum())
    restricted = np.where(inside, values, 0).astype(values.dtype, copy=False)
    return restricted, (min(max(outside / total, 0.0), 1.0) if total > 0 else 0.0)
