"""lrp_epsilon's ε and deep_taylor's bias-free z⁺ rule (issue 15, defect 8)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TinyNet3D, randomize_batchnorm
from nipype_xai.attribution import attribute, method_defaults
from nipype_xai.models import load_model, load_model_spec

BUNDLED = Path(__file__).parents[1] / "nipype_xai" / "data" / "models" / "lesion_tinycnn3d.json"


def input_times_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return x.detach() * gradient


def test_epsilon_is_a_quarter_of_the_layers_rms():
    """Closed form on one linear layer with one output y = w·x: the relative ε is 0.25·|y|, so
    R_i = x_i w_i · y / (y + 0.25·|y|·sign y) = x_i w_i / 1.25, whatever the scale of w or x
    (an absolute ε would give x_i w_i · y / (y ± ε), which depends on it)."""
    torch.manual_seed(0)
    linear = nn.Linear(27, 1, bias=False)
    model = nn.Sequential(nn.Flatten(), linear).eval()
    x = torch.randn(3, 1, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    expected = x * linear.weight.detach().reshape(1, 1, 3, 3, 3) / 1.25
    for scale in (1.0, 100.0):
        with torch.no_grad():
            linear.weight.mul_(scale)
        torch.testing.assert_close(attribute(model, x, "lrp_epsilon"), expected * scale,
                                   rtol=1e-4, atol=1e-6 * scale)
        with torch.no_grad():
            linear.weight.div_(scale)


def test_lrp_epsilon_differs_from_input_times_gradient_on_the_bundled_model():
    """The default ε makes LRP-ε a method of its own: with the old ε = 10⁻⁶ (LRP-0) the bundled
    model's map was input × gradient to 6·10⁻⁴ (relative L2); at ε = 0.25 RMS they differ by
    0.76 (correlation 0.95)."""
    model = load_model(load_model_spec(BUNDLED))
    x = torch.from_numpy(np.load(BUNDLED.with_name("lesion_tinycnn3d_input_mean.npy")))
    x = x.float()[None, None]
    target = torch.tensor([1])
    expected = input_times_gradient(model, x, target)
    lrp = attribute(model, x, "lrp_epsilon", target=target)
    assert (lrp - expected).norm() > 0.3 * expected.norm()
    lrp_0 = attribute(model, x, "lrp_epsilon", target=target, epsilon=1e-9)
    torch.testing.assert_close(lrp_0, expected, rtol=0, atol=1e-3 * expected.abs().max().item())


def test_epsilon_to_zero_recovers_input_times_gradient_without_biases(volume):
    """Closed form: a bias-free ReLU network is positively homogeneous, f(x) = Σ x·∂f/∂x, and
    LRP-0 is exactly x ⊙ ∇f; the map approaches it as ε → 0 and leaves it as ε grows."""
    torch.manual_seed(0)
    model = randomize_batchnorm(TinyNet3D(bias=False))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            with torch.no_grad():
                module.bias.zero_()
                module.running_mean.zero_()
    target = torch.tensor([0, 1])
    expected = input_times_gradient(model, volume, target)
    scale = expected.abs().max().item()
    errors = [(attribute(model, volume, "lrp_epsilon", target=target, epsilon=epsilon)
               - expected).abs().max().item() / scale for epsilon in (1e-9, 1e-3, 0.25)]
    assert errors[0] < 1e-3
    assert errors[0] < errors[1] < errors[2]
    assert errors[2] > 0.05


def test_lrp_epsilon_default():
    assert method_defaults("lrp_epsilon")["epsilon"] == 0.25


# ------------------------------------------------------------------------------------------
# deep_taylor: the z⁺ rule without biases (Montavon et al. 2017)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def densenet_with_biases():
    """A small MONAI DenseNet whose convolutions have biases (MONAI's have none): batch-norm
    shifts and biases everywhere, as DTD's z⁺ rule must ignore them."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=8,
                          growth_rate=4, block_config=(2, 2), bn_size=2)
    for module in list(model.modules()):
        if isinstance(module, nn.Conv3d) and module.bias is None:
            module.bias = nn.Parameter(0.1 * torch.randn(module.out_channels))
    return randomize_batchnorm(model)


@pytest.mark.parametrize("fixture", ["tiny_net", "monai_resnet", "densenet_with_biases"])
def test_deep_taylor_conserves_with_biases(fixture, volume, request):
    """z⁺ ignoring biases redistributes all of a neuron's relevance over its positive
    contributions, so the map sums to y_t on ReLU networks *with* biases (the old rule, with
    biases kept, absorbed up to 29 % of y_t on DenseNet121)."""
    model = request.getfixturevalue(fixture)
    with torch.no_grad():
        output = model(volume)
    target = output.argmax(1)
    y_t = output.gather(1, target[:, None])[:, 0]
    relevance = attribute(model, volume, "deep_taylor", target=target)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3, 4)), y_t, rtol=1e-3, atol=0)


def test_deep_taylor_ignores_positive_biases(tiny_net, volume):
    """Raising a layer's bias changes z⁺-with-bias maps by absorbing relevance, while DTD's
    rule only sees it through the activations: on the last (linear) layer, whose inputs do not
    change, the bias-free map is unchanged."""
    model = copy.deepcopy(tiny_net)
    target = torch.tensor([0, 1])
    before = attribute(model, volume, "deep_taylor", target=target)
    with torch.no_grad():
        model.classifier.bias.add_(5.0)
        output = model(volume).gather(1, target[:, None])[:, 0]
    after = attribute(model, volume, "deep_taylor", target=target)
    # Relevance starts from the new y_t; the distribution over the input is the same.
    with torch.no_grad():
        old_output = tiny_net(volume).gather(1, target[:, None])[:, 0]
    ratio = (output / old_output).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(after, before * ratio, rtol=1e-4, atol=1e-6)
