"""Rank metrics: does the map rank the ground-truth voxels first? (with a parcellation: the region)

``precision_at_k`` (the "explanation precision" of Oliveira et al.; the relevance rank accuracy of
Arras et al. 2022, *CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
explanations*, Information Fusion), ``dice_at_k``, ``pointing_game``, ``auroc``,
``average_precision`` and, with a parcellation (an atlas), ``roi_rank``, ``roi_top1``,
``roi_top3``. Pure numpy, on the brain voxels the caller selected; the public entry point is
:func:`nipype_xai.metrics.overlap.overlap_metrics`.
"""

from __future__ import annotations

import numpy as np

from .inputs import MetricsError


def _rank_score(attribution: np.ndarray, score: str) -> np.ndarray:
    if score == "abs":
        return np.abs(attribution)
    if score == "pos":
        return np.maximum(attribution, 0.0)
    return attribution


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


def _parcel_labels(parcels: np.ndarray) -> np.ndarray:
    """A parcellation's labels as integers; float labels must be whole numbers."""
    if not np.issubdtype(parcels.dtype, np.integer):
        if not np.issubdtype(parcels.dtype, np.number) or np.any(parcels != np.round(parcels)):
            raise MetricsError("parcellation: expected integer labels")
        parcels = parcels.astype(np.int64)
    return parcels
