"""The engine's contract: names, parameters, targets, an untouched model, every method computes."""

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from nipype_xai.attribution import (
    METHOD_NAMES,
    TargetError,
    attribute,
    attribute_many,
    available_methods,
    method_defaults,
)

SPEC_METHODS = [
    "gradient", "saliency", "input_x_gradient", "smoothgrad", "smoothgrad_sq", "vargrad",
    "integrated_gradients", "guided_backprop", "deconvnet", "lrp_epsilon",
    "lrp_epsilon_plus_flat", "lrp_alpha2_beta1", "deep_taylor", "gradcam", "gradcam_pp",
    "smooth_gradcam_pp", "occlusion", "deeplift", "shapley_sampling", "kernel_shap", "lime",
    "atlas_occlusion", "lrp_epsilon_gamma_box", "lrp_epsilon_plus",
    "guided_gradcam", "score_cam", "layercam", "hirescam", "gradient_shap", "deeplift_shap",
    "pattern_net", "pattern_attribution",
]

# Small sample counts keep the all-method tests fast; defaults are exercised on the tiny net.
FAST = {
    "smoothgrad": {"n_samples": 4}, "smoothgrad_sq": {"n_samples": 4}, "vargrad": {"n_samples": 4},
    "smooth_gradcam_pp": {"n_samples": 3}, "integrated_gradients": {"n_steps": 8},
    "shapley_sampling": {"n_samples": 2}, "kernel_shap": {"n_samples": 20},
    "lime": {"n_samples": 20}, "gradient_shap": {"n_samples": 4},
}


def test_available_methods_are_the_spec_table():
    assert list(METHOD_NAMES) == SPEC_METHODS
    assert available_methods() == SPEC_METHODS


def test_every_method_states_its_defaults():
    for name in available_methods():
        defaults = method_defaults(name)
        assert isinstance(defaults, dict)
        assert "batch_size" in defaults, name
    assert method_defaults("smoothgrad")["n_samples"] == 50
    assert method_defaults("smoothgrad")["noise_level"] == 0.1
    assert method_defaults("integrated_gradients")["n_steps"] == 50
    assert method_defaults("lrp_epsilon")["epsilon"] == 0.25  # relative to each layer (issue 15)


def test_unknown_method_and_parameter(tiny_net, volume):
    with pytest.raises(ValueError, match="unknown attribution method 'gradcam3'"):
        attribute(tiny_net, volume, "gradcam3")
    with pytest.raises(TypeError, match="n_sample"):
        attribute(tiny_net, volume, "smoothgrad", n_sample=3)
    with pytest.raises(TypeError, match="does not accept"):
        attribute_many(tiny_net, volume, ["gradient"], method_params={"gradient": {"seed": 1}})



@pytest.mark.parametrize("size", [0, -2, 2.5, True, "16"])
def test_batch_size_must_be_a_positive_integer(tiny_net, volume, size):
    # Before: torch's "split_size can only be 0 if dimension size is 0" from deep inside a method.
    with pytest.raises(ValueError, match=f"smoothgrad: batch_size must be a positive integer, "
                                         f"got {re.escape(repr(size))}"):
        attribute(tiny_net, volume, "smoothgrad", batch_size=size)
    with pytest.raises(ValueError, match="gradient: batch_size must be"):
        attribute_many(tiny_net, volume, ["gradient"], method_params={"gradient": {"batch_size": 0}})
    # A numpy integer is an integer.
    assert attribute(tiny_net, volume, "gradient", batch_size=np.int64(1)).shape == volume.shape


def test_bad_input(tiny_net):
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        attribute(tiny_net, torch.zeros(12, 12, 12), "gradient")
    bad = torch.zeros(1, 1, 12, 12, 12)
    bad[0, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        attribute(tiny_net, bad, "gradient")


def test_target_out_of_range(tiny_net, volume):
    with pytest.raises(TargetError, match=r"target \[2, 2\] out of range .* 2 outputs"):
        attribute(tiny_net, volume, "gradient", target=2)
    with pytest.raises(TargetError, match="3 targets for a batch of 2"):
        attribute(tiny_net, volume, "gradient", target=[0, 1, 1])


def test_regression_model_ignores_target(volume):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(2, 1)).eval()
    x = volume.clone().requires_grad_(True)
    model(x).sum().backward()
    torch.testing.assert_close(attribute(model, volume, "gradient", target=0), x.grad)
    torch.testing.assert_close(attribute(model, volume, "gradient"), x.grad)


def assert_untouched(model, reference_state, training):
    state = model.state_dict()
    assert state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        assert torch.equal(state[key], value), key
    assert model.training is training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not getattr(module, "_backward_pre_hooks", {})
        assert module.training is training
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("training", [False, True])
def test_model_untouched_and_every_method_computes(tiny_net, volume, training):
    tiny_net.train(training)
    reference = copy.deepcopy(tiny_net.state_dict())
    for name in available_methods():
        maps = attribute(tiny_net, volume, name)  # defaults alone
        assert maps.shape == volume.shape, name
        assert bool(torch.isfinite(maps).all()), name
        assert float(maps.abs().sum()) > 0, name
        assert_untouched(tiny_net, reference, training)


def test_attribute_many_equals_attribute(tiny_net, volume):
    names = available_methods()
    together = attribute_many(tiny_net, volume, names, method_params=FAST)
    assert list(together) == names
    for name in names:
        alone = attribute(tiny_net, volume, name, **FAST.get(name, {}))
        torch.testing.assert_close(together[name], alone, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_gradient_pass_rides_in_the_first_smoothgrad_batch(tiny_net, volume, batch_size):
    """Gradient + SmoothGrad families together: the clean pass joins the first noisy batch when
    there is room (one forward pass fewer), with exactly the maps of separate calls."""
    six = ["gradient", "saliency", "input_x_gradient", "smoothgrad", "smoothgrad_sq", "vargrad"]
    n, b = 5, volume.shape[0]
    sizes: list[int] = []
    handle = tiny_net.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        together = attribute_many(tiny_net, volume, six, target=0, n_samples=n,
                                  batch_size=batch_size)
    finally:
        handle.remove()
    # The engine's target check is one pass over the inputs; then, fused, ceil((b·n + b) / size)
    # passes, else the gradient's ceil(b / size) plus SmoothGrad's ceil(b·n / size).
    def ceil(a: int) -> int:
        return -(-a // batch_size)

    fused = ceil(b * n + b) if b < batch_size else ceil(b) + ceil(b * n)
    assert len(sizes) == ceil(b) + fused
    assert max(sizes) <= batch_size and sum(sizes) == b * n + 2 * b
    for name in six:
        params = {"n_samples": n} if name in six[3:] else {}
        alone = attribute(tiny_net, volume, name, target=0, batch_size=batch_size, **params)
        torch.testing.assert_close(together[name], alone, rtol=1e-5, atol=1e-9, msg=name)


def sfcn_small():
    from nipype_xai.models.architectures import SFCN

    torch.manual_seed(0)
    return SFCN(channel_number=[4, 8, 8, 8, 8, 4], n_outputs=2)


@pytest.mark.parametrize("architecture", ["monai_resnet", "monai_densenet", "sfcn"])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_method_on_real_architectures(architecture, batch, request):
    from conftest import randomize_batchnorm

    if architecture == "sfcn":
        model, size = randomize_batchnorm(sfcn_small()), 32  # five 2x poolings need >= 32 voxels
    else:
        model, size = request.getfixturevalue(architecture), 16
    x = torch.randn(batch, 1, size, size, size, generator=torch.Generator().manual_seed(3))
    reference = copy.deepcopy(model.state_dict())
    maps = attribute_many(model, x, available_methods(), method_params=FAST)
    for name, result in maps.items():
        assert result.shape == x.shape, (architecture, name)
        assert bool(torch.isfinite(result).all()), (architecture, name)
    assert_untouched(model, reference, False)
