"""Small 3D models and volumes shared by the tests (CPU, seconds)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


class TinyNet3D(nn.Module):
    """Conv3d / BatchNorm3d / ReLU / MaxPool3d / global pooling / Linear: the common 3D CNN shape."""

    def __init__(self, in_channels: int = 1, n_outputs: int = 2, bias: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, 4, 3, padding=1, bias=bias),
            nn.BatchNorm3d(4),
            nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(4, 8, 3, padding=1, bias=bias),
            nn.BatchNorm3d(8),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(8, n_outputs, bias=bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial running statistics and affine parameters (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return randomize_batchnorm(TinyNet3D())


@pytest.fixture
def volume():
    """A batch of two 12³ single-channel volumes, seeded."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, 12, 12, 12, generator=generator)


@pytest.fixture
def monai_resnet():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.ResNet(
        block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 8, 8], spatial_dims=3,
        n_input_channels=1, num_classes=2,
    )
    return randomize_batchnorm(model)


@pytest.fixture
def monai_densenet():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.DenseNet(
        spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
        block_config=(2, 2), bn_size=2,
    )
    return randomize_batchnorm(model)


def bias_free(model: nn.Module) -> nn.Module:
    """A copy without additive terms: no conv / linear bias, batch norm a pure per-channel scale.

    Such a ReLU network is positively homogeneous, y(x) = Σ x·∂y/∂x, and LRP-ε with ε → 0 must
    redistribute exactly y_t onto the input.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)) and module.bias is not None:
            module.bias = None
        if isinstance(module, nn.BatchNorm3d):
            with torch.no_grad():
                module.bias.zero_()
                module.running_mean.zero_()
    return model.eval()


def activation_and_gradient(model, x, layer, target):
    """The activation of ``layer`` and the gradient of the target score with respect to it."""
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        out = model(x.clone().requires_grad_(True))
        y = out[torch.arange(x.shape[0]), target].sum()
        (grad,) = torch.autograd.grad(y, store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), grad
