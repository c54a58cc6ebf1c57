"""Baselines (nipype_xai.attribution.baselines), model randomisation (nipype_xai.metrics.baselines)
and sanity checks (nipype_xai.metrics.sanity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from nipype_xai.attribution import attribute, available_baselines, available_methods, is_baseline
from nipype_xai.attribution.baselines import laplace, random_map, sobel
from nipype_xai.attribution.registry import get_method, registered_methods
from nipype_xai.metrics import cascading_randomization, parameter_layers, randomize_model
from nipype_xai.metrics.sanity import forward_order, pearson, spearman, ssim

TINY_LAYERS = ["features.0", "features.1", "features.4", "features.5", "classifier"]


def gradient_map(model, x, method, target=None, **params):
    """Plain autograd gradient of the target logit: the tests' own attribution function."""
    assert method == "gradient"
    x = x.detach().clone().requires_grad_(True)
    output = model(x)
    selected = output[torch.arange(x.shape[0]), torch.as_tensor(target)]
    (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad


def _interior(t: torch.Tensor) -> torch.Tensor:
    return t[..., 1:-1, 1:-1, 1:-1]


# ---------------------------------------------------------------------------------------------
# Model-free baselines
# ---------------------------------------------------------------------------------------------


def test_sobel_of_a_ramp_is_its_slope_inside():
    i, j, k = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (8, 9, 7)),
                             indexing="ij")
    x = torch.stack([0.5 * i, 1.0 * i + 2.0 * j - 0.5 * k]).unsqueeze(1).float()  # (2, 1, ...)
    edges = sobel(x)
    assert edges.shape == x.shape and edges.dtype == x.dtype
    assert torch.allclose(_interior(edges[0]), torch.tensor(0.5), atol=1e-5)
    assert torch.allclose(_interior(edges[1]), torch.tensor(math.sqrt(1 + 4 + 0.25)), atol=1e-5)
    # Not constant at the reflected border: the interior check above is not vacuous.
    assert not torch.allclose(edges[1], torch.tensor(math.sqrt(5.25)), atol=1e-3)


def test_laplace_of_a_quadratic_is_constant_inside():
    i, j, k = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (7, 8, 6)),
                             indexing="ij")
    x = (i**2 + 2 * j**2 - k**2 + 3 * i).reshape(1, 1, 7, 8, 6)
    # Second differences: 2 + 4 - 2.
    assert torch.allclose(_interior(laplace(x)), torch.tensor(4.0, dtype=torch.float64))
    assert laplace(x).dtype == torch.float64


def test_random_is_seeded_and_leaves_the_global_rng_alone(volume):
    state = torch.get_rng_state()
    first = random_map(volume, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, random_map(volume, seed=5))
    assert not torch.equal(first, random_map(volume, seed=6))
    assert first.shape == volume.shape and first.dtype == volume.dtype
    assert abs(float(first.mean())) < 0.1 and abs(float(first.std()) - 1.0) < 0.1


def test_baselines_are_registered_with_their_kind():
    assert available_baselines() == ["sobel", "laplace", "random"]
    entries = registered_methods("baseline")
    assert [entry.function for entry in entries] == [sobel, laplace, random_map]
    assert {entry.name: dict(entry.defaults) for entry in entries} == {
        "sobel": {}, "laplace": {}, "random": {"seed": 0}}
    assert all(entry.kind == "baseline" for entry in entries)
    # A baseline is not an attribution method: the engine lists and accepts methods only.
    assert not set(available_baselines()) & set(available_methods())
    with pytest.raises(ValueError, match="unknown attribution method 'sobel'"):
        get_method("sobel")
    with pytest.raises(ValueError, match="unknown baseline 'gradient'; available: laplace"):
        get_method("gradient", kind="baseline")
    with pytest.raises(ValueError, match="unknown attribution method 'random'"):
        attribute(nn.Linear(1, 1), torch.zeros(1, 1, 2, 2, 2), "random")


def test_is_baseline():
    assert all(is_baseline(name) for name in ["sobel", "laplace", "random",
                                              "random_model_gradient", "gradient_random_model"])
    assert not any(is_baseline(name) for name in available_methods())


def test_baselines_are_not_metrics():
    # The model-free baselines are maps (nipype_xai.attribution.baselines), not metrics, and no
    # name of nipype_xai.metrics shadows the standard library's ``random``.
    import nipype_xai.metrics as metrics

    for name in ("sobel", "laplace", "random", "BASELINES"):
        assert not hasattr(metrics, name) and name not in metrics.__all__


def test_baselines_reject_non_batches():
    with pytest.raises(ValueError, match="B, C, X, Y, Z"):
        sobel(torch.zeros(4, 4, 4))


# ---------------------------------------------------------------------------------------------
# Model randomisation
# ---------------------------------------------------------------------------------------------


def _state(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def _module_changed(before, after, layer):
    keys = [key for key in before if key.rsplit(".", 1)[0] == layer]
    assert keys
    return any(not torch.equal(before[key], after[key]) for key in keys)


def test_parameter_layers(tiny_net):
    assert parameter_layers(tiny_net) == TINY_LAYERS


def test_randomize_model_all_layers(tiny_net):
    before = _state(tiny_net)
    rng_state = torch.get_rng_state()
    randomized = randomize_model(tiny_net, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    # The input model is bit-identical.
    after = tiny_net.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert randomized is not tiny_net and randomized.training == tiny_net.training
    new = randomized.state_dict()
    for layer in TINY_LAYERS:
        assert _module_changed(before, new, layer), layer
    # Batch norm's own initialiser: identity affine, reset statistics.
    assert torch.equal(randomized.features[1].weight, torch.ones(4))
    assert torch.equal(randomized.features[1].running_var, torch.ones(4))
    # Reproducible with the seed; another seed differs.
    again = randomize_model(tiny_net, seed=3).state_dict()
    assert all(torch.equal(new[key], again[key]) for key in new)
    other = randomize_model(tiny_net, seed=4).state_dict()
    assert not torch.equal(new["features.0.weight"], other["features.0.weight"])


def test_randomize_model_cascade_changes_only_the_top_layers(tiny_net):
    before = _state(tiny_net)
    randomized = randomize_model(tiny_net, seed=0, cascade_from="features.4").state_dict()
    for layer in ["features.0", "features.1"]:
        assert not _module_changed(before, randomized, layer), layer
    for layer in ["features.4", "features.5", "classifier"]:
        assert _module_changed(before, randomized, layer), layer
    # A layer gets the same random weights whichever others are randomised with it.
    full = randomize_model(tiny_net, seed=0).state_dict()
    assert torch.equal(randomized["features.4.weight"], full["features.4.weight"])
    single = randomize_model(tiny_net, seed=0, layers=["classifier"]).state_dict()
    assert torch.equal(single["classifier.weight"], full["classifier.weight"])
    assert torch.equal(single["features.4.weight"], before["features.4.weight"])
    with pytest.raises(ValueError, match="not a layer"):
        randomize_model(tiny_net, cascade_from="pool")
    with pytest.raises(ValueError, match="not layers"):
        randomize_model(tiny_net, layers=["nope"])


def test_randomize_model_without_reset_parameters():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.full((64,), 3.0) + torch.linspace(0, 1, 64))

        def forward(self, x):
            return x * self.gain

    model = Scale()
    randomized = randomize_model(model, seed=1)
    assert not torch.equal(randomized.gain, model.gain)
    # Same scale, new values.
    assert float(randomized.gain.detach().mean()) == pytest.approx(
        float(model.gain.detach().mean()), abs=0.3
    )


def test_forward_order_follows_the_data_not_the_registration():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)  # registered first, called last
            self.unused = nn.Linear(3, 3)
            self.conv = nn.Conv3d(1, 4, 3, padding=1)

        def forward(self, x):
            return self.head(self.conv(x).mean(dim=(2, 3, 4)))

    model = Reversed().train()
    assert parameter_layers(model) == ["head", "unused", "conv"]
    assert forward_order(model, torch.zeros(2, 1, 5, 5, 5)) == ["conv", "head", "unused"]
    assert model.training


# ---------------------------------------------------------------------------------------------
# Similarities and cascading randomisation
# ---------------------------------------------------------------------------------------------


def test_similarities_match_references():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((2, 6, 7, 5))
    v = u + rng.standard_normal(u.shape)
    assert spearman(u, v) == pytest.approx(stats.spearmanr(u.ravel(), v.ravel()).statistic)
    assert pearson(u, v) == pytest.approx(stats.pearsonr(u.ravel(), v.ravel()).statistic)
    assert math.isnan(spearman(u, np.zeros_like(u)))
    assert ssim(u, u) == pytest.approx(1.0)
    assert ssim(u, v) < 0.9
    assert ssim(u, 3 * u + 1) == pytest.approx(1.0)  # min-max scaling first
    with pytest.raises(ValueError, match="shape"):
        ssim(u, v[0])


def test_cascading_randomization(tiny_net, volume):
    before = _state(tiny_net)
    rows = cascading_randomization(
        tiny_net, volume, "gradient", attribute_fn=gradient_map,
        similarity=["spearman", "ssim"],
    )
    assert [row["layer"] for row in rows] == TINY_LAYERS[::-1]
    assert [row["n_randomized"] for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert -1.0 <= row["spearman"] <= 1.0
        assert -1.0 <= row["ssim"] <= 1.0
    assert rows[-1]["spearman"] < 0.5
    after = tiny_net.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)

    # The last row is the fully randomised model: recompute it independently with scipy.
    with torch.no_grad():
        target = tiny_net.eval()(volume).argmax(dim=1).tolist()
    original = gradient_map(tiny_net, volume, "gradient", target=target).abs().numpy()
    randomized = randomize_model(tiny_net, seed=0)
    maps = gradient_map(randomized, volume, "gradient", target=target).abs().numpy()
    expected = np.mean([stats.spearmanr(o.ravel(), r.ravel()).statistic
                        for o, r in zip(original, maps)])
    assert rows[-1]["spearman"] == pytest.approx(expected, abs=1e-12)


def test_independent_randomization(tiny_net, volume):
    rows = cascading_randomization(
        tiny_net, volume, "gradient", target=0, attribute_fn=gradient_map, mode="independent",
        randomization_seed=2,
    )
    assert [row["layer"] for row in rows] == TINY_LAYERS[::-1]
    assert all(row["n_randomized"] == 1 for row in rows)
    # The top layer alone is the first step of the cascade.
    cascade = cascading_randomization(
        tiny_net, volume, "gradient", target=0, attribute_fn=gradient_map, randomization_seed=2,
    )
    assert rows[0]["spearman"] == cascade[0]["spearman"]
    assert rows[1]["spearman"] != cascade[1]["spearman"]
    with pytest.raises(ValueError, match="mode"):
        cascading_randomization(tiny_net, volume, "gradient", attribute_fn=gradient_map,
                                mode="sideways")
    with pytest.raises(ValueError, match="similarity"):
        cascading_randomization(tiny_net, volume, "gradient", attribute_fn=gradient_map,
                                similarity="hog")


def test_cascading_randomization_inside_mask(tiny_net, volume):
    """With a mask, Spearman ranks only the voxels inside it (scipy on the masked voxels)."""
    mask = np.zeros(volume.shape[2:], dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    rows = cascading_randomization(tiny_net, volume, "gradient", attribute_fn=gradient_map,
                                   mask=mask)
    whole = cascading_randomization(tiny_net, volume, "gradient", attribute_fn=gradient_map)
    with torch.no_grad():
        target = tiny_net.eval()(volume).argmax(dim=1).tolist()
    original = gradient_map(tiny_net, volume, "gradient", target=target).abs().numpy()
    maps = gradient_map(randomize_model(tiny_net, seed=0), volume, "gradient",
                        target=target).abs().numpy()
    expected = np.mean([stats.spearmanr(o[:, mask].ravel(), r[:, mask].ravel()).statistic
                        for o, r in zip(original, maps)])
    assert rows[-1]["spearman"] == pytest.approx(expected, abs=1e-12)
    assert rows[-1]["spearman"] != whole[-1]["spearman"]
    with pytest.raises(ValueError, match="does not match"):
        cascading_randomization(tiny_net, volume, "gradient", attribute_fn=gradient_map,
                                mask=mask[:-1])
    with pytest.raises(ValueError, match="empty"):
        cascading_randomization(tiny_net, volume, "gradient", attribute_fn=gradient_map,
                                mask=np.zeros_like(mask))


def test_split_methods_keeps_order_and_names_the_unknown():
    from nipype_xai.attribution import split_methods

    assert split_methods(["sobel", "gradient", "random", "gradient", "gradcam"]) == (
        ["gradient", "gradcam"], ["sobel", "random"])
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]; methods: gradient"):
        split_methods(["gradient", "nope"])
    with pytest.raises(ValueError, match="no attribution method requested"):
        split_methods([])
