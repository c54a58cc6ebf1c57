"""Mass metrics -- where does the map put its evidence? Relevance mass accuracy, EMD (mm).

``relevance_mass_accuracy`` (Arras et al. 2022) is the share of the score mass inside the ground
truth; ``emd`` is the Wasserstein-1 distance (mm) from the normalised score mass to the uniform mass
on the ground truth, and ``emd_score`` scales it by the brain's diameter
(:func:`brain_diameter_mm`). Pure numpy / scipy / POT; the public entry point is
:func:`nipype_xai.metrics.overlap.overlap_metrics`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

from .inputs import MetricsError

__all__ = ["EMD_MAX_PAIRS", "EMD_MAX_POINTS", "brain_diameter_mm"]

#: Exact optimal transport is solved when neither support has more points than this ...
EMD_MAX_POINTS = 4000
#: ... and the cost matrix has at most this many entries (16 MB in float64). Measured with POT
#: 0.9.7 on one CPU core, the network simplex takes ~0.1 s at 1000 x 1000 points and ~0.5 s at
#: 2000 x 2000 or 4000 x 1000, and its time grows with the larger support even when the product
#: is small (1.4 s at 20 x 20000), hence the two bounds. On a 2 mm MNI brain (~350k voxels) with
#: a 900-voxel lesion the defaults coarsen the score mass to 6x6x6 blocks and solve in ~0.4 s.
EMD_MAX_PAIRS = 2_000_000

# Gaussian FWHM = 2 sqrt(2 ln 2) sigma.
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Below this many candidate points the brain diameter is found by brute force; above, the
# candidates are first reduced to their convex hull's vertices.
_DIAMETER_BRUTE_FORCE = 3000


def _mass_score(attribution: np.ndarray, score: str) -> np.ndarray:
    # Mass must be non-negative to be a distribution: "raw" contributes its positive part, so
    # "raw" and "pos" agree on mass metrics and differ on rank metrics only.
    if score == "abs":
        return np.abs(attribution)
    return np.maximum(attribution, 0.0)


def _mass_metrics(
    values: np.ndarray,
    score: str,
    ground_truth: np.ndarray,
    brain: np.ndarray,
    linear: np.ndarray,
    *,
    fwhm_mm: Optional[float],
    percentile: Optional[float],
    max_points: int,
    max_pairs: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``relevance_mass_accuracy``, ``emd`` and ``emd_score``, and notes on how they were computed.

    The score mass is non-negative and zero outside the brain before any smoothing, so that
    out-of-brain values can neither bleed in nor count; then optionally smoothed (Gaussian of
    ``fwhm_mm``) and thresholded (kept at or above the brain voxels' ``percentile``). Without
    any mass left the three metrics are NaN.
    """
    mass = np.where(brain, _mass_score(values, score), 0.0)
    if fwhm_mm is not None:
        if not fwhm_mm > 0:
            raise MetricsError(f"fwhm_mm must be positive, got {fwhm_mm}")
        voxel_mm = np.linalg.norm(linear, axis=0)
        sigma = fwhm_mm / _FWHM_PER_SIGMA / voxel_mm
        # mode="constant": mass smoothed past the volume's edge is lost, as past the brain's edge.
        mass = np.where(brain, ndimage.gaussian_filter(mass, sigma, mode="constant"), 0.0)
    if percentile is not None:
        if not 0 <= percentile <= 100:
            raise MetricsError(f"percentile must be in [0, 100], got {percentile}")
        threshold = np.percentile(mass[brain], percentile)
        mass = np.where(mass >= threshold, mass, 0.0)
    total = float(mass.sum())

    diameter = brain_diameter_mm(brain, linear)
    notes: dict[str, Any] = {"mass_total": total, "brain_diameter_mm": diameter}
    if not total > 0:
        # No positive evidence anywhere (e.g. score="pos" on a negative map): mass is undefined.
        notes.update(emd_method="undefined (no score mass)", emd_block_factors=(0, 0),
                     emd_error_bound_mm=float("nan"),
                     emd_support_sizes=(0, int(ground_truth.sum())))
        return dict.fromkeys(("relevance_mass_accuracy", "emd", "emd_score"), float("nan")), notes
    emd, emd_notes = _earth_movers_distance(mass, ground_truth, linear, max_points, max_pairs)
    notes.update(emd_notes)
    scores = {
        "relevance_mass_accuracy": float(mass[ground_truth].sum() / total),
        "emd": emd,
        "emd_score": 1.0 - emd / diameter if diameter > 0 else float("nan"),
    }
    return scores, notes


def _to_mm(indices: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Voxel indices (n, 3) to mm offsets, ``indices @ linear.T``.

    Written as three broadcasts: a tall-skinny matmul goes through threaded BLAS, which measured
    10x slower than this on a busy machine.
    """
    indices = indices.astype(np.float64)
    return sum(indices[:, j, None] * linear[:, j] for j in range(3))


def _block_ids(indices: np.ndarray, factor: int, shape: tuple) -> tuple[np.ndarray, int]:
    """Flat index of the factor^3 voxel block holding each voxel, and the number of blocks."""
    coarse_shape = tuple(-(-s // factor) for s in shape)
    block = np.ravel_multi_index(tuple((indices // factor).T), coarse_shape)
    return block, math.prod(coarse_shape)


def _occupied_blocks(indices: np.ndarray, factor: int, shape: tuple) -> int:
    block, n_blocks = _block_ids(indices, factor, shape)
    return int(np.count_nonzero(np.bincount(block, minlength=n_blocks)))


def _block_masses(
    indices: np.ndarray, positions_mm: np.ndarray, weights: np.ndarray, factor: int, shape: tuple
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sum ``weights`` over factor^3 voxel blocks; each block's mass sits at its centre of mass.

    Returns the block masses, their positions (mm) and the cost of moving every voxel's mass to
    its block's centre of mass, which bounds the Wasserstein distance between the fine and the
    coarse distribution from above.
    """
    block, n_blocks = _block_ids(indices, factor, shape)
    occupied = np.flatnonzero(np.bincount(block, minlength=n_blocks))
    lookup = np.empty(n_blocks, dtype=np.int64)
    lookup[occupied] = np.arange(occupied.size)
    inverse = lookup[block]
    mass = np.bincount(inverse, weights=weights, minlength=occupied.size)
    centre = np.stack(
        [np.bincount(inverse, weights=weights * positions_mm[:, d], minlength=occupied.size)
         for d in range(3)],
        axis=1,
    ) / mass[:, None]
    moved = float(np.sum(weights * np.linalg.norm(positions_mm - centre[inverse], axis=1)))
    return mass, centre, moved


def _earth_movers_distance(
    mass: np.ndarray,
    ground_truth: np.ndarray,
    linear: np.ndarray,
    max_points: int,
    max_pairs: int,
) -> tuple[float, dict[str, Any]]:
    """Wasserstein-1 distance (mm) between the normalised score mass and the uniform GT mass.

    Exact (POT's network simplex, ``ot.emd2``) when both supports are small enough. Otherwise the
    larger support is coarsened, by integer factors f = 2, 3, ... until both are small enough:
    its mass is summed over f x f x f voxel blocks and placed at each block's centre of mass. By
    the triangle inequality the coarse distance differs from the exact one by at most the cost of
    those moves, which is returned as ``emd_error_bound_mm``. Coarsening is preferred over sliced
    Wasserstein because it estimates the same quantity, in mm, with a known error bound; sliced
    Wasserstein is a different, smaller distance.
    """
    import ot  # POT: imported here so the rank metrics do not pay for it

    support = mass > 0
    score_indices = np.argwhere(support)
    score_weights = mass[support].astype(np.float64)
    score_weights /= score_weights.sum()
    gt_indices = np.argwhere(ground_truth)
    gt_weights = np.full(len(gt_indices), 1.0 / len(gt_indices))

    def small_enough(n: int, m: int) -> bool:
        return n <= max_points and m <= max_points and n * m <= max_pairs

    # Each distribution keeps its own block factor and only the larger support is coarsened
    # further, so a small GT stays exact while a whole-brain score map is summarised.
    fine = [
        (score_indices, _to_mm(score_indices, linear), score_weights),
        (gt_indices, _to_mm(gt_indices, linear), gt_weights),
    ]
    factors = [1, 1]
    sizes = [len(score_weights), len(gt_weights)]
    while not small_enough(*sizes):
        side = 0 if sizes[0] >= sizes[1] else 1
        # count(f) >= n / f^3, so no factor below this cube root can be small enough.
        factors[side] = max(factors[side] + 1, int((len(fine[side][0]) / max_points) ** (1 / 3)))
        sizes[side] = _occupied_blocks(fine[side][0], factors[side], mass.shape)
    supports = [
        _block_masses(*fine[side], factors[side], mass.shape)
        if factors[side] > 1
        else (fine[side][2], fine[side][1], 0.0)
        for side in (0, 1)
    ]
    (a, xs, moved_a), (b, xt, moved_b) = supports
    # The simplex needs equal total masses to machine precision.
    b = b * (a.sum() / b.sum())
    cost = cdist(xs, xt)  # exact Euclidean distances (ot.dist's expansion can leave ~1e-7 noise)
    distance = float(ot.emd2(a, b, cost, numItermax=100_000_000))
    if factors == [1, 1]:
        method = "exact"
    else:
        fa, fb = factors
        method = (
            f"coarsened: score mass on {fa}x{fa}x{fa}, ground truth on {fb}x{fb}x{fb} voxel blocks"
        )
    notes = {
        "emd_method": method,
        "emd_block_factors": tuple(factors),
        "emd_error_bound_mm": moved_a + moved_b,
        "emd_support_sizes": (len(a), len(b)),
    }
    return max(distance, 0.0), notes


def brain_diameter_mm(brain_mask: np.ndarray, linear: Optional[np.ndarray] = None) -> float:
    """Largest distance (mm) between the centres of two voxels of ``brain_mask``.

    This is the largest distance any mass can travel inside the brain, so it bounds ``emd``.
    Exact: the farthest pair of a point set is a pair of its convex hull's vertices, and a hull
    vertex is the first or last voxel of the mask on each of the three grid lines through it,
    which leaves few candidates; their hull (qhull, joggled so flat masks work) leaves fewer.

    Parameters
    ----------
    brain_mask
        3D boolean mask.
    linear
        3x3 map from voxel index steps to mm (the affine's linear part); identity if None.
    """
    brain_mask = np.asarray(brain_mask, dtype=bool)
    linear = np.eye(3) if linear is None else np.asarray(linear, dtype=float)
    candidates = brain_mask.copy()
    for axis in range(3):
        n = brain_mask.shape[axis]
        first = np.argmax(brain_mask, axis=axis, keepdims=True)
        last = n - 1 - np.argmax(np.flip(brain_mask, axis=axis), axis=axis, keepdims=True)
        # Lines without brain voxels mark voxels outside the mask, which `candidates` excludes.
        extreme = np.zeros_like(brain_mask)
        np.put_along_axis(extreme, first, True, axis=axis)
        np.put_along_axis(extreme, last, True, axis=axis)
        candidates &= extreme
    points = _to_mm(np.argwhere(candidates), linear)
    if len(points) < 2:
        return 0.0
    if len(points) > _DIAMETER_BRUTE_FORCE:
        try:
            points = points[ConvexHull(points, qhull_options="QJ").vertices]
        except RuntimeError:  # pragma: no cover - QhullError; QJ makes degenerate input solvable
            pass
    largest = 0.0
    for start in range(0, len(points), 1024):  # chunks keep memory at 1024 x n distances
        largest = max(largest, float(cdist(points[start : start + 1024], points).max()))
    return largest
