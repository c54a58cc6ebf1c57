"""PatternNet / PatternAttribution: the signal estimators against closed forms and by-hand
computations following iNNvestigate 1.x's definitions, the streaming fit, the backward pass
against autograd, batch invariance, and refusals."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nipype_xai.attribution import AttributionWarning, attribute, attribute_many
from nipype_xai.attribution.patterns import (
    PatternError,
    Patterns,
    _merged_batch_norm,
    collect_statistics,
    fit_patterns,
    relu_gates,
)
from nipype_xai.models import TinyCNN3D

from conftest import randomize_batchnorm

# ---- references in numpy (float64), written from iNNvestigate's LinearPattern /
# ReLUPositivePattern / ReLUNegativePattern.compute_pattern and PatternNetReverseKernelLayer


def pattern_by_hand(X, Y, W, mask=None):
    """X (N, d) inputs, Y (N, J) bias-free outputs, W (J, d), mask (N, J) of the samples used
    (None: all). E_y is over all samples; E_x and E_xy over the masked ones."""
    mask = np.ones_like(Y) if mask is None else mask.astype(float)
    count = mask.sum(0)                                   # (J,)
    mean_x = (X.T @ mask) / np.maximum(count, 1)          # (d, J)
    mean_xy = (X.T @ (Y * mask)) / np.maximum(count, 1)   # (d, J)
    mean_y = Y.mean(0)                                    # (J,)
    cov = mean_xy - mean_x * mean_y[None, :]
    denominator = np.diag(W @ cov)                        # wⱼᵀ cov_j
    with np.errstate(divide="ignore", invalid="ignore"):
        A = np.where(np.abs(denominator) > 0, cov / denominator[None, :], 0.0)
    return A.T                                            # (J, d), laid out like W


def volumes(features: np.ndarray) -> torch.Tensor:
    """(N, d) -> (N, 1, d, 1, 1): the engine's 5D input for a model that flattens it."""
    return torch.as_tensor(features, dtype=torch.float32).reshape(len(features), 1, -1, 1, 1)


def linear_model(w, b) -> nn.Module:
    layer = nn.Linear(len(w), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=torch.float32).reshape(1, -1))
        layer.bias.fill_(b)
    return nn.Sequential(nn.Flatten(), layer).eval()


# ---- the closed-form linear case ------------------------------------------------------------


def test_linear_model_pattern_is_cov_over_var_and_patternnet_is_pattern_times_y():
    rng = np.random.default_rng(0)
    n, d = 3000, 6
    a_signal, a_distractor = rng.normal(size=d), rng.normal(size=d)
    # The filter cancels the distractor (w ⟂ a_distractor) and sees the signal with gain 1.
    w = rng.normal(size=d)
    w -= (w @ a_distractor) / (a_distractor @ a_distractor) * a_distractor
    w /= w @ a_signal
    X = (rng.uniform(-1, 2, size=(n, 1)) * a_signal + rng.normal(size=(n, 1)) * a_distractor
         + 0.05 * rng.normal(size=(n, d)) + 3.0)  # not centred: the means must come out
    model = linear_model(w, 0.7)
    x = volumes(X)

    patterns = fit_patterns(model, x, estimator="linear", batch_size=500)
    y_np = X.astype(np.float32).astype(np.float64) @ w.astype(np.float32)
    cov = np.cov(X.astype(np.float32).T, y_np)[:d, d]
    expected = cov / np.var(y_np, ddof=1)                  # Cov(x, y) / Var(y)
    got = patterns.layers["1"].numpy().ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Haufe et al.: the pattern is the signal direction, not the filter.
    np.testing.assert_allclose(got, a_signal, atol=0.05)
    assert np.abs(w - a_signal).max() > 0.3

    y = model(x).detach()[:, 0]
    maps = attribute_many(model, x[:5], ["pattern_net", "pattern_attribution"],
                          patterns=patterns)
    np.testing.assert_allclose(maps["pattern_net"].reshape(5, d).numpy(),
                               y[:5, None].numpy() * got[None, :], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["pattern_attribution"].reshape(5, d).numpy(),
                               y[:5, None].numpy() * (w.astype(np.float32) * got)[None, :],
                               rtol=1e-5, atol=1e-5)


# ---- one hidden ReLU layer, by hand --------------------------------------------------------


def one_hidden_layer(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    return model.eval()


@pytest.mark.parametrize("estimator", ["linear", "relu"])
def test_one_hidden_layer_patterns_and_maps_follow_innvestigate_by_hand(estimator):
    model = one_hidden_layer()
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 6)) + 0.5
    x = volumes(X).double()
    patterns = fit_patterns(model, x, estimator=estimator, batch_size=64)

    W1, b1 = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    W2, b2 = model[3].weight.detach().numpy(), model[3].bias.detach().numpy()
    Z1 = X @ W1.T                       # bias-free outputs of the hidden layer
    H = np.maximum(Z1 + b1, 0)
    Z2 = H @ W2.T
    relu = estimator == "relu"
    # The hidden layer is gated by its ReLU. The output layer reaches none: the linear
    # estimator (iNNvestigate would mask it by its own output > 0; see the module notes).
    A1 = pattern_by_hand(X, Z1, W1, (Z1 + b1 > 0) if relu else None)
    A2 = pattern_by_hand(H, Z2, W2, None)
    np.testing.assert_allclose(patterns.layers["1"].numpy(), A1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(patterns.layers["3"].numpy(), A2, rtol=1e-5, atol=1e-6)
    assert patterns.estimator == estimator and patterns.n_inputs == 400

    # Backward pass (PatternNetReverseKernelLayer): start from y_t, through the output layer's
    # pattern, the ReLU gate of the forward pass, then the hidden layer's pattern.
    samples, target = X[:7], np.array([0, 1, 2, 0, 1, 2, 2])
    maps = attribute_many(model, volumes(samples).double(), ["pattern_net",
                                                              "pattern_attribution"],
                          target=target.tolist(), patterns=patterns)
    A1f, A2f = patterns.layers["1"].double().numpy(), patterns.layers["3"].double().numpy()
    for name, (P1, P2) in {"pattern_net": (A1f, A2f),
                           "pattern_attribution": (W1 * A1f, W2 * A2f)}.items():
        for i, (sample, t) in enumerate(zip(samples, target)):
            z1 = sample @ W1.T + b1
            y_t = (np.maximum(z1, 0) @ W2.T + b2)[t]
            hidden = P2[t] * y_t * (z1 > 0)
            expected = hidden @ P1
            np.testing.assert_allclose(maps[name][i].reshape(-1).numpy(), expected,
                                       rtol=1e-6, atol=1e-9)


def test_relu_negative_component_by_hand():
    model = one_hidden_layer()
    X = np.random.default_rng(2).normal(size=(300, 6))
    statistics = collect_statistics(model, [volumes(X).double()])
    W1, b1 = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    Z1 = X @ W1.T
    negative = statistics.patterns("relu.negative").layers["1"].numpy()
    np.testing.assert_allclose(negative, pattern_by_hand(X, Z1, W1, Z1 + b1 <= 0), rtol=1e-5,
                               atol=1e-6)
    positive = statistics.patterns("relu").layers["1"].numpy()
    assert np.abs(positive - negative).max() > 0.1


# ---- convolutions: statistics over all positions, as unfolded patches --------------------


def unfolded_patches(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """Every input patch the convolution computes on, (N · positions, C · k³), in float64."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    else:
        p = conv.padding
        x = F.pad(x, (p[2], p[2], p[1], p[1], p[0], p[0]))
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    span = [d[i] * (k[i] - 1) + 1 for i in range(3)]
    patches = x.unfold(2, span[0], s[0]).unfold(3, span[1], s[1]).unfold(4, span[2], s[2])
    patches = patches[..., ::d[0], ::d[1], ::d[2]]       # (N, C, X', Y', Z', k, k, k)
    n, c = patches.shape[:2]
    patches = patches.permute(0, 2, 3, 4, 1, 5, 6, 7)
    return patches.reshape(-1, c * k[0] * k[1] * k[2]).double()


@pytest.mark.parametrize("options", [
    {"padding": 1, "stride": 2},
    {"padding": "same", "padding_mode": "reflect"},
    {"padding": 0, "dilation": 2},
])
def test_convolution_statistics_are_over_every_patch(options):
    torch.manual_seed(3)
    conv = nn.Conv3d(2, 3, 3, **options)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(3, 2)).eval()
    x = torch.randn(4, 2, 9, 8, 7) + 0.3
    patterns = fit_patterns(model, x, estimator="relu", batch_size=3)
    P = unfolded_patches(x, conv).numpy()
    W = conv.weight.detach().double().reshape(3, -1).numpy()
    Z = P @ W.T
    expected = pattern_by_hand(P, Z, W, Z + conv.bias.detach().double().numpy() > 0)
    np.testing.assert_allclose(patterns.layers["0"].reshape(3, -1).numpy(), expected,
                               rtol=2e-5, atol=1e-6)
    assert len(P) == 4 * conv(x).shape[2:].numel()


# ---- the streaming fit -----------------------------------------------------------------------


def test_streaming_fit_equals_one_shot_and_its_state_does_not_grow(tiny_net):
    # In float64: a float32 forward pass of 9 volumes and of 1 differ in the last bits (the CPU
    # kernels' blocking depends on the batch, and on the instruction set: 1.8e-6 on a classifier
    # pattern of 3e-3 on an AVX-512 VM), which would hide what is tested, the streaming sums.
    net = copy.deepcopy(tiny_net).double()
    x = torch.randn(9, 1, 12, 12, 12, generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    one_shot = fit_patterns(net, x, batch_size=9)
    streamed = fit_patterns(net, (volume for volume in x), batch_size=1)  # a generator
    assert list(streamed.layers) == ["features.0", "features.4", "classifier"]
    for name in one_shot.layers:
        torch.testing.assert_close(streamed.layers[name], one_shot.layers[name], rtol=1e-6,
                                   atol=1e-7)
    assert streamed.n_inputs == one_shot.n_inputs == 9
    sizes = [collect_statistics(net, x[:n].split(1)).state_size() for n in (2, 9)]
    assert sizes[0] == sizes[1] > 0


# ---- the backward pass against autograd ------------------------------------------------------


def merged_weights(model):
    with _merged_batch_norm(model):
        return {name: module.weight.detach().clone() for name, module in model.named_modules()
                if isinstance(module, (nn.Conv3d, nn.Linear))}


@pytest.mark.parametrize("model_name", ["tiny_net", "monai_resnet"])
def test_weights_as_patterns_give_y_times_the_gradient(model_name, request, volume):
    """With a = w (PatternNet) or a = 1 (PatternAttribution: w ⊙ 1), the pattern backward pass is
    the gradient's, scaled by y_t: batch norm merging, ReLU gates, pooling switches and residual
    sums are the forward pass's."""
    model = request.getfixturevalue(model_name)
    weights = merged_weights(model)
    as_weights = Patterns("relu", weights, 1)
    as_ones = Patterns("relu", {k: torch.ones_like(v) for k, v in weights.items()}, 1)
    target = torch.tensor([1, 0])
    x = volume.clone().requires_grad_(True)
    y = model(x)[torch.arange(2), target]
    (gradient,) = torch.autograd.grad(y.sum(), x)
    expected = gradient * y.detach().reshape(-1, 1, 1, 1, 1)
    net = attribute(model, volume, "pattern_net", target=target, patterns=as_weights)
    attribution = attribute(model, volume, "pattern_attribution", target=target,
                            patterns=as_ones)
    torch.testing.assert_close(net, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attribution, expected, rtol=1e-4, atol=1e-6)


def test_residual_units_are_gated_by_the_relu_after_the_addition():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.flatten, self.inner, self.act = nn.Flatten(), nn.Linear(4, 4), nn.ReLU()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.flatten(x)
            return self.head(self.act(self.inner(x) + x))

    torch.manual_seed(5)
    model = Residual().double().eval()
    X = np.random.default_rng(5).normal(size=(200, 4))
    patterns = fit_patterns(model, volumes(X).double())
    W, b = model.inner.weight.detach().numpy(), model.inner.bias.detach().numpy()
    Z = X @ W.T
    expected = pattern_by_hand(X, Z, W, Z + b + X > 0)     # the ReLU sees inner(x) + x
    np.testing.assert_allclose(patterns.layers["inner"].numpy(), expected, rtol=1e-5, atol=1e-6)
    wrong = pattern_by_hand(X, Z, W, Z + b > 0)
    assert np.abs(expected - wrong).max() > 1e-2


def test_monai_resnet_gates(monai_resnet):
    kernels = {name: m for name, m in monai_resnet.named_modules()
               if isinstance(m, (nn.Conv3d, nn.Linear))}
    gates = relu_gates(monai_resnet, kernels)
    assert gates["conv1"] == gates["layer1.0.conv1"] == "output"
    assert gates["fc"] == "none"                    # the classifier: no ReLU, linear estimator
    # MONAI's block calls its one ReLU module twice: the second call follows the addition.
    assert gates["layer1.0.conv2"] == ("layer1.0.act", 1)
    assert gates["layer2.0.conv2"] == gates["layer2.0.downsample.0"] == ("layer2.0.act", 1)
    # SFCN's block, conv -> norm -> max pool -> ReLU: the pool commutes with the ReLU.
    sfcn_block = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.MaxPool3d(2), nn.ReLU())
    assert relu_gates(sfcn_block, {"0": sfcn_block[0]}) == {"0": "output"}


@pytest.mark.parametrize("model_name", ["tiny_net", "monai_resnet"])
def test_fitted_maps_are_batch_invariant_and_leave_the_model_as_it_was(model_name, request):
    model = request.getfixturevalue(model_name)
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(6, 1, 16, 16, 16, generator=torch.Generator().manual_seed(6))
    patterns = fit_patterns(model, x, batch_size=4)
    assert not patterns.undetermined.get("conv1") and not patterns.undetermined.get("features.0")
    together = attribute_many(model, x[:3], ["pattern_net", "pattern_attribution"],
                              patterns=patterns, batch_size=3)
    one_by_one = attribute_many(model, x[:3], ["pattern_net", "pattern_attribution"],
                                patterns=patterns, batch_size=1)
    for name, value in together.items():
        # Equal up to float rounding (PatternNet's signal grows with depth: compare to its size).
        scale = float(value.abs().max())
        torch.testing.assert_close(value, one_by_one[name], rtol=0, atol=1e-5 * scale)
        assert bool(torch.isfinite(value).all()) and scale > 0
        assert all(float(value[i].abs().sum()) > 0 for i in range(3))
    single = attribute(model, x[1:2], "pattern_attribution", patterns=patterns)
    torch.testing.assert_close(single, together["pattern_attribution"][1:2], rtol=0,
                               atol=1e-5 * float(single.abs().max()))
    # The patterns matter: PatternAttribution is not the gradient × input.
    assert not torch.allclose(together["pattern_net"], together["pattern_attribution"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not m._forward_hooks for m in model.modules())


def test_unmerged_batch_norm_has_the_closed_form_pattern_one_over_its_scale():
    """Batch norm *before* a linear layer cannot be merged; its units have one input each, so
    a = 1/s. Then PatternNet / PatternAttribution of BN → Linear equal those of the one linear
    neuron it computes, w_eff = s ⊙ w: a factored linear map explains like the merged one."""
    rng = np.random.default_rng(8)
    d = 5
    norm = nn.BatchNorm1d(d)
    with torch.no_grad():
        norm.running_mean.copy_(torch.as_tensor(rng.normal(size=d)))
        norm.running_var.copy_(torch.as_tensor(rng.uniform(0.5, 2, size=d)))
        norm.weight.copy_(torch.as_tensor(rng.normal(size=d)))
        norm.bias.copy_(torch.as_tensor(rng.normal(size=d)))
    head = nn.Linear(d, 1)
    model = nn.Sequential(nn.Flatten(), norm, head).double().eval()
    X = rng.normal(size=(500, d)) @ rng.normal(size=(d, d)) + 1.0
    x = volumes(X).double()
    patterns = fit_patterns(model, x, estimator="relu")
    assert list(patterns.layers) == ["2"]           # the head; the norm needs no statistics
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().numpy()
    w_eff = head.weight.detach().numpy()[0] * scale
    y_all = model(x).detach().numpy()[:, 0]
    a_eff = np.cov(X.T, y_all)[:d, d] / np.var(y_all, ddof=1)    # Cov(x, y) / Var(y)
    maps = attribute_many(model, x[:4], ["pattern_net", "pattern_attribution"],
                          patterns=patterns)
    y = y_all[:4, None]
    np.testing.assert_allclose(maps["pattern_net"].reshape(4, d).numpy(), y * a_eff, rtol=1e-6)
    np.testing.assert_allclose(maps["pattern_attribution"].reshape(4, d).numpy(),
                               y * w_eff * a_eff, rtol=1e-6)


def test_monai_densenet_computes(monai_densenet, volume):
    patterns = fit_patterns(monai_densenet, volume)
    maps = attribute_many(monai_densenet, volume, ["pattern_net", "pattern_attribution"],
                          patterns=patterns)
    assert all(bool(torch.isfinite(m).all()) and float(m.abs().sum()) > 0
               for m in maps.values())


def test_bundled_architecture_fits_and_explains():
    torch.manual_seed(7)
    model = randomize_batchnorm(TinyCNN3D(n_outputs=2, width=4, n_blocks=4, pooling="max"))
    x = torch.randn(5, 1, 16, 17, 16)
    patterns = fit_patterns(model, x, batch_size=2)
    maps = attribute_many(model, x[:2], ["pattern_net", "pattern_attribution"],
                          patterns=patterns)
    assert all(m.shape == x[:2].shape and bool(torch.isfinite(m).all()) for m in maps.values())


# ---- without fitted patterns ---------------------------------------------------------------


def test_without_patterns_each_image_is_fitted_alone_and_a_warning_says_so(tiny_net, volume):
    with pytest.warns(AttributionWarning, match="fitted on that image alone"):
        maps = attribute_many(tiny_net, volume, ["pattern_net", "pattern_attribution"])
    with pytest.warns(AttributionWarning):
        alone = attribute(tiny_net, volume[1:], "pattern_attribution")
    torch.testing.assert_close(alone, maps["pattern_attribution"][1:], rtol=1e-5, atol=1e-7)
    for value in maps.values():
        # The classifier sees one sample per image: its filter direction keeps the map alive.
        assert float(value[0].abs().sum()) > 0 and bool(torch.isfinite(value).all())
    with pytest.warns(AttributionWarning):
        first = attribute(tiny_net, volume[:1], "pattern_attribution")
    own = fit_patterns(tiny_net, volume[:1])
    assert own.undetermined.get("classifier")      # zero patterns: what the fallback avoids
    assert not torch.equal(first, attribute(tiny_net, volume[:1], "pattern_attribution",
                                            patterns=own))


# ---- refusals --------------------------------------------------------------------------------


def test_unsupported_models_and_mismatched_patterns_are_refused(tiny_net, volume):
    grouped = nn.Sequential(nn.Conv3d(2, 2, 3, groups=2), nn.Flatten(), nn.LazyLinear(1))
    grouped(torch.zeros(1, 2, 5, 5, 5))
    with pytest.raises(PatternError, match="grouped convolution"):
        fit_patterns(grouped.eval(), torch.zeros(1, 2, 5, 5, 5))
    patterns = fit_patterns(tiny_net, volume)
    other = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    with pytest.raises(PatternError, match="fitted for another model"):
        attribute(other, volume, "pattern_net", patterns=patterns)
    with pytest.raises(PatternError, match="estimator 'linear' given with patterns fitted"):
        attribute(tiny_net, volume, "pattern_net", patterns=patterns, estimator="linear")
    with pytest.raises(PatternError, match="must be fitted Patterns"):
        attribute(tiny_net, volume, "pattern_net", patterns={"features.0": 1})


def test_untraceable_model_needs_the_linear_estimator(volume):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.head = nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)

        def forward(self, x):
            z = self.act(self.conv(x))
            if z.sum() > 0:  # data-dependent: torch.fx cannot trace it
                z = z * 1.0
            return self.head(z.mean(dim=(2, 3, 4)))

    model = Branchy().eval()
    with pytest.raises(PatternError, match="use estimator='linear'"):
        fit_patterns(model, volume)
    patterns = fit_patterns(model, volume, estimator="linear")
    assert float(attribute(model, volume, "pattern_net", patterns=patterns).abs().sum()) > 0


def test_non_relu_activations_are_named_in_a_warning(volume):
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    model(volume)
    model.eval()
    patterns = fit_patterns(model, volume, estimator="linear")
    with pytest.warns(AttributionWarning, match="Tanh"):
        attribute(model, volume, "pattern_net", patterns=patterns)


# ---- the bytes of a patterns file ------------------------------------------------------------


def test_patterns_bytes_round_trip_and_refusals(tiny_net, volume, tmp_path):
    patterns = fit_patterns(tiny_net, volume, fitted_on="two random volumes")
    data = patterns.to_bytes()
    assert data == fit_patterns(tiny_net, volume, fitted_on="two random volumes").to_bytes()
    again = Patterns.from_bytes(data)
    assert again == patterns and again.fitted_on == "two random volumes"
    with np.load(__import__("io").BytesIO(data), allow_pickle=False) as archive:
        assert archive["layer0"].shape == tuple(tiny_net.features[0].weight.shape)
    with pytest.raises(ValueError, match="unpacks to"):
        Patterns.from_bytes(data, max_bytes=1000)
    with pytest.raises(ValueError, match="not an .npz"):
        Patterns.from_bytes(b"not a zip file")
    broken = bytearray(data)
    broken[-300] ^= 0xFF
    with pytest.raises(ValueError):
        Patterns.from_bytes(bytes(broken))
    # An archive holding a pickled object is refused without unpickling it.
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"meta": np.array([{"format": "x"}], dtype=object)})
    with pytest.raises(ValueError, match="without pickle"):
        Patterns.from_bytes(pickled.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "sha256" in repr(patterns)


# ---- patterns beside a model spec; the fit-patterns command ---------------------------------


def tiny_spec(folder):
    import json

    from tiny_model import write_tiny_model

    path = write_tiny_model(folder)
    content = json.loads(path.read_text())
    content["training"] = {"note": "kept"}
    path.write_text(json.dumps(content))
    return path


def t1w_images(folder, n, seed=9):
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    for index in range(n):
        data = (rng.random((45, 54, 45)) + 0.5).astype(np.float32)
        data[:6], data[-6:] = 0, 0                   # some background
        paths.append(folder / f"sub-{index:02d}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), paths[-1])
    return paths


def fitted_spec(tmp_path):
    from nipype_xai.models import load_model, load_model_spec
    from nipype_xai.models.spec_json import add_patterns

    spec_path = tiny_spec(tmp_path / "model")
    model = load_model(load_model_spec(spec_path))
    x = torch.randn(3, 1, 24, 28, 24, generator=torch.Generator().manual_seed(10))
    patterns = fit_patterns(model, x, fitted_on="three random volumes")
    return add_patterns(spec_path, patterns), patterns, model


def test_spec_carries_its_patterns_file_with_digest(tmp_path):
    import json

    from nipype_xai.models import load_model_spec, save_model_spec, weights_sha256

    spec_path, patterns, _ = fitted_spec(tmp_path)
    content = json.loads(spec_path.read_text())
    record = content["patterns"]
    assert record["file"] == "tiny_patterns.npz" and record["estimator"] == "relu"
    assert record["n_inputs"] == 3 and record["fitted_on"] == "three random volumes"
    assert record["weights_sha256"] == content["weights_sha256"] == weights_sha256(
        spec_path.parent / "tiny.pt")
    assert content["training"] == {"note": "kept"}
    spec = load_model_spec(spec_path)
    assert spec.patterns == patterns and spec.patterns_file == spec_path.parent / record["file"]
    # save_model_spec writes it back to an equal spec, elsewhere too (file written beside).
    moved = tmp_path / "moved" / "tiny.json"
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "tiny.pt").write_bytes((spec_path.parent / "tiny.pt").read_bytes())
    import dataclasses

    save_model_spec(dataclasses.replace(spec, weights=tmp_path / "moved" / "tiny.pt",
                                        patterns_file=None), moved)
    assert load_model_spec(moved) == dataclasses.replace(spec,
                                                         weights=tmp_path / "moved" / "tiny.pt")


@pytest.mark.parametrize("problem, message", [
    ("digest", "does not match patterns.sha256"),
    ("outside", "outside the spec's folder"),
    ("absolute", "is an absolute path"),
    ("missing", "patterns.file file not found"),
    ("weights", "fitted for other weights"),
    ("pickle", "without pickle"),
    ("estimator", "patterns.estimator is 'linear'"),
    ("large", "more than the patterns of its weights"),
])
def test_bad_patterns_file_is_one_line_naming_spec_and_file(tmp_path, problem, message):
    import hashlib
    import json

    from nipype_xai.models import ModelSpecError, load_model_spec

    spec_path, _, _ = fitted_spec(tmp_path)
    content = json.loads(spec_path.read_text())
    record = content["patterns"]
    file = spec_path.parent / record["file"]
    if problem == "digest":
        data = bytearray(file.read_bytes())
        data[-200] ^= 1
        file.write_bytes(bytes(data))
    elif problem == "outside":
        (tmp_path / "elsewhere.npz").write_bytes(file.read_bytes())
        record["file"] = "../elsewhere.npz"
    elif problem == "absolute":
        record["file"] = str(file)
    elif problem == "missing":
        record["file"] = "gone.npz"
    elif problem == "weights":
        record["weights_sha256"] = "0" * 64
    elif problem == "pickle":
        np.savez(file, meta=np.array([{"format": "nipype-xai patterns"}], dtype=object))
        record["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    elif problem == "estimator":
        record["estimator"] = "linear"
    elif problem == "large":
        file.write_bytes(b"\0" * (2 * (spec_path.parent / "tiny.pt").stat().st_size + 2**20 + 1))
    spec_path.write_text(json.dumps(content))
    with pytest.raises(ModelSpecError, match=message) as caught:
        load_model_spec(spec_path)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("tiny.json: ")


def test_explain_image_passes_the_specs_patterns(tmp_path):
    import nibabel as nib

    from nipype_xai.models import from_model_grid, load_model_spec, to_model_grid
    from nipype_xai.models.inference import explain_image

    spec_path, patterns, model = fitted_spec(tmp_path)
    spec = load_model_spec(spec_path)
    img = nib.load(t1w_images(tmp_path / "images", 1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)   # no per-image fit, no warning
        explanation = explain_image(model, spec, img, ["pattern_net", "pattern_attribution"])
    assert explanation.parameters["pattern_net"]["patterns"] is spec.patterns
    x, grid = to_model_grid(img, spec)
    expected = attribute(model, x, "pattern_attribution", patterns=patterns,
                         target=explanation.target)
    np.testing.assert_allclose(explanation.maps["pattern_attribution"].get_fdata(),
                               from_model_grid(expected[0, 0], grid, img).get_fdata(), rtol=1e-5,
                               atol=1e-6 * float(expected.abs().max()))
    # Asked for None explicitly: each image's own fit, and its warning.
    with pytest.warns(AttributionWarning, match="fitted on that image alone"):
        explain_image(model, spec, img, ["pattern_net"],
                      method_params={"pattern_net": {"patterns": None}})


def test_fit_patterns_command(tmp_path, capsys):
    import json

    from nipype_xai.cli.run import main
    from nipype_xai.models import load_model, load_model_spec, to_model_grid
    from nipype_xai.images import load_volume

    spec_path = tiny_spec(tmp_path / "model")
    images = t1w_images(tmp_path / "images", 3)
    out = tmp_path / "out" / "tiny_fitted.json"
    code = main(["fit-patterns", str(out), "--model", str(spec_path), "--images",
                 *map(str, images), "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    spec = load_model_spec(out)                     # weights copied beside it: no opt-in needed
    assert spec.weights.parent == out.parent and spec.patterns.n_inputs == 3
    assert "3 images in MNI152NLin2009aSym" in spec.patterns.fitted_on
    model = load_model(load_model_spec(spec_path))
    x = torch.cat([to_model_grid(load_volume(p), spec)[0] for p in images])
    expected = fit_patterns(model, x, batch_size=2)   # as the command batched them
    for name, value in expected.layers.items():
        torch.testing.assert_close(spec.patterns.layers[name], value, rtol=1e-5, atol=1e-7)
    assert json.loads(out.read_text())["training"] == {"note": "kept"}

    assert main(["fit-patterns", "--in-place", "--model", str(spec_path), "--images",
                 str(images[0]), "--estimator", "linear"]) == 0
    assert load_model_spec(spec_path).patterns.estimator == "linear"
    assert main(["fit-patterns", "--model", str(spec_path), "--images", str(images[0])]) == 1
    assert "either OUT_SPEC or --in-place" in capsys.readouterr().err
    assert main(["fit-patterns", "--in-place", "--model", str(spec_path), "--images",
                 str(tmp_path / "nope.nii.gz")]) == 1
    assert "--images: not found" in capsys.readouterr().err


def test_trained_model_does_not_inherit_the_templates_patterns(tmp_path):
    from nipype_xai.models import load_model_spec
    from nipype_xai.synth.train import save_trained_model

    spec_path, _, model = fitted_spec(tmp_path)
    written = save_trained_model(model, spec_path, tmp_path / "retrained", name="again")
    assert load_model_spec(written).patterns is None


def test_bundled_model_ships_its_patterns():
    import json

    from nipype_xai.models import load_model, load_model_spec, weights_sha256
    from nipype_xai.models.bundled import bundled_model_spec

    path = bundled_model_spec("lesion")
    spec = load_model_spec(path)
    patterns = spec.patterns
    assert patterns is not None and patterns.estimator == "relu" and patterns.n_inputs >= 100
    assert spec.patterns_file.parent == path.parent
    assert spec.patterns_file.stat().st_size < 1_000_000
    content = json.loads(path.read_text())
    assert content["patterns"]["weights_sha256"] == weights_sha256(spec.weights)
    assert content["training"]["patterns"]["cohort"]["seed"] not in (
        content["training"]["train_cohort"]["seed"], content["training"]["easy_cohort"]["seed"])
    model = load_model(spec)
    assert not patterns.undetermined
    x = torch.randn(1, 1, *spec.input.shape, generator=torch.Generator().manual_seed(11))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)
        maps = attribute_many(model, x, ["pattern_net", "pattern_attribution"],
                              patterns=patterns)
    assert all(bool(torch.isfinite(m).all()) and float(m.abs().sum()) > 0
               for m in maps.values())


def test_attribution_interface_records_the_patterns_in_the_sidecar(tmp_path, monkeypatch):
    import json

    from nipype_xai.interfaces.attribution import Attribution

    spec_path, patterns, _ = fitted_spec(tmp_path)
    image = t1w_images(tmp_path / "images", 1)[0]
    monkeypatch.chdir(tmp_path)
    result = Attribution(in_file=str(image), model_spec=str(spec_path),
                         methods=["pattern_attribution"]).run()
    sidecar = json.loads(open(result.outputs.out_sidecars[0]).read())
    assert sidecar["Method"] == "pattern_attribution" and "Warnings" not in sidecar
    assert patterns.sha256()[:16] in sidecar["Parameters"]["patterns"]
    assert "fitted on 3 images (three random volumes)" in sidecar["Parameters"]["patterns"]
