"""Path, reference and perturbation methods against captum and closed forms (CPU, seconds)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import (
    DeepLift,
    FeatureAblation,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    ShapleyValueSampling,
)
from torch import nn

from nipype_xai.attribution import attribute, method_defaults
from nipype_xai.attribution.feature_masks import prepare_feature_mask, supervoxel_grid
from nipype_xai.attribution.model_state import forward

PERTURBATION_METHODS = (
    "integrated_gradients",
    "deeplift",
    "occlusion",
    "shapley_sampling",
    "kernel_shap",
    "lime",
    "atlas_occlusion",
)
STOCHASTIC = ("shapley_sampling", "kernel_shap", "lime")

# The reference calls of captum itself announce their hooks and input flags.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require:UserWarning"),
    # _SMALL's budgets are below the default supervoxels' count on purpose (speed): they warn.
    pytest.mark.filterwarnings("ignore:.*is below the number of features:UserWarning"),
]


class LinearScore(nn.Module):
    """y_k = sum(w_k * x) + b_k: every perturbation method has a closed form on it."""

    def __init__(self, spatial_shape=(12, 12, 12), channels: int = 1, n_outputs: int = 2):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        weight = torch.randn(n_outputs, channels, *spatial_shape, generator=generator)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.linspace(-0.5, 0.5, n_outputs))

    def forward(self, x):
        return torch.einsum("bcxyz,kcxyz->bk", x, self.weight) + self.bias


def _model_function(model):
    return lambda inputs: forward(model, inputs)


def _predicted(model, x):
    with torch.no_grad():
        return forward(model, x).argmax(1)


def _score(model, x, target):
    with torch.no_grad():
        return forward(model, x).gather(1, target.reshape(-1, 1))[:, 0]


def _block_sums(values: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-block sums of a (B, C, X, Y, Z) tensor over cubic blocks (shape a multiple of grid)."""
    b, c, *shape = values.shape
    n = [s // grid for s in shape]
    blocks = values.reshape(b, c, n[0], grid, n[1], grid, n[2], grid).sum((1, 3, 5, 7))
    return blocks  # (B, nx, ny, nz)


def _spread_blocks(blocks: torch.Tensor, grid: int, channels: int) -> torch.Tensor:
    expanded = blocks
    for axis in (1, 2, 3):
        expanded = expanded.repeat_interleave(grid, axis)
    return expanded[:, None].expand(-1, channels, -1, -1, -1)


# ---------------------------------------------------------------------------------------------
# Feature masks
# ---------------------------------------------------------------------------------------------


def test_supervoxel_grid_labels_blocks():
    labels = supervoxel_grid((10, 12, 9), 4)
    assert labels.dtype == torch.long and labels.shape == (10, 12, 9)
    # ceil(10/4) * ceil(12/4) * ceil(9/4) = 3 * 3 * 3 blocks, labelled 0..26 in C order.
    assert torch.equal(torch.unique(labels), torch.arange(27))
    i, j, k = torch.meshgrid(*(torch.arange(s) for s in (10, 12, 9)), indexing="ij")
    assert torch.equal(labels, (i // 4) * 9 + (j // 4) * 3 + k // 4)
    counts = torch.bincount(labels.flatten())
    assert counts[0] == 64 and counts[-1] == 2 * 4 * 1  # the far corner block is cropped
    anisotropic = supervoxel_grid((12, 12, 12), (12, 6, 4))
    assert int(anisotropic.max()) + 1 == 1 * 2 * 3
    with pytest.raises(ValueError, match="grid"):
        supervoxel_grid((12, 12, 12), 0)


def test_prepare_feature_mask_relabels_and_broadcasts():
    x = torch.zeros(2, 3, 4, 4, 4)
    atlas = np.zeros((4, 4, 4))  # float, as nibabel's get_fdata returns it
    atlas[:2] = 7.0
    atlas[:, :1] = 3.0
    mask = prepare_feature_mask(atlas, x)
    assert mask.dtype == torch.long and mask.shape == (1, 3, 4, 4, 4)
    assert torch.equal(torch.unique(mask), torch.arange(3))
    # Sorted relabelling: 0 -> 0, 3 -> 1, 7 -> 2, identical across channels.
    expected = torch.from_numpy(np.searchsorted([0, 3, 7], atlas)).long()
    for channel in range(3):
        assert torch.equal(mask[0, channel], expected)

    per_sample = torch.stack([torch.from_numpy(atlas), torch.from_numpy(atlas) * 0 + 5])[:, None]
    mask = prepare_feature_mask(per_sample.int(), x)
    assert mask.shape == (2, 3, 4, 4, 4)
    assert int(mask[1].unique().item()) == 2  # label 5 is the third of {0, 3, 5, 7}
    assert prepare_feature_mask(torch.from_numpy(atlas)[None, None], x).shape == (1, 3, 4, 4, 4)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 5)), "expected shape"),
        (np.zeros((3, 1, 4, 4, 4)), "expected shape"),
        (np.zeros((4, 4)), "expected shape"),
        (np.full((4, 4, 4), 2.5), "integers"),
        (np.full((4, 4, 4), np.nan), "integers"),
        (-np.ones((4, 4, 4), dtype=int), "non-negative"),
    ],
)
def test_prepare_feature_mask_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        prepare_feature_mask(bad, torch.zeros(2, 1, 4, 4, 4))


# ---------------------------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------------------------


def test_integrated_gradients_matches_captum(tiny_net, volume):
    target = torch.tensor([0, 1])
    ours = attribute(tiny_net, volume, "integrated_gradients", target=target, batch_size=6)
    reference = IntegratedGradients(_model_function(tiny_net)).attribute(
        volume, baselines=0.0, target=target, n_steps=50, method="gausslegendre"
    )
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    riemann = attribute(
        tiny_net, volume, "integrated_gradients", target=target, integration_method="riemann_left"
    )
    assert not torch.allclose(riemann, ours, atol=1e-6)


def test_integrated_gradients_completeness(tiny_net, volume):
    target = _predicted(tiny_net, volume)
    maps = attribute(tiny_net, volume, "integrated_gradients", n_steps=200)
    delta = _score(tiny_net, volume, target) - _score(tiny_net, torch.zeros_like(volume), target)
    torch.testing.assert_close(maps.sum((1, 2, 3, 4)), delta, rtol=1e-2, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# DeepLIFT
# ---------------------------------------------------------------------------------------------


def test_deeplift_matches_captum(tiny_net, volume):
    # Without the ReLU right before the max pooling: there captum's max-pool rule leaks (the
    # ReLU does not receive the multipliers the pooling's hook returns) and ours is the
    # reference (tests/test_deeplift.py checks max pooling against a hand computation).
    tiny_net.features[2] = nn.Identity()
    target = torch.tensor([1, 0])
    ours = attribute(tiny_net, volume, "deeplift", target=target)
    reference = DeepLift(tiny_net).attribute(volume.clone(), baselines=0.0, target=target)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_deeplift_matches_captum_on_monai_densenet(monai_densenet, volume):
    # MONAI's DenseNet uses each (in-place) ReLU once, so captum runs on it as it is.
    ours = attribute(monai_densenet, volume, "deeplift", target=1)
    reference = DeepLift(monai_densenet).attribute(volume.clone(), baselines=0.0, target=1)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_net", "monai_resnet", "monai_densenet"])
def test_deeplift_summation_to_delta(fixture, volume, request):
    model = request.getfixturevalue(fixture)
    target = _predicted(model, volume)
    maps = attribute(model, volume, "deeplift")
    delta = _score(model, volume, target) - _score(model, torch.zeros_like(volume), target)
    torch.testing.assert_close(maps.sum((1, 2, 3, 4)), delta, rtol=1e-4, atol=1e-5)


class _ReusedReLU(nn.Module):
    """One ReLU module applied twice, as MONAI's ResNetBlock does with ``self.act``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv3d(3, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        hidden = self.act(self.conv1(x))
        hidden = self.conv2(hidden) + hidden
        return self.fc(self.act(hidden).mean((2, 3, 4)))


class _SeparateReLUs(_ReusedReLU):
    def __init__(self):
        super().__init__()
        self.act2 = nn.ReLU()

    def forward(self, x):
        hidden = self.act(self.conv1(x))
        hidden = self.conv2(hidden) + hidden
        return self.fc(self.act2(hidden).mean((2, 3, 4)))


def test_deeplift_reused_module_equals_separate_modules(volume):
    torch.manual_seed(0)
    reused = _ReusedReLU().eval()
    separate = _SeparateReLUs().eval()
    separate.load_state_dict(reused.state_dict())
    with pytest.raises(RuntimeError, match="more than once"):
        # Why the copy with per-call modules exists: captum alone refuses module reuse.
        DeepLift(reused).attribute(volume.clone(), baselines=0.0, target=0)
    ours = attribute(reused, volume, "deeplift", target=0)
    reference = DeepLift(separate).attribute(volume.clone(), baselines=0.0, target=0)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert reused.act.inplace  # the user's model keeps its in-place ReLU


# ---------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------


def test_occlusion_matches_captum(tiny_net, volume):
    target = torch.tensor([0, 1])
    # The old setting (baseline 0, every window run) is exactly captum's Occlusion.
    ours = attribute(tiny_net, volume, "occlusion", target=target, window=5, stride=3, batch_size=7,
                     baseline="zero", skip_background=False)
    reference = Occlusion(_model_function(tiny_net)).attribute(
        volume,
        sliding_window_shapes=(1, 5, 5, 5),
        strides=(1, 3, 3, 3),
        baselines=0.0,
        target=target,
    )
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def _occlusion_of_linear(model, x, target_class, window, stride):
    """Hand reference: drop of window W is sum_W(w x); a voxel averages the drops of its windows."""
    contribution = (x * model.weight[target_class]).detach()
    total = torch.zeros_like(x)
    count = torch.zeros_like(x)
    spatial = x.shape[2:]
    starts = [
        range(0, max(size - w, 0) + stride_axis, stride_axis) if size > w else [0]
        for size, w, stride_axis in zip(spatial, window, stride)
    ]
    for i, j, k in itertools.product(*starts):
        region = (
            slice(None),
            slice(None),
            slice(i, i + window[0]),
            slice(j, j + window[1]),
            slice(k, k + window[2]),
        )
        drop = contribution[region].sum((1, 2, 3, 4))
        total[region] += drop[:, None, None, None, None]
        count[region] += 1
    assert bool((count > 0).all())
    return total / count


@pytest.mark.parametrize(
    "window, stride",
    [(4, None), (5, None), ((4, 6, 3), (2, 3, 3)), (8, None)],
)
def test_occlusion_closed_form_linear(window, stride):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 12, 12, 12, generator=generator)
    model = LinearScore(channels=2).eval()
    maps = attribute(model, x, "occlusion", target=1, window=window, stride=stride,
                     baseline="zero", skip_background=False)
    window3 = (window,) * 3 if isinstance(window, int) else window
    stride3 = window3 if stride is None else stride
    expected = _occlusion_of_linear(model, x, 1, window3, stride3)
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=1e-4)
    if stride is None and 12 % window3[0] == 0:
        # Non-overlapping windows: every voxel carries its whole window's drop.
        blocks = _block_sums(x * model.weight[1].detach(), window3[0])
        spread = _spread_blocks(blocks, window3[0], 2)
        torch.testing.assert_close(maps, spread, atol=1e-4, rtol=1e-4)


def test_occlusion_rejects_stride_beyond_window(tiny_net, volume):
    with pytest.raises(ValueError, match="stride"):
        attribute(tiny_net, volume, "occlusion", window=4, stride=5)


# ---------------------------------------------------------------------------------------------
# Shapley value sampling, KernelSHAP, LIME
# ---------------------------------------------------------------------------------------------


def _captum_per_sample(explainer, x, target, mask, seed, n_samples, batch_size=16):
    maps = []
    for index in range(x.shape[0]):
        torch.manual_seed(seed)
        maps.append(
            explainer.attribute(
                x[index : index + 1],
                baselines=0.0,
                target=target[index : index + 1],
                feature_mask=mask,
                n_samples=n_samples,
                perturbations_per_eval=batch_size,
            )
        )
    return torch.cat(maps)


def _binary_cosine_kernel(_original, _perturbed, interpretable, **_):
    """lime_image's weight, written out: sqrt(exp(-d^2 / 0.25^2)), d the cosine distance
    between the binary vector and all-ones (torch's cosine; 1 for the empty vector)."""
    z = interpretable.float().flatten()
    d = 1 - torch.nn.functional.cosine_similarity(z, torch.ones_like(z), dim=0)
    return float(torch.sqrt(torch.exp(-(d ** 2) / 0.25 ** 2)))


@pytest.mark.parametrize(
    "method, explainer_class, n_samples",
    [
        ("shapley_sampling", ShapleyValueSampling, 3),
        ("kernel_shap", KernelShap, 40),
        ("lime", Lime, 40),
    ],
)
def test_feature_methods_match_captum(method, explainer_class, n_samples, tiny_net, volume):
    target = torch.tensor([1, 0])
    atlas = torch.zeros(12, 12, 12, dtype=torch.int32)
    atlas[:6] = 4
    atlas[:, 6:] += 9
    atlas[2:5, 2:5, 2:5] = 2  # labels {0, 2, 4, 9, 13}: relabelled to 0..4
    params = {"feature_mask": atlas, "n_samples": n_samples, "seed": 3, "batch_size": 8,
              "baseline": "zero"}
    if method == "lime":
        params.update(surrogate="lasso", alpha=1e-4)  # captum's default surrogate, smaller L1
        explainer = explainer_class(
            _model_function(tiny_net), interpretable_model=SkLearnLasso(alpha=1e-4),
            similarity_func=_binary_cosine_kernel,
        )
    else:
        explainer = explainer_class(_model_function(tiny_net))
    ours = attribute(tiny_net, volume, method, target=target, **params)
    mask = prepare_feature_mask(atlas, volume)
    assert int(mask.max()) == 4
    reference = _captum_per_sample(explainer, volume, target, mask, 3, n_samples, batch_size=8)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert ours.abs().sum() > 0
    # Constant within each parcel.
    for label in range(5):
        values = ours[0, 0][mask[0, 0] == label]
        assert torch.all(values == values[0])


@pytest.mark.parametrize("method", STOCHASTIC)
def test_feature_methods_seed_reproducible(method, tiny_net, volume):
    params = {"grid": 6, "n_samples": 3 if method == "shapley_sampling" else 30}
    rng_before = torch.get_rng_state()
    first = attribute(tiny_net, volume, method, seed=11, **params)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    again = attribute(tiny_net, volume, method, seed=11, **params)
    other = attribute(tiny_net, volume, method, seed=12, **params)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-7)
    # Each sample is seeded alike: its map does not depend on the rest of the batch.
    alone = attribute(tiny_net, volume[1:], method, seed=11, **params)
    torch.testing.assert_close(alone[0], first[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap"])
def test_feature_methods_per_sample_parcellations(method, tiny_net, volume):
    # Sample 0's parcellation lacks label 2: it must be explained with its own 3 parcels, exactly
    # as if it were alone, not with an empty 4th feature.
    first = torch.zeros(12, 12, 12, dtype=torch.long)
    first[6:] = 1
    first[:, 6:] += 3  # labels {0, 1, 3, 4}
    second = first.clone()
    second[:3] = 2  # labels {0, 1, 2, 3, 4}
    params = {"n_samples": 3 if method == "shapley_sampling" else 30, "seed": 5}
    per_sample = torch.stack([first, second])[:, None]
    maps = attribute(tiny_net, volume, method, feature_mask=per_sample, **params)
    alone = [
        attribute(tiny_net, volume[i : i + 1], method, feature_mask=mask, **params)
        for i, mask in enumerate((first, second))
    ]
    torch.testing.assert_close(maps, torch.cat(alone), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap"])
def test_shap_exact_on_linear_model(method):
    x = torch.randn(2, 1, 12, 12, 12, generator=torch.Generator().manual_seed(9))
    model = LinearScore().eval()
    # Linear model: every permutation gives the exact marginal contribution, and the KernelSHAP
    # regression is exactly linear, so a few samples recover sum over the block of w_t x.
    n_samples = 2 if method == "shapley_sampling" else 40
    maps = attribute(model, x, method, target=0, grid=6, n_samples=n_samples, baseline="zero")
    expected = _spread_blocks(_block_sums(x * model.weight[0].detach(), 6), 6, 1)
    torch.testing.assert_close(maps, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap", "atlas_occlusion"])
def test_single_feature_gets_the_whole_drop(method, tiny_net, volume):
    # One parcel covering the volume: its Shapley value / occlusion drop is y_t(x) - y_t(0).
    # (captum's KernelShap cannot sample a one-feature coalition; ours answers exactly.)
    params = {} if method == "atlas_occlusion" else {"n_samples": 3}
    maps = attribute(tiny_net, volume, method, target=1, grid=12, baseline="zero", **params)
    delta = _score(tiny_net, volume, torch.tensor([1, 1])) - _score(
        tiny_net, torch.zeros_like(volume), torch.tensor([1, 1])
    )
    expected = delta[:, None, None, None, None].expand_as(volume)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)


def test_lime_small_alpha_approaches_linear_contributions():
    x = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(9))
    model = LinearScore().eval()
    maps = attribute(model, x, "lime", target=0, grid=6, n_samples=100,
                     surrogate="lasso", alpha=1e-4, baseline="zero")
    expected = _spread_blocks(_block_sums(x * model.weight[0].detach(), 6), 6, 1)
    torch.testing.assert_close(maps, expected, atol=5e-3, rtol=0)
    with pytest.raises(ValueError, match="alpha"):
        attribute(model, x, "lime", alpha=0)


def test_lime_default_ridge_surrogate_matches_captum(tiny_net, volume):
    from captum._utils.models.linear_model import SkLearnRidge

    params = {"grid": 6, "n_samples": 40, "seed": 5, "batch_size": 8, "baseline": "zero"}
    target = torch.tensor([0, 1])
    ours = attribute(tiny_net, volume, "lime", target=target, **params)
    explainer = Lime(_model_function(tiny_net), interpretable_model=SkLearnRidge(alpha=1.0),
                     similarity_func=_binary_cosine_kernel)
    from nipype_xai.attribution.feature_masks import supervoxel_grid

    mask = supervoxel_grid(volume.shape[2:], 6)[None, None]
    reference = _captum_per_sample(explainer, volume, target, mask, 5, 40, batch_size=8)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert float(ours.abs().sum()) > 0  # ridge does not shrink small effects to exactly 0
    with pytest.raises(ValueError, match="surrogate"):
        attribute(tiny_net, volume, "lime", surrogate="svm")


# ---------------------------------------------------------------------------------------------
# Atlas occlusion
# ---------------------------------------------------------------------------------------------


def _three_parcels() -> np.ndarray:
    atlas = np.zeros((12, 12, 12), dtype=np.float64)  # label 0: "background"
    atlas[2:10, 2:10, 2:6] = 17
    atlas[2:10, 2:10, 6:10] = 42
    atlas[5:7, 5:7, :] = 17  # a parcel need not be convex
    return atlas


def test_atlas_occlusion_hand_computation(tiny_net, volume):
    atlas = _three_parcels()
    target = _predicted(tiny_net, volume)
    maps = attribute(tiny_net, volume, "atlas_occlusion", feature_mask=atlas, batch_size=3,
                     baseline="zero")
    full = _score(tiny_net, volume, target)
    expected = torch.zeros_like(volume)
    labels = torch.from_numpy(atlas)
    for label in (0, 17, 42):
        parcel = (labels == label)[None, None]
        drop = full - _score(tiny_net, volume.masked_fill(parcel, 0.0), target)
        expected += parcel * drop[:, None, None, None, None]
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)

    ignored = attribute(
        tiny_net, volume, "atlas_occlusion", feature_mask=atlas, ignore_background=True,
        baseline="zero",
    )
    background = (labels == 0)[None, None].expand_as(volume)
    assert torch.all(ignored[background] == 0)
    torch.testing.assert_close(ignored[~background], expected[~background], atol=1e-6, rtol=1e-5)


def test_atlas_occlusion_per_sample_parcellations(tiny_net, volume):
    atlas = torch.from_numpy(_three_parcels()).long()
    shifted = torch.roll(atlas, 3, dims=0)
    per_sample = torch.stack([atlas, shifted])[:, None]
    maps = attribute(tiny_net, volume, "atlas_occlusion", feature_mask=per_sample, target=0)
    first = attribute(tiny_net, volume[:1], "atlas_occlusion", feature_mask=atlas, target=0)
    second = attribute(tiny_net, volume[1:], "atlas_occlusion", feature_mask=shifted, target=0)
    torch.testing.assert_close(maps, torch.cat([first, second]), atol=1e-6, rtol=1e-5)


def test_atlas_occlusion_grid_is_feature_ablation(tiny_net, volume):
    # An explicit cubic grid is captum's FeatureAblation on those blocks (the baseline as given);
    # without a parcellation the parcels are supervoxels (tests/test_perturbation_fair.py).
    fallback = attribute(tiny_net, volume, "atlas_occlusion", grid=8, baseline="zero")
    reference = FeatureAblation(_model_function(tiny_net)).attribute(
        volume, baselines=0.0, target=_predicted(tiny_net, volume),
        feature_mask=supervoxel_grid((12, 12, 12), 8)[None, None],
    )
    torch.testing.assert_close(fallback, reference, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Every method through the engine, real architectures, batch handling, model untouched
# ---------------------------------------------------------------------------------------------


_SMALL = {
    "integrated_gradients": {"n_steps": 8},
    "shapley_sampling": {"n_samples": 2},
    "kernel_shap": {"n_samples": 20},
    "lime": {"n_samples": 20},
}


def _snapshot(model):
    return (
        {name: value.clone() for name, value in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        model.training,
        sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
        [type(m) for m in model.modules()],
    )


def _assert_unchanged(model, snapshot):
    state, flags, training, hooks, types = snapshot
    now = model.state_dict()
    assert state.keys() == now.keys()
    for name, value in state.items():
        assert torch.equal(value, now[name]), name
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training == training
    assert _snapshot(model)[3] == hooks
    assert [type(m) for m in model.modules()] == types


@pytest.mark.parametrize("fixture", ["tiny_net", "monai_resnet", "monai_densenet"])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_method_runs_on_real_architectures(fixture, batch, volume, request):
    model = request.getfixturevalue(fixture)
    model.train()  # the guard must bring it back in training mode
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    snapshot = _snapshot(model)
    x = volume[:batch]
    for name in PERTURBATION_METHODS:
        maps = attribute(model, x, name, **_SMALL.get(name, {}))
        assert maps.shape == x.shape, name
        assert bool(torch.isfinite(maps).all()), name
        assert maps.abs().sum() > 0, name
        _assert_unchanged(model, snapshot)


def test_defaults_alone_and_larger_volume():
    # Every method with its registered defaults only, on a 16^3 two-channel volume.
    x = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 1)
    )
    for name in PERTURBATION_METHODS:
        assert method_defaults(name).get("batch_size") == 16
        maps = attribute(model, x, name)
        assert maps.shape == x.shape
    # Issue 15: budgets at or above the features, windows at the scale of the lesions.
    assert method_defaults("shapley_sampling")["n_samples"] == 10
    assert method_defaults("kernel_shap")["n_samples"] == "auto"
    assert method_defaults("occlusion")["window"] == 3
    assert method_defaults("occlusion")["stride"] == 2


class _RowCounter(nn.Module):
    """Records the rows of every forward pass (in a class attribute: DeepLift deep-copies)."""

    rows: list = []

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        _RowCounter.rows.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("method", PERTURBATION_METHODS)
def test_batch_size_bounds_forward_rows(method, tiny_net):
    x = torch.randn(3, 1, 12, 12, 12, generator=torch.Generator().manual_seed(2))
    model = _RowCounter(tiny_net)
    params = dict(_SMALL.get(method, {}))
    if method == "occlusion":
        params["window"] = 4
    reference = attribute(model, x, method, target=1, batch_size=64, **params)
    _RowCounter.rows.clear()
    bounded = attribute(model, x, method, target=1, batch_size=4, **params)
    assert max(_RowCounter.rows) <= 4
    torch.testing.assert_close(bounded, reference, atol=1e-5, rtol=1e-4)


def test_single_output_model_explains_its_output(volume):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 1)
    ).eval()
    maps = attribute(model, volume, "deeplift")
    delta = forward(model, volume)[:, 0] - forward(model, torch.zeros_like(volume))[:, 0]
    torch.testing.assert_close(maps.sum((1, 2, 3, 4)), delta.detach(), rtol=1e-4, atol=1e-6)
