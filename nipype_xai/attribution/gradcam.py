"""Grad-CAM family, hand-written for 3D (neither zennit nor captum has Grad-CAM++; captum's
LayerGradCam does not upsample trilinearly, MONAI's CAMs normalise and run one layer setup per
call).

- gradcam: Selvaraju et al. 2017, "Grad-CAM: Visual explanations from deep networks via
  gradient-based localization".
- gradcam_pp: Chattopadhay et al. 2018, "Grad-CAM++: Generalized gradient-based visual
  explanations for deep convolutional networks" (closed form under the exponential-output
  assumption, as in the paper's eq. 19).
- smooth_gradcam_pp: Omeiza et al. 2019, "Smooth Grad-CAM++"; here the mean of Grad-CAM++ maps
  over the same kind of noisy copies SmoothGrad uses (noise_level · (max − min) standard
  deviation).

The maps are ReLU-rectified class activation maps upsampled trilinearly to the input grid and
repeated over input channels. No normalisation: that is a separate, named post-processing step.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .model_state import forward, target_output
from .noise import noisy_batches
from .registry import register_method


def default_gradcam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the layer Grad-CAM uses by default for ``model`` at inputs shaped like ``x``.

    The last Conv3d to run whose output is still a spatial map (more than one voxel), as SPEC §3
    says, widened to its outermost enclosing module that returns a map on the same grid. So:

    - a plain CNN (conv → BN → ReLU → pool blocks): the last Conv3d itself, before its pooling;
    - a block that ends in BN/ReLU on the same grid (SFCN's last block): that block's output;
    - a residual network: the last residual stage (MONAI/torchvision ``layer4``), not the 1×1×1
      shortcut convolution that happens to run last inside the final block;
    - DenseNet: ``features`` (the last dense block and its final norm), as MONAI's examples use;
    - SFCN: the feature extractor, not the 1×1×1 classifier convolution that runs after global
      pooling (its output has one voxel).
    """
    outputs: dict[str, torch.Size] = {}
    convolutions: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def record(module: nn.Module, _inputs, output) -> None:
        if module is model or not isinstance(output, torch.Tensor) or output.ndim != 5:
            return
        name = names[module]
        outputs[name] = output.shape[2:]
        if isinstance(module, nn.Conv3d) and output.shape[2:].numel() > 1:
            convolutions.append(name)

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            forward(model, x[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not convolutions:
        raise ValueError(
            "gradcam: no Conv3d layer with a spatial output was found; pass layer=<module name>"
        )
    chosen = convolutions[-1]
    parts = chosen.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        ancestor = ".".join(parts[:depth])
        if outputs.get(ancestor) != outputs[chosen]:
            break
        chosen = ancestor
    return chosen


def _layer_activation_and_gradient(
    model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation A of ``layer`` and ∂y_t/∂A for one batch."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"gradcam: the model has no module named {layer!r}")
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"gradcam: layer {layer!r} returns {type(output).__name__}")
        captured.append(output)
        # A clone goes on through the model, so an in-place op downstream (ReLU(inplace=True))
        # cannot overwrite the activation we differentiate against.
        return output.clone()

    handle = modules[layer].register_forward_hook(keep)
    try:
        # The input must require grad for a graph to exist: parameters do not (model_guard).
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = target_output(forward(model, x), target)
            (gradient,) = torch.autograd.grad(y.sum(), captured[-1])
    finally:
        handle.remove()
    return captured[-1].detach(), gradient


def _upsample(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    cam = F.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)
    return cam.expand(-1, x.shape[1], -1, -1, -1).contiguous()


def gradcam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at the layer's resolution: ReLU(Σ_k mean(∂y/∂A_k) · A_k), shape (B, 1, ...)."""
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def gradcam_pp_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ at the layer's resolution (Chattopadhay et al. 2018, eq. 19).

    α = g² / (2g² + Σ_ab A_ab · g³), w_k = Σ α · ReLU(g). The exp(S) factor of the paper's
    exponential output scales a sample's whole map, so it is left out (MONAI's GradCAMpp keeps it
    and also sums A·g³ inside the denominator instead of (Σ A) · g³, which departs from eq. 19).
    """
    g2 = gradient.pow(2)
    g3 = gradient.pow(3)
    activation_sum = activation.sum(dim=(2, 3, 4), keepdim=True)
    denominator = 2 * g2 + activation_sum * g3
    denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = g2 / denominator
    weights = (alpha * F.relu(gradient)).sum(dim=(2, 3, 4), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def _cam(model, x, target, layer, batch_size, map_fn) -> torch.Tensor:
    maps = []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        chunk_target = None if target is None else target[start : start + batch_size]
        activation, gradient = _layer_activation_and_gradient(model, chunk, chunk_target, layer)
        maps.append(_upsample(map_fn(activation, gradient), chunk))
    return torch.cat(maps)


def _register_cam(name: str, row: int, map_fn: Callable, description: str, reference: str
                  ) -> Callable[..., torch.Tensor]:
    """Register the class activation map ``map_fn(activation, gradient)`` as method ``name``."""

    def method(model, x, target, *, layer=None, batch_size=16):
        layer = layer or default_gradcam_layer(model, x)
        return _cam(model, x, target, layer, batch_size, map_fn)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"{description}: :func:`{map_fn.__name__}` of ``layer`` (default: "
                      ":func:`default_gradcam_layer`), upsampled trilinearly to x.")
    return register_method(name, row=row, description=description, reference=reference)(method)


gradcam = _register_cam(
    "gradcam", 14, gradcam_map,
    "Grad-CAM on the last convolutional stage (layer=None) or a named module",
    "MONAI GradCAM (after min-max normalisation) / hand computation")
gradcam_pp = _register_cam(
    "gradcam_pp", 15, gradcam_pp_map,
    "Grad-CAM++ on the last convolutional stage (layer=None) or a named module",
    "hand computation of Chattopadhay et al. eq. 19")


@register_method(
    "smooth_gradcam_pp",
    row=16,
    description="mean Grad-CAM++ map over noisy copies x + N(0, σ²)",
    reference="hand computation: mean of gradcam_pp over the same noisy copies",
    stochastic=True,
)
def smooth_gradcam_pp(model, x, target, *, layer=None, n_samples=50, noise_level=0.1, seed=0,
                      batch_size=16):
    layer = layer or default_gradcam_layer(model, x)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for index, noisy in noisy_batches(x, n_samples, noise_level, seed, batch_size):
        chunk_target = None if target is None else target[index]
        activation, gradient = _layer_activation_and_gradient(model, noisy, chunk_target, layer)
        total.index_add_(0, index, _upsample(gradcam_pp_map(activation, gradient), noisy).double())
    return (total / n_samples).to(x.dtype)
