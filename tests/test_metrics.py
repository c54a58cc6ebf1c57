"""Ground-truth overlap metrics (nipype_xai.metrics.overlap): closed forms and references."""

from __future__ import annotations

import inspect
import math
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from scipy.spatial.distance import pdist

from nipype_xai.metrics import mass as mass_module
from nipype_xai.metrics import (
    AFFINE_ATOL_MM,
    MetricsError,
    brain_diameter_mm,
    overlap_metrics,
    overlap_metrics_report,
)
from nipype_xai.metrics.overlap import OVERLAP_METRICS
from nipype_xai.metrics.scoring import score_maps

RANK_KEYS = ("precision_at_k", "pointing_game", "auroc", "average_precision", "dice_at_k")
MASS_SHARES = ("relevance_mass_accuracy", "relevance_mass_accuracy_siegel")
ALL_KEYS = RANK_KEYS + MASS_SHARES + ("emd", "emd_score")


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return ((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


@pytest.fixture
def case():
    """A 14x12x10 volume: ellipsoid brain mask, ball-shaped GT inside it, smooth seeded noise."""
    shape = (14, 12, 10)
    grid = np.indices(shape)
    centre = (np.asarray(shape) - 1)[:, None, None, None] / 2
    brain = (((grid - centre) / (np.asarray(shape)[:, None, None, None] / 2)) ** 2).sum(0) < 1
    gt = _ball(shape, (5, 6, 4), 2.2)
    assert np.all(brain[gt])
    noise = ndimage.gaussian_filter(np.random.default_rng(3).standard_normal(shape), 1.0)
    return brain, gt, noise


# ---------------------------------------------------------------------------------------------
# Closed forms on whole maps
# ---------------------------------------------------------------------------------------------


def test_ground_truth_as_map_is_perfect(case):
    brain, gt, _ = case
    scores, notes = overlap_metrics_report(gt.astype(float), gt, brain, voxel_size=(1.0, 2.0, 1.5))
    assert list(scores) == [
        "precision_at_k", "relevance_mass_accuracy", "relevance_mass_accuracy_siegel",
        "pointing_game", "auroc", "average_precision", "dice_at_k", "emd", "emd_score",
    ]
    for key in RANK_KEYS + MASS_SHARES:
        assert scores[key] == pytest.approx(1.0, abs=1e-12), key
    assert scores["emd"] == pytest.approx(0.0, abs=1e-9)
    assert scores["emd_score"] == pytest.approx(1.0, abs=1e-12)
    assert notes["emd_method"] == "exact"
    assert notes["n_gt_voxels"] == int(gt.sum())
    assert all(isinstance(value, float) for value in scores.values())


def test_inverted_map_is_worst(case):
    brain, gt, _ = case
    inverted = np.where(gt, 0.0, 1.0)
    scores = overlap_metrics(inverted, gt, brain)
    n_gt, n_brain = int(gt.sum()), int(brain.sum())
    assert scores["auroc"] == 0.0
    assert scores["precision_at_k"] == 0.0
    assert scores["dice_at_k"] == 0.0
    assert scores["pointing_game"] == 0.0
    assert scores["relevance_mass_accuracy"] == 0.0
    # All GT voxels ranked last, tied: one threshold step at recall 1 with precision = base rate.
    assert scores["average_precision"] == pytest.approx(n_gt / n_brain)
    # The same with the signed score: -indicator ranks GT below every other voxel.
    assert overlap_metrics(-gt.astype(float), gt, brain, score="raw")["auroc"] == 0.0


def test_random_map_is_at_chance():
    shape = (24, 24, 24)
    gt = _ball(shape, (11, 12, 10), 5)
    noise = np.random.default_rng(0).standard_normal(shape)
    scores = overlap_metrics(noise, gt)
    base_rate = gt.mean()
    assert scores["auroc"] == pytest.approx(0.5, abs=0.05)
    assert scores["average_precision"] == pytest.approx(base_rate, abs=0.03)
    assert scores["precision_at_k"] == pytest.approx(base_rate, abs=0.03)
    assert scores["relevance_mass_accuracy"] == pytest.approx(base_rate, abs=0.03)


def test_constant_map_scores_the_base_rate_whatever_the_voxel_order(case):
    brain, gt, _ = case
    base_rate = gt.sum() / brain.sum()
    scores = overlap_metrics(np.full(gt.shape, 2.0), gt, brain)
    for key in ("precision_at_k", "pointing_game", "average_precision", "dice_at_k"):
        assert scores[key] == pytest.approx(base_rate, abs=1e-12), key
    assert scores["auroc"] == 0.5
    assert scores["relevance_mass_accuracy"] == pytest.approx(base_rate, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------

HAND_MAP = np.array(
    [[0.9, 0.1, 0.0, 0.0],
     [0.8, -0.7, 0.0, 0.0],
     [0.0, 0.0, 0.2, 0.0],
     [0.0, 0.0, 0.0, 0.3]]
)[:, :, None]
HAND_GT = np.zeros((4, 4, 1), dtype=bool)
HAND_GT[0, 0] = HAND_GT[1, 1] = HAND_GT[3, 3] = True


def test_hand_computed_abs():
    # |a| sorted: .9 (GT) .8 .7 (GT) .3 (GT) .2 .1, ten zeros. k = 3; P = 3, N = 13.
    scores = overlap_metrics(HAND_MAP, HAND_GT, score="abs")
    assert scores["precision_at_k"] == pytest.approx(2 / 3)
    assert scores["dice_at_k"] == pytest.approx(2 / 3)
    assert scores["pointing_game"] == 1.0
    assert scores["auroc"] == pytest.approx((13 + 12 + 12) / 39)
    assert scores["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # Relevance mass accuracy is Arras et al.'s whatever the score: the positive part's share,
    # .9 + .3 of 2.3 (|a| would give 1.9 of 3).
    assert scores["relevance_mass_accuracy"] == pytest.approx(1.2 / 2.3)


def test_hand_computed_pos_and_raw():
    # pos: the GT voxel at -0.7 becomes 0 and ties with the ten negative zeros (half credit each).
    pos = overlap_metrics(HAND_MAP, HAND_GT, score="pos")
    assert pos["precision_at_k"] == pytest.approx(2 / 3)
    assert pos["auroc"] == pytest.approx((13 + 12 + 0.5 * 10) / 39)
    assert pos["relevance_mass_accuracy"] == pytest.approx(1.2 / 2.3)
    # raw ranks the signed value: -0.7 is below every negative voxel.
    raw = overlap_metrics(HAND_MAP, HAND_GT, score="raw")
    assert raw["auroc"] == pytest.approx((13 + 12 + 0) / 39)
    # ... while emd uses the positive part, as "pos" (and relevance mass accuracy always does).
    assert raw["emd"] == pytest.approx(pos["emd"])
    assert raw["relevance_mass_accuracy"] == pytest.approx(1.2 / 2.3)


def test_tie_at_the_top_k_cut_counts_expected_hits():
    # Scores 3 | 2 2 2 | 1 with GT = {3, one of the 2s, 1}: k = 3 takes the 3 and two of the three
    # tied 2s, which hold 1/3 GT each on average: hits = 1 + 2/3.
    a = np.array([3.0, 2.0, 2.0, 2.0, 1.0])[:, None, None]
    gt = np.array([1, 0, 1, 0, 1])[:, None, None]
    scores = overlap_metrics(a, gt)
    assert scores["precision_at_k"] == pytest.approx((1 + 2 / 3) / 3)
    # The same voxels in another order give the same numbers: no voxel-order tie break.
    permuted = overlap_metrics(a[::-1], gt[::-1])
    assert permuted == pytest.approx(scores)
    # Pointing game: the maximum is unique and in GT.
    assert scores["pointing_game"] == 1.0
    tied_top = overlap_metrics(np.array([2.0, 2.0, 2.0, 2.0, 1.0])[:, None, None], gt)
    assert tied_top["pointing_game"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("levels", [None, 5])
def test_rank_metrics_match_references(case, levels):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    brain, gt, noise = case
    a = noise + 0.3 * gt
    if levels:  # quantised scores: many ties
        a = np.round(a * levels) / levels
    scores = overlap_metrics(a, gt, brain)
    s, y = np.abs(a)[brain], gt[brain]
    assert scores["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
    assert scores["average_precision"] == pytest.approx(
        sklearn_metrics.average_precision_score(y, s), abs=1e-12
    )
    # Mann-Whitney U with average ranks (scipy.stats.rankdata) is the same area.
    ranks = stats.rankdata(s)
    n_pos, n_neg = y.sum(), (~y).sum()
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    assert scores["auroc"] == pytest.approx(u / (n_pos * n_neg), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Earth mover's distance
# ---------------------------------------------------------------------------------------------


def test_emd_between_point_masses_is_their_distance_in_mm():
    shape = (5, 4, 3)
    a = np.zeros(shape)
    a[0, 0, 0] = -5.0  # abs score: the sign does not matter
    gt = np.zeros(shape, dtype=bool)
    gt[3, 2, 1] = True
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)  # translation must not matter
    expected = math.sqrt((3 * 1.5) ** 2 + (2 * 2.0) ** 2 + (1 * 3.0) ** 2)
    assert overlap_metrics(a, gt, affine=affine)["emd"] == pytest.approx(expected, abs=1e-9)
    assert overlap_metrics(a, gt, voxel_size=(1.5, 2.0, 3.0))["emd"] == pytest.approx(expected)
    # Default: 1 mm isotropic.
    assert overlap_metrics(a, gt)["emd"] == pytest.approx(math.sqrt(9 + 4 + 1))


def test_emd_oblique_affine_uses_world_distances():
    a = np.zeros((3, 3, 1))
    a[0, 0, 0] = 1.0
    gt = np.zeros((3, 3, 1), dtype=bool)
    gt[2, 0, 0] = True
    angle = np.deg2rad(30)
    affine = np.eye(4)
    cos, sin = np.cos(angle), np.sin(angle)
    affine[:2, :2] = 2.0 * np.array([[cos, -sin], [sin, cos]])  # 2 mm voxels, rotated
    assert overlap_metrics(a, gt, affine=affine)["emd"] == pytest.approx(4.0)


def test_emd_hand_computed_transport_and_emd_score():
    # 1D: mass 3/4 at voxel 0 and 1/4 at voxel 3; GT voxels 1 and 2 (1/2 each). The 1D W1 is
    # the area between the CDFs: |.75-0| + |.75-.5| + |.75-1| = 1.25 voxels = 2.5 mm at 2 mm.
    a = np.array([3.0, 0.0, 0.0, 1.0])[:, None, None]
    gt = np.array([0, 1, 1, 0])[:, None, None]
    scores, notes = overlap_metrics_report(a, gt, voxel_size=2.0)
    assert scores["emd"] == pytest.approx(2.5)
    assert notes["brain_diameter_mm"] == pytest.approx(6.0)
    assert scores["emd_score"] == pytest.approx(1 - 2.5 / 6.0)
    # Moving two units of mass two voxels each: 2 voxels = 4 mm.
    shifted = overlap_metrics(np.array([1.0, 1.0, 0, 0])[:, None, None],
                              np.array([0, 0, 1, 1])[:, None, None], voxel_size=2.0)
    assert shifted["emd"] == pytest.approx(4.0)
    assert shifted["emd_score"] == pytest.approx(1 - 4.0 / 6.0)


def test_coarsened_emd_agrees_with_exact_within_its_error_bound(case):
    brain, gt, noise = case
    a = noise + 2.0 * gt
    exact, exact_notes = overlap_metrics_report(a, gt, brain, voxel_size=(1.0, 1.2, 2.0))
    assert exact_notes["emd_method"] == "exact"
    assert exact_notes["emd_error_bound_mm"] == 0.0
    approx, notes = overlap_metrics_report(
        a, gt, brain, voxel_size=(1.0, 1.2, 2.0), emd_max_points=150, emd_max_pairs=10_000
    )
    assert notes["emd_method"].startswith("coarsened")
    n_score, n_gt = notes["emd_support_sizes"]
    assert n_score <= 150 and n_gt <= 150 and n_score * n_gt <= 10_000
    bound = notes["emd_error_bound_mm"]
    assert 0 < bound
    # The bound is guaranteed (triangle inequality) ...
    assert abs(approx["emd"] - exact["emd"]) <= bound + 1e-9
    # ... and the estimate is in practice much closer: within 10 % here.
    assert approx["emd"] == pytest.approx(exact["emd"], rel=0.10)
    # Coarsening never touches the other metrics.
    for key in RANK_KEYS + MASS_SHARES:
        assert approx[key] == exact[key]


@pytest.mark.parametrize("brute_force_limit", [3000, 4])
def test_brain_diameter(monkeypatch, brute_force_limit):
    # A limit of 4 candidate points sends every mask through the convex-hull path.
    monkeypatch.setattr(mass_module, "_DIAMETER_BRUTE_FORCE", brute_force_limit)
    full = np.ones((4, 4, 1), dtype=bool)  # flat: qhull needs its joggle option
    assert brain_diameter_mm(full, np.diag([1.0, 2.0, 3.0])) == pytest.approx(math.hypot(3, 6))
    assert brain_diameter_mm(np.zeros((3, 3, 3), bool)) == 0.0
    # Scattered masks against brute force over all voxel pairs.
    for seed, shape in enumerate([(16, 16, 16), (20, 12, 9), (25, 25, 1)]):
        mask = np.random.default_rng(seed).random(shape) < 0.3
        linear = np.array([[1.0, 0.2, 0.0], [0.0, 1.3, 0.0], [0.1, 0.0, 0.7]])  # oblique
        brute = pdist(np.argwhere(mask) @ linear.T).max()
        assert brain_diameter_mm(mask, linear) == pytest.approx(brute, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Brain mask, parcels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    {}, {"siegel_fwhm_voxels": 3.0, "siegel_percentile": 50.0, "siegel_dilation_voxels": 1},
])
def test_voxels_outside_the_brain_are_ignored(case, extra):
    brain, gt, noise = case
    a = noise + 0.5 * gt
    reference = overlap_metrics(a, gt, brain, **extra)
    outside = np.argwhere(~brain)
    spiked = a.copy()
    spiked[tuple(outside[0])] = 1e6
    spiked[tuple(outside[-1])] = -1e6
    assert overlap_metrics(spiked, gt, brain, **extra) == reference
    # GT outside the brain is ignored too.
    gt_out = gt.copy()
    gt_out[tuple(outside[1])] = True
    assert overlap_metrics(a, gt_out, brain, **extra) == reference
    # Without the mask, the spike wins the pointing game against the GT.
    assert overlap_metrics(spiked, gt)["pointing_game"] == 0.0


def test_roi_rank_three_parcels():
    a = np.array([1.0, 1.0, 5.0, -5.0, 3.0, 3.0, 9.0])[:, None, None]
    parcels = np.array([1, 1, 2, 2, 3, 3, 0])[:, None, None]  # label 0: background, not a parcel
    gt_in_3 = np.array([0, 0, 0, 0, 1, 0, 0])[:, None, None]
    scores, notes = overlap_metrics_report(a, gt_in_3, parcellation=parcels)
    # Mean |a|: parcel 1 = 1, parcel 2 = 5, parcel 3 = 3 -> the GT parcel 3 ranks second.
    assert notes["gt_parcel"] == 3
    assert (scores["roi_rank"], scores["roi_top1"], scores["roi_top3"]) == (2.0, 0.0, 1.0)
    # With the signed score, parcel 2's mean is 0: parcel 3 is first.
    raw = overlap_metrics(a, gt_in_3, score="raw", parcellation=parcels)
    assert (raw["roi_rank"], raw["roi_top1"]) == (1.0, 1.0)
    # The GT region is the parcel holding most GT voxels.
    gt_mostly_1 = np.array([1, 1, 0, 0, 1, 0, 0])[:, None, None]
    scores, notes = overlap_metrics_report(a, gt_mostly_1, parcellation=parcels)
    assert notes["gt_parcel"] == 1
    assert scores["roi_rank"] == 3.0
    # Tied parcels share their average rank.
    tied = np.array([3.0, 3.0, 5.0, -5.0, 3.0, 3.0, 0.0])[:, None, None]
    assert overlap_metrics(tied, gt_in_3, parcellation=parcels)["roi_rank"] == 2.5
    with pytest.raises(MetricsError, match="parcel"):
        overlap_metrics(a, np.array([0, 0, 0, 0, 0, 0, 1])[:, None, None], parcellation=parcels)
    with pytest.raises(MetricsError, match="integer"):
        overlap_metrics(a, gt_in_3, parcellation=parcels + 0.5)


# ---------------------------------------------------------------------------------------------
# Inputs and errors
# ---------------------------------------------------------------------------------------------


def test_nibabel_images_and_tensors(case):
    brain, gt, noise = case
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    expected = overlap_metrics(noise, gt, brain, affine=affine)
    images = [nib.Nifti1Image(array, affine) for array in (noise, gt.astype(np.uint8),
                                                            brain.astype(np.uint8))]
    assert overlap_metrics(*images) == expected
    # NIfTI round-trip noise (float32 affine) is within tolerance.
    jittered = nib.Nifti1Image(gt.astype(np.uint8), affine + AFFINE_ATOL_MM / 10)
    assert overlap_metrics(images[0], jittered, images[2]) == expected
    tensor = torch.from_numpy(noise).requires_grad_(True)
    assert overlap_metrics(tensor, gt, brain, affine=affine) == expected


def test_errors(case):
    brain, gt, noise = case
    with pytest.raises(MetricsError, match="empty"):
        overlap_metrics(noise, np.zeros_like(gt), brain)
    gt_outside = np.zeros_like(gt)
    gt_outside[tuple(np.argwhere(~brain)[0])] = True
    with pytest.raises(MetricsError, match="empty"):  # GT only outside the brain
        overlap_metrics(noise, gt_outside, brain)
    with pytest.raises(MetricsError, match="shape"):
        overlap_metrics(noise, gt[:-1], brain)
    with pytest.raises(MetricsError, match="shape"):
        overlap_metrics(noise, gt, brain[..., :-1])
    with pytest.raises(MetricsError, match="3D"):
        overlap_metrics(noise[None], gt[None])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted = affine.copy()
    shifted[0, 3] = 1.0  # half a voxel
    with pytest.raises(MetricsError, match="affine"):
        overlap_metrics(noise, gt, brain, affine=affine, gt_affine=shifted)
    with pytest.raises(MetricsError, match="affine"):
        overlap_metrics(
            nib.Nifti1Image(noise, affine), nib.Nifti1Image(gt.astype(np.uint8), shifted)
        )
    with pytest.raises(MetricsError, match="brain_mask.*affine"):
        overlap_metrics(noise, gt, brain, affine=affine, mask_affine=shifted)
    bad = noise.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MetricsError, match="NaN"):
        overlap_metrics(bad, gt, brain)
    bad[0, 0, 0] = np.inf
    with pytest.raises(MetricsError, match="NaN or Inf"):
        overlap_metrics(bad, gt, brain)
    with pytest.raises(MetricsError, match="binary"):
        overlap_metrics(noise, gt * 0.5, brain)
    with pytest.raises(MetricsError, match="binary"):
        overlap_metrics(noise, gt, brain * 2)
    with pytest.raises(MetricsError, match="score"):
        overlap_metrics(noise, gt, brain, score="square")
    with pytest.raises(MetricsError, match="voxel_size"):
        overlap_metrics(noise, gt, brain, affine=affine, voxel_size=1.0)
    assert issubclass(MetricsError, ValueError)


def test_no_score_mass_gives_nan_mass_metrics(case):
    brain, gt, noise = case
    scores, notes = overlap_metrics_report(-np.abs(noise) - 1.0, gt, brain, score="pos")
    assert math.isnan(scores["relevance_mass_accuracy"])  # no positive part, whatever the score
    assert 0 < scores["relevance_mass_accuracy_siegel"] <= 1  # |a|: defined
    assert math.isnan(scores["emd"]) and math.isnan(scores["emd_score"])
    assert notes["mass_total"] == 0.0
    # Rank metrics remain defined: a constant map (all zeros after "pos") is at chance.
    assert scores["auroc"] == 0.5


def test_gt_filling_the_brain_has_no_auroc():
    gt = np.ones((3, 3, 3), dtype=bool)
    scores = overlap_metrics(np.random.default_rng(0).random((3, 3, 3)), gt)
    assert math.isnan(scores["auroc"])
    assert scores["precision_at_k"] == 1.0 and scores["average_precision"] == 1.0


def test_mni_sized_volume_is_fast():
    # 91 x 109 x 91 at 2 mm: everything but emd well under a second; emd bounded by the exact
    # problem size limits. Generous limit here: shared CI machines are slow.
    shape = (91, 109, 91)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1)[:, None, None, None] / 2
    brain = (((grid - centre) / (0.45 * np.asarray(shape))[:, None, None, None]) ** 2).sum(0) < 1
    gt = _ball(shape, (30, 60, 40), 6)
    a = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(shape), 2) + 0.05 * gt
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    import ot  # noqa: F401  (POT's first import, ~2 s with torch, is not the metrics' time)

    start = time.perf_counter()
    scores, notes = overlap_metrics_report(a, gt, brain, affine=affine)
    elapsed = time.perf_counter() - start
    assert set(ALL_KEYS) <= set(scores)
    n_score, n_gt = notes["emd_support_sizes"]
    assert max(n_score, n_gt) <= 4000 and n_score * n_gt <= 2_000_000
    assert elapsed < 30.0  # a guard against a pathological slowdown, not a benchmark


def test_overlap_metrics_has_the_reports_signature():
    # One signature for both entry points: what help() shows, and what a call accepts.
    report = inspect.signature(overlap_metrics_report)
    scores_only = inspect.signature(overlap_metrics)
    assert list(scores_only.parameters.values()) == list(report.parameters.values())
    assert "dict[str, float]" in str(scores_only.return_annotation)
    with pytest.raises(TypeError, match="fwhm"):
        overlap_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 2)), fwhm=3.0)


# --------------------------------------------------------------------------------------------
# score_maps: images on any grid -> one row per map
# --------------------------------------------------------------------------------------------

GT_AFFINE = np.array([[4.0, 0, 0, -30], [0, 4, 0, -40], [0, 0, 4, -20], [0, 0, 0, 1]])


def _image(data, affine=GT_AFFINE, dtype=np.float32):
    return nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)


def test_score_maps_rows_match_the_core_and_resample_onto_the_gt_grid(case):
    brain, gt, noise = case
    fine_affine = GT_AFFINE.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= 1  # voxel centres of a 2x upsampling: the same field of view
    oracle_fine = np.kron(gt, np.ones((2, 2, 2)))
    rows = score_maps(
        iter([("random", _image(noise)), ("oracle", _image(oracle_fine, fine_affine))]),
        _image(gt, dtype=np.uint8), _image(brain, dtype=np.uint8), "pos",
    )
    assert [row["method"] for row in rows] == ["random", "oracle"]
    assert list(rows[0]) == [
        "method", "score", "precision_at_k", "relevance_mass_accuracy",
        "relevance_mass_accuracy_siegel", "pointing_game", "auroc", "average_precision",
        "dice_at_k", "emd", "emd_score", "emd_method", "n_gt_voxels", "n_brain_voxels",
        "resampled",
    ]
    assert list(rows[0])[2:11] == list(OVERLAP_METRICS[:9])
    expected = overlap_metrics(noise.astype(np.float32), gt, brain, "pos", affine=GT_AFFINE)
    assert {key: rows[0][key] for key in expected} == pytest.approx(expected)
    assert rows[0]["resampled"] == "no" and rows[0]["score"] == "pos"
    assert rows[0]["n_gt_voxels"] == int((gt & brain).sum())
    # A 0/1 map on a finer grid: nearest neighbour gives the GT back exactly.
    assert rows[1]["resampled"] == "nearest onto the ground-truth grid"
    assert rows[1]["precision_at_k"] == 1.0


def test_score_maps_errors_name_the_files(tmp_path, case):
    brain, gt, noise = case
    empty = _image(np.zeros_like(gt), dtype=np.uint8)
    with pytest.raises(MetricsError, match=r"^ground_truth: the ground-truth mask is empty"):
        score_maps([("random", _image(noise))], empty)
    # An image read from a file is named by its file.
    empty.set_filename(str(tmp_path / "sub-02_label-lesion_mask.nii.gz"))
    with pytest.raises(MetricsError, match=r"^sub-02_label-lesion_mask\.nii\.gz: .* empty"):
        score_maps([("random", _image(noise))], empty)
    bad = _image(np.where(brain, noise, np.nan))
    bad.set_filename(str(tmp_path / "sub-01_desc-gradient_attribution.nii.gz"))
    with pytest.raises(MetricsError, match=r"^sub-01_desc-gradient_attribution\.nii\.gz vs "
                                           r"ground_truth: attribution: .* NaN"):
        score_maps([("gradient", bad)], _image(gt, dtype=np.uint8))
    with pytest.raises(MetricsError, match="score must be one of"):
        score_maps([("gradient", bad)], _image(gt, dtype=np.uint8), score="neg")
