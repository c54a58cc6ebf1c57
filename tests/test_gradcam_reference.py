"""Grad-CAM++ and Smooth Grad-CAM++ against the papers' equations and torchcam (issue 15,
defect 4).

torchcam 0.5.0's ``GradCAMpp`` cannot serve as a reference: its α is never divided (the in-place
division acts on a boolean-mask copy), so its weights are Σ g²·ReLU(g). Its ``SmoothGradCAMpp``
computes α correctly, and without noise it is Grad-CAM++ (the same formula on one copy), so it is
the reference for both methods here. It sums A·g³ over positions in α's denominator where eq. 19
of Chattopadhyay et al. multiplies g³ by Σ A; the nets below feed the CAM layer straight into
global average pooling, where g is constant over a channel and the two agree.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import activation_and_gradient
from nipype_xai.attribution import attribute
from nipype_xai.attribution import gradcam as gradcam_module
from nipype_xai.attribution.gradcam import gradcam_pp_map
from nipype_xai.attribution.noise import noisy_batches


def test_gradcam_pp_map_is_eq19_by_hand():
    # Two channels on a 2x2x1 grid. Channel 0: Σ A = 6, α = g² / (2g² + 6g³) = 1 / (2 + 6g):
    # g = 1/2 -> 1/5, g = 2 -> 1/14 (g = -1 and g = 0 add nothing through ReLU(g)), so
    # w0 = 1/5 · 1/2 + 1/14 · 2 = 17/70. Channel 1: Σ A = 2, α = 1 / (2 + 2g): g = 1/4 -> 2/5
    # (twice), g = 1 -> 1/4, so w1 = 2 · 2/5 · 1/4 + 1/4 = 9/20.
    a = torch.tensor([[1.0, 2.0, 0.0, 3.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[0.5, -1.0, 0.0, 2.0], [0.25, 0.25, -0.5, 1.0]], dtype=torch.float64)
    w0, w1 = 17 / 70, 9 / 20
    expected = torch.tensor([w0 * 1, w0 * 2 + w1, w1, w0 * 3], dtype=torch.float64)
    cam = gradcam_pp_map(a.reshape(1, 2, 2, 2, 1), g.reshape(1, 2, 2, 2, 1))
    torch.testing.assert_close(cam.reshape(-1), expected, rtol=1e-12, atol=0)
    # MONAI's / torchcam's denominator 2g² + Σ_ab A_ab g_ab³ gives other weights here
    # (channel 0: Σ A·g³ = 22.125, not 6g³).
    monai_sum = (a * g.pow(3)).sum(1, keepdim=True)
    alpha = g.pow(2) / torch.where(g != 0, 2 * g.pow(2) + monai_sum * g.pow(3), 1.0)
    monai_w = (alpha * g.clamp_min(0)).sum(1)
    assert abs(float(monai_w[0]) - w0) > 0.1


class _Replay:
    """A stand-in for torchcam's noise distribution that returns given draws in order."""

    def __init__(self, draws):
        self.draws = iter(draws)

    def sample(self, size):
        draw = next(self.draws)
        assert tuple(draw.shape) == tuple(size)
        return draw


def torchcam_smooth(model, layer, x, target, draws):
    """torchcam's SmoothGradCAMpp map at the layer's grid, on the given noise draws."""
    methods = pytest.importorskip("torchcam.methods")
    with methods.SmoothGradCAMpp(model, layer, num_samples=len(draws),
                                 input_shape=tuple(x.shape[1:])) as extractor:
        extractor._distrib = _Replay(draws)
        model(x)  # torchcam reads the input and its activation from this pass
        (cam,) = extractor(class_idx=target.tolist(), normalized=False)
    return cam


def test_gradcam_pp_matches_torchcam_without_noise():
    torch.manual_seed(0)
    # CAM layer -> global average pooling -> a non-linear head: g is constant over a channel
    # (torchcam's Σ A·g³ equals eq. 19's (Σ A)·g³) but differs between channels and samples.
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    with torch.no_grad():
        model[-1].weight.mul_(6400)  # g ~ 5 at a 4³ grid: torchcam's eps = 1e-8 is negligible
    x = torch.randn(3, 1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 1])
    ours = attribute(model, x, "gradcam_pp", target=target, layer="1")
    theirs = torchcam_smooth(model, "1", x, target, [torch.zeros_like(x)])
    assert float(ours.amax()) > 0
    torch.testing.assert_close(ours[:, 0], theirs, rtol=1e-6, atol=1e-9)


class _TwoBranchNet(nn.Module):
    """A = ReLU(conv(x[:, :1])) on channel 0; y_t = Σ_k z_k (W_tk + u V_tk) with z = mean(A) and
    u = mean(x[:, 1]). So ∂y/∂A is constant over a channel (torchcam's α equals eq. 19's) and
    affine in u, and noise on channel 1 alone changes the gradient but not the activation."""

    def __init__(self, channels=3, voxels=64):
        super().__init__()
        self.conv = nn.Conv3d(1, channels, 3, padding=1)
        self.relu = nn.ReLU()
        # g = (W + u V) / voxels: mostly positive (a zero map would prove nothing), varied by u.
        self.W = nn.Parameter(torch.rand(2, channels) * voxels)
        self.V = nn.Parameter(torch.randn(2, channels) * voxels)

    def forward(self, x):
        z = self.relu(self.conv(x[:, :1])).mean(dim=(2, 3, 4))
        u = x[:, 1].mean(dim=(1, 2, 3))[:, None, None]
        return (z[:, None, :] * (self.W + u * self.V)).sum(-1)


def test_smooth_gradcam_pp_matches_torchcam_on_the_same_noise(monkeypatch):
    """Omeiza et al.: the gradient terms g, g², g³ averaged over the copies, α once.

    torchcam's SmoothGradCAMpp departs from that in two places, both made void here rather than
    patched: its weights use ReLU of the *last* copy's gradient (not the mean D¹) and its map the
    last copy's activation (not the input's). The noise below touches channel 1 only, so every
    copy has the input's activation, and the last draw is the mean of the others, so (∂y/∂A
    being affine in that mean) the last copy's gradient is the copies' mean gradient. The mean
    of g² and g³ are still far from those of the mean gradient: the test tells Omeiza's
    averaging from Grad-CAM++ of one copy and from the mean of Grad-CAM++ maps."""
    torch.manual_seed(0)
    model = _TwoBranchNet().double().eval()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 4, 4, 4, dtype=torch.float64, generator=generator)
    target = torch.tensor([0, 1])
    n = 8
    draws = torch.zeros(n, *x.shape, dtype=torch.float64)
    draws[: n - 1, :, 1] = 2.0 * torch.randn(n - 1, 2, 4, 4, 4, dtype=torch.float64,
                                             generator=generator)
    draws[n - 1] = draws[: n - 1].mean(0)

    def replayed_copies(x, n_samples, noise_level, seed, batch_size, first_batch_size=None):
        assert n_samples == n
        index = torch.arange(x.shape[0] * n) // n  # copy s of sample b is row b * n + s
        yield index, x[index] + draws.transpose(0, 1).reshape(-1, *x.shape[1:])

    monkeypatch.setattr(gradcam_module, "noisy_batches", replayed_copies)
    ours = attribute(model, x, "smooth_gradcam_pp", target=target, layer="relu", n_samples=n)
    theirs = torchcam_smooth(model, "relu", x, target, list(draws))
    scale = float(theirs.amax())
    assert scale > 0
    torch.testing.assert_close(ours[:, 0], theirs, rtol=1e-6, atol=1e-9 * scale)

    # The old implementation, the mean of Grad-CAM++ maps over the same copies, is far off.
    maps = []
    for m in range(n):
        a, g = activation_and_gradient(model, x + draws[m], "relu", target)
        maps.append(gradcam_pp_map(a, g))
    mean_of_maps = torch.stack(maps).mean(0)[:, 0]
    assert float((mean_of_maps - theirs).abs().amax()) > 0.3 * scale  # 0.45 on this draw


def test_smooth_gradcam_pp_by_hand_on_the_noise_stream(tiny_net, volume):
    """The real noise stream (noisy_batches, as SmoothGrad) and a layer whose gradient varies
    over space and with the input: averaged terms, eq. 19, one map from x's activation."""
    layer, n, level, seed = "features.2", 4, 0.2, 3
    target = tiny_net(volume).argmax(1)
    a, _ = activation_and_gradient(tiny_net, volume, layer, target)
    moments = torch.zeros(3, *a.shape, dtype=torch.float64)
    for index, noisy in noisy_batches(volume, n, level, seed, batch_size=16):
        _, g = activation_and_gradient(tiny_net, noisy, layer, target[index])
        for order in range(3):
            moments[order].index_add_(0, index, g.double().pow(order + 1))
    d1, d2, d3 = moments / n
    a = a.double()
    den = 2 * d2 + a.sum(dim=(2, 3, 4), keepdim=True) * d3
    alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1.0), 0.0)
    weights = (alpha * d1.clamp_min(0)).sum(dim=(2, 3, 4), keepdim=True)
    cam = (weights * a).sum(1, keepdim=True).clamp_min(0)
    expected = F.interpolate(cam.float(), size=volume.shape[2:], mode="trilinear",
                             align_corners=False)
    ours = attribute(tiny_net, volume, "smooth_gradcam_pp", layer=layer, n_samples=n,
                     noise_level=level, seed=seed)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
