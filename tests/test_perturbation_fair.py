"""Issue 15, defect 3 and atlas_occlusion of defect 8: perturbation methods in a fair setting.

A baseline that adds no evidence of its own (a blurred copy, not a dark 0), occlusion windows at
the scale of 4-9 mm lesions on a 4 mm grid, features that follow the image (SLIC supervoxels),
KernelSHAP / LIME budgets above the number of features, LIME weighted in the binary space, and an
atlas_occlusion that is not the occlusion grid when no atlas is given.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation
from scipy import ndimage
from torch import nn

from nipype_xai.attribution import attribute, method_defaults
from nipype_xai.attribution.model_state import forward

METHODS = ("occlusion", "atlas_occlusion", "shapley_sampling", "kernel_shap", "lime")

pytestmark = [
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require:UserWarning"),
]


class SumInside(nn.Module):
    """y = sum of x over a fixed box, bias 0: a linear model that only reads the box."""

    def __init__(self, box):
        super().__init__()
        self.box = box

    def forward(self, x):
        return x[(slice(None), slice(None)) + self.box].sum((1, 2, 3, 4))[:, None]


class RowCounter(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.model(x)


def _two_tissues(shape=(16, 16, 16), edge=7, seed=0):
    """A 'head' of two tissue classes (1.0 | 3.0, split at x = edge) in a dark noisy background."""
    generator = np.random.default_rng(seed)
    volume = generator.normal(-0.5, 0.02, shape)
    volume[2:-2, 2:-2, 2:-2] = 1.0
    volume[edge:-2, 2:-2, 2:-2] = 3.0
    return torch.from_numpy(volume).float()[None, None]


# ---------------------------------------------------------------------------------------------
# 1. The baseline adds no evidence of its own
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_perturbation_method_defaults_to_the_blur_baseline(method):
    defaults = method_defaults(method)
    assert defaults["baseline"] == "blur"
    assert defaults["blur_sigma"] == 2.0


def test_occluding_uniform_tissue_with_the_blur_changes_nothing():
    # Inside a uniform region the blurred copy equals the image: a window there is replaced by
    # the same values and the model's output cannot move; the zero baseline removes 2 x 27.
    x = torch.full((1, 1, 18, 18, 18), 2.0)
    x[..., :3, :, :] = 0.0  # an edge (4.5 sigma from the box), so that the volume is not constant
    box = (slice(12, 15), slice(12, 15), slice(12, 15))
    model = SumInside(box).eval()
    blurred = attribute(model, x, "occlusion", window=3, stride=3, skip_background=False)
    zero = attribute(model, x, "occlusion", window=3, stride=3, skip_background=False,
                     baseline="zero")
    assert float(blurred[(0, 0) + box].abs().max()) < 1e-4
    torch.testing.assert_close(zero[(0, 0) + box], torch.full((3, 3, 3), 54.0))


def test_blur_baseline_is_a_gaussian_of_each_volume():
    from nipype_xai.attribution.perturbation_baseline import perturbation_baseline

    x = torch.randn(2, 2, 10, 11, 12, generator=torch.Generator().manual_seed(0))
    out = perturbation_baseline(x, "blur", sigma=1.5)
    for b in range(2):
        for c in range(2):
            expected = ndimage.gaussian_filter(x[b, c].double().numpy(), 1.5, mode="nearest")
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-5)
    assert torch.equal(perturbation_baseline(x, "zero"), torch.zeros_like(x))
    assert torch.equal(perturbation_baseline(x, 0.5), torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="baseline must be one of"):
        perturbation_baseline(x, "mean")
    with pytest.raises(ValueError, match="blur_sigma"):
        perturbation_baseline(x, "blur", sigma=0)


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap"])
def test_shapley_values_sum_to_the_drop_to_the_blurred_copy(method):
    # Efficiency with the new baseline: the features' values add up to y(x) - y(blurred x).
    from nipype_xai.attribution.perturbation_baseline import perturbation_baseline

    x = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(2))
    weight = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(3))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12 ** 3, 1, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(weight.reshape(1, -1))
    labels = torch.zeros(12, 12, 12, dtype=torch.long)
    labels[6:] = 1
    labels[:, 6:] += 2
    maps = attribute(model, x, method, feature_mask=labels, n_samples=4 if method ==
                     "shapley_sampling" else 60)
    values = torch.stack([maps[0, 0][labels == k][0] for k in range(4)])
    drop = forward(model, x)[0, 0] - forward(model, perturbation_baseline(x, "blur"))[0, 0]
    torch.testing.assert_close(values.sum(), drop.detach(), atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# 2. Windows and strides at the scale of the signal
# ---------------------------------------------------------------------------------------------


def test_occlusion_default_window_and_stride_fit_small_lesions():
    defaults = method_defaults("occlusion")
    assert (defaults["window"], defaults["stride"]) == (3, 2)
    # A 2-voxel "lesion" read by a detector (max over the volume): only a window that covers
    # all of it lowers the output. With 3/2 some window does, wherever the lesion lies.
    for offset in range(4):
        x = torch.zeros(1, 1, 12, 12, 12)
        x[0, 0, 4 + offset:6 + offset, 5:7, 5:7] = 1.0
        model = nn.Sequential(nn.MaxPool3d(12), nn.Flatten()).eval()
        maps = attribute(model, x, "occlusion", baseline="zero", skip_background=False)
        assert float(maps.max()) > 0, offset


def test_occlusion_runs_only_windows_touching_the_foreground():
    x = _two_tissues()
    model = RowCounter(SumInside((slice(2, 14), slice(2, 14), slice(2, 14))).eval())
    everywhere = attribute(model, x, "occlusion", skip_background=False)
    all_rows = sum(model.rows)
    model.rows.clear()
    inside = attribute(model, x, "occlusion")
    assert sum(model.rows) < 0.8 * all_rows
    # The model reads the head only: skipped windows would have had a drop of 0 anyway.
    torch.testing.assert_close(inside, everywhere, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# 3. Features follow the image
# ---------------------------------------------------------------------------------------------


def test_supervoxels_do_not_straddle_a_tissue_edge():
    from nipype_xai.attribution.feature_masks import foreground_mask, image_supervoxels

    x = _two_tissues()
    labels = image_supervoxels(x, n_segments=12)[0, 0].numpy()
    head = np.zeros((16, 16, 16), dtype=bool)
    head[2:-2, 2:-2, 2:-2] = True
    np.testing.assert_array_equal(foreground_mask(x[0, 0].numpy()), head)
    assert set(np.unique(labels[~head])) == {0}
    inside = np.unique(labels[head])
    assert 0 not in inside and len(inside) >= 4
    for label in inside:
        tissue = x[0, 0].numpy()[labels == label]
        assert np.ptp(tissue) == 0, label  # one tissue class per supervoxel


def test_foreground_of_a_skull_stripped_image_is_its_nonzero_voxels():
    from nipype_xai.attribution.feature_masks import foreground_mask

    volume = np.zeros((12, 12, 12))
    volume[3:9, 3:9, 3:9] = np.random.default_rng(0).normal(0, 1, (6, 6, 6))
    np.testing.assert_array_equal(foreground_mask(volume), volume != 0)


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap", "lime"])
def test_surrogate_features_default_to_supervoxels(method):
    x = _two_tissues()
    model = SumInside((slice(2, 14), slice(2, 14), slice(2, 14))).eval()
    maps = attribute(model, x, method, n_supervoxels=12, seed=1)[0, 0].numpy()
    # Constant on each supervoxel, so the map never mixes the two tissues in one value.
    from nipype_xai.attribution.feature_masks import image_supervoxels

    labels = image_supervoxels(x, 12)[0, 0].numpy()
    for label in np.unique(labels):
        assert np.ptp(maps[labels == label]) < 1e-6, label
    assert method_defaults(method)["grid"] is None


# ---------------------------------------------------------------------------------------------
# 4. Budgets at or above the number of features; LIME in the binary space
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_default_budget_exceeds_the_features(method):
    assert method_defaults(method)["n_samples"] == "auto"
    x = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    model = RowCounter(SumInside((slice(0, 12),) * 3).eval())
    labels = torch.arange(12).repeat_interleave(1)[:, None, None].expand(12, 12, 12) // 2  # 6
    attribute(model, x, method, feature_mask=labels, batch_size=64)
    # 2 M + 2048 coalitions (shap's default) for M = 6 features, plus the engine's target pass.
    assert sum(model.rows) - 1 == 2 * 6 + 2048
    with pytest.warns(UserWarning, match="below the number of features"):
        attribute(model, x, method, feature_mask=labels, n_samples=5)


def test_lime_weights_samples_in_the_binary_space():
    from nipype_xai.attribution.surrogate import binary_cosine_similarity

    kernel = binary_cosine_similarity(0.25)
    assert kernel(None, None, torch.ones(1, 8)) == pytest.approx(1.0)
    half = 1 - math.sqrt(0.5)
    assert kernel(None, None, torch.tensor([[1, 0] * 4])) == pytest.approx(
        math.exp(-half ** 2 / (2 * 0.25 ** 2)))
    assert kernel(None, None, torch.zeros(1, 8)) == pytest.approx(math.exp(-1 / 0.125))
    # Through lime: the weights do not depend on the image. The model reads only the left half;
    # making that half 50x brighter multiplies every output by 50, and with the same draws (seed)
    # and the same weights the surrogate is exactly 50x. Weighted by distances between images
    # (captum's default) the brighter half would reweight the samples and change the fit.
    x = torch.rand(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0)) + 1
    model = SumInside((slice(0, 6), slice(0, 12), slice(0, 12))).eval()
    labels = torch.zeros(12, 12, 12, dtype=torch.long)
    labels[6:] = 1
    labels[:, :, 6:] += 2
    bright = x.clone()
    bright[..., :6, :, :] *= 50
    one = attribute(model, x, "lime", feature_mask=labels, n_samples=200, baseline="zero")
    two = attribute(model, bright, "lime", feature_mask=labels, n_samples=200, baseline="zero")
    torch.testing.assert_close(two, 50 * one, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# 5. atlas_occlusion without an atlas is not the occlusion grid
# ---------------------------------------------------------------------------------------------


def test_atlas_occlusion_without_atlas_occludes_supervoxels():
    from nipype_xai.attribution.feature_masks import image_supervoxels
    from nipype_xai.attribution.perturbation_baseline import perturbation_baseline

    x = _two_tissues()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(),
                          nn.Linear(2, 1)).eval()
    ours = attribute(model, x, "atlas_occlusion", n_supervoxels=12)
    labels = image_supervoxels(x, 12)
    _, consecutive = torch.unique(labels, return_inverse=True)
    reference = FeatureAblation(lambda inputs: forward(model, inputs)).attribute(
        x, baselines=perturbation_baseline(x, "blur"), target=0,
        feature_mask=consecutive.reshape(labels.shape))
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(attribute(model, x, "atlas_occlusion"),
                              attribute(model, x, "occlusion"), atol=1e-3)
