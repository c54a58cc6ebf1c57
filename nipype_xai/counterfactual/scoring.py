"""Scoring a counterfactual on the atrophy task, where the truth is a known deformation.

In an atrophy positive the caudate was contracted by a known map ``c``
(:mod:`nipype_xai.synth.atrophy`). Asked for the *control* version of such a subject, a simulator
that found the signal must undo the contraction: the map from the subject to its counterfactual
should be ``c`` itself (the atrophied subject's voxel ``q`` shows the template at ``c(q)``; the
counterfactual must show it at ``q``), so its log-Jacobian should be **positive** (expansion)
where the caudate shrank, with the closed form :func:`~nipype_xai.synth.atrophy.
atrophy_log_jacobian`, and zero elsewhere. Two readings follow:

* the sign, inside the region the contraction is centred on (``label-caudate``): there ``c`` is a
  pure scaling and the true log-Jacobian is ``log(1 / (1 - fraction))`` > 0 everywhere; the mean
  log-Jacobian there and the share of its voxels that expand. Not inside the exact ground truth
  (``label-atrophy``, :func:`~nipype_xai.synth.atrophy.atrophy_signal_mask`): that mask also holds
  the taper around the region, which ``c`` stretches (log-Jacobian < 0) by as much volume as the
  core loses (``c`` is the identity beyond the taper, so the total volume is unchanged); the true
  map's mean log-Jacobian over it is slightly *negative* (-0.03 at a 30 % loss), so its sign
  says nothing (it is reported, as ``mean_log_jacobian_gt``, for the record);
* where the deformation is: :func:`~nipype_xai.metrics.overlap_metrics` on ``|log-Jacobian|``
  against the exact ground truth, the scores every attribution map gets in the benchmark;
* with the closed-form map at hand (``expected``), the voxelwise agreement with it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..metrics import overlap_metrics

__all__ = ["atrophy_counterfactual_scores"]


def atrophy_counterfactual_scores(
    log_jacobian: np.ndarray,
    ground_truth: np.ndarray,
    brain_mask: Optional[np.ndarray] = None,
    *,
    region: Optional[np.ndarray] = None,
    affine: Optional[np.ndarray] = None,
    expected: Optional[np.ndarray] = None,
) -> dict[str, float]:
    """One subject's scores of a counterfactual's log-Jacobian map against the atrophy truth.

    Parameters
    ----------
    log_jacobian
        ``(X, Y, Z)``: the subject-to-counterfactual log-Jacobian
        (:attr:`~nipype_xai.counterfactual.CounterfactualResult.log_jacobian`), > 0 = expansion.
    ground_truth
        ``(X, Y, Z)`` binary: the exact atrophy ground truth on the same grid (non-empty).
    brain_mask
        ``(X, Y, Z)`` binary; None: every voxel.
    region
        ``(X, Y, Z)`` binary: the region the contraction is centred on (the cohort's
        ``label-caudate`` mask), for the signed scores; None: they are not computed.
    affine
        The grid's affine (mm geometry of ``emd``).
    expected
        ``(X, Y, Z)``: the closed-form log-Jacobian of the true contraction on the grid
        (:func:`~nipype_xai.synth.atrophy.atrophy_log_jacobian` at the grid's template points),
        for the voxelwise agreement.

    Returns
    -------
    dict[str, float]
        ``mean_log_jacobian_gt`` and ``mean_log_jacobian_outside_gt`` (inside the brain); the
        :func:`~nipype_xai.metrics.overlap_metrics` keys on ``|l|``; with ``region``:
        ``mean_log_jacobian_region`` and ``expansion_fraction_region`` (share of its voxels with
        a positive log-Jacobian); with ``expected``: ``correlation_expected`` (Pearson, inside
        the brain) and ``rmse_expected``.

    Raises
    ------
    ValueError
        Shapes differ, the map is not finite, or the ground truth is empty inside the brain.
    """
    values = np.asarray(log_jacobian, dtype=np.float64)
    gt = np.asarray(ground_truth) != 0
    brain = np.ones(values.shape, bool) if brain_mask is None else np.asarray(brain_mask) != 0
    roi = None if region is None else np.asarray(region) != 0
    for name, array in (("ground_truth", gt), ("brain_mask", brain), ("region", roi)):
        if array is None:
            continue
        if array.shape != values.shape:
            raise ValueError(f"{name}: shape {array.shape} does not match the log-Jacobian's "
                             f"{values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("log_jacobian: NaN or Inf voxels")
    inside, outside = gt & brain, brain & ~gt
    if not inside.any():
        raise ValueError("ground_truth: no voxel inside the brain mask (a control has no atrophy "
                         "to score)")
    scores = {
        "mean_log_jacobian_gt": float(values[inside].mean()),
        "mean_log_jacobian_outside_gt": float(values[outside].mean()) if outside.any()
        else float("nan"),
    }
    if roi is not None:
        if not (roi & brain).any():
            raise ValueError("region: no voxel inside the brain mask")
        scores["mean_log_jacobian_region"] = float(values[roi & brain].mean())
        scores["expansion_fraction_region"] = float(np.mean(values[roi & brain] > 0))
    scores.update(overlap_metrics(values, gt, brain, score="abs", affine=affine))
    if expected is not None:
        truth = np.asarray(expected, dtype=np.float64)
        if truth.shape != values.shape:
            raise ValueError(f"expected: shape {truth.shape} does not match the log-Jacobian's "
                             f"{values.shape}")
        a, b = values[brain], truth[brain]
        spread = a.std() * b.std()
        scores["correlation_expected"] = (float(np.mean((a - a.mean()) * (b - b.mean())) / spread)
                                          if spread > 0 else float("nan"))
        scores["rmse_expected"] = float(np.sqrt(np.mean((a - b) ** 2)))
    return scores
