"""Mass metrics -- where does the map put its evidence? Two relevance mass accuracies, EMD (mm).

Two published definitions of *relevance mass accuracy* (RMA) differ in how the map is read and
which region counts, so each has its own name and neither depends on the ``score`` the rank
metrics use:

``relevance_mass_accuracy``
    Arras, Osman & Samek 2022, *CLEVR-XAI: A benchmark dataset for the ground truth evaluation of
    neural network explanations*, Information Fusion 81, and Quantus's ``RelevanceMassAccuracy``:
    the share of the **positive part** of the signed map, ``max(a, 0)``, that lies in the ground
    truth. Negative evidence is not mass: a map that is strongly negative on the lesion is not
    rewarded for it. (Quantus's code divides the sums of whatever map it is given; its docstring,
    like the paper, speaks of positive attributions, so the caller passes ``max(a, 0)``: the test
    compares with Quantus that way.)
``relevance_mass_accuracy_siegel``
    The procedure of the code released with Siegel et al. 2025: ``|a|``, smoothed with a Gaussian
    of FWHM :data:`SIEGEL_FWHM_VOXELS` voxels, values below the map's
    percentile :data:`SIEGEL_PERCENTILE` set to 0, scored against the ground truth dilated by
    :data:`SIEGEL_DILATION_VOXELS` voxels. Our choices where the description leaves one are those
    of :func:`_siegel_mass` and :func:`_dilated`: everything in voxels, the percentile over brain
    voxels, face-connected dilation.

``emd`` is the Wasserstein-1 distance (mm) from the normalised score mass (``|a|`` for
``score="abs"``, ``max(a, 0)`` otherwise) to the uniform mass on the ground truth, and
``emd_score`` scales it by the brain's diameter (:func:`brain_diameter_mm`). Pure numpy / scipy /
POT; the public entry point is :func:`nipype_xai.metrics.overlap.overlap_metrics`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

from .inputs import MetricsError

__all__ = [
    "EMD_MAX_PAIRS",
    "EMD_MAX_POINTS",
    "SIEGEL_DILATION_VOXELS",
    "SIEGEL_FWHM_VOXELS",
    "SIEGEL_PERCENTILE",
    "brain_diameter_mm",
]

#: Exact optimal transport is solved when neither support has more points than this ...
EMD_MAX_POINTS = 4000
#: ... and the cost matrix has at most this many entries (16 MB in float64). Measured with POT
#: 0.9.7 on one CPU core, the network simplex takes ~0.1 s at 1000 x 1000 points and ~0.5 s at
#: 2000 x 2000 or 4000 x 1000, and its time grows with the larger support even when the product
#: is small (1.4 s at 20 x 20000), hence the two bounds. On a 2 mm MNI brain (~350k voxels) with
#: a 900-voxel lesion the defaults coarsen the score mass to 6x6x6 blocks and solve in ~0.4 s.
EMD_MAX_PAIRS = 2_000_000

#: The Siegel et al. 2025 procedure's defaults (the keyword defaults of
#: :func:`~nipype_xai.metrics.overlap.overlap_metrics`): Gaussian FWHM in voxels (0 = no
#: smoothing), ...
SIEGEL_FWHM_VOXELS = 2.0
#: ... the percentile (0-100, over brain voxels) below which the smoothed map is set to 0, ...
SIEGEL_PERCENTILE = 99.0
#: ... and the dilation of the ground truth, in voxels (face-connected steps; 0 = none).
SIEGEL_DILATION_VOXELS = 2

# Gaussian FWHM = 2 sqrt(2 ln 2) sigma (= 2.3548 sigma).
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Below this many candidate points the brain diameter is found by brute force; above, the
# candidates are first reduced to their convex hull's vertices.
_DIAMETER_BRUTE_FORCE = 3000


def _mass_score(attribution: np.ndarray, score: str) -> np.ndarray:
    # The emd mass must be non-negative to be a distribution: "raw" contributes its positive
    # part, so "raw" and "pos" agree on emd and differ on rank metrics only.
    if score == "abs":
        return np.abs(attribution)
    return np.maximum(attribution, 0.0)


def _mass_share(mass: np.ndarray, region: np.ndarray) -> float:
    """Share of the (non-negative) ``mass`` inside ``region``; NaN when there is no mass."""
    total = float(mass.sum())
    return float(mass[region].sum() / total) if total > 0 else float("nan")


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s voxels, widened by ``margin`` (clipped)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hit[0]) - margin, 0),
                         min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _siegel_mass(
    values: np.ndarray, brain: np.ndarray, *, fwhm_voxels: float, percentile: float
) -> tuple[np.ndarray, float]:
    """The map as the Siegel et al. 2025 procedure scores it, and its percentile cutoff.

    ``|a|`` inside the brain (0 outside, so out-of-brain values neither bleed in nor count, as
    for every metric here), smoothed with ``scipy.ndimage.gaussian_filter`` of sigma =
    ``fwhm_voxels / 2.3548`` voxels on every axis (the procedure is stated in voxels, so
    anisotropic voxels are smoothed anisotropically in mm; ``truncate=4`` sigma, scipy's default;
    ``mode="constant"``: mass smoothed past the volume's edge is lost, as past the brain's), set
    to 0 outside the brain again, then every value below the ``percentile``-th percentile of the
    brain voxels' values set to 0 (ties at the cutoff kept). The percentile is over brain voxels,
    not over the whole volume: over the volume the cutoff would move with the field of view (a
    padded volume holds more zeros), which says nothing about the map.
    """
    if not (np.isfinite(fwhm_voxels) and fwhm_voxels >= 0):
        raise MetricsError(f"siegel_fwhm_voxels must be >= 0 (0: no smoothing), got {fwhm_voxels}")
    if not 0 <= percentile <= 100:
        raise MetricsError(f"siegel_percentile must be in [0, 100], got {percentile}")
    mass = np.where(brain, np.abs(values), 0.0)
    if fwhm_voxels > 0:
        # Outside the brain's bounding box everything is 0, which mode="constant" pads with
        # anyway: smoothing the box alone gives the same values, faster on a head-sized grid.
        box = _bounding_box(brain)
        mass[box] = ndimage.gaussian_filter(mass[box], fwhm_voxels / _FWHM_PER_SIGMA,
                                            mode="constant")
        mass = np.where(brain, mass, 0.0)
    cutoff = float(np.percentile(mass[brain], percentile))
    return np.where(mass >= cutoff, mass, 0.0), cutoff


def _dilated(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` grown by ``voxels`` face-connected steps (scipy's default 6-neighbourhood).

    ``scipy.ndimage.binary_dilation(mask, iterations=voxels)``: every voxel within city-block
    distance ``voxels`` of the mask. Face connectivity is scipy's default and so the most likely
    reading of "dilated by 2 voxels"; a full (26-) neighbourhood would grow a cube instead.
    """
    if isinstance(voxels, bool) or int(voxels) != voxels or voxels < 0:
        raise MetricsError(f"siegel_dilation_voxels must be an integer >= 0, got {voxels!r}")
    voxels = int(voxels)
    if voxels == 0:
        return mask.copy()
    # The dilation cannot reach past the mask's box widened by `voxels`: work on that box only.
    box = _bounding_box(mask, margin=voxels)
    grown = np.zeros_like(mask)
    grown[box] = ndimage.binary_dilation(mask[box], iterations=voxels)
    return grown


def _mass_metrics(
    values: np.ndarray,
    score: str,
    ground_truth: np.ndarray,
    brain: np.ndarray,
    linear: np.ndarray,
    *,
    siegel_fwhm_voxels: float,
    siegel_percentile: float,
    siegel_dilation_voxels: int,
    max_points: int,
    max_pairs: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The mass metrics (module docstring) and notes on how they were computed.

    Each metric reads the map its own way: ``max(a, 0)`` for ``relevance_mass_accuracy``, the
    Siegel procedure on ``|a|`` for ``relevance_mass_accuracy_siegel``, and ``score`` for
    ``emd``/``emd_score``; all are zero outside the brain. A metric whose mass is zero is NaN.
    """
    positive = np.where(brain, np.maximum(values, 0.0), 0.0)
    siegel, cutoff = _siegel_mass(values, brain, fwhm_voxels=siegel_fwhm_voxels,
                                  percentile=siegel_percentile)
    siegel_region = _dilated(ground_truth, siegel_dilation_voxels) & brain
    scores = {
        "relevance_mass_accuracy": _mass_share(positive, ground_truth),
        "relevance_mass_accuracy_siegel": _mass_share(siegel, siegel_region),
    }

    mass = np.where(brain, _mass_score(values, score), 0.0)
    total = float(mass.sum())
    diameter = brain_diameter_mm(brain, linear)
    notes: dict[str, Any] = {
        "mass_total": total, "positive_mass_total": float(positive.sum()),
        "siegel_mass_total": float(siegel.sum()), "siegel_cutoff": cutoff,
        "siegel_region_voxels": int(siegel_region.sum()), "brain_diameter_mm": diameter,
    }
    if not total > 0:
        # No score mass anywhere (e.g. score="pos" on a negative map): emd is undefined.
        notes.update(emd_method="undefined (no score mass)", emd_block_factors=(0, 0),
                     emd_error_bound_mm=float("nan"),
                     emd_support_sizes=(0, int(ground_truth.sum())))
        scores.update(emd=float("nan"), emd_score=float("nan"))
        return scores, notes
    emd, emd_notes = _earth_movers_distance(mass, ground_truth, linear, max_points, max_pairs)
    notes.update(emd_notes)
    scores.update(emd=emd, emd_score=1.0 - emd / diameter if diameter > 0 else float("nan"))
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
