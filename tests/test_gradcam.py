"""Grad-CAM family against MONAI and a hand computation."""

import pytest
import torch
import torch.nn.functional as F

from conftest import activation_and_gradient
from nipype_xai.attribution import attribute
from nipype_xai.attribution.gradcam import default_gradcam_layer


def test_default_layer_is_rectified_last_convolutional_stage(tiny_net, monai_resnet,
                                                             monai_densenet):
    x = torch.zeros(1, 1, 32, 32, 32)
    assert default_gradcam_layer(tiny_net, x) == "features"
    assert default_gradcam_layer(monai_resnet, torch.zeros(1, 1, 64, 64, 64)) == "layer4"
    # the ReLU after the final batch norm, as MONAI's examples (not "features", ending in BN)
    assert default_gradcam_layer(monai_densenet, x) == "class_layers.relu"
    from nipype_xai.models.architectures import SFCN, TinyCNN3D

    # the last block's ReLU, before its pooling (not the signed Conv3d "features.8");
    # SFCN's last block, not its classifier convolution
    assert default_gradcam_layer(TinyCNN3D(), x) == "features.10"
    sfcn = SFCN(channel_number=[4, 8, 8, 8, 8, 4])
    assert default_gradcam_layer(sfcn, torch.zeros(1, 1, 64, 64, 64)) == "feature_extractor"


def test_gradcam_matches_monai(tiny_net, volume):
    visualize = pytest.importorskip("monai.visualize")
    ours = attribute(tiny_net, volume, "gradcam", layer="features")
    target = tiny_net(volume).argmax(1)
    # MONAI's default post-processing maps (min, max) to (1, 0): keep its raw upsampled map.
    # One volume per call: with a batch, MONAI's logits[:, class_idx] sums B x B scores.
    cam = visualize.GradCAM(nn_module=tiny_net, target_layers="features", postprocessing=lambda m: m)
    theirs = torch.cat([
        cam(volume[b : b + 1].clone().requires_grad_(True), class_idx=int(target[b])).detach()
        for b in range(volume.shape[0])
    ])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-8)
    # the default layer of this net is the same one
    torch.testing.assert_close(attribute(tiny_net, volume, "gradcam"), ours)


def test_gradcam_hand_computation_and_upsampling(tiny_net, volume):
    target = tiny_net(volume).argmax(1)
    a, g = activation_and_gradient(tiny_net, volume, "features.4", target)
    cam = F.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=volume.shape[2:], mode="trilinear", align_corners=False)
    ours = attribute(tiny_net, volume, "gradcam", layer="features.4")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_gradcam_pp_hand_computation(tiny_net, volume):
    target = tiny_net(volume).argmax(1)
    a, g = activation_and_gradient(tiny_net, volume, "features", target)
    b, k = a.shape[:2]
    cam = torch.zeros(b, 1, *a.shape[2:])
    for i in range(b):
        for c in range(k):  # eq. 19 of Chattopadhay et al., channel by channel
            gc, ac = g[i, c].double(), a[i, c].double()
            den = 2 * gc**2 + ac.sum() * gc**3
            alpha = torch.where(den != 0, gc**2 / torch.where(den != 0, den, 1.0), 0.0)
            weight = (alpha * gc.clamp_min(0)).sum()
            cam[i, 0] += (weight * ac).float()
    expected = F.interpolate(cam.clamp_min(0), size=volume.shape[2:], mode="trilinear",
                             align_corners=False)
    ours = attribute(tiny_net, volume, "gradcam_pp")
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_smooth_gradcam_pp_without_noise_is_gradcam_pp(tiny_net, volume):
    plain = attribute(tiny_net, volume, "gradcam_pp", layer="features.2")
    smooth0 = attribute(tiny_net, volume, "smooth_gradcam_pp", layer="features.2",
                        noise_level=0.0, n_samples=4)
    torch.testing.assert_close(smooth0, plain, rtol=1e-5, atol=1e-7)
    a = attribute(tiny_net, volume, "smooth_gradcam_pp", layer="features.2", n_samples=5, seed=2)
    assert torch.equal(a, attribute(tiny_net, volume, "smooth_gradcam_pp", layer="features.2",
                                    n_samples=5, seed=2))
    assert not torch.allclose(a, plain)
    # Batching does not change the noise stream, hence the map.
    split = attribute(tiny_net, volume, "smooth_gradcam_pp", layer="features.2", n_samples=5,
                      seed=2, batch_size=3)
    torch.testing.assert_close(split, a, rtol=1e-6, atol=1e-9)


def test_smooth_gradcam_pp_equals_gradcam_pp_under_a_linear_head(tiny_net, volume):
    # The default layer of tiny_net feeds global average pooling and a linear layer: its gradient
    # is the same for every input, so the averaged terms equal the clean ones and Omeiza et al.'s
    # map is the Grad-CAM++ map of x itself (a mean of noisy copies' maps is not).
    plain = attribute(tiny_net, volume, "gradcam_pp")
    smooth = attribute(tiny_net, volume, "smooth_gradcam_pp", n_samples=6, noise_level=0.3)
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pooling", ["max", "avg", "none"])
def test_smooth_gradcam_pp_equals_gradcam_pp_where_max_pooling_routes_the_gradient(pooling, volume):
    # The benchmark's architectures: the default layer (last block's ReLU) feeds MaxPool3d, then
    # global max or average pooling or a flattening, and a linear layer. Its gradient is a constant
    # c set by the weights (per channel; per channel and window when flattened) at each pooling
    # window's winner and 0 elsewhere. Over noisy copies the winners move, but the mean terms are
    # p_ij·c^n with Σ p_ij = 1 over each window: p cancels in α = D² / (2 D² + Σ A · D³),
    # Σ α·ReLU(D¹) is the clean sum, and Omeiza et al.'s map is exactly x's Grad-CAM++ map (the
    # benchmark found the two rows equal on both tasks).
    from conftest import randomize_batchnorm
    from nipype_xai.attribution.gradcam import _layer_activation_and_gradient
    from nipype_xai.attribution.noise import noisy_batches
    from nipype_xai.models.architectures import TinyCNN3D

    torch.manual_seed(3)
    model = randomize_batchnorm(TinyCNN3D(width=4, n_blocks=2, pooling=pooling,
                                          input_shape=volume.shape[2:])).eval()
    layer = default_gradcam_layer(model, volume)
    assert layer == "features.6"
    _, clean = _layer_activation_and_gradient(model, volume, None, layer)
    moved = False
    for index, noisy in noisy_batches(volume, 6, 0.3, 0, 16):
        _, gradient = _layer_activation_and_gradient(model, noisy, None, layer)
        moved |= bool(((gradient != 0) != (clean[index] != 0)).any())
    assert moved  # not the trivial case of winners that stay put
    plain = attribute(model, volume, "gradcam_pp")
    smooth = attribute(model, volume, "smooth_gradcam_pp", n_samples=6, noise_level=0.3)
    assert float(plain.abs().max()) > 0
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-7)


def test_gradcam_multichannel_input_and_inplace_relu(monai_resnet):
    x = torch.randn(2, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    for name in ["gradcam", "gradcam_pp"]:
        cam = attribute(monai_resnet, x, name)
        assert cam.shape == x.shape and bool(torch.isfinite(cam).all())
        assert float(cam.min()) >= 0


def test_gradcam_unknown_layer(tiny_net, volume):
    with pytest.raises(ValueError, match="no module named 'nope'"):
        attribute(tiny_net, volume, "gradcam", layer="nope")
