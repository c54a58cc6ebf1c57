"""Grad-CAM family, hand-written for 3D.

Neither zennit nor captum has Grad-CAM++; captum's LayerGradCam does not upsample trilinearly;
MONAI's and torchcam's CAMs normalise, run one layer setup per call and (both) compute a
different Grad-CAM++ denominator than the paper (see :func:`gradcam_pp_map`); torchcam 0.5.0's
``GradCAMpp`` moreover never divides its α (the in-place division acts on a boolean-mask copy),
so it returns Σ g²·ReLU(g) weights.

- gradcam: Selvaraju et al. 2017, "Grad-CAM: Visual explanations from deep networks via
  gradient-based localization".
- gradcam_pp: Chattopadhyay et al. 2018, "Grad-CAM++: Generalized gradient-based visual
  explanations for deep convolutional networks", the closed form of eq. 19.
- smooth_gradcam_pp: Omeiza et al. 2019, "Smooth Grad-CAM++: An enhanced inference level
  visualization technique for deep convolutional neural network models": the 1st-, 2nd- and
  3rd-order gradient terms of Grad-CAM++ averaged over noisy copies of the input (the noise
  SmoothGrad uses, σ = noise_level · (max − min)), α and the weights computed once from the
  averages, and one map from the input's own activation.

All three read the layer that :func:`default_gradcam_layer` picks unless ``layer=`` names one.
The maps are ReLU-rectified class activation maps upsampled trilinearly to the input grid and
repeated over input channels. No normalisation: that is a separate, named post-processing step.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .model_state import forward, target_output
from .noise import noisy_batches
from .registry import register_method

#: Activation modules whose output is >= 0 everywhere: the end of a rectified stage.
RECTIFIERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


def _is_map(output: torch.Tensor) -> bool:
    """A (B, C, X, Y, Z) tensor with more than one voxel: something a CAM can be read from."""
    return output.ndim == 5 and output.shape[2:].numel() > 1


def default_gradcam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the layer the Grad-CAM family reads by default for ``model`` at inputs like ``x``.

    The rectified output of the last convolutional stage, as MONAI's and pytorch-grad-cam's
    examples choose it: the first ReLU to run after the last Conv3d whose output is still a
    spatial map, widened to the outermost enclosing module that returns that very tensor. Grad-CAM
    reads the layer's activations A as evidence, and Grad-CAM++'s closed form (eq. 19 of
    Chattopadhyay et al.) assumes A >= 0; the output of a convolution (or of its batch norm) is
    signed, and there 2 + (Σ A)·g, the denominator of α over g², can be zero or negative (on
    the bundled model's last Conv3d, for 40–60 % of the positive-gradient entries on synthetic
    lesion subjects: α negative or infinite).

    So the default layer is, for

    - a plain CNN (conv → BN → ReLU → pool blocks, e.g. :class:`~nipype_xai.models.TinyCNN3D`,
      a plain ``nn.Sequential``): the last block's ReLU (``features.14`` for the bundled model,
      ``features.10`` for the default three blocks), before the block's pooling: pooling only
      coarsens a map that is already non-negative;
    - SFCN: ``feature_extractor`` (its last block ends in BN → ReLU on the same grid), not the
      1×1×1 classifier convolution that runs after global pooling (its output has one voxel);
    - a residual network (MONAI's ``ResNet``, :class:`~nipype_xai.models.MonaiResNet`):
      ``layer4`` (``net.layer4``), the last residual stage after its closing ReLU, not the 1×1×1
      shortcut convolution that runs last inside the final block;
    - MONAI's ``DenseNet`` / ``DenseNet121``: ``class_layers.relu``, the ReLU after the final
      batch norm ``features.norm5`` and before global pooling, as in MONAI's examples.

    A network with no ReLU between its last convolution and its global pooling falls back to the
    outermost module returning the last convolution's output (signed: pass ``layer=`` there for
    Grad-CAM++).

    Parameters
    ----------
    model
        The network, in eval mode.
    x
        An input batch (only its first sample is run, without gradients).

    Returns
    -------
    str
        A name of ``model.named_modules()``.
    """
    names = {module: name for name, module in model.named_modules()}
    # One event per module call, in the order the calls finish: (module, tensor serial). Serials
    # identify output tensors by object, through weak references so that no activation is kept
    # alive (a shared module such as MONAI's ``act`` runs twice in a block; an in-place ReLU
    # returns its input object).
    events: list[tuple[nn.Module, int, bool]] = []
    serials: dict[int, tuple[weakref.ref, int]] = {}
    counter = itertools.count()

    def serial_of(output: torch.Tensor) -> int:
        known = serials.get(id(output))
        if known is None or known[0]() is not output:
            known = (weakref.ref(output), next(counter))
            serials[id(output)] = known
        return known[1]

    def record(module: nn.Module, _inputs, output) -> None:
        if module is not model and isinstance(output, torch.Tensor):
            events.append((module, serial_of(output), _is_map(output)))

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            forward(model, x[:1])
    finally:
        for handle in handles:
            handle.remove()
    convolutions = [i for i, (module, _, spatial) in enumerate(events)
                    if spatial and isinstance(module, nn.Conv3d)]
    if not convolutions:
        raise ValueError(
            "gradcam: no Conv3d layer with a spatial output was found; pass layer=<module name>"
        )
    last_call = {module: i for i, (module, _, _) in enumerate(events)}
    by_name = dict(model.named_modules())

    def outermost_returning(event: int) -> Optional[str]:
        """The outermost of the event's module and its ancestors whose last call returned the
        event's tensor (a module that runs again later would be read at that later call)."""
        module, serial, _ = events[event]
        parts = names[module].split(".")
        for depth in range(1, len(parts) + 1):
            candidate = by_name[".".join(parts[:depth])]
            if candidate in last_call and events[last_call[candidate]][1] == serial:
                return ".".join(parts[:depth])
        return None

    for i in range(convolutions[-1] + 1, len(events)):
        module, _, spatial = events[i]
        if spatial and isinstance(module, RECTIFIERS):
            chosen = outermost_returning(i)
            if chosen is not None:
                return chosen
            break
    return outermost_returning(convolutions[-1]) or names[events[convolutions[-1]][0]]


def _capture_layer(model: nn.Module, layer: str, captured: list[torch.Tensor]):
    """Forward hook on ``layer`` that appends its output to ``captured``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"gradcam: the model has no module named {layer!r}")

    def keep(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"gradcam: layer {layer!r} returns {type(output).__name__}")
        captured.append(output)
        # A clone goes on through the model, so an in-place op downstream (ReLU(inplace=True))
        # cannot overwrite the activation we differentiate against.
        return output.clone()

    return modules[layer].register_forward_hook(keep)


def _layer_activation_and_gradient(
    model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation A of ``layer`` and ∂y_t/∂A for one batch."""
    captured: list[torch.Tensor] = []
    handle = _capture_layer(model, layer, captured)
    try:
        # The input must require grad for a graph to exist: parameters do not (model_guard).
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = target_output(forward(model, x), target)
            (gradient,) = torch.autograd.grad(y.sum(), captured[-1])
    finally:
        handle.remove()
    return captured[-1].detach(), gradient


def _layer_activation(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Activation A of ``layer`` for one batch (a forward pass without gradients)."""
    captured: list[torch.Tensor] = []
    handle = _capture_layer(model, layer, captured)
    try:
        with torch.no_grad():
            forward(model, x)
    finally:
        handle.remove()
    return captured[-1]


def _upsample(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    cam = F.interpolate(cam.to(x.dtype), size=x.shape[2:], mode="trilinear",
                        align_corners=False)
    return cam.expand(-1, x.shape[1], -1, -1, -1).contiguous()


def gradcam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at the layer's resolution: ReLU(Σ_k mean(∂y/∂A_k) · A_k), shape (B, 1, ...)."""
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def gradcam_pp_weights(activation: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                       third: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights w_k = Σ_ij α_ij · ReLU(D¹_ij), shape (B, K, 1, 1, 1).

    α_ij = D²_ij / (2 D²_ij + (Σ_ab A_ab) · D³_ij), per channel k (Chattopadhyay et al. 2018,
    eq. 19), and α = 0 where that denominator is 0 (where D² = 0 too when A >= 0).

    Parameters
    ----------
    activation
        A, (B, K, X, Y, Z).
    first, second, third
        The 1st-, 2nd- and 3rd-order terms D¹, D², D³, shaped like A: g, g², g³ of the gradient
        g = ∂y/∂A for Grad-CAM++, their means over noisy copies for Smooth Grad-CAM++.
    """
    activation_sum = activation.sum(dim=(2, 3, 4), keepdim=True)
    denominator = 2 * second + activation_sum * third
    nonzero = denominator != 0
    alpha = torch.where(nonzero, second / torch.where(nonzero, denominator, 1.0), 0.0)
    return (alpha * F.relu(first)).sum(dim=(2, 3, 4), keepdim=True)


def gradcam_pp_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ at the layer's resolution (Chattopadhyay et al. 2018, eq. 19), (B, 1, ...).

    ReLU(Σ_k w_k A_k) with the weights of :func:`gradcam_pp_weights` for D^p = g^p. The paper
    explains Y = exp(S) of the class score S, whose derivatives are exp(S)·g^p for a piecewise
    linear network: exp(S) cancels in α and multiplies a sample's whole map, so it is left out
    (maps are compared after normalisation, and exp(S) overflows float32 above S ≈ 88).

    MONAI's ``GradCAMpp`` (and torchcam's, and the widely copied 1Konny/gradcam_plus_plus-pytorch,
    whose issue #2 reports it) puts Σ_ab A_ab · g_ab³ in the denominator, summing A·g³ over
    positions, where eq. 19 multiplies g_ij³ by the channel's Σ_ab A_ab; the two agree only where
    g is constant over a channel (a layer followed directly by global average pooling and a
    linear layer). MONAI also keeps the exp(S) factor (of the batch's summed score) and adds
    1e-7 to the denominator.
    """
    weights = gradcam_pp_weights(activation, gradient, gradient.pow(2), gradient.pow(3))
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def smooth_gradcam_pp_map(activation: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                          third: torch.Tensor) -> torch.Tensor:
    """Smooth Grad-CAM++ at the layer's resolution (Omeiza et al. 2019), (B, 1, ...).

    ReLU(Σ_k w_k A_k) with ``first``, ``second``, ``third`` the means over the noisy copies of
    g, g², g³ and A the activation of the input itself (:func:`gradcam_pp_weights`). α's
    numerator is the mean second-order term, as in the Grad-CAM++ eq. 19 that the method
    averages (torchcam notes that the paper prints the first-order one there). The exp(S) of
    Grad-CAM++'s derivation is left out as in :func:`gradcam_pp_map` (and in torchcam): kept,
    it would weight each copy by exp(S) of its own score, letting a few copies dominate.

    torchcam's ``SmoothGradCAMpp`` differs in two places: its weights take ReLU of the last
    copy's gradient instead of the mean D¹, and its map uses the last copy's activation instead
    of the input's; its α also has the Σ_ab A_ab g_ab³ denominator (see :func:`gradcam_pp_map`).
    """
    weights = gradcam_pp_weights(activation, first, second, third)
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
    "Grad-CAM (Selvaraju et al. 2017) on the rectified output of the last convolutional stage "
    "(layer=None) or a named module",
    "MONAI GradCAM (after min-max normalisation) / hand computation")
gradcam_pp = _register_cam(
    "gradcam_pp", 15, gradcam_pp_map,
    "Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19) on the rectified output of the last "
    "convolutional stage (layer=None) or a named module",
    "hand computation of Chattopadhyay et al. eq. 19; torchcam SmoothGradCAMpp without noise "
    "where its Σ A·g³ equals eq. 19")


@register_method(
    "smooth_gradcam_pp",
    row=16,
    description="Smooth Grad-CAM++ (Omeiza et al. 2019): the 1st/2nd/3rd-order gradient terms of "
                "Grad-CAM++ averaged over noisy copies x + N(0, σ²), then α, the weights and one "
                "map from x's own activation",
    reference="torchcam SmoothGradCAMpp on the same noise draws / hand computation",
    stochastic=True,
)
def smooth_gradcam_pp(model, x, target, *, layer=None, n_samples=50, noise_level=0.1, seed=0,
                      batch_size=16):
    """Smooth Grad-CAM++ (:func:`smooth_gradcam_pp_map`) of ``layer``, upsampled to x.

    Costs n_samples forward and backward passes on the noisy copies (:func:`noisy_batches`, the
    SmoothGrad stream, in passes of at most ``batch_size``) and one forward pass on x for its
    activation. Where only linear maps and pooling follow the layer, the map is x's Grad-CAM++
    map exactly: the gradient is a constant c (set by the weights) at every entry under global
    average pooling, or at each max-pooling window's winner and 0 elsewhere (the bundled model;
    c per channel, or per channel and window for a flattening classifier). The winners move
    between copies, but the mean terms are p_ij·c^n with Σ p_ij = 1 over each window, so p
    cancels in α and Σ α·ReLU(D¹) is the clean sum.

    Parameters
    ----------
    layer
        Module name; ``None``: :func:`default_gradcam_layer`.
    n_samples
        Noisy copies per sample.
    noise_level
        σ of the Gaussian noise as a fraction of each sample's max − min.
    seed
        Seed of the noise stream.
    batch_size
        Copies per forward/backward pass (the maps do not depend on it).
    """
    layer = layer or default_gradcam_layer(model, x)
    activation = torch.cat([_layer_activation(model, chunk, layer)
                            for chunk in x.split(batch_size)])
    # float64 sums: the cubes of small gradients lose digits in float32 over many copies.
    moments = torch.zeros((3, *activation.shape), dtype=torch.float64, device=x.device)
    for index, noisy in noisy_batches(x, n_samples, noise_level, seed, batch_size):
        chunk_target = None if target is None else target[index]
        _, gradient = _layer_activation_and_gradient(model, noisy, chunk_target, layer)
        gradient = gradient.to(torch.float64)
        for order in range(3):
            moments[order].index_add_(0, index, gradient.pow(order + 1))
    first, second, third = moments / n_samples
    cam = smooth_gradcam_pp_map(activation.to(torch.float64), first, second, third)
    return _upsample(cam, x)
