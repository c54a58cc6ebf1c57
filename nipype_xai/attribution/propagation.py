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
so it is given y_t · one-hot(t). guided_backprop and deconvnet are modified gradients of y_t,
given one-hot(t).

Conservation (the map sums to y_t per sample) is what each rule promises on a canonized ReLU
network (see :mod:`nipype_xai.attribution.canonizers`), and what the tests check:

- the ε-rule keeps Σ_i R_i = z / (z + ε·sign z) · R at each neuron: biases and ε absorb relevance.
  On a network without biases, LRP-ε conserves up to ε (exactly as ε → 0, where it is gradient ×
  input); at the default ε it keeps a fraction of y_t (0.13–0.21 on the bias-free DenseNet121
  and MonaiResNet of the tests). With biases the total can exceed y_t.
- z⁺, z^B, flat and γ redistribute all of a neuron's relevance over its positive (z^B: bounded)
  contributions: on a network without biases in which every neuron that receives relevance has
  a positive pre-activation, they conserve exactly. A ReLU layer ensures that; a residual sum
  of unrectified branches (MONAI's ResNet blocks) does not, when zennit's ``Norm`` rule shares
  relevance there in proportion to signed inputs: a branch neuron with a negative output then
  receives relevance and, with no positive contribution, loses it. The z⁺ composites therefore
  apply z⁺ to residual sums too (:class:`PositiveNorm`: shares in proportion to the inputs'
  positive parts), and conserve exactly on bias-free ResNets; the γ composite keeps ``Norm``
  (γ → 0 is LRP-0). Average pools keep ``Norm``: in DenseNet a transition's pool is followed by
  pre-activation batch norms, and one with a negative scale sends relevance to a negative pool
  output, whose positive inputs may be none. Such a negative scale is the one case where z⁺ does
  not conserve on a bias-free DenseNet (the rule assumes that relevance sits on positive
  activations; Σ R / y_t was 1.06 and 1.28 with N(0, 1) batch-norm weights, before and after
  this canonization).
- α2β1 conserves at a neuron that has both positive and negative contributions; one with only
  positive ones passes on α = 2 times its relevance, which is why per-channel batch norms (one
  input per output) must not get it (they get ``Pass``, as in zennit).

Batch norms merged into the preceding convolution take that convolution's rule; batch norms made
explicit affine layers (DenseNet's pre-activation ones) get ``Pass`` in every composite but
``lrp_epsilon``, whose LRP-0 on them keeps LRP-0 equal to gradient × input.

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
from zennit.core import BasicHook, Composite, stabilize
from zennit.layer import Sum
from zennit.rules import Epsilon, NoMod, Pass, ZBox, ZPlus
from zennit.types import Linear

from .canonizers import BatchNormAffine, canonizers_for
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


#: The denominator guard of rules where ε is no parameter (zennit's default stabilizer).
_STABILIZER = 1e-6


def _batch_norm_pass() -> list:
    """Layer-map entry giving canonized stand-alone batch norms ``Pass`` (zennit's rule for batch
    norm): the convolution rules on a one-input-per-output map pass all or nothing (z⁺) or α
    times the relevance (α2β1). Put first: a layer map takes the first entry that matches, and
    :class:`BatchNormAffine` is also a convolution."""
    return [(BatchNormAffine, Pass())]


class PositiveNorm(BasicHook):
    """The z⁺ rule on a layer without weights (a residual ``Sum``): relevance shared in proportion
    to the inputs' positive parts, R_i = x_i⁺ / Σ_k x_k⁺ · R.

    The sum adds its inputs with weights 1, so this is z⁺ with those weights, as zennit's ``Norm``
    is LRP-0 with them. zennit has no such rule (its ``ZPlus`` needs a weight),
    hence this one, written as zennit's ``Norm`` is, on clamped inputs.
    """

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(
            input_modifiers=[lambda input: input.clamp(min=0)],
            param_modifiers=[NoMod(param_keys=[])],
            output_modifiers=[lambda output: output],
            gradient_mapper=lambda out_grad, outputs: out_grad / stabilize(outputs[0], stabilizer),
            reducer=lambda inputs, gradients: inputs[0] * gradients[0],
        )


def _z_plus_map() -> list:
    """Layer-map entries of the z⁺ composites: :func:`_batch_norm_pass`, and z⁺ on residual sums
    (:class:`PositiveNorm`), ahead of zennit's base map."""
    return _batch_norm_pass() + [(Sum, PositiveNorm())]


def relative_epsilon(epsilon: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ε-rule's stabilizer with ε relative to the layer: z + sign(z)·(ε·RMS(z) + 10⁻⁶).

    RMS(z) is the root mean square of the layer's outputs for that sample, so the rule does not
    depend on the scale of the layer's weights or of the input (Montavon et al. 2019's overview
    and its tutorial state ε as a multiple of this "std": 0.25 for VGG-16's middle layers). The
    10⁻⁶ keeps a layer whose outputs are all zero from dividing by zero.

    Parameters
    ----------
    epsilon
        The multiple of RMS(z); 0 gives LRP-0.
    """

    def stabilizer(z: torch.Tensor) -> torch.Tensor:
        # zennit's own stabilize: relative ε (norm_scale over all but the batch axis), then guard.
        return stabilize(stabilize(z, epsilon, norm_scale=True), _STABILIZER)

    return stabilizer


def lrp_epsilon_composite(epsilon: float, canonizers: Optional[list] = None) -> Composite:
    """The ε-rule, ε relative to each layer (:func:`relative_epsilon`), on every convolution /
    linear layer.

    Canonized stand-alone batch norms get LRP-0 (ε only as a guard): their shift absorbs its share
    of relevance, as a bias does, so with ``epsilon`` → 0 the map is gradient × input; a relative
    ε there would shrink the relevance at each of DenseNet's ~60 such layers without a
    contribution to weigh against another (one input per output). Sums (the canonized residual
    additions) and average pools get zennit's ``Norm`` rule, activations ``Pass``, as in zennit's
    base layer map; max pooling keeps its gradient (winner takes all), which conserves relevance.
    """
    return LayerMapComposite(
        layer_map=[(BatchNormAffine, Epsilon(epsilon=_STABILIZER))] + layer_map_base()
        + [(Linear, Epsilon(epsilon=relative_epsilon(epsilon)))],
        canonizers=canonizers,
    )


def deep_taylor_composite(
    low: torch.Tensor, high: torch.Tensor, canonizers: Optional[list] = None
) -> Composite:
    """Deep Taylor decomposition (Montavon et al. 2017): z^B (ZBox) on the first linear layer,
    z⁺ without biases on all others.

    DTD derives the z⁺ rule, R_i = Σ_j x_i w⁺_ij / Σ_i x_i w⁺_ij · R_j, for ReLU layers whose
    biases are not positive; it has no bias term, so biases (including the shifts of merged
    batch norms) are zeroed for the rule (zennit's ``zero_params``), and relevance is not lost
    to positive biases. z^B's own formula cancels the bias. ``low`` / ``high`` bound the input
    domain for the first layer (tensors shaped like the input batch).
    """
    return SpecialFirstLayerMapComposite(
        layer_map=_z_plus_map() + layer_map_base() + [(Linear, ZPlus(zero_params="bias"))],
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


@register_method(
    "lrp_epsilon",
    row=10,
    description="LRP-ε on every convolution / linear layer, ε = epsilon × the root mean square of "
    "the layer's outputs per sample (ε in units of the layer's std, as Montavon et al. 2019 "
    "state it), LRP-0 on stand-alone batch norms, canonized (Bach et al. 2015); epsilon → 0 "
    "gives gradient × input",
    reference=f"{_ZENNIT} Epsilon rule with a norm-scaled stabilizer",
)
def lrp_epsilon(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    epsilon: float = 0.25,
    canonize: bool = True,
    batch_size: int = 16,
) -> torch.Tensor:
    """LRP-ε; ``epsilon`` is relative to each layer's outputs (see :func:`relative_epsilon`).

    An absolute ε of 10⁻⁶ (this method's old default) is LRP-0, which on ReLU networks is
    gradient × input (Ancona et al. 2018): a second name for one map. An ε of the order of the
    layer's RMS absorbs the relevance of weak, cancelling contributions, which is what the
    ε-rule is for; the default is the overview's tutorial value for VGG-16's middle layers.
    """
    return _lrp(model, x, target,
                lambda view, canonizers: lrp_epsilon_composite(epsilon, canonizers),
                canonize, batch_size)


def _zennit_composite(
    composite_type: type, layer_map: Callable[[], list]
) -> Callable[[float, list], Composite]:
    """``(epsilon, canonizers) -> composite`` for a zennit composite, ``layer_map()`` put before
    its own entries (:func:`_batch_norm_pass`, :func:`_z_plus_map`)."""
    return lambda epsilon, canonizers: composite_type(
        epsilon=epsilon, layer_map=layer_map(), canonizers=canonizers
    )


_DENSE_EPSILON = "ε dense layers (absolute ε, zennit's stabilizer by default)"

#: The zennit composites that differ only in their type: name -> (row in SPEC §3, the composite
#: from (epsilon, canonizers), description, reference). Each takes ``epsilon`` (of the ε-rule
#: on their dense layers), ``canonize`` and ``batch_size`` (:func:`_epsilon_lrp_method`).
_EPSILON_LRP: dict[str, tuple[int, Callable[[float, list], Composite], str, str]] = {
    "lrp_epsilon_plus_flat": (
        11, _zennit_composite(EpsilonPlusFlat, _z_plus_map),
        f"LRP: flat first layer, z⁺ convolutions and residual sums, {_DENSE_EPSILON}, "
        "stand-alone batch norms passed (Kohlbrenner et al. 2020)",
        f"{_ZENNIT} EpsilonPlusFlat composite"),
    "lrp_alpha2_beta1": (
        12, _zennit_composite(EpsilonAlpha2Beta1, _batch_norm_pass),
        f"LRP: α2β1 convolutions, {_DENSE_EPSILON}, stand-alone batch norms passed "
        "(Bach et al. 2015)",
        f"{_ZENNIT} EpsilonAlpha2Beta1 composite"),
    "lrp_epsilon_plus": (
        24, _zennit_composite(EpsilonPlus, _z_plus_map),
        f"LRP: z⁺ convolutions and residual sums, {_DENSE_EPSILON}, stand-alone batch norms "
        "passed",
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
    description=f"deep Taylor decomposition: z⁺ rule without biases (also on residual sums), "
    f"ZBox first layer ({_BOX_NOTE}), stand-alone batch norms passed (Montavon et al. 2017)",
    reference=f"{_ZENNIT} ZPlus (zero_params='bias') / ZBox rules",
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
    description=f"LRP: ZBox first layer, γ convolutions, {_DENSE_EPSILON}, stand-alone batch "
    f"norms passed ({_BOX_NOTE})",
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
            low=low_t, high=high_t, epsilon=epsilon, gamma=gamma,
            layer_map=_batch_norm_pass(), canonizers=canonizers,
        )

    return _box_lrp(model, x, target, low, high, composite, canonize, batch_size)
