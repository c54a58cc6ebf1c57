"""Scores of an attribution map against a known ground-truth mask (SPEC §3).

Pure numpy / scipy / POT: arrays (or nibabel images) in, floats out; no files, no Nipype.

Two families of metrics answer different questions:

* **rank metrics** -- does the map rank the ground-truth voxels first?
  ``precision_at_k`` (the "explanation precision" of Oliveira et al.; the relevance rank
  accuracy of Arras et al. 2022, *CLEVR-XAI: A benchmark dataset for the ground truth evaluation
  of neural network explanations*, Information Fusion), ``dice_at_k``, ``pointing_game``,
  ``auroc``, ``average_precision`` and, with a parcellation, ``roi_rank``;
* **mass metrics** -- where does the map put its evidence? ``relevance_mass_accuracy`` (Arras et
  al. 2022) and the earth mover's distance ``emd`` / ``emd_score``.

Voxels outside the brain mask take no part in either.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

ArrayLike = Any  # numpy array, torch tensor, or nibabel spatial image

#: Accepted values of ``score``.
SCORES = ("abs", "pos", "raw")

#: Two affines are "the same grid" when every entry agrees within this many mm (absolute).
#: NIfTI stores the sform in float32, so a round trip through a file moves a 100 mm translation
#: by ~1e-5 mm; a real grid mismatch is a fraction of a voxel, i.e. orders of magnitude larger.
AFFINE_ATOL_MM = 1e-3

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


class MetricsError(ValueError):
    """The inputs of a metric are inconsistent (empty ground truth, grid mismatch, bad values)."""


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_array(obj: ArrayLike, name: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Array and affine (None for a plain array) of a numpy array, torch tensor or nibabel image."""
    if hasattr(obj, "affine") and hasattr(obj, "dataobj"):
        # nibabel image: asanyarray keeps an integer mask integer (get_fdata would cast to float).
        return np.asanyarray(obj.dataobj), np.asarray(obj.affine, dtype=float)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        return obj.detach().cpu().numpy(), None
    try:
        return np.asarray(obj), None
    except Exception as error:  # pragma: no cover - depends on the caller's object
        raise MetricsError(f"{name}: cannot be read as an array ({error})") from error


def _binary(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a boolean mask; anything but 0/1 values is an error, not a silent threshold."""
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.number)):
        raise MetricsError(f"{name}: expected a binary mask, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        values = np.unique(array[(array != 0) & (array != 1)])
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise MetricsError(f"{name}: expected a binary (0/1) mask, found other values: {shown}")
    return array.astype(bool)


def _check_affine(reference: Optional[np.ndarray], other: Optional[np.ndarray], name: str) -> None:
    if reference is None or other is None:
        return
    if reference.shape != (4, 4) or other.shape != (4, 4):
        raise MetricsError(f"{name}: affines must be 4x4, got {reference.shape} and {other.shape}")
    if not np.allclose(reference, other, rtol=0.0, atol=AFFINE_ATOL_MM):
        raise MetricsError(
            f"{name}: affine does not match the attribution map's "
            f"(largest difference {np.abs(reference - other).max():.4g} mm, tolerance "
            f"{AFFINE_ATOL_MM} mm); resample it to the map's grid first.\n"
            f"attribution affine:\n{reference}\n{name} affine:\n{other}"
        )


def _resolve_affine(
    from_image: Optional[np.ndarray], given: Optional[ArrayLike], name: str
) -> Optional[np.ndarray]:
    """The affine of one input: the image's own or the one passed for it (which must agree)."""
    if given is None:
        return from_image
    given = np.asarray(given, dtype=float)
    if from_image is not None:
        _check_affine(from_image, given, f"{name} (image affine vs. the affine passed for it)")
    return given


def _linear_map(
    affine: Optional[np.ndarray], voxel_size: Optional[Sequence[float]]
) -> np.ndarray:
    """3x3 map from voxel index steps to mm: the affine's linear part, else diag(voxel_size).

    Using the full linear part (not only the voxel sizes) keeps distances right on oblique grids.
    """
    sizes = None
    if voxel_size is not None:
        try:
            sizes = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
        except ValueError as error:
            raise MetricsError(f"voxel_size: expected 1 or 3 sizes, got {voxel_size!r}") from error
        if np.any(sizes <= 0) or not np.all(np.isfinite(sizes)):
            raise MetricsError(f"voxel_size must be positive and finite, got {tuple(sizes)}")
    if affine is not None:
        linear = np.asarray(affine, dtype=float)[:3, :3]
        from_affine = np.linalg.norm(linear, axis=0)
        if sizes is not None and not np.allclose(from_affine, sizes, rtol=1e-4, atol=1e-6):
            raise MetricsError(
                f"voxel_size {tuple(sizes)} disagrees with the affine's voxel sizes "
                f"{tuple(np.round(from_affine, 6))}"
            )
        return linear
    return np.eye(3) if sizes is None else np.diag(sizes)


def _rank_score(attribution: np.ndarray, score: str) -> np.ndarray:
    if score == "abs":
        return np.abs(attribution)
    if score == "pos":
        return np.maximum(attribution, 0.0)
    return attribution


def _mass_score(attribution: np.ndarray, score: str) -> np.ndarray:
    # Mass must be non-negative to be a distribution: "raw" contributes its positive part, so
    # "raw" and "pos" agree on mass metrics and differ on rank metrics only.
    if score == "abs":
        return np.abs(attribution)
    return np.maximum(attribution, 0.0)


# --------------------------------------------------------------------------------------------
# Rank metrics
# --------------------------------------------------------------------------------------------


def _ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All rank metrics from one descending sort, with ties treated as one group.

    Within a group of equal scores no voxel is preferred: AUROC counts a tied (GT, non-GT) pair as
    1/2 (the Mann-Whitney statistic with average ranks, as ``scipy.stats.rankdata``); average
    precision steps over distinct score values (as ``sklearn.metrics.average_precision_score``);
    and the top-k metrics and the pointing game take the *expected* number of hits when the tie at
    the cut-off is broken at random. So a constant map scores the base rate, not whatever
    a voxel-order tie break happens to give, and the result does not depend on voxel order.
    """
    n = scores.size
    n_pos = int(labels.sum())
    n_neg = n - n_pos
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    counts = np.diff(np.r_[starts, n])
    positives = np.add.reduceat(sorted_labels.astype(np.int64), starts)
    negatives = counts - positives
    true_pos = np.cumsum(positives)
    false_pos = np.cumsum(negatives)

    if n_neg == 0:
        auroc = float("nan")  # GT fills the whole brain: nothing to separate it from
    else:
        negatives_below = n_neg - false_pos
        auroc = float(np.sum(positives * (negatives_below + 0.5 * negatives)) / (n_pos * n_neg))

    precision = true_pos / (true_pos + false_pos)
    # sum over thresholds of (recall step) x precision; dividing once keeps exact cases exact.
    average_precision = float(np.sum(positives * precision) / n_pos)

    k = n_pos
    group = int(np.searchsorted(starts, k - 1, side="right") - 1)  # group holding the k-th voxel
    above = int(starts[group])
    hits_above = int(true_pos[group - 1]) if group > 0 else 0
    hits = hits_above + (k - above) * positives[group] / counts[group]
    precision_at_k = float(hits / k)
    return {
        "precision_at_k": precision_at_k,
        "pointing_game": float(positives[0] / counts[0]),
        "auroc": auroc,
        "average_precision": average_precision,
        # |top-k| = k = |GT|, so Dice = 2 hits / (k + |GT|) equals precision_at_k by construction.
        "dice_at_k": float(2.0 * hits / (k + n_pos)),
    }


def _roi_metrics(
    rank_score: np.ndarray, ground_truth: np.ndarray, parcellation: np.ndarray, brain: np.ndarray
) -> tuple[dict[str, float], int]:
    """Rank of the ground-truth parcel among all parcels by mean score (label 0 = background)."""
    labels = parcellation[brain]
    in_parcel = labels != 0
    if not np.any(in_parcel):
        raise MetricsError("parcellation: no labelled (non-zero) voxel inside the brain mask")
    parcel_ids, index = np.unique(labels[in_parcel], return_inverse=True)
    sizes = np.bincount(index)
    means = np.bincount(index, weights=rank_score[brain][in_parcel].astype(np.float64)) / sizes
    gt_counts = np.bincount(index, weights=ground_truth[brain][in_parcel].astype(np.float64))
    if gt_counts.max() == 0:
        raise MetricsError("parcellation: no ground-truth voxel lies in a labelled parcel")
    # The GT region is the parcel holding most GT voxels; argmax takes the lowest label on a tie.
    gt_parcel = int(np.argmax(gt_counts))
    higher = int(np.sum(means > means[gt_parcel]))
    tied_others = int(np.sum(means == means[gt_parcel])) - 1
    # Average rank over ties, as for AUROC: a tie with k other parcels costs k/2 places.
    rank = 1.0 + higher + 0.5 * tied_others
    return (
        {"roi_rank": rank, "roi_top1": float(rank <= 1.0), "roi_top3": float(rank <= 3.0)},
        int(parcel_ids[gt_parcel]),
    )


# --------------------------------------------------------------------------------------------
# Earth mover's distance
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def overlap_metrics_report(
    attribution: ArrayLike,
    ground_truth: ArrayLike,
    brain_mask: Optional[ArrayLike] = None,
    score: str = "abs",
    *,
    affine: Optional[ArrayLike] = None,
    gt_affine: Optional[ArrayLike] = None,
    mask_affine: Optional[ArrayLike] = None,
    voxel_size: Optional[Union[float, Sequence[float]]] = None,
    parcellation: Optional[ArrayLike] = None,
    parcellation_affine: Optional[ArrayLike] = None,
    fwhm_mm: Optional[float] = None,
    percentile: Optional[float] = None,
    emd_max_points: int = EMD_MAX_POINTS,
    emd_max_pairs: int = EMD_MAX_PAIRS,
) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`overlap_metrics` plus notes on how they were computed.

    Returns
    -------
    scores : dict[str, float]
        Exactly what :func:`overlap_metrics` returns.
    notes : dict[str, Any]
        ``score``; ``emd_method`` (``"exact"`` or ``"coarsened: ..."`` naming the block sizes),
        ``emd_block_factors`` (score, GT; 1 = not coarsened), ``emd_error_bound_mm`` (a guaranteed
        bound on ``|emd - exact emd|``, 0 when exact), ``emd_support_sizes``;
        ``n_brain_voxels``, ``n_gt_voxels`` (= k), ``brain_diameter_mm``; ``mass_total`` (the
        score mass after smoothing/thresholding; 0 means the mass metrics are NaN);
        ``gt_parcel`` (label of the ground-truth region) when a parcellation was given.

    See :func:`overlap_metrics` for the parameters.
    """
    if score not in SCORES:
        raise MetricsError(f"score must be one of {SCORES}, got {score!r}")

    values, image_affine = _as_array(attribution, "attribution")
    reference_affine = _resolve_affine(image_affine, affine, "attribution")
    if values.ndim != 3:
        raise MetricsError(f"attribution: expected a 3D volume, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise MetricsError(f"attribution: expected real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        raise MetricsError(
            f"attribution: {int(np.sum(~np.isfinite(values)))} voxel(s) are NaN or Inf"
        )
    shape = values.shape

    def other_input(obj: ArrayLike, given_affine: Optional[ArrayLike], name: str) -> np.ndarray:
        array, own_affine = _as_array(obj, name)
        if array.shape != shape:
            raise MetricsError(
                f"{name}: shape {array.shape} does not match the attribution map's {shape}"
            )
        _check_affine(reference_affine, _resolve_affine(own_affine, given_affine, name), name)
        return array

    gt = _binary(other_input(ground_truth, gt_affine, "ground_truth"), "ground_truth")
    if brain_mask is None:
        brain = np.ones(shape, dtype=bool)
    else:
        brain = _binary(other_input(brain_mask, mask_affine, "brain_mask"), "brain_mask")
    gt = gt & brain
    n_gt = int(gt.sum())
    if n_gt == 0:
        raise MetricsError(
            "ground_truth: empty inside the brain mask; no metric is defined without a target"
        )
    linear = _linear_map(reference_affine, voxel_size)

    # Rank metrics on the brain voxels only, in the score the caller chose.
    rank_score = _rank_score(values, score)
    scores = _ranking_metrics(rank_score[brain], gt[brain])

    # Mass metrics: non-negative mass, zero outside the brain before any smoothing, so that
    # out-of-brain values can neither bleed in nor count.
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

    notes: dict[str, Any] = {
        "score": score,
        "n_brain_voxels": int(brain.sum()),
        "n_gt_voxels": n_gt,
        "mass_total": total,
    }
    diameter = brain_diameter_mm(brain, linear)
    notes["brain_diameter_mm"] = diameter
    if total > 0:
        scores["relevance_mass_accuracy"] = float(mass[gt].sum() / total)
        emd, emd_notes = _earth_movers_distance(mass, gt, linear, emd_max_points, emd_max_pairs)
        notes.update(emd_notes)
        scores["emd"] = emd
        scores["emd_score"] = 1.0 - emd / diameter if diameter > 0 else float("nan")
    else:
        # No positive evidence anywhere (e.g. score="pos" on a negative map): mass is undefined.
        scores["relevance_mass_accuracy"] = float("nan")
        scores["emd"] = float("nan")
        scores["emd_score"] = float("nan")
        notes.update(emd_method="undefined (no score mass)", emd_block_factors=(0, 0),
                     emd_error_bound_mm=float("nan"), emd_support_sizes=(0, n_gt))

    if parcellation is not None:
        parcels = other_input(parcellation, parcellation_affine, "parcellation")
        if not np.issubdtype(parcels.dtype, np.integer):
            if not np.issubdtype(parcels.dtype, np.number) or np.any(parcels != np.round(parcels)):
                raise MetricsError("parcellation: expected integer labels")
            parcels = parcels.astype(np.int64)
        roi, gt_parcel = _roi_metrics(rank_score, gt, parcels, brain)
        scores.update(roi)
        notes["gt_parcel"] = gt_parcel

    order = [
        "precision_at_k", "relevance_mass_accuracy", "pointing_game", "auroc",
        "average_precision", "dice_at_k", "emd", "emd_score", "roi_rank", "roi_top1", "roi_top3",
    ]
    return {key: scores[key] for key in order if key in scores}, notes


def overlap_metrics(
    attribution: ArrayLike,
    ground_truth: ArrayLike,
    brain_mask: Optional[ArrayLike] = None,
    score: str = "abs",
    *,
    affine: Optional[ArrayLike] = None,
    gt_affine: Optional[ArrayLike] = None,
    mask_affine: Optional[ArrayLike] = None,
    voxel_size: Optional[Union[float, Sequence[float]]] = None,
    parcellation: Optional[ArrayLike] = None,
    parcellation_affine: Optional[ArrayLike] = None,
    fwhm_mm: Optional[float] = None,
    percentile: Optional[float] = None,
    emd_max_points: int = EMD_MAX_POINTS,
    emd_max_pairs: int = EMD_MAX_PAIRS,
) -> dict[str, float]:
    """Score an attribution map against a binary ground-truth mask.

    Parameters
    ----------
    attribution
        3D map (numpy array, torch tensor or nibabel image), signed and raw.
    ground_truth
        3D binary mask (bool or 0/1) of the voxels that carry the signal, on the same grid.
    brain_mask
        3D binary mask; voxels outside it are ignored by every metric (GT outside it too).
        None: the whole volume.
    score
        How the map is read. Rank metrics rank ``|a|`` ("abs"), ``max(a, 0)`` ("pos") or the signed
        ``a`` ("raw"). Mass metrics need non-negative mass: ``|a|`` for "abs", ``max(a, 0)`` for
        both "pos" and "raw".
    affine, gt_affine, mask_affine, parcellation_affine
        4x4 voxel-to-mm affines. Taken from nibabel images when those are given. Every affine that
        is known must match the attribution's within :data:`AFFINE_ATOL_MM` mm per entry; the
        attribution's affine also gives the geometry (voxel sizes, obliquity) for ``emd``.
    voxel_size
        Voxel size(s) in mm when no affine is known (default 1 mm isotropic); checked against the
        affine when both are given.
    parcellation
        3D integer label image (0 = background). Adds ``roi_rank``, ``roi_top1``, ``roi_top3``.
    fwhm_mm
        Smooth the score mass with a Gaussian of this FWHM (mm) before the mass metrics: the
        relevance-mass variant used at UK-Biobank scale (with ``score="abs"``).
    percentile
        Keep only score mass at or above this percentile (0-100, over brain voxels, after
        smoothing) for the mass metrics.
    emd_max_points, emd_max_pairs
        Size limits of the exact transport problem (points per distribution; cost-matrix
        entries). Beyond them the grid is coarsened; :func:`overlap_metrics_report` says how and
        with what error bound.

    Returns
    -------
    dict[str, float]
        With k = number of GT voxels inside the brain and the rank score s:

        ``precision_at_k``
            Fraction of the k highest-scoring voxels inside GT.
        ``relevance_mass_accuracy``
            Share of the score mass inside GT.
        ``pointing_game``
            1.0 if the highest-scoring voxel is in GT (the fraction of GT voxels among voxels tied
            at the maximum, if several are).
        ``auroc``
            Area under the ROC curve of s separating GT from non-GT brain voxels (NaN if the GT
            fills the brain).
        ``average_precision``
            Area under the precision-recall curve, stepwise over distinct values of s.
        ``dice_at_k``
            Dice between the top-k voxels and GT; equals ``precision_at_k`` because both sets hold
            k voxels (kept as its own column because papers report it under this name).
        ``emd``
            Wasserstein-1 distance in mm between the normalised score mass and the uniform mass on
            GT, with a Euclidean ground cost between voxel centres.
        ``emd_score``
            ``1 - emd / D``, D = the largest distance between two brain voxels
            (:func:`brain_diameter_mm`), so it lies in [0, 1], 1 = perfect.
        ``roi_rank``, ``roi_top1``, ``roi_top3`` (with a parcellation)
            Rank (1 = best) of the GT region -- the parcel holding most GT voxels, lowest label on a
            tie -- among the parcels ordered by mean s inside the brain; tied parcels share their
            average rank. ``roi_top1``/``roi_top3`` are 1.0 when that rank is at most 1/3.

        Ties in s are never broken by voxel order: top-k metrics count the *expected* hits under a
        random tie break, AUROC uses average ranks, average precision steps over distinct values.
        The mass metrics are NaN when there is no score mass (e.g. "pos" of a negative map).

    Raises
    ------
    MetricsError
        Empty GT inside the brain, shape or affine mismatch, a non-3D or non-finite attribution,
        a non-binary GT or mask, non-integer parcellation, or GT outside every parcel.
    """
    scores, _ = overlap_metrics_report(
        attribution, ground_truth, brain_mask, score,
        affine=affine, gt_affine=gt_affine, mask_affine=mask_affine, voxel_size=voxel_size,
        parcellation=parcellation, parcellation_affine=parcellation_affine, fwhm_mm=fwhm_mm,
        percentile=percentile, emd_max_points=emd_max_points, emd_max_pairs=emd_max_pairs,
    )
    return scores
