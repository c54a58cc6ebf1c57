"""Class activation map variants beyond Grad-CAM(++): Guided Grad-CAM, Score-CAM, LayerCAM,
HiResCAM.

- guided_gradcam: Selvaraju et al. 2017, "Grad-CAM: Visual explanations from deep networks via
  gradient-based localization" (ICCV): the guided backpropagation map multiplied
  point-wise by the Grad-CAM map upsampled to the input.
- score_cam: Wang et al. 2020, "Score-CAM: Score-weighted visual explanations for convolutional
  neural networks" (CVPR workshops): each channel's activation map, upsampled and min-max
  normalised, masks the input; the channel's weight comes from the target score of its masked
  input (a forward pass per channel, no gradient).
- layercam: Jiang et al. 2021, "LayerCAM: Exploring hierarchical class activation maps for
  localization" (IEEE TIP 30): ReLU(Σ_k ReLU(∂y/∂A_k) ⊙ A_k), the positive gradient weighting
  each position of the activation.
- hirescam: Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations
  of convolutional neural networks" (arXiv:2011.08891): ReLU(Σ_k ∂y/∂A_k ⊙ A_k), Grad-CAM
  without the spatial averaging of the gradient.

All four read the layer that :func:`~.gradcam.default_gradcam_layer` picks (the rectified output
of the last convolutional stage) unless ``layer=`` names one, and upsample trilinearly to the
input grid as the Grad-CAM family of :mod:`.gradcam` does (the same hooks, one context per
batch). No normalisation: that is a separate, named post-processing step.

They are written here rather than taken from pytorch-grad-cam or torchcam, which the tests use
as references: both min-max normalise the maps they return and read one layer setup per call;
pytorch-grad-cam 1.5.7 upsamples 3D maps with a cubic spline (``scipy.ndimage.zoom``) and its
``ScoreCAM`` fails on 3D input (it builds a 2D bilinear upsampler); captum's ``GuidedGradCam``
upsamples with nearest neighbours by default.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._captum import _positive_int
from .gradcam import (
    _cam,
    _layer_activation,
    _register_cam,
    _upsample,
    default_gradcam_layer,
    gradcam_map,
)
from .model_state import forward
from .perturbation_baseline import BLUR_SIGMA_VOXELS, BaselineLike, perturbation_baseline
from .registry import get_method, register_method


# --------------------------------------------------------------------------------------------
# LayerCAM and HiResCAM: element-wise gradient weights
# --------------------------------------------------------------------------------------------


def layercam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """LayerCAM at the layer's resolution (Jiang et al. 2021), (B, 1, ...).

    ReLU(Σ_k ReLU(∂y/∂A_k) ⊙ A_k): each position of each channel weighted by its own positive
    gradient, where Grad-CAM gives a channel one weight, the mean gradient.
    """
    return F.relu((F.relu(gradient) * activation).sum(dim=1, keepdim=True))


def hirescam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """HiResCAM at the layer's resolution (Draelos & Carin 2020), (B, 1, ...).

    ReLU(Σ_k ∂y/∂A_k ⊙ A_k): the gradient times the activation, summed over channels, signed
    gradients kept (LayerCAM rectifies them). Where the layer is followed by global average
    pooling and a linear layer, ∂y/∂A_k is the constant W_tk / N over the N positions and the
    map equals Grad-CAM's, and CAM's (Zhou et al. 2016, Σ_k W_tk A_k) divided by N.
    """
    return F.relu((gradient * activation).sum(dim=1, keepdim=True))


layercam = _register_cam(
    "layercam", 27, layercam_map,
    "LayerCAM (Jiang et al. 2021): ReLU of the positive gradient times the activation, summed "
    "over channels, on the rectified output of the last convolutional stage (layer=None) or a "
    "named module",
    "torchcam LayerCAM and pytorch-grad-cam LayerCAM at the layer's grid / hand computation")
hirescam = _register_cam(
    "hirescam", 28, hirescam_map,
    "HiResCAM (Draelos & Carin 2020): ReLU of the gradient times the activation, summed over "
    "channels, on the rectified output of the last convolutional stage (layer=None) or a named "
    "module",
    "pytorch-grad-cam HiResCAM at the layer's grid / Grad-CAM and CAM / N where the layer feeds "
    "global average pooling and a linear layer")


# --------------------------------------------------------------------------------------------
# Guided Grad-CAM
# --------------------------------------------------------------------------------------------


@register_method(
    "guided_gradcam",
    row=25,
    description="Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation of y_t times the "
                "Grad-CAM map of the rectified output of the last convolutional stage "
                "(layer=None) or a named module, upsampled trilinearly to x",
    reference="captum GuidedGradCam with trilinear interpolation / the product of our "
              "guided_backprop and gradcam maps",
)
def guided_gradcam(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], *,
                   layer: Optional[str] = None, batch_size: int = 16) -> torch.Tensor:
    """Guided Grad-CAM: ``guided_backprop`` ⊙ ``gradcam`` (Selvaraju et al. 2017).

    Two backward passes per sample: Grad-CAM's (plain gradient to ``layer``) and guided
    backpropagation's (zennit's composite). The paper upsamples Grad-CAM bilinearly in 2D; here
    trilinearly, as :func:`~.gradcam.gradcam` (captum's ``GuidedGradCam`` defaults to nearest
    neighbours). The Grad-CAM map is non-negative, so the product keeps guided
    backpropagation's sign per voxel.

    Parameters
    ----------
    layer
        Module name of the Grad-CAM layer; ``None``: :func:`~.gradcam.default_gradcam_layer`.
    batch_size
        Samples per forward/backward pass.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    layer = layer or default_gradcam_layer(model, x)
    cam = _cam(model, x, target, layer, batch_size, gradcam_map)
    guided = get_method("guided_backprop").function(model, x, target, batch_size=batch_size)
    return guided * cam


# --------------------------------------------------------------------------------------------
# Score-CAM
# --------------------------------------------------------------------------------------------

#: How Score-CAM turns the target scores of the masked inputs into channel weights.
SCORE_CAM_WEIGHTINGS: tuple[str, ...] = ("softmax", "increase")


def score_cam_masks(activation: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Score-CAM's masks H_k: each channel upsampled trilinearly to ``size`` and min-max
    normalised to [0, 1] over its voxels: normalised after upsampling, as in Wang et al. 2020,
    the authors' code and pytorch-grad-cam (torchcam normalises before, which differs where
    upsampling does not reach the channel's extremes: on the bundled model, by up to 12 % of
    the map's maximum). A constant channel gives H = 0 (its mask keeps nothing of
    the input), as pytorch-grad-cam's and torchcam's ε in the denominator make it.

    Parameters
    ----------
    activation
        (N, K, ...) activations at the layer's grid.
    size
        The input's spatial shape.

    Returns
    -------
    torch.Tensor
        (N, K, *size), in [0, 1].
    """
    upsampled = F.interpolate(activation, size=size, mode="trilinear", align_corners=False)
    flat = upsampled.flatten(2)
    low = flat.amin(dim=2).reshape(*flat.shape[:2], 1, 1, 1)
    span = flat.amax(dim=2).reshape(*flat.shape[:2], 1, 1, 1) - low
    constant = span == 0
    return torch.where(constant, 0.0, (upsampled - low) / torch.where(constant, 1.0, span))


def _target_score(output: torch.Tensor, target: Optional[torch.Tensor],
                  probability: bool) -> torch.Tensor:
    """y_t per row: the softmax probability of the target class, or its raw output (always for a
    single-output model, where no softmax exists)."""
    if target is None:
        return output[:, 0]
    if probability:
        output = torch.softmax(output, dim=1)
    return output.gather(1, target.reshape(-1, 1).to(output.device))[:, 0]


def score_cam_scores(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor],
                     activation: torch.Tensor, baselines: torch.Tensor, *, probability: bool,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target scores of Score-CAM's blends x·H_k + b·(1 − H_k), one per sample and channel.

    Parameters
    ----------
    model, x, target
        As every registered method.
    activation
        (B, K, ...) activation of the layer for x.
    baselines
        b, of x's shape.
    probability
        Score the target's softmax probability (else its raw output; always the raw output of a
        single-output model).
    batch_size
        Largest number of blends per forward pass.

    Returns
    -------
    scores : torch.Tensor
        (B, K): the blends' scores; a constant channel (mask 0, the blend is b) is not run and
        gets b's score.
    base_scores : torch.Tensor
        (B,): the scores of the baselines b.
    """
    n_samples, n_channels = activation.shape[:2]
    with torch.no_grad():
        base_scores = torch.cat([
            _target_score(forward(model, chunk),
                          None if target is None else target[start : start + len(chunk)],
                          probability)
            for start, chunk in zip(range(0, n_samples, batch_size), baselines.split(batch_size))
        ])
        flat = activation.flatten(2)
        varies = (flat.amax(dim=2) > flat.amin(dim=2)).reshape(-1).nonzero()[:, 0]
        scores = base_scores.repeat_interleave(n_channels)
        for start in range(0, len(varies), batch_size):
            pairs = varies[start : start + batch_size]
            samples, channels = pairs // n_channels, pairs % n_channels
            masks = score_cam_masks(activation[samples, channels][:, None], x.shape[2:])
            blends = x[samples] * masks + baselines[samples] * (1 - masks)
            scores[pairs] = _target_score(forward(model, blends),
                                          None if target is None else target[samples],
                                          probability)
    return scores.reshape(n_samples, n_channels), base_scores


@register_method(
    "score_cam",
    row=26,
    description="Score-CAM (Wang et al. 2020): each channel of the rectified output of the last "
                "convolutional stage (layer=None), upsampled and min-max normalised to a mask "
                "H_k, blends x with a Gaussian-blurred copy b (x·H_k + b·(1-H_k), sigma 2 "
                "voxels); weights = softmax over channels of the blends' target logits; "
                "ReLU(Σ w_k A_k) upsampled trilinearly",
    reference="torchcam ScoreCAM and pytorch-grad-cam ScoreCAM (baseline='zero') / hand "
              "computation",
)
def score_cam(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], *,
              layer: Optional[str] = None, baseline: BaselineLike = "blur",
              blur_sigma: float = BLUR_SIGMA_VOXELS, weighting: str = "softmax",
              batch_size: int = 16) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020) of ``layer``, upsampled to x.

    For each channel k of the layer's activation A, the mask H_k (:func:`score_cam_masks`)
    keeps x where the channel fires and puts the baseline b elsewhere: x·H_k + b·(1 − H_k).
    With ``baseline="zero"`` that is the paper's x·H_k, whose 0 is, in a z-scored image,
    darker than any tissue and itself lesion evidence (see
    :mod:`~.perturbation_baseline`); the default blurred copy adds no evidence of its own.

    Channel weights (``weighting``):

    - ``"softmax"`` (default): w = softmax over channels of the target logits (raw outputs) of
      the blends, as pytorch-grad-cam's and torchcam's ``ScoreCAM`` compute it. The paper's
      increase over the baseline's score, s_t(blend_k) − s_t(b), would change nothing here
      (softmax ignores a shift common to the channels).
    - ``"increase"``: w_k = p_t(blend_k) − p_t(b), the paper's "channel-wise increase of
      confidence" with p_t the target's softmax probability (its post-softmax scores; the
      authors' code weights by p_t(blend_k) alone). A channel whose region lowers
      the target's probability gets a negative weight.

    For a single-output model the score is its raw output in both (no softmax over classes
    exists: a regression's output or a binary logit); the softmax over channels then depends
    on the output's units.

    A softmax over channels of probabilities (or of their increases), which mixes the two, is
    not offered: probabilities differ by at most 1, so the weights stay within a factor e of
    each other and the map is close to the plain sum of the channels whatever the class. On
    the bundled model (six synthetic lesion subjects, default layer) such maps for the two
    classes correlated at 0.87 (these weights: 0.41; ``"increase"``: −0.42).

    Map: ReLU(Σ_k w_k A_k) at the layer's grid, upsampled trilinearly.

    Cost: one forward pass per channel and sample (in passes of at most ``batch_size`` masked
    copies; a constant channel is not run: its blend is the baseline) plus one for the
    activations and one for the baseline. No gradients.

    Parameters
    ----------
    layer
        Module name; ``None``: :func:`~.gradcam.default_gradcam_layer`.
    baseline
        What the mask blends x with: ``"blur"`` (a Gaussian of ``blur_sigma`` voxels),
        ``"zero"`` (the paper's masking), a number or a tensor of x's shape
        (:func:`~.perturbation_baseline.perturbation_baseline`).
    blur_sigma
        Sigma of the ``"blur"`` baseline, in voxels.
    weighting
        ``"increase"`` or ``"softmax"`` (above).
    batch_size
        Largest number of masked copies per forward pass.

    Returns
    -------
    torch.Tensor
        Non-negative map of x's shape, equal across channels.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    if weighting not in SCORE_CAM_WEIGHTINGS:
        raise ValueError(f"score_cam: weighting must be one of {list(SCORE_CAM_WEIGHTINGS)}, "
                         f"got {weighting!r}")
    probability = weighting == "increase"
    layer = layer or default_gradcam_layer(model, x)
    activation = torch.cat([_layer_activation(model, chunk, layer)
                            for chunk in x.split(batch_size)])
    baselines = perturbation_baseline(x, baseline, sigma=blur_sigma)
    scores, base_scores = score_cam_scores(model, x, target, activation, baselines,
                                           probability=probability, batch_size=batch_size)
    if probability:
        weights = scores - base_scores[:, None]
    else:
        weights = torch.softmax(scores, dim=1)
    cam = F.relu((weights[:, :, None, None, None] * activation).sum(dim=1, keepdim=True))
    return _upsample(cam, x)
