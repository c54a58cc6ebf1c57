"""The two relevance mass accuracies (nipype_xai.metrics.mass), against independent references.

``relevance_mass_accuracy`` (Arras et al. 2022) against Quantus's ``RelevanceMassAccuracy``;
``relevance_mass_accuracy_siegel`` (the procedure of the code released with Siegel et al. 2025)
against a hand computation written out here with numpy loops, and cases that pin each step.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from nipype_xai.metrics import (
    METRIC_CONVENTIONS,
    OVERLAP_METRICS,
    SCORES,
    SIEGEL_DILATION_VOXELS,
    SIEGEL_FWHM_VOXELS,
    SIEGEL_PERCENTILE,
    MetricsError,
    overlap_metrics,
    overlap_metrics_report,
)

SIEGEL = "relevance_mass_accuracy_siegel"

# Pure Siegel steps, one at a time: no smoothing, no cutoff, no dilation.
NO_STEPS = {"siegel_fwhm_voxels": 0.0, "siegel_percentile": 0.0, "siegel_dilation_voxels": 0}


def _ellipsoid(shape):
    grid = np.indices(shape)
    centre = (np.asarray(shape) - 1)[:, None, None, None] / 2
    return (((grid - centre) / (np.asarray(shape)[:, None, None, None] / 2)) ** 2).sum(0) < 1


def _masks(shape, rng):
    """Ground-truth masks of a few shapes: a box, a ball, scattered voxels, one voxel."""
    box = np.zeros(shape, dtype=bool)
    box[1:4, 2:5, 1:3] = True
    grid = np.indices(shape)
    ball = ((grid - np.array([4, 3, 3])[:, None, None, None]) ** 2).sum(0) <= 4
    scattered = rng.random(shape) < 0.15
    single = np.zeros(shape, dtype=bool)
    single[2, 3, 1] = True
    return {"box": box, "ball": ball, "scattered": scattered, "single": single}


# ---------------------------------------------------------------------------------------------
# relevance_mass_accuracy = Arras et al. 2022 / Quantus
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantus_rma():
    """Quantus's RelevanceMassAccuracy through its public call, on (batch, 1, x, y, z) arrays.

    Quantus needs a model and inputs even for precomputed maps; it only checks their shapes, so a
    linear layer over the flattened volume will do. With ``channel_first=True`` 3D volumes pass
    its checks. ``abs=False, normalise=False``: the map reaches its sums unchanged. Its code
    divides the sums of the map it is given (a signed map can score below 0 or above 1); its
    docstring, as the paper, counts positive attributions, so it is given ``max(a, 0)``.
    """
    quantus = pytest.importorskip("quantus", reason="quantus (the `test` extra) is the reference")
    import torch

    metric = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)

    def score(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
        shape = maps.shape[1:]
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(shape), 2))
        x = np.zeros((len(maps), 1, *shape), dtype=np.float32)
        return np.asarray(metric(
            model=model.eval(), x_batch=x, y_batch=np.zeros(len(maps), dtype=int),
            a_batch=maps[:, None].astype(np.float64), s_batch=masks[:, None].astype(np.float64),
            channel_first=True, device="cpu",
        ))

    return score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relevance_mass_accuracy_equals_quantus_on_signed_3d_maps(quantus_rma, seed):
    rng = np.random.default_rng(seed)
    shape = (7, 6, 5)
    masks = _masks(shape, rng)
    # Signed maps with a positive bias in the box, so the cases are far from chance.
    maps = [rng.standard_normal(shape) + 0.8 * masks["box"] for _ in masks]
    ours = [overlap_metrics(a, gt)["relevance_mass_accuracy"]
            for a, gt in zip(maps, masks.values())]
    reference = quantus_rma(np.maximum(np.stack(maps), 0.0), np.stack(list(masks.values())))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    # The sign matters: |a| (the old reading) and Quantus on the raw signed map are different
    # numbers, so the comparison above can tell them apart.
    by_abs = [float(np.abs(a)[gt].sum() / np.abs(a).sum()) for a, gt in zip(maps, masks.values())]
    assert np.max(np.abs(np.subtract(ours, by_abs))) > 1e-3
    raw = quantus_rma(np.stack(maps), np.stack(list(masks.values())))
    assert np.max(np.abs(np.subtract(ours, raw))) > 1e-3


def test_relevance_mass_accuracy_with_a_brain_mask(quantus_rma):
    # Inside a brain mask the metric is Quantus's on the map zeroed outside the brain, and the
    # GT outside the brain does not count: a closed form on three signed voxels checks both.
    rng = np.random.default_rng(5)
    shape = (9, 8, 7)
    brain = _ellipsoid(shape)
    gt = _masks(shape, rng)["ball"] & brain
    a = rng.standard_normal(shape) + 0.5 * gt
    a[~brain] = 50.0  # large positive mass outside the brain: must not count
    ours = overlap_metrics(a, gt, brain)["relevance_mass_accuracy"]
    reference = quantus_rma(np.where(brain, np.maximum(a, 0.0), 0.0)[None], gt[None])[0]
    assert ours == pytest.approx(reference, abs=1e-6)

    tiny = np.zeros((3, 1, 1))
    tiny[:, 0, 0] = [2.0, -3.0, 1.0]
    gt_tiny = np.array([True, True, False])[:, None, None]
    # Positive part: 2 in GT of 2 + 1 = 2/3 (|a| would give 5/6).
    assert overlap_metrics(tiny, gt_tiny)["relevance_mass_accuracy"] == pytest.approx(2 / 3)
    brain_tiny = np.array([False, True, True])[:, None, None]
    # Without the first voxel: no positive mass in GT ∩ brain, 1 outside it.
    assert overlap_metrics(tiny, gt_tiny, brain_tiny)["relevance_mass_accuracy"] == 0.0


def test_relevance_mass_accuracy_ignores_score_and_is_nan_without_positive_mass():
    a = np.zeros((3, 1, 1))
    a[:, 0, 0] = [2.0, -3.0, 1.0]
    gt = np.array([True, True, False])[:, None, None]
    values = {score: overlap_metrics(a, gt, score=score)["relevance_mass_accuracy"]
              for score in SCORES}
    assert values == pytest.approx(dict.fromkeys(SCORES, 2 / 3))
    # A map that is negative everywhere has no positive mass: undefined, not 0.
    assert math.isnan(overlap_metrics(-np.abs(a) - 1, gt)["relevance_mass_accuracy"])


# ---------------------------------------------------------------------------------------------
# relevance_mass_accuracy_siegel: hand computation
# ---------------------------------------------------------------------------------------------


def _hand_gaussian(volume: np.ndarray, fwhm: float) -> np.ndarray:
    """Gaussian smoothing written out: a truncated (4 sigma), normalised 1D kernel per axis,
    zeros past the edges, applied as a sum of shifted copies."""
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = volume.astype(np.float64)
    for axis in range(3):
        padded = np.pad(out, [(radius, radius) if ax == axis else (0, 0) for ax in range(3)])
        result = np.zeros_like(out)
        for weight, offset in zip(kernel, offsets):
            window = [slice(None)] * 3
            window[axis] = slice(radius + offset, radius + offset + out.shape[axis])
            result += weight * padded[tuple(window)]
        out = result
    return out


def _hand_percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (numpy's default), written out."""
    ordered = np.sort(values)
    position = q / 100.0 * (len(ordered) - 1)
    low = int(math.floor(position))
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (position - low) * (ordered[high] - ordered[low]))


def _hand_dilation(mask: np.ndarray, steps: int) -> np.ndarray:
    """Every voxel within city-block distance ``steps`` of the mask (face-connected steps)."""
    grid = np.indices(mask.shape).reshape(3, -1).T
    points = np.argwhere(mask)
    distance = np.abs(grid[:, None, :] - points[None, :, :]).sum(-1).min(1)
    return (distance <= steps).reshape(mask.shape)


def _hand_siegel(a, gt, brain, fwhm, percentile, dilation):
    mass = np.where(brain, np.abs(a), 0.0)
    if fwhm > 0:
        mass = np.where(brain, _hand_gaussian(mass, fwhm), 0.0)
    cutoff = _hand_percentile(mass[brain], percentile)
    mass = np.where(mass >= cutoff, mass, 0.0)
    region = _hand_dilation(gt & brain, dilation) if dilation else gt & brain
    return float(mass[region & brain].sum() / mass.sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("settings", [
    {},  # the defaults: FWHM 2 voxels, 99th percentile, dilation by 2
    {"siegel_fwhm_voxels": 3.0, "siegel_percentile": 90.0, "siegel_dilation_voxels": 1},
    {"siegel_fwhm_voxels": 1.5, "siegel_percentile": 75.0, "siegel_dilation_voxels": 0},
])
def test_siegel_matches_a_hand_computation(seed, settings):
    rng = np.random.default_rng(seed)
    shape = (11, 10, 9)
    brain = _ellipsoid(shape)
    gt = _masks(shape, rng)["ball"] & brain
    a = rng.standard_normal(shape) - 1.5 * gt  # signed, with strong negative evidence in GT
    a[~brain] = 7.0
    got = overlap_metrics(a, gt, brain, **settings)[SIEGEL]
    fwhm = settings.get("siegel_fwhm_voxels", 2.0)
    percentile = settings.get("siegel_percentile", 99.0)
    dilation = settings.get("siegel_dilation_voxels", 2)
    assert got == pytest.approx(_hand_siegel(a, gt, brain, fwhm, percentile, dilation),
                                rel=1e-10, abs=1e-12)


def test_siegel_defaults_are_the_published_procedure():
    parameters = inspect.signature(overlap_metrics).parameters
    assert (SIEGEL_FWHM_VOXELS, SIEGEL_PERCENTILE, SIEGEL_DILATION_VOXELS) == (2.0, 99.0, 2)
    assert parameters["siegel_fwhm_voxels"].default == SIEGEL_FWHM_VOXELS
    assert parameters["siegel_percentile"].default == SIEGEL_PERCENTILE
    assert parameters["siegel_dilation_voxels"].default == SIEGEL_DILATION_VOXELS


def test_siegel_reads_the_magnitude_whatever_the_score():
    # Negative evidence on the GT is mass for the Siegel procedure (|a|) and none for Arras.
    a = np.full((5, 1, 1), 0.1)
    a[2] = -1.0
    gt = np.zeros((5, 1, 1), dtype=bool)
    gt[2] = True
    for score in SCORES:
        scores = overlap_metrics(a, gt, score=score, **NO_STEPS)
        assert scores[SIEGEL] == pytest.approx(1.0 / 1.4)
        assert scores["relevance_mass_accuracy"] == 0.0


def test_siegel_dilation_is_face_connected():
    # One voxel of GT; the map's only mass sits 2 face steps away, or 1 step along each of two
    # axes (city-block 2), or one step along each of three axes (city-block 3).
    shape = (7, 7, 7)
    gt = np.zeros(shape, dtype=bool)
    gt[3, 3, 3] = True
    for offset, inside_at in (((2, 0, 0), 2), ((1, 1, 0), 2), ((1, 1, 1), 3)):
        a = np.zeros(shape)
        a[3 + offset[0], 3 + offset[1], 3 + offset[2]] = 1.0
        for steps in range(4):
            settings = {**NO_STEPS, "siegel_dilation_voxels": steps}
            expected = 1.0 if steps >= inside_at else 0.0
            assert overlap_metrics(a, gt, **settings)[SIEGEL] == expected, (offset, steps)
        # The mass is outside the GT itself: Arras's metric gives 0.
        assert overlap_metrics(a, gt)["relevance_mass_accuracy"] == 0.0
    # With the defaults (FWHM 2 voxels: a face neighbour gets exactly half the centre's weight,
    # exp(-ln 2)), a spike 2 voxels off the GT keeps itself and its 6 face neighbours (tied at
    # the 99th percentile of 343 voxels); the spike and one neighbour lie in the dilated GT:
    # (1 + 1/2) / (1 + 6/2). Without dilation nothing does.
    a = np.zeros(shape)
    a[5, 3, 3] = 1.0
    assert overlap_metrics(a, gt)[SIEGEL] == pytest.approx(1.5 / 4.0)
    assert overlap_metrics(a, gt, siegel_dilation_voxels=0)[SIEGEL] == 0.0
    # ... and dilation never reaches outside the brain.
    brain = np.ones(shape, dtype=bool)
    brain[5, 3, 3] = False
    a[4, 3, 3] = 1.0
    _, notes = overlap_metrics_report(a, gt, brain, **{**NO_STEPS, "siegel_dilation_voxels": 2})
    assert notes["siegel_region_voxels"] == 25 - 1


def test_siegel_smoothing_is_in_voxels():
    # One unit of mass at the centre of a 5-voxel line, GT = the centre voxel, FWHM = 2.3548
    # voxels: sigma = 1 voxel whatever the voxel size, kernel exp(-d^2/2), and mass smoothed off
    # the volume is lost, so the share is 1 / (1 + 2 e^-1/2 + 2 e^-2).
    a = np.array([0.0, 0.0, -4.0, 0.0, 0.0])[:, None, None]
    gt = np.array([0, 0, 1, 0, 0])[:, None, None]
    fwhm = 2.0 * math.sqrt(2.0 * math.log(2.0))
    expected = 1.0 / (1.0 + 2.0 * math.exp(-0.5) + 2.0 * math.exp(-2.0))
    for voxel_size in [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0)]:
        scores = overlap_metrics(a, gt, voxel_size=voxel_size,
                                 **{**NO_STEPS, "siegel_fwhm_voxels": fwhm})
        assert scores[SIEGEL] == pytest.approx(expected, rel=1e-9)
        # Rank metrics stay on the unsmoothed map.
        assert scores["precision_at_k"] == 1.0


def test_siegel_percentile_is_over_brain_voxels():
    # Ten brain voxels holding 1..10 in a 10x10x10 volume of zeros; GT = the voxel holding 6.
    # Over the brain, the 50th percentile is 5.5: 6..10 keep their mass, 6 of 40 is in GT.
    # Over the whole volume it would be 0 and every voxel would keep its mass (6 of 55).
    a = np.zeros((10, 10, 10))
    brain = np.zeros(a.shape, dtype=bool)
    brain[:, 0, 0] = True
    a[:, 0, 0] = np.arange(1.0, 11.0)
    gt = np.zeros(a.shape, dtype=bool)
    gt[5, 0, 0] = True
    settings = {**NO_STEPS, "siegel_percentile": 50.0}
    scores, notes = overlap_metrics_report(a, gt, brain, **settings)
    assert notes["siegel_cutoff"] == pytest.approx(5.5)
    assert scores[SIEGEL] == pytest.approx(6.0 / 40.0)
    # The GT voxel below the cutoff loses its mass; percentile 0 keeps all of it.
    gt_low = np.zeros(a.shape, dtype=bool)
    gt_low[0, 0, 0] = True
    assert overlap_metrics(a, gt_low, brain, **settings)[SIEGEL] == 0.0
    assert overlap_metrics(a, gt_low, brain, **NO_STEPS)[SIEGEL] == pytest.approx(1.0 / 55.0)
    # The default 99th percentile over 10 values: 9.91 -- only the 10 is left.
    _, notes = overlap_metrics_report(a, gt, brain, **{**NO_STEPS, "siegel_percentile": 99.0})
    assert notes["siegel_cutoff"] == pytest.approx(9.91)
    assert notes["siegel_mass_total"] == pytest.approx(10.0)


def test_siegel_settings_are_checked():
    a, gt = np.ones((3, 3, 3)), np.ones((3, 3, 3))
    for settings, message in (({"siegel_fwhm_voxels": -1.0}, "siegel_fwhm_voxels"),
                              ({"siegel_percentile": 101.0}, "siegel_percentile"),
                              ({"siegel_dilation_voxels": 1.5}, "siegel_dilation_voxels"),
                              ({"siegel_dilation_voxels": -1}, "siegel_dilation_voxels")):
        with pytest.raises(MetricsError, match=message):
            overlap_metrics(a, gt, **settings)
    # A map that is zero in the brain has no mass to share.
    assert math.isnan(overlap_metrics(np.zeros((3, 3, 3)), gt)[SIEGEL])


# ---------------------------------------------------------------------------------------------
# One statement of every metric's convention
# ---------------------------------------------------------------------------------------------


def test_every_metric_states_its_convention_and_direction():
    from nipype_xai.metrics.group import LOWER_IS_BETTER

    assert list(OVERLAP_METRICS).index(SIEGEL) == (
        list(OVERLAP_METRICS).index("relevance_mass_accuracy") + 1)
    assert set(METRIC_CONVENTIONS) == set(SCORES)
    for score, conventions in METRIC_CONVENTIONS.items():
        assert list(conventions) == list(OVERLAP_METRICS)
        for metric, text in conventions.items():
            direction = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
            assert text.endswith(direction), (score, metric, text)
    # The relevance mass accuracies read the map their own way under every score ...
    for metric in ("relevance_mass_accuracy", SIEGEL):
        assert len({METRIC_CONVENTIONS[score][metric] for score in SCORES}) == 1
    assert METRIC_CONVENTIONS["abs"]["relevance_mass_accuracy"].startswith("max(a, 0)")
    assert METRIC_CONVENTIONS["abs"][SIEGEL].startswith("|a|")
    # ... the rank metrics as the score says.
    assert [METRIC_CONVENTIONS[score]["auroc"].split(";")[0] for score in SCORES] == [
        "|a|", "max(a, 0)", "signed a"]
