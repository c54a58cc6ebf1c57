"""The benchmark serves the methods that take data (a background set, signal patterns) from the
model's training inputs: controls only in the background, patterns fitted for each network's own
weights, and a cache name that changes with the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nipype_xai.attribution import attribute
from nipype_xai.attribution.patterns import fit_patterns
from nipype_xai.benchmark.method_data import (
    BACKGROUND_SIZE,
    SANITY_FIT_SIZE,
    MethodData,
    merge_params,
    method_data,
    takers,
)
from nipype_xai.benchmark.scoring import model_randomization_check, subject_maps
from nipype_xai.metrics import randomize_model


@pytest.fixture
def training():
    """80 inputs 12³ of two classes (class 1 brighter in one corner), labels alternating: more
    controls than the background holds."""
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(80, 1, 12, 12, 12, generator=generator)
    y = torch.tensor([i % 2 for i in range(80)])
    X[y == 1, :, :4, :4, :4] += 2.0
    return X, y


def test_takers_follow_the_registry():
    assert takers(["gradient", "gradient_shap", "deeplift_shap", "smoothgrad"], "background") == [
        "gradient_shap", "deeplift_shap"]
    assert takers(["pattern_attribution", "gradient", "pattern_net"], "patterns") == [
        "pattern_attribution", "pattern_net"]
    assert takers(["gradient", "random"], "patterns") == []  # a baseline takes none


def test_no_data_for_methods_that_take_none(tiny_net, training):
    data = method_data(tiny_net, ["gradient", "lrp_epsilon"], *training, seed=0, source="t")
    assert data.params == {} and data.digest == "" and data.for_net is None
    assert MethodData.none().for_net is None


def test_background_is_seeded_controls_of_the_training_inputs(tiny_net, training):
    X, y = training
    data = method_data(tiny_net, ["gradient_shap", "deeplift_shap"], X, y, seed=5, source="t")
    background = data.params["gradient_shap"]["background"]
    assert data.params["deeplift_shap"]["background"] is background
    record = data.record["background"]
    assert int((y == 0).sum()) > BACKGROUND_SIZE
    assert background.shape == (BACKGROUND_SIZE, 1, 12, 12, 12)
    assert record["N"] == len(record["Indices"]) == background.shape[0]
    assert all(int(y[i]) == 0 for i in record["Indices"])  # controls only
    assert torch.equal(background, X[record["Indices"]])
    again = method_data(tiny_net, ["gradient_shap"], X, y, seed=5, source="t")
    other = method_data(tiny_net, ["gradient_shap"], X, y, seed=6, source="t")
    assert again.digest == data.digest  # same draw, same cache name
    assert other.record["background"]["Indices"] != record["Indices"]
    assert other.digest != data.digest
    changed = X.clone()
    changed[record["Indices"][0]] += 1.0
    assert method_data(tiny_net, ["gradient_shap"], changed, y, seed=5,
                       source="t").digest != data.digest


def test_method_data_pickles_for_the_resume_cache(tiny_net, training):
    import pickle

    data = method_data(tiny_net, ["gradient_shap", "pattern_net"], *training, seed=0, source="t")
    copy = pickle.loads(pickle.dumps(data))
    assert copy.digest == data.digest and copy.record == data.record
    assert torch.equal(copy.params["gradient_shap"]["background"],
                       data.params["gradient_shap"]["background"])
    net = randomize_model(tiny_net, 1)
    assert copy.for_net(net)["pattern_net"]["patterns"] == data.for_net(net)["pattern_net"][
        "patterns"]


def test_patterns_fitted_on_all_training_inputs_and_per_network(tiny_net, training):
    X, y = training
    data = method_data(tiny_net, ["pattern_net", "pattern_attribution"], X, y, seed=0,
                       source="t")
    patterns = data.params["pattern_net"]["patterns"]
    assert patterns == fit_patterns(tiny_net, X, fitted_on="t: all 80 inputs")
    assert data.record["patterns"]["N"] == len(y)
    fit_indices = data.record["patterns"]["SanityFitIndices"]
    assert len(fit_indices) == min(SANITY_FIT_SIZE, len(y))

    # Each network gets patterns fitted for its own weights, on the sanity fit set.
    randomized = randomize_model(tiny_net, 0)
    own = data.for_net(randomized)
    fit_set = X[fit_indices]
    assert own["pattern_attribution"]["patterns"] == fit_patterns(randomized, fit_set,
                                                                   fitted_on="sanity fit set")
    assert own["pattern_attribution"]["patterns"] != patterns
    assert data.for_net(tiny_net)["pattern_net"]["patterns"] == fit_patterns(
        tiny_net, fit_set, fitted_on="sanity fit set")


def test_subject_maps_use_the_data_and_the_random_model_its_own_patterns(tiny_net, training,
                                                                         volume):
    X, y = training
    data = method_data(tiny_net, ["gradient_shap", "pattern_attribution"], X, y, seed=0,
                       source="t")
    x = volume[:1]
    params = merge_params({"gradient_shap": {"n_samples": 8}}, data.params)
    maps = {name: m for name, m, _ in subject_maps(
        tiny_net, x, 1, ["gradient_shap", "pattern_attribution"], method_params=params,
        random_model=randomize_model(tiny_net, 0),
        random_model_methods=["pattern_attribution"], net_params=data.for_net)}
    background = data.params["gradient_shap"]["background"]
    expected = attribute(tiny_net, x, "gradient_shap", 1, n_samples=8, seed=0,
                         background=background)
    np.testing.assert_allclose(maps["gradient_shap"], expected.double().sum(1)[0].numpy(),
                               rtol=1e-6, atol=1e-9)
    fallback = attribute(tiny_net, x, "gradient_shap", 1, n_samples=8, seed=0)
    assert not np.allclose(maps["gradient_shap"], fallback.double().sum(1)[0].numpy())

    randomized = randomize_model(tiny_net, 0)
    own = fit_patterns(randomized, X[data.record["patterns"]["SanityFitIndices"]])
    expected = attribute(randomized, x, "pattern_attribution", 1, patterns=own)
    np.testing.assert_allclose(maps["random_model_pattern_attribution"],
                               expected.double().sum(1)[0].numpy(), rtol=1e-6, atol=1e-9)


def test_sanity_check_asks_every_network_of_the_cascade_for_its_data(tiny_net, training, volume):
    X, y = training
    data = method_data(tiny_net, ["pattern_attribution"], X, y, seed=0, source="t")
    seen = []

    def spy(net):
        seen.append(net)
        return data.for_net(net)

    rows = model_randomization_check(tiny_net, volume[:1], ["pattern_attribution"],
                                     method_params=data.params, max_steps=2, net_params=spy)
    depths = sorted({row["n_randomized"] for row in rows})
    assert len(seen) == len(depths) + 1  # the trained network and each randomised one
    assert seen[0] is tiny_net or all(
        torch.equal(a, b) for a, b in zip(seen[0].state_dict().values(),
                                          tiny_net.state_dict().values()))
    assert all(np.isfinite(row["spearman"]) for row in rows)
