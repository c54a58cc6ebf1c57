"""Guided Grad-CAM, Score-CAM, LayerCAM and HiResCAM (issue 16) against captum, torchcam,
pytorch-grad-cam and hand computations, on small 3D nets, the bundled model and a MONAI ResNet.

Where a reference normalises its maps (pytorch-grad-cam always, torchcam by default), ours are
compared after the same min-max normalisation or the reference is asked for its raw map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from conftest import activation_and_gradient, randomize_batchnorm
from nipype_xai.attribution import attribute
from nipype_xai.attribution.cam_variants import score_cam, score_cam_masks
from nipype_xai.attribution.gradcam import default_gradcam_layer
from nipype_xai.models import load_model, load_model_spec
from nipype_xai.models.bundled import bundled_model_spec

CAM_VARIANTS = ["guided_gradcam", "score_cam", "layercam", "hirescam"]


def upsample(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B, 1, ...) or (B, ...) layer-grid map, trilinearly to x's grid (align_corners=False)."""
    cam = cam if cam.ndim == 5 else cam[:, None]
    return F.interpolate(cam.to(x.dtype), size=x.shape[2:], mode="trilinear",
                         align_corners=False)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each sample min-max normalised to [0, 1] (how pytorch-grad-cam returns its maps)."""
    flat = maps.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - low.reshape(shape)) / (high - low).reshape(shape)


@pytest.fixture(scope="module")
def bundled():
    """The bundled lesion model and two inputs on its grid: the training mean image, and a copy
    with a dark blob in the white matter (the lesion class wins)."""
    spec = load_model_spec(bundled_model_spec("lesion"))
    mean = torch.from_numpy(np.array(spec.input_summary.mean_image, dtype=np.float32))
    x = mean[None, None].repeat(2, 1, 1, 1, 1)
    i, j, k = torch.meshgrid(*(torch.arange(n) for n in mean.shape), indexing="ij")
    x[1, 0][((i - 30) ** 2 + (j - 30) ** 2 + (k - 28) ** 2) <= 4] -= 2.0
    model = load_model(spec).eval()
    assert model(x).argmax(1).tolist() == [0, 1]
    return model, x


def pool3_net() -> nn.Module:
    """A 3D CNN whose default CAM layer ``features`` (8 channels, ending in a ReLU) sits on a
    grid 3x coarser than the input: trilinear upsampling by an odd factor (align_corners=False)
    passes through every layer voxel, so normalising a channel before or after upsampling gives
    the same mask (torchcam normalises before, Wang et al. after)."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(3),
        nn.Conv3d(4, 8, 3, padding=1), nn.ReLU())
    model.pool = nn.AdaptiveAvgPool3d(1)
    model.flatten = nn.Flatten()
    model.classifier = nn.Linear(8, 3)
    return randomize_batchnorm(model)


# ---------------------------------------------------------------------------------------------
# LayerCAM and HiResCAM


@pytest.mark.parametrize("layer", ["features", "features.2"])
def test_layercam_and_hirescam_by_hand(tiny_net, volume, layer):
    target = torch.tensor([1, 0])  # not only the predicted class
    a, g = activation_and_gradient(tiny_net, volume, layer, target)
    layercam = upsample((g.clamp_min(0) * a).sum(1, keepdim=True).clamp_min(0), volume)
    hirescam = upsample((g * a).sum(1, keepdim=True).clamp_min(0), volume)
    ours_layer = attribute(tiny_net, volume, "layercam", target=target, layer=layer)
    ours_hires = attribute(tiny_net, volume, "hirescam", target=target, layer=layer)
    assert float(layercam.amax()) > 0 and float(hirescam.amax()) > 0
    torch.testing.assert_close(ours_layer, layercam, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_hires, hirescam, rtol=1e-5, atol=1e-7)
    # Negative gradients count in HiResCAM only: the two maps differ on this net.
    assert float((ours_layer - ours_hires).abs().amax()) > 0.05 * float(ours_layer.amax())


def torchcam_layercam(model, layer, x, target):
    """torchcam's LayerCAM without normalisation, at the layer's grid: (B, ...)."""
    methods = pytest.importorskip("torchcam.methods")
    with methods.LayerCAM(model, layer, input_shape=tuple(x.shape[1:])) as extractor:
        scores = model(x)
        (cam,) = extractor(class_idx=target.tolist(), scores=scores, normalized=False)
    return cam.detach()


@pytest.mark.parametrize("case", ["tiny_net", "bundled"])
def test_layercam_matches_torchcam(case, tiny_net, volume, request):
    if case == "bundled":
        model, x = request.getfixturevalue("bundled")
    else:
        model, x = tiny_net, volume
    target = torch.tensor([1, 1])
    layer = default_gradcam_layer(model, x)
    theirs = upsample(torchcam_layercam(model, layer, x, target), x)
    ours = attribute(model, x, "layercam", target=target)
    scale = float(theirs.amax())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * scale)


def grad_cam_raw(cam_class, model, layer, x, target):
    """pytorch-grad-cam's CAM at the layer's grid before its normalisation and resizing: its own
    activations and gradients through its own ``get_cam_image``, rectified as its
    ``compute_cam_per_layer`` does: (B, ...)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    with getattr(pgc, cam_class)(model=model, target_layers=[module]) as cam:
        outputs = cam.activations_and_grads(x.clone().requires_grad_(True))
        sum(t(o) for t, o in zip(targets, outputs)).backward()
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(x, module, targets, activations, gradients, False)
    return torch.from_numpy(np.maximum(raw, 0))


@pytest.mark.parametrize("case", ["tiny_net", "bundled"])
@pytest.mark.parametrize(("method", "cam_class"), [("hirescam", "HiResCAM"),
                                                   ("layercam", "LayerCAM")])
def test_matches_pytorch_grad_cam_at_the_default_layer(case, method, cam_class, tiny_net, volume,
                                                       request):
    if case == "bundled":
        model, x = request.getfixturevalue("bundled")
    else:
        model, x = tiny_net, volume
    target = torch.tensor([0, 1])
    layer = default_gradcam_layer(model, x)
    theirs = upsample(grad_cam_raw(cam_class, model, layer, x, target), x)
    ours = attribute(model, x, method, target=target)
    scale = float(theirs.amax())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize(("method", "cam_class"), [("hirescam", "HiResCAM"),
                                                   ("layercam", "LayerCAM")])
def test_matches_pytorch_grad_cam_public_call_at_the_input_grid(tiny_net, volume, method,
                                                                cam_class):
    """Its public ``__call__``: min-max normalised and resized (a cubic spline,
    scipy.ndimage.zoom, in 3D; at a layer on the input's own grid the zoom is the identity)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target = torch.tensor([1, 0])
    with getattr(pgc, cam_class)(model=tiny_net, target_layers=[tiny_net.features[2]]) as cam:
        theirs = torch.from_numpy(cam(volume, [ClassifierOutputTarget(int(t)) for t in target]))
    ours = attribute(tiny_net, volume, method, target=target, layer="features.2")
    torch.testing.assert_close(minmax(ours[:, 0]), theirs, rtol=1e-4, atol=1e-5)


def test_hirescam_is_gradcam_and_cam_over_n_before_average_pooling(volume):
    """Draelos & Carin: with global average pooling and a linear layer after the CAM layer,
    ∂y/∂A_k = W_tk / N everywhere, so HiResCAM = Grad-CAM = CAM / N (CAM: Zhou et al.'s
    Σ_k W_tk A_k)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                          nn.Conv3d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                          nn.Flatten(), nn.Linear(5, 3)).eval()
    target = torch.tensor([2, 0])
    hirescam = attribute(model, volume, "hirescam", target=target, layer="4")
    gradcam = attribute(model, volume, "gradcam", target=target, layer="4")
    with torch.no_grad():
        a = model[:5](volume)
    n = a.shape[2:].numel()
    cam = (model[7].weight[target][:, :, None, None, None] * a).sum(1, keepdim=True)
    assert float(hirescam.amax()) > 0
    torch.testing.assert_close(hirescam, gradcam, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(hirescam, upsample(cam.clamp_min(0) / n, volume), rtol=1e-5,
                               atol=1e-8)
    # Not so at a layer followed by more convolutions: the gradient varies over positions.
    earlier = attribute(model, volume, "hirescam", target=target, layer="1")
    assert float((earlier - attribute(model, volume, "gradcam", target=target, layer="1")
                  ).abs().amax()) > 0.05 * float(earlier.amax())


# ---------------------------------------------------------------------------------------------
# Guided Grad-CAM


@pytest.mark.parametrize("case", ["tiny_net", "bundled"])
def test_guided_gradcam_matches_captum(case, tiny_net, volume, request):
    captum_attr = pytest.importorskip("captum.attr")
    if case == "bundled":
        model, x = request.getfixturevalue("bundled")
    else:
        model, x = tiny_net, volume
    target = torch.tensor([1, 0])
    layer = default_gradcam_layer(model, x)
    module = dict(model.named_modules())[layer]
    # captum's default interpolation is nearest-neighbour; the paper's and ours, (tri)linear.
    theirs = captum_attr.GuidedGradCam(model, module).attribute(
        x, target=target, interpolate_mode="trilinear").detach()
    ours = attribute(model, x, "guided_gradcam", target=target)
    scale = float(theirs.abs().amax())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6 * scale)
    # ... and it is the product of our own two maps.
    product = (attribute(model, x, "guided_backprop", target=target)
               * attribute(model, x, "gradcam", target=target))
    torch.testing.assert_close(ours, product, rtol=1e-6, atol=1e-9 * scale)
    nearest = captum_attr.GuidedGradCam(model, module).attribute(x, target=target).detach()
    assert float((nearest - theirs).abs().amax()) > 1e-3 * scale


# ---------------------------------------------------------------------------------------------
# Score-CAM


def torchcam_score_cam(model, layer, x, target, batch_size=7):
    """torchcam's ScoreCAM at the layer's grid, without normalisation: (B, ...)."""
    methods = pytest.importorskip("torchcam.methods")
    with methods.ScoreCAM(model, layer, batch_size=batch_size,
                          input_shape=tuple(x.shape[1:])) as extractor:
        with torch.no_grad():
            model(x)  # torchcam reads the input and the activation from this pass
        (cam,) = extractor(class_idx=target.tolist(), normalized=False)
    return cam


def test_score_cam_zero_masking_matches_torchcam(volume):
    """The paper's masking x·H_k and the references' softmax over channels of the logits."""
    model = pool3_net()
    x = torch.cat([volume, 0.5 * volume.flip(2)])
    target = torch.tensor([0, 2, 1, 2])
    assert default_gradcam_layer(model, x) == "features"
    theirs = upsample(torchcam_score_cam(model, "features", x, target), x)
    ours = attribute(model, x, "score_cam", target=target, baseline="zero", batch_size=5)
    scale = float(theirs.amax())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * scale)


def test_score_cam_matches_torchcam_on_the_bundled_model(bundled, monkeypatch):
    """The bundled model's layer grid is 8x coarser than the input, where normalising a channel
    before upsampling (torchcam) or after (Wang et al. and ours) differ. torchcam is run with its
    masks normalised after upsampling; all else (masking, scores, softmax, batches) is its own."""
    model, x = bundled
    x = x[1:]  # the lesion copy: 64 masked copies per sample on the full grid
    methods = pytest.importorskip("torchcam.methods")
    layer = default_gradcam_layer(model, x)
    target = torch.tensor([1])

    def paper_order(activation, spatial_dims=None):
        return score_cam_masks(activation, tuple(x.shape[2:]))

    with methods.ScoreCAM(model, layer, batch_size=16,
                          input_shape=tuple(x.shape[1:])) as extractor:
        monkeypatch.setattr(extractor, "_normalize", paper_order)
        with torch.no_grad():
            model(x)
        (cam,) = extractor(class_idx=target.tolist(), normalized=False)
    theirs = upsample(cam, x)
    ours = attribute(model, x, "score_cam", target=target, baseline="zero")
    scale = float(theirs.amax())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * scale)


def test_score_cam_matches_pytorch_grad_cam_in_2d():
    """pytorch-grad-cam 1.5.7's ScoreCAM takes 2D input only (it builds a bilinear 2D
    upsampler): a 2D net against its twin with (3, 3, 1) kernels on (X, Y, 1) volumes, at a
    layer on the input's grid (its align_corners=True upsampling is then the identity, as ours)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    net2d = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    net3d = nn.Sequential(nn.Conv3d(1, 6, (3, 3, 1), padding=(1, 1, 0)), nn.ReLU(),
                          nn.Conv3d(6, 4, (3, 3, 1), padding=(1, 1, 0)), nn.ReLU(),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        for two, three in zip(net2d, net3d):
            for name, parameter in two.named_parameters():
                getattr(three, name).copy_(parameter.reshape(getattr(three, name).shape))
    x2d = torch.randn(3, 1, 10, 9, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 2, 1])
    with pgc.ScoreCAM(model=net2d, target_layers=[net2d[1]]) as cam:
        theirs = torch.from_numpy(cam(x2d, [ClassifierOutputTarget(int(t)) for t in target]))
    ours = attribute(net3d, x2d[..., None], "score_cam", target=target, layer="1",
                     baseline="zero")
    torch.testing.assert_close(minmax(ours[:, 0, :, :, 0]), theirs, rtol=1e-4, atol=1e-5)


def blurred_copy(x, sigma=2.0):
    return torch.from_numpy(ndimage.gaussian_filter(
        x.double().numpy(), sigma=(0, 0, sigma, sigma, sigma), mode="nearest")).to(x.dtype)


def score_cam_by_hand(model, x, target, layer, weighting):
    """Score-CAM one sample and one channel at a time: blurred baseline (scipy), masks upsampled
    then min-max normalised, blends, scores, weights, ReLU(Σ w A), upsampled. ``target`` None:
    a single-output model (raw output in both weightings)."""
    a, _ = activation_and_gradient(model, x, layer, target if target is not None
                                   else torch.zeros(x.shape[0], dtype=torch.long))
    blurred = blurred_copy(x)
    maps = []
    with torch.no_grad():
        for b in range(x.shape[0]):

            def score(v):
                out = model(v[None])[0]
                if target is None:
                    return out[0]
                t = int(target[b])
                return torch.softmax(out, 0)[t] if weighting == "increase" else out[t]

            scores = []
            for k in range(a.shape[1]):
                up = F.interpolate(a[b : b + 1, k : k + 1], size=x.shape[2:], mode="trilinear",
                                   align_corners=False)[0]
                span = up.max() - up.min()
                h = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                scores.append(score(x[b] * h + blurred[b] * (1 - h)))
            scores = torch.stack(scores)
            if weighting == "increase":
                w = scores - score(blurred[b])
            else:
                w = torch.softmax(scores, 0)
            maps.append((w[:, None, None, None] * a[b]).sum(0).clamp_min(0))
    return upsample(torch.stack(maps), x)


@pytest.mark.parametrize("weighting", ["softmax", "increase"])
def test_score_cam_default_blur_by_hand(tiny_net, volume, weighting):
    target = torch.tensor([1, 0])
    expected = score_cam_by_hand(tiny_net, volume, target, "features", weighting)
    ours = attribute(tiny_net, volume, "score_cam", target=target, weighting=weighting,
                     batch_size=3)
    scale = float(expected.amax())
    assert scale > 0
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("weighting", ["softmax", "increase"])
def test_score_cam_single_output_scores_the_raw_output(volume, weighting):
    """A regression model: no softmax over classes exists, the scores are its raw output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                          nn.Flatten(), nn.Linear(4, 1)).eval()
    with torch.no_grad():
        model[4].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5]]))
    expected = score_cam_by_hand(model, volume, None, "1", weighting)
    ours = attribute(model, volume, "score_cam", layer="1", weighting=weighting)
    assert float(expected.amax()) > 0
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_score_cam_masks_are_normalised_after_upsampling():
    a = torch.tensor([[[[[0.0, 1.0]]], [[[2.0, 2.0]]]]])  # (1, 2, 1, 1, 2): one varying channel
    masks = score_cam_masks(a, (1, 1, 4))
    # trilinear 2 -> 4 (align_corners=False) gives 0, 0.25, 0.75, 1: already spanning [0, 1];
    # the constant channel masks nothing.
    torch.testing.assert_close(masks[0, 0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert torch.equal(masks[0, 1], torch.zeros(1, 1, 4))
    b = torch.tensor([[[[[0.0, 4.0, 1.0]]]]])  # 3 -> 4: 0, 2.5, 2.875, 1: narrower than A's
    up = F.interpolate(b, size=(1, 1, 4), mode="trilinear", align_corners=False)
    expected = (up - up.min()) / (up.max() - up.min())
    torch.testing.assert_close(score_cam_masks(b, (1, 1, 4)), expected)
    assert float(up.max()) < 4.0 and float(expected.max()) == 1.0


def test_score_cam_rejects_bad_parameters(tiny_net, volume):
    with pytest.raises(ValueError, match="weighting must be one of"):
        attribute(tiny_net, volume, "score_cam", weighting="probability")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        score_cam(tiny_net, volume, None, batch_size=0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        attribute(tiny_net, volume, "score_cam", baseline="mean")


def test_score_cam_batch_size_bounds_the_masked_copies(tiny_net, volume):
    a, _ = activation_and_gradient(tiny_net, volume, "features", torch.tensor([0, 0]))
    varying = int((a.flatten(2).amax(2) > a.flatten(2).amin(2)).sum())
    assert varying > 8  # of the 2 x 8 (sample, channel) pairs
    sizes: list[int] = []
    handle = tiny_net.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        attribute(tiny_net, volume, "score_cam", layer="features", batch_size=3)
    finally:
        handle.remove()
    # the engine's target pass, the activations, the baselines (2 each), then one blend per
    # varying channel (a constant one is its baseline), never more than 3 per pass
    assert max(sizes) <= 3
    assert sum(sizes) == 3 * 2 + varying


# ---------------------------------------------------------------------------------------------
# All four: batches, reproducibility, real architectures


@pytest.mark.parametrize("method", CAM_VARIANTS)
def test_batch_equals_one_by_one_and_is_reproducible(tiny_net, volume, method):
    pair = attribute(tiny_net, volume, method)
    again = attribute(tiny_net, volume, method)
    assert torch.equal(pair, again)
    singles = torch.cat([attribute(tiny_net, volume[b : b + 1], method) for b in range(2)])
    scale = float(pair.abs().amax())
    assert scale > 0
    torch.testing.assert_close(pair, singles, rtol=1e-5, atol=1e-6 * scale)
    chunked = attribute(tiny_net, volume, method, batch_size=1)
    torch.testing.assert_close(pair, chunked, rtol=1e-5, atol=1e-6 * scale)


@pytest.fixture
def resnet_input():
    return torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("method", ["layercam", "hirescam"])
def test_monai_resnet_default_layer_by_hand(monai_resnet, resnet_input, method):
    x, target = resnet_input, torch.tensor([1, 0])
    layer = default_gradcam_layer(monai_resnet, x)
    assert layer == "layer4"  # 2^3 voxels at 32^3 (at 16^3 it is one voxel: layer3 then)
    a, g = activation_and_gradient(monai_resnet, x, layer, target)
    weight = g.clamp_min(0) if method == "layercam" else g
    expected = upsample((weight * a).sum(1, keepdim=True).clamp_min(0), x)
    ours = attribute(monai_resnet, x, method, target=target)
    assert float(expected.amax()) > 0
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.amax()))


def test_monai_resnet_score_cam_and_guided_gradcam(monai_resnet, resnet_input):
    """The default layer of a MONAI ResNet (in-place ReLUs shared inside its blocks): Score-CAM
    against torchcam, Guided Grad-CAM against its two factors."""
    x, target = resnet_input, torch.tensor([0, 1])
    layer = default_gradcam_layer(monai_resnet, x)
    theirs = upsample(torchcam_score_cam(monai_resnet, layer, x, target), x)
    # The layer's grid is 2^3 (16x coarser): trilinear upsampling clamps at the volume's faces,
    # where it reaches every layer voxel's own value, so torchcam's normalise-then-upsample
    # gives the same masks as ours.
    ours = attribute(monai_resnet, x, "score_cam", target=target, baseline="zero")
    assert float(theirs.amax()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.amax()))
    guided = attribute(monai_resnet, x, "guided_gradcam", target=target)
    product = (attribute(monai_resnet, x, "guided_backprop", target=target)
               * attribute(monai_resnet, x, "gradcam", target=target))
    assert float(product.abs().amax()) > 0
    torch.testing.assert_close(guided, product)
