"""Attribution maps on any grid scored against a ground-truth mask: one table row per map.

:func:`score_maps` is the core behind the ``GroundTruthOverlap`` interface: nibabel images in
(already read, e.g. by :func:`nipype_xai.images.load_volume`), rows of the overlap table out. It
brings every map onto the ground truth's grid and calls
:func:`~nipype_xai.metrics.overlap.overlap_metrics_report`; no files, no Nipype.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import nibabel as nib
import numpy as np

from .inputs import AFFINE_ATOL_MM, SCORES, MetricsError, _image_name
from .overlap import overlap_metrics_report

__all__ = ["score_maps"]

Image = nib.spatialimages.SpatialImage


def _is_binary(img: Image) -> bool:
    """Whether an image holds only the values 0 and 1 (a mask, whatever its data type)."""
    data = np.asarray(img.dataobj)
    return bool(np.isin(data, (0, 1)).all())


def _same_grid(a: Image, b: Image) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(
        a.affine, b.affine, rtol=0.0, atol=AFFINE_ATOL_MM
    )


def _onto_grid(img: Image, reference: Image, interpolation: str) -> Image:
    from nilearn.image import resample_to_img  # nilearn is slow to import; only when resampling

    return resample_to_img(img, reference, interpolation=interpolation, force_resample=True,
                           copy_header=True)


def score_maps(
    maps: Iterable[tuple[str, Image]],
    ground_truth: Image,
    brain_mask: Optional[Image] = None,
    score: str = "abs",
) -> list[dict[str, Any]]:
    """Score attribution maps against a ground-truth mask (SPEC §3 metrics), one row per map.

    The ground truth and the brain mask are read as masks: nonzero voxels are inside. The ground
    truth defines the grid the metrics are computed on: a map on another grid is resampled onto
    it before scoring, with linear interpolation, or with nearest neighbour when the map holds
    only 0 and 1 (a mask given as a map, e.g. an oracle or a thresholded map: interpolating it
    would invent values no map had), as the brain mask is; the row says which in ``resampled``.

    Parameters
    ----------
    maps
        ``(method, map)`` pairs, e.g. ``zip(methods, images)``; 3D maps, signed and raw. An
        iterator is read one map at a time, so a lazy one keeps one map in memory.
    ground_truth
        3D mask of the voxels that carry the signal (e.g. a lesion mask on the T1w grid).
    brain_mask
        3D mask; voxels outside it are ignored by every metric. None: the whole volume.
    score
        How the rank metrics and ``emd`` read maps (:data:`~nipype_xai.metrics.overlap.SCORES`):
        ``"abs"`` ``|a|``, ``"pos"`` ``max(a, 0)``, ``"raw"`` signed ``a``. The two relevance mass
        accuracies read maps as their definitions say, whatever ``score`` is
        (:data:`~nipype_xai.metrics.overlap.METRIC_CONVENTIONS`).

    Returns
    -------
    list of dict
        One row per map, in order: ``method``, ``score``, the metrics of
        :func:`~nipype_xai.metrics.overlap.overlap_metrics` (NaN where undefined), then
        ``emd_method`` (exact, or the coarsening used), ``n_gt_voxels`` (= k),
        ``n_brain_voxels`` and ``resampled`` (``"no"``, or how the map was brought onto the
        ground truth's grid).

    Raises
    ------
    MetricsError
        The ground truth is empty, or lies outside the brain mask; a map cannot be scored (e.g.
        non-finite values). Messages name the files of images read from files
        (``get_filename()``), else the input (``ground_truth``, ``brain_mask``, the method).
    """
    if score not in SCORES:
        raise MetricsError(f"score must be one of {SCORES}, got {score!r}")
    gt_name = _image_name(ground_truth, "ground_truth")
    gt = np.asarray(ground_truth.dataobj) != 0
    if not gt.any():
        raise MetricsError(
            f"{gt_name}: the ground-truth mask is empty (no nonzero voxel); no overlap "
            "metric is defined without a target"
        )

    brain = None
    if brain_mask is not None:
        mask_name = _image_name(brain_mask, "brain_mask")
        if not _same_grid(brain_mask, ground_truth):
            brain_mask = _onto_grid(brain_mask, ground_truth, "nearest")
        brain = np.asarray(brain_mask.dataobj) != 0
        if not (gt & brain).any():
            raise MetricsError(
                f"{gt_name}: the ground-truth mask lies entirely outside the brain mask "
                f"{mask_name}"
            )

    rows = []
    for method, map_img in maps:
        map_name = _image_name(map_img, method)
        resampled = None
        if not _same_grid(map_img, ground_truth):
            resampled = "nearest" if _is_binary(map_img) else "linear"
            map_img = _onto_grid(map_img, ground_truth, resampled)
        try:
            scores, notes = overlap_metrics_report(
                np.asarray(map_img.dataobj, dtype=np.float32), gt, brain, score,
                affine=ground_truth.affine,
            )
        except MetricsError as error:
            raise MetricsError(f"{map_name} vs {gt_name}: {error}") from error
        rows.append({
            "method": method,
            "score": score,
            **scores,
            "emd_method": notes.get("emd_method"),
            "n_gt_voxels": notes.get("n_gt_voxels"),
            "n_brain_voxels": notes.get("n_brain_voxels"),
            "resampled": f"{resampled} onto the ground-truth grid" if resampled else "no",
        })
    return rows
