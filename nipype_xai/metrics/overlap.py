"""Scores of an attribution map against a known ground-truth mask (SPEC §3): the entry points.

Pure numpy / scipy / POT: arrays (or nibabel images) in, floats out; no files, no Nipype.

Two families of metrics answer different questions, each computed in its own module:

* **rank metrics** (:mod:`nipype_xai.metrics.ranking`) -- does the map rank the ground-truth
  voxels first? ``precision_at_k``, ``dice_at_k``, ``pointing_game``, ``auroc``,
  ``average_precision`` and, with a parcellation, ``roi_rank``;
* **mass metrics** (:mod:`nipype_xai.metrics.mass`) -- where does the map put its evidence?
  ``relevance_mass_accuracy`` (Arras et al. 2022 and Quantus: the positive part of the signed
  map), ``relevance_mass_accuracy_siegel`` (the procedure of the code released with Siegel et al.
  2025: ``|a|`` smoothed, thresholded at a high percentile, against the dilated ground truth) and
  the earth mover's distance ``emd`` / ``emd_score``.

Rank metrics and ``emd`` read the map as the caller's ``score`` says; the two relevance mass
accuracies read it as their papers define them, whatever ``score`` is.
:data:`METRIC_CONVENTIONS` states, per ``score``, how every metric reads the map, what it measures
and which direction is better: the text of a table header. Voxels outside the brain mask take no
part in any metric. The inputs are read and checked in
:mod:`nipype_xai.metrics.inputs`; :func:`nipype_xai.metrics.scoring.score_maps` scores maps on any
grid (nibabel images) into table rows. The names of those modules that callers use are importable
from here, as before the split.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence, Union

import numpy as np

from .inputs import (
    AFFINE_ATOL_MM,
    SCORES,
    ArrayLike,
    MetricsError,
    _as_array,
    _binary,
    _check_affine,
    _linear_map,
    _resolve_affine,
)
from .mass import (
    EMD_MAX_PAIRS,
    EMD_MAX_POINTS,
    SIEGEL_DILATION_VOXELS,
    SIEGEL_FWHM_VOXELS,
    SIEGEL_PERCENTILE,
    _mass_metrics,
    brain_diameter_mm,
)
from .ranking import _parcel_labels, _rank_score, _ranking_metrics, _roi_metrics

__all__ = [
    "AFFINE_ATOL_MM",
    "EMD_MAX_PAIRS",
    "EMD_MAX_POINTS",
    "METRIC_CONVENTIONS",
    "OVERLAP_METRICS",
    "SCORES",
    "SIEGEL_DILATION_VOXELS",
    "SIEGEL_FWHM_VOXELS",
    "SIEGEL_PERCENTILE",
    "MetricsError",
    "brain_diameter_mm",
    "overlap_metrics",
    "overlap_metrics_report",
]

#: Every metric :func:`overlap_metrics` can return, in the order it returns them (the order of the
#: columns of every overlap table and of the group summaries).
OVERLAP_METRICS: tuple[str, ...] = (
    "precision_at_k", "relevance_mass_accuracy", "relevance_mass_accuracy_siegel",
    "pointing_game", "auroc", "average_precision", "dice_at_k", "emd", "emd_score",
    "roi_rank", "roi_top1", "roi_top3",
)

# How each score reads the signed map a: the rank score s, and the mass emd transports.
_RANK_READING = {"abs": "|a|", "pos": "max(a, 0)", "raw": "signed a"}
_EMD_READING = {"abs": "|a|", "pos": "max(a, 0)", "raw": "max(a, 0)"}


def _conventions(score: str) -> dict[str, str]:
    s, mass = _RANK_READING[score], _EMD_READING[score]
    fwhm, pct, dil = SIEGEL_FWHM_VOXELS, SIEGEL_PERCENTILE, SIEGEL_DILATION_VOXELS
    return {
        "precision_at_k": f"{s}; share of the k = |GT| top brain voxels in GT; higher is better",
        "relevance_mass_accuracy": ("max(a, 0) (Arras et al.; Quantus); share of the positive "
                                    "mass in GT; higher is better"),
        "relevance_mass_accuracy_siegel": (
            f"|a| smoothed (FWHM {fwhm:g} voxels), values below its {pct:g}th percentile in "
            f"the brain set to 0 (Siegel et al.); share in GT dilated by {dil:g} voxels; "
            f"higher is better"),
        "pointing_game": f"{s}; 1 if the top brain voxel is in GT; higher is better",
        "auroc": f"{s}; AUROC of GT vs. other brain voxels, 0.5 = chance; higher is better",
        "average_precision": (f"{s}; average precision of GT, chance = |GT| / |brain|; "
                              f"higher is better"),
        "dice_at_k": f"{s}; Dice of the top k = |GT| voxels and GT; higher is better",
        "emd": f"{mass}; Wasserstein-1 distance to GT, mm; lower is better",
        "emd_score": f"{mass}; 1 - emd / brain diameter, 1 = perfect; higher is better",
        "roi_rank": f"{s}; rank of the GT parcel by mean, 1 = best; lower is better",
        "roi_top1": f"{s}; 1 if the GT parcel ranks first by mean; higher is better",
        "roi_top3": f"{s}; 1 if the GT parcel ranks in the top 3 by mean; higher is better",
    }


#: What every metric of :data:`OVERLAP_METRICS` measures, per ``score`` (:data:`SCORES`):
#: ``METRIC_CONVENTIONS[score][metric]`` is a table header's text, "how the map is read; what is
#: measured; which direction is better". The two relevance mass accuracies read the map their
#: own way, so their text is the same under every score.
METRIC_CONVENTIONS: dict[str, dict[str, str]] = {score: _conventions(score) for score in SCORES}


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
    siegel_fwhm_voxels: float = SIEGEL_FWHM_VOXELS,
    siegel_percentile: float = SIEGEL_PERCENTILE,
    siegel_dilation_voxels: int = SIEGEL_DILATION_VOXELS,
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
        mass ``emd`` transports; 0 means ``emd``/``emd_score`` are NaN); ``positive_mass_total``
        (that of ``relevance_mass_accuracy``); ``siegel_mass_total``, ``siegel_cutoff`` (the
        percentile's value) and ``siegel_region_voxels`` (the dilated GT inside the brain), those
        of ``relevance_mass_accuracy_siegel``;
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
    notes: dict[str, Any] = {
        "score": score, "n_brain_voxels": int(brain.sum()), "n_gt_voxels": n_gt,
    }
    mass_scores, mass_notes = _mass_metrics(
        values, score, gt, brain, linear, siegel_fwhm_voxels=siegel_fwhm_voxels,
        siegel_percentile=siegel_percentile, siegel_dilation_voxels=siegel_dilation_voxels,
        max_points=emd_max_points, max_pairs=emd_max_pairs,
    )
    scores.update(mass_scores)
    notes.update(mass_notes)

    if parcellation is not None:
        parcels = _parcel_labels(other_input(parcellation, parcellation_affine, "parcellation"))
        roi, gt_parcel = _roi_metrics(rank_score, gt, parcels, brain)
        scores.update(roi)
        notes["gt_parcel"] = gt_parcel

    return {key: scores[key] for key in OVERLAP_METRICS if key in scores}, notes


def overlap_metrics(*args: Any, **kwargs: Any) -> dict[str, float]:
    """Score an attribution map against a binary ground-truth mask.

    Takes the parameters of :func:`overlap_metrics_report` (one signature for both) and returns its
    scores.

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
        How the rank metrics and ``emd`` read the map. Rank metrics rank ``|a|`` ("abs"),
        ``max(a, 0)`` ("pos") or the signed ``a`` ("raw"); ``emd`` needs non-negative mass:
        ``|a|`` for "abs", ``max(a, 0)`` for both "pos" and "raw". The two relevance mass
        accuracies ignore it: each reads the map as its definition says (``max(a, 0)``; ``|a|``).
    affine, gt_affine, mask_affine, parcellation_affine
        4x4 voxel-to-mm affines. Taken from nibabel images when those are given. Every affine that
        is known must match the attribution's within :data:`AFFINE_ATOL_MM` mm per entry; the
        attribution's affine also gives the geometry (voxel sizes, obliquity) for ``emd``.
    voxel_size
        Voxel size(s) in mm when no affine is known (default 1 mm isotropic); checked against the
        affine when both are given.
    parcellation
        3D integer label image (0 = background). Adds ``roi_rank``, ``roi_top1``, ``roi_top3``.
    siegel_fwhm_voxels, siegel_percentile, siegel_dilation_voxels
        The three steps of ``relevance_mass_accuracy_siegel``: Gaussian FWHM of the smoothing of
        ``|a|`` in voxels (0: none), the percentile (0-100, over brain voxels) below which the
        smoothed map is set to 0, and the dilation of the GT in face-connected voxel steps (0:
        none). Defaults: the Siegel et al. 2025 procedure (:data:`SIEGEL_FWHM_VOXELS`,
        :data:`SIEGEL_PERCENTILE`, :data:`SIEGEL_DILATION_VOXELS`). Rank metrics, ``emd`` and
        ``relevance_mass_accuracy`` never see them.
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
            Arras et al. 2022 (CLEVR-XAI) and Quantus's ``RelevanceMassAccuracy``: share of the
            positive part of the map, ``max(a, 0)``, inside GT (brain voxels only). NaN when the
            map has no positive value in the brain.
        ``relevance_mass_accuracy_siegel``
            The procedure of the code released with Siegel et al. 2025: ``|a|`` in the brain,
            smoothed (Gaussian, ``siegel_fwhm_voxels`` FWHM, in voxels), values below the brain
            voxels' ``siegel_percentile``-th percentile set to 0; the share of what is left
            inside GT dilated by ``siegel_dilation_voxels`` voxels. NaN when the map is 0 in the
            brain. Dilation credits mass next to the GT: it is more lenient than
            ``relevance_mass_accuracy`` and rewards a map that is near, not only in, the GT.
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
        ``emd``/``emd_score`` are NaN when there is no score mass (e.g. "pos" of a negative map).

    Raises
    ------
    MetricsError
        Empty GT inside the brain, shape or affine mismatch, a non-3D or non-finite attribution,
        a non-binary GT or mask, non-integer parcellation, or GT outside every parcel.
    """
    scores, _ = overlap_metrics_report(*args, **kwargs)
    return scores


# One signature for both entry points, so that they cannot drift apart; help() and Sphinx show it
# with this function's return type.
overlap_metrics.__signature__ = inspect.signature(overlap_metrics_report).replace(  # type: ignore
    return_annotation=inspect.signature(overlap_metrics).return_annotation
)
