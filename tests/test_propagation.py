"""Propagation methods (guided backprop, DeconvNet, LRP composites) against zennit, captum,
autograd and LRP's conservation property."""

import copy

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (
    DeconvNet,
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    GuidedBackprop,
    LayerMapComposite,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon, ZBox, ZPlus
from zennit.types import Linear

from conftest import TinyNet3D, bias_free, randomize_batchnorm
from nipype_xai.attribution import attribute, method_defaults
from nipype_xai.attribution.canonizers import canonizers_for
from nipype_xai.attribution.propagation import (
    input_bounds,
    lrp_epsilon_composite,
    relative_epsilon,
)

PROPAGATION_METHODS = [
    "guided_backprop", "deconvnet", "lrp_epsilon", "lrp_epsilon_plus_flat", "lrp_alpha2_beta1",
    "deep_taylor", "lrp_epsilon_gamma_box", "lrp_epsilon_plus",
]
LRP_METHODS = PROPAGATION_METHODS[2:]


def target_scores(model, x):
    with torch.no_grad():
        output = model(x)
    target = output.argmax(1)
    return target, output.gather(1, target[:, None])[:, 0]


def zennit_reference(model, x, target, composite, relevance):
    """zennit's own Gradient attributor, starting from y_t·one-hot (LRP) or one-hot (gradient)."""

    def output_weights(output):
        one_hot = torch.zeros_like(output).scatter_(1, target[:, None], 1.0)
        return one_hot * output.detach() if relevance else one_hot

    with Gradient(model=model, composite=composite) as attributor:
        _, attribution = attributor(x.clone(), output_weights)
    return attribution.detach()


def zennit_composite(method, x):
    """The composite each method should amount to, built from zennit directly, with zennit's own
    batch-norm merge (correct for the sequential TinyNet3D, which has no stand-alone batch norm
    or residual sum; its average pool reads ReLU outputs, where z⁺ and ``Norm`` agree)."""
    canonizers = [SequentialMergeBatchNorm()]
    low = x.amin(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
    return {
        "guided_backprop": lambda: GuidedBackprop(),
        "deconvnet": lambda: DeconvNet(),
        "lrp_epsilon": lambda: LayerMapComposite(
            layer_map_base() + [(Linear, Epsilon(epsilon=relative_epsilon(0.25)))],
            canonizers=canonizers,
        ),
        "lrp_epsilon_plus_flat": lambda: EpsilonPlusFlat(canonizers=canonizers),
        "lrp_alpha2_beta1": lambda: EpsilonAlpha2Beta1(canonizers=canonizers),
        "deep_taylor": lambda: SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [(Linear, ZPlus(zero_params="bias"))],
            first_map=[(Linear, ZBox(low=low, high=high))],
            canonizers=canonizers,
        ),
        "lrp_epsilon_gamma_box": lambda: EpsilonGammaBox(low=low, high=high, canonizers=canonizers),
        "lrp_epsilon_plus": lambda: EpsilonPlus(canonizers=canonizers),
    }[method]()


def inplace_free(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


# ------------------------------------------------------------------------------------------
# Against independent references
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", PROPAGATION_METHODS)
def test_method_equals_zennit_called_directly(tiny_net, volume, method):
    target, _ = target_scores(tiny_net, volume)
    expected = zennit_reference(
        tiny_net, volume, target, zennit_composite(method, volume), method in LRP_METHODS
    )
    result = attribute(tiny_net, volume, method, target=target)
    assert expected.abs().max() > 0
    # zennit's merge leaves batch norm dividing by sqrt(1 + eps); ours is an exact identity.
    torch.testing.assert_close(result, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize(
    ("method", "captum_class"),
    [("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")],
)
def test_modified_relu_gradients_equal_captum(tiny_net, volume, method, captum_class):
    captum_attr = pytest.importorskip("captum.attr")
    target = torch.tensor([1, 0])  # not only the predicted class
    expected = getattr(captum_attr, captum_class)(tiny_net).attribute(volume, target=target)
    result = attribute(tiny_net, volume, method, target=target)
    assert expected.abs().max() > 0
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fixture", ["tiny_net", "monai_resnet", "monai_densenet"])
def test_lrp_epsilon_equals_input_times_gradient(fixture, volume, request):
    """LRP-0 (ε → 0, ReLU ``Pass``) equals gradient × input on ReLU networks, biases included,
    *if* every linear operation is a layer the rule sees (Shrikumar et al. 2016; Ancona et al.
    2018): an independent autograd check that the canonizers make batch norms (merged or as
    explicit affine layers) and residual sums into such layers."""
    model = request.getfixturevalue(fixture)
    target, _ = target_scores(model, volume)
    x = volume.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    expected = volume * gradient
    result = attribute(model, volume, "lrp_epsilon", target=target, epsilon=1e-9)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-3 * expected.abs().max().item())
    uncanonized = attribute(model, volume, "lrp_epsilon", epsilon=1e-9, canonize=False)
    assert (uncanonized - expected).abs().max() > 0.1 * expected.abs().max()


# ------------------------------------------------------------------------------------------
# Conservation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_net", "monai_resnet", "monai_densenet"])
def test_lrp_epsilon_conserves_relevance_on_bias_free_networks(fixture, volume, request):
    model = bias_free(request.getfixturevalue(fixture))
    target, y_t = target_scores(model, volume)
    relevance = attribute(model, volume, "lrp_epsilon", target=target, epsilon=1e-9)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3, 4)), y_t, rtol=1e-3, atol=0)


def test_resnet_conserves_only_with_the_residual_canonizer(monai_resnet, volume):
    model = bias_free(monai_resnet)
    target, y_t = target_scores(model, volume)

    def total(canonizers):
        composite = lrp_epsilon_composite(1e-9, canonizers)
        return zennit_reference(model, volume, target, composite, relevance=True).sum((1, 2, 3, 4))

    with_sum = total(canonizers_for(model))
    without_sum = total(canonizers_for(model, residual=False))  # batch norms still merged
    torch.testing.assert_close(with_sum, y_t, rtol=1e-3, atol=0)
    # The gradient of ``out += residual`` copies the relevance into both branches: it grows
    # with every block instead of being shared.
    assert ((without_sum - y_t).abs() > 0.5 * y_t.abs()).all()


def test_monai_bottleneck_resnet_is_canonized(volume):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = randomize_batchnorm(
        nets.ResNet(
            block="bottleneck", layers=[1, 1, 1, 1], block_inplanes=[2, 4, 4, 4], spatial_dims=3,
            n_input_channels=1, num_classes=2,
        )
    )
    model = bias_free(model)
    target, y_t = target_scores(model, volume)
    relevance = attribute(model, volume, "lrp_epsilon", target=target, epsilon=1e-9)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3, 4)), y_t, rtol=1e-3, atol=0)


def test_single_output_model_explains_its_output(volume):
    torch.manual_seed(0)
    model = bias_free(randomize_batchnorm(TinyNet3D(n_outputs=1)))
    with torch.no_grad():
        output = model(volume)[:, 0]
    relevance = attribute(model, volume, "lrp_epsilon", epsilon=1e-9)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3, 4)), output, rtol=1e-3, atol=0)


def test_explicit_targets_per_sample(volume):
    torch.manual_seed(0)
    model = bias_free(randomize_batchnorm(TinyNet3D()))
    with torch.no_grad():
        output = model(volume)
    relevance = attribute(model, volume, "lrp_epsilon", target=[1, 0], epsilon=1e-9)
    expected = torch.stack([output[0, 1], output[1, 0]])
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3, 4)), expected, rtol=1e-3, atol=0)


# ------------------------------------------------------------------------------------------
# Real 3D architectures, batches, in-place ReLUs, an untouched model
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["monai_resnet", "monai_densenet"])
def test_every_method_runs_on_monai_networks_and_batches(fixture, volume, request):
    model = request.getfixturevalue(fixture)
    for method in PROPAGATION_METHODS:
        pair = attribute(model, volume, method)
        assert pair.shape == volume.shape
        assert torch.isfinite(pair).all(), method
        assert pair.abs().max() > 0, method
        # Batch size 1, and chunked passes, give each sample the map it gets in a batch.
        single = attribute(model, volume[1:], method)
        assert single.shape == volume[1:].shape
        scale = pair.abs().max().item()
        torch.testing.assert_close(single, pair[1:], rtol=1e-4, atol=1e-5 * scale, msg=method)
        chunked = attribute(model, volume, method, batch_size=1)
        torch.testing.assert_close(chunked, pair, rtol=1e-4, atol=1e-5 * scale, msg=method)


@pytest.mark.parametrize("method", ["guided_backprop", "lrp_epsilon", "lrp_epsilon_gamma_box"])
def test_in_place_relus_give_the_same_maps(monai_densenet, volume, method):
    expected = attribute(inplace_free(monai_densenet), volume, method)
    torch.testing.assert_close(attribute(monai_densenet, volume, method), expected)


@pytest.mark.parametrize("method", ["guided_backprop", "lrp_epsilon", "deep_taylor"])
def test_model_is_untouched(monai_resnet, volume, method):
    monai_resnet.train()
    before = {key: value.clone() for key, value in monai_resnet.state_dict().items()}
    modules = [(name, type(module)) for name, module in monai_resnet.named_modules()]
    attribute(monai_resnet, volume, method)
    assert monai_resnet.training
    assert all(module.training for module in monai_resnet.modules())
    after = monai_resnet.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [(name, type(module)) for name, module in monai_resnet.named_modules()] == modules
    assert "forward" not in vars(monai_resnet.layer1[0])
    assert all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        for m in monai_resnet.modules()
    )


def test_lrp_defaults():
    assert method_defaults("lrp_epsilon") == {"epsilon": 0.25, "canonize": True, "batch_size": 16}
    assert method_defaults("lrp_alpha2_beta1")["epsilon"] == 1e-6
    assert method_defaults("deep_taylor")["low"] is None
    assert method_defaults("lrp_epsilon_gamma_box")["gamma"] == 0.25


# ------------------------------------------------------------------------------------------
# ZBox bounds
# ------------------------------------------------------------------------------------------


def test_input_bounds_default_to_each_samples_range(volume):
    shifted = torch.cat([volume[:1], volume[1:] + 5.0])
    low, high = input_bounds(shifted, None, None)
    assert low.shape == high.shape == shifted.shape
    assert torch.equal(low[0].unique(), shifted[0].min().reshape(1))
    assert torch.equal(high[1].unique(), shifted[1].max().reshape(1))
    low, high = input_bounds(shifted, 0.0, torch.full((2, 1, 1, 1, 1), 9.0))
    assert low.eq(0).all() and high.eq(9).all()


def test_explicit_bounds_change_deep_taylor(tiny_net, volume):
    default = attribute(tiny_net, volume, "deep_taylor")
    wide = attribute(tiny_net, volume, "deep_taylor", low=-10.0, high=10.0)
    assert torch.isfinite(wide).all()
    assert not torch.allclose(default, wide)
    dims = (1, 2, 3, 4)
    explicit = attribute(
        tiny_net, volume, "deep_taylor",
        low=volume.amin(dim=dims, keepdim=True), high=volume.amax(dim=dims, keepdim=True),
    )
    torch.testing.assert_close(explicit, default)


@pytest.mark.parametrize("method", ["deep_taylor", "lrp_epsilon_gamma_box"])
def test_bad_bounds_are_rejected(tiny_net, volume, method):
    with pytest.raises(ValueError, match="low exceeds high"):
        attribute(tiny_net, volume, method, low=1.0, high=-1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        attribute(tiny_net, volume, method, low=torch.zeros(3, 5))
