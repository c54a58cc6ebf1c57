"""Propagation methods: modified backward passes through zennit composites.

- guided_backprop: Springenberg et al. 2015, "Striving for simplicity: the all convolutional net"
  (ReLU passes only positive gradients where its input was positive).
- deconvnet: Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks"
  (ReLU passes only positive gradients, whatever its input).
- Layer-wise relevance propagation (LRP): Bach et al. 2015, "On pixel-wise explanations for
  non-linear classifier decisions by layer-wise relevance propagation", PLoS ONE; rules and
  composites as surveyed by Montavon et al. 2019, "Layer-wise relevance propagation: an
  overview", and Kohlbrenner et al. 2020, "Towards best practice in explaining neural network
  decisions with LRP" (IJCNN); deep Taylor decomposition (z⁺ rule, z^B first layer): Montavon et
  al. 2017, "Explaining nonlinear classification decisions with deep Taylor decomposition",
  Pattern Recognition. All rules and composites are zennit's (Anders et al. 2021, "Software for
  dataset-wide XAI: from local explanations to global insights with Zennit, CoRelAy, and
  ViRelAy"), attributed with zennit's ``Gradient`` attributor.

LRP maps are the relevance at the input with the relevance of the output set to y_t (the target
score; Bach et al.'s R⁽ᴸ⁾ = f(x)): zennit propagates the output gradient it is given as relevance,
so it is given y_t · one-hot(t). With ε → 0 on a network without biases (and canonized, see
:mod:`nipype_xai.attribution.canonizers`) the map sums to y_t per sample (conservation).
guided_backprop and deconvnet are modified gradients of y_t, given one-hot(t).

Every LRP method takes ``canonize`` (default True): batch norms merged into the convolution they
follow or made explicit affine layers, MONAI ResNet residual additions routed through zennit's
``Sum`` layer. The canonizers change the model only while the composite is registered.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn
from zennit.attribution import Gradient
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
from zennit.core import Composite
from zennit.rules import Epsilon, ZBox, ZPlus
from zennit.types import Linear

from .canonizers import canonizers_for
from .model_state import forward
from .registry import register_method

#: A bound of the input domain: None (the sample's own min / max), a number, or a tensor that
#: broadcasts to one sample (C, X, Y, Z) or to the whole batch (B, C, X, Y, Z).
Bound = Union[None, float, torch.Tensor]
#: ``make(view, canonizers) -> Composite`` builds the composite for one chunk of the batch.
CompositeFactory = Callable[["_ChunkView", list], Composite]


class _Scores(nn.Module):
    """The model with its output as a (B, K) matrix (what :func:`model_state.forward` returns).

    zennit's attributor calls ``model(x)`` and needs one tensor to weight; models returning a
    tuple, or (B, K, 1, 1, 1), are explained like everywhere else in the engine. Hooks and
    canonizers are registered on the wrapped model itself, so module names are unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.model, x)


class _ChunkView:
    """The full batch and the rows of the current chunk (bounds may be given per sample)."""

    def __init__(self, x: torch.Tensor, start: int, stop: int):
        self.batch, self.start, self.stop = x, start, stop

    @property
    def chunk(self) -> torch.Tensor:
        return self.batch[self.start : self.stop]


def _output_selector(output: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """One-hot of the target class per sample (column 0 for a single-output model)."""
    selector = torch.zeros_like(output)
    if target is None:
        selector[:, 0] = 1
    else:
        selector.scatter_(1, target.reshape(-1, 1).to(output.device), 1)
    return selector


def _propagate(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    make_composite: CompositeFactory,
    *,
    relevance: bool,
    canonize: bool,
    batch_size: int,
) -> torch.Tensor:
    """Run zennit's ``Gradient`` attributor with a composite, ``batch_size`` samples at a time.

    ``relevance=True`` starts the backward pass from y_t · one-hot (LRP); False from one-hot (a
    modified gradient of y_t).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    canonizers = canonizers_for(model) if canonize else []
    scores = _Scores(model)

    def output_weights(
        chunk_target: Optional[torch.Tensor],
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        def weights(output: torch.Tensor) -> torch.Tensor:
            selector = _output_selector(output, chunk_target)
            return selector * output.detach() if relevance else selector

        return weights

    maps = []
    for start in range(0, x.shape[0], batch_size):
        stop = min(start + batch_size, x.shape[0])
        chunk = x[start:stop].detach().clone()
        chunk_target = None if target is None else target[start:stop]
        # A composite per chunk: ZBox bounds are tensors of the chunk's shape. Hooks and
        # canonizers live exactly as long as the context (zennit's own habit).
        composite = make_composite(_ChunkView(x, start, stop), canonizers)
        with composite.context(model), torch.enable_grad():
            _, attribution = Gradient(model=scores)(chunk, output_weights(chunk_target))
        maps.append(attribution.detach())
    return torch.cat(maps)


def input_bounds(x: torch.Tensor, low: Bound, high: Bound) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest admissible input values for the z^B (ZBox) rule, shaped like ``x``.

    ``None`` takes each sample's own minimum / maximum over all its channels and voxels, so a
    sample's explanation does not depend on the other volumes in its batch. A number applies to
    every voxel; a tensor must broadcast to one sample or to the whole batch.

    Raises
    ------
    ValueError
        If a bound does not broadcast to ``x`` or ``low`` exceeds ``high`` somewhere.
    """
    return _chunk_bounds(_ChunkView(x, 0, x.shape[0]), low, high)


def _chunk_bounds(view: _ChunkView, low: Bound, high: Bound) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = view.chunk
    dims = tuple(range(1, chunk.ndim))

    def resolve(value: Bound, name: str, reduce: Callable) -> torch.Tensor:
        if value is None:
            return reduce(chunk.detach(), dim=dims, keepdim=True).expand_as(chunk)
        bound = torch.as_tensor(value, dtype=chunk.dtype, device=chunk.device)
        if bound.ndim == view.batch.ndim and bound.shape[0] == view.batch.shape[0] > 1:
            bound = bound[view.start : view.stop]
        try:
            return bound.expand_as(chunk)
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(bound.shape)} does not broadcast to the input "
                f"{tuple(view.batch.shape)}"
            ) from None

    low_t = resolve(low, "low", torch.amin)
    high_t = resolve(high, "high", torch.amax)
    if bool((low_t > high_t).any()):
        raise ValueError("low exceeds high for some voxels; the ZBox rule needs low <= high")
    return low_t, high_t


# --------------------------------------------------------------------------------------------
# Modified ReLU gradients
# --------------------------------------------------------------------------------------------

_ZENNIT = "zennit (Anders et al. 2021)"


#: The modified gradients: name -> (row in SPEC §3, zennit composite, description, reference).
#: Each takes ``batch_size`` only (:func:`_modified_gradient_method`); no canonizers, the
#: composites change only the ReLUs' backward pass.
_MODIFIED_GRADIENTS: dict[str, tuple[int, Callable[[], Composite], str, str]] = {
    # ReLUs pass gradient only where both their input and the gradient are > 0.
    "guided_backprop": (
        8, GuidedBackprop,
        "guided backpropagation of y_t (Springenberg et al. 2015)",
        f"captum GuidedBackprop; {_ZENNIT} GuidedBackprop composite"),
    # ReLUs pass the positive part of the gradient, whatever their input was.
    "deconvnet": (
        9, DeconvNet,
        "DeconvNet backward pass of y_t (Zeiler & Fergus 2014)",
        f"captum Deconvolution; {_ZENNIT} DeconvNet composite"),
}


def _modified_gradient_method(composite: Callable[[], Composite]) -> Callable[..., torch.Tensor]:
    """The method function of one :data:`_MODIFIED_GRADIENTS` entry."""

    def method(
        model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], *, batch_size: int = 16
    ) -> torch.Tensor:
        return _propagate(model, x, target, lambda view, canonizers: composite(),
                          relevance=False, canonize=False, batch_size=batch_size)

    return method


def _register_table(table: dict[str, tuple], method_for: Callable[..., Callable]) -> None:
    """Register every ``name: (row, composite, description, reference)`` entry of ``table``, its
    method function made by ``method_for(composite)``."""
    for name, (row, composite, description, reference) in table.items():
        register_method(name, row=row, description=description,
                        reference=reference)(method_for(composite))


_register_table(_MODIFIED_GRADIENTS, _modified_gradient_method)


# --------------------------------------------------------------------------------------------
# Layer-wise relevance propagation
# --------------------------------------------------------------------------------------------


def lrp_epsilon_composite(epsilon: float = 1e-6, canonizers: Optional[list] = None) -> Composite:
    """The ε-rule on every convolution / linear layer.

    Sums (the canonized residual additions) and average pools get zennit's ``Norm`` rule, batch
    norms ``Pass`` and activations ``Pass``, as in zennit's base layer map; max pooling keeps its
    gradient (winner takes all), which conserves relevance.
    """
    return LayerMapComposite(
        layer_map=layer_map_base() + [(Linear, Epsilon(epsilon=epsilon))], canonizers=canonizers
    )


def deep_taylor_composite(
    low: torch.Tensor, high: torch.Tensor, canonizers: Optional[list] = None
) -> Composite:
    """Deep Taylor decomposition: z^B (ZBox) rule on the first linear layer, z⁺ on all others.

    ``low`` / ``high`` bound the input domain for the first layer (tensors shaped like the
    input batch).
    """
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(Linear, ZPlus())],
        first_map=[(Linear, ZBox(low=low, high=high))],
        canonizers=canonizers,
    )


def _lrp(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    make_composite: CompositeFactory,
    canonize: bool,
    batch_size: int,
) -> torch.Tensor:
    return _propagate(
        model, x, target, make_composite,
        relevance=True, canonize=bool(canonize), batch_size=batch_size,
    )


_BOX_NOTE = "low/high default to each sample's min/max"

#: The LRP methods that differ only in their composite: name -> (row in SPEC §3, the composite
#: from (epsilon, canonizers), description, reference). Each takes ``epsilon``, ``canonize``
#: and ``batch_size`` (:func:`_epsilon_lrp_method`).
_EPSILON_LRP: dict[str, tuple[int, Callable[[float, list], Composite], str, str]] = {
    "lrp_epsilon": (
        10, lrp_epsilon_composite,
        "LRP-ε on every convolution / linear layer, canonized (Bach et al. 2015)",
        f"{_ZENNIT} Epsilon rule; conservation on bias-free networks"),
    "lrp_epsilon_plus_flat": (
        11, lambda epsilon, canonizers: EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers),
        "LRP: flat first layer, z⁺ convolutions, ε dense layers (Kohlbrenner et al. 2020)",
        f"{_ZENNIT} EpsilonPlusFlat composite"),
    "lrp_alpha2_beta1": (
        12, lambda epsilon, canonizers: EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canonizers),
        "LRP: α2β1 convolutions, ε dense layers (Bach et al. 2015)",
        f"{_ZENNIT} EpsilonAlpha2Beta1 composite"),
    "lrp_epsilon_plus": (
        24, lambda epsilon, canonizers: EpsilonPlus(epsilon=epsilon, canonizers=canonizers),
        "LRP: z⁺ convolutions, ε dense layers",
        f"{_ZENNIT} EpsilonPlus composite"),
}


def _epsilon_lrp_method(
    composite: Callable[[float, list], Composite],
) -> Callable[..., torch.Tensor]:
    """The method function of one :data:`_EPSILON_LRP` entry."""

    def method(
        model: nn.Module,
        x: torch.Tensor,
        target: Optional[torch.Tensor],
        *,
        epsilon: float = 1e-6,
        canonize: bool = True,
        batch_size: int = 16,
    ) -> torch.Tensor:
        return _lrp(model, x, target,
                    lambda view, canonizers: composite(epsilon, canonizers), canonize, batch_size)

    return method


_register_table(_EPSILON_LRP, _epsilon_lrp_method)


def _box_lrp(model, x, target, low: Bound, high: Bound, composite: Callable[..., Composite],
             canonize: bool, batch_size: int) -> torch.Tensor:
    """LRP with a composite bounded by the input domain, ``composite(low, high, canonizers)``
    built per chunk from that chunk's bounds (see :func:`input_bounds`)."""

    def make(view: _ChunkView, canonizers: list) -> Composite:
        return composite(*_chunk_bounds(view, low, high), canonizers)

    input_bounds(x, low, high)  # fail on bad bounds before any pass
    return _lrp(model, x, target, make, canonize, batch_size)


@register_method(
    "deep_taylor",
    row=13,
    description=f"deep Taylor decomposition: z⁺ rule, ZBox first layer ({_BOX_NOTE}; "
    "Montavon et al. 2017)",
    reference=f"{_ZENNIT} ZPlus / ZBox rules",
)
def deep_taylor(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    low: Bound = None,
    high: Bound = None,
    canonize: bool = True,
    batch_size: int = 16,
) -> torch.Tensor:
    """Deep Taylor decomposition; see :func:`input_bounds` for ``low`` / ``high``."""
    return _box_lrp(model, x, target, low, high, deep_taylor_composite, canonize, batch_size)


@register_method(
    "lrp_epsilon_gamma_box",
    row=23,
    description=f"LRP: ZBox first layer, γ convolutions, ε dense layers ({_BOX_NOTE})",
    reference=f"{_ZENNIT} EpsilonGammaBox composite",
)
def lrp_epsilon_gamma_box(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    low: Bound = None,
    high: Bound = None,
    epsilon: float = 1e-06,
    gamma: float = 0.25,
    canonize: bool = True,
    batch_size: int = 16,
) -> torch.Tensor:
    """zennit's EpsilonGammaBox composite; see :func:`input_bounds` for ``low`` / ``high``."""

    def composite(low_t: torch.Tensor, high_t: torch.Tensor, canonizers: list) -> Composite:
        return EpsilonGammaBox(
            low=low_t, high=high_t, epsilon=epsilon, gamma=gamma, canonizers=canonizers
        )

    return _box_lrp(model, x, target, low, high, composite, canonize, batch_size)
