"""Canonizers: rewrite a model, for the duration of one explanation, into an equivalent model whose
layers LRP rules can be applied to one by one.

LRP rules are defined per linear layer followed by an activation. Batch norm, residual additions
and functional operations break that pattern, and the relevance a rule computes then depends on
how the *same function* is written. Canonization (Guillemot et al. 2020; Motzkus et al. 2022;
Pahde et al. 2023, "Optimizing explanations by network canonization and hyperparameter search",
CVPR workshops) picks one canonical, output-equivalent form:

- batch norm that *follows* a convolution / linear layer is merged into that layer (the layer
  computes ``bn(conv(x))`` itself, the batch norm computes the identity);
- batch norm that does not follow a linear layer (DenseNet's ``norm → relu → conv``, the
  ``norm5`` after a concatenation) is made an explicit per-channel affine layer, a depthwise
  1×1×1 convolution of type :class:`BatchNormAffine` (batch norm as a linear layer of its own:
  Hui & Binder 2019, "BatchNorm decomposition for deep neural network interpretation", IWANN).
  It cannot be merged into the convolution that follows it: a ReLU lies between them. Its rule is
  the composite's choice (:mod:`nipype_xai.attribution.propagation`), *not* the convolution rule
  its type would otherwise receive: a per-channel affine map has one input per output, and on
  one input the z⁺ rule passes all or nothing and the α2β1 rule multiplies the relevance by α
  (there are no negative contributions to take the −β share), so giving it the convolution rule
  broke conservation on DenseNet (issue 15);
- the residual addition of MONAI's 3D ResNet blocks goes through zennit's ``Sum`` layer, so the
  composite's rule for it splits relevance between the two branches (zennit's ``Norm``: in
  proportion to their contributions, as ``zennit.torchvision`` does for torchvision's 2D
  ResNets; the z⁺ composites: in proportion to their positive parts); left as a plain ``+=``,
  the gradient copies the full relevance into *both* branches.

Which batch norm follows which layer is read from the model's data flow (a ``torch.fx`` trace), not
from the order in which modules were registered: zennit's ``SequentialMergeBatchNorm`` pairs each
batch norm with the module registered just before it, and in MONAI's DenseNet that pairs the last
convolution of one dense layer with the next dense layer's ``norm1``, which normalises the
concatenation of *all* earlier feature maps (a channel mismatch, or a silently wrong merge).
Models ``torch.fx`` cannot trace fall back to adjacencies that hold by construction (consecutive
children of an ``nn.Sequential``, the known MONAI blocks).

Every canonizer here is a zennit ``Canonizer``: it changes the model when a composite registers it
and restores it exactly (the same parameter tensors, the same modules) when the composite is
removed. The MONAI ResNet residual canonizers are in :mod:`.residual` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn
from zennit.canonizers import Canonizer, NamedMergeBatchNorm
from zennit.types import ConvolutionTranspose, Linear

from .residual import (
    MonaiResNetBlockCanonizer,
    MonaiResNetBottleneckCanonizer,
    monai_residual_block_types,
    monai_resnet_type,
)

__all__ = [
    "BatchNormAffine",
    "BatchNormAffine1d",
    "BatchNormAffine2d",
    "BatchNormAffine3d",
    "BatchNormAsAffine",
    "BatchNormLayout",
    "MergeFollowingBatchNorm",
    "MonaiResNetBlockCanonizer",
    "MonaiResNetBottleneckCanonizer",
    "batch_norm_layout",
    "canonizers_for",
]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_linear_batch_norm(module: nn.Module) -> bool:
    """Batch norm that is an affine map at inference: it normalises with running statistics."""
    return (
        isinstance(module, _BATCH_NORMS)
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def _out_channels(module: nn.Module) -> Optional[int]:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, ConvolutionTranspose):
        # The transposed weight is (in, out / groups, ...): a per-output-channel scale is only a
        # scale of dimension 1 when there is a single group.
        return module.out_channels if module.groups == 1 else None
    if isinstance(module, Linear):
        return module.out_channels
    return None


def _mergeable(linear: nn.Module, batch_norm: nn.Module) -> bool:
    return (
        isinstance(linear, Linear)
        and _is_linear_batch_norm(batch_norm)
        and _out_channels(linear) == batch_norm.num_features
    )


def batch_norm_affine(
    batch_norm: nn.modules.batchnorm._BatchNorm,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``batch_norm(x) == scale · x + shift`` in eval mode."""
    scale = torch.rsqrt(batch_norm.running_var + batch_norm.eps)
    if batch_norm.weight is not None:
        scale = scale * batch_norm.weight
    shift = -batch_norm.running_mean * scale
    if batch_norm.bias is not None:
        shift = shift + batch_norm.bias
    return scale.detach(), shift.detach()


# --------------------------------------------------------------------------------------------
# Where the batch norms are: merged into a preceding linear layer, or standing alone
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNormLayout:
    """How each inference-mode batch norm of a model is canonized.

    Attributes
    ----------
    merge
        ``(linear_name, batch_norm_name)`` pairs: the batch norm's input is the linear layer's
        output and nothing else uses that output, so the batch norm can be folded into it.
    standalone
        Names of the other batch norms; they become explicit per-channel affine layers.
    traced
        True when the layout comes from a ``torch.fx`` trace of the data flow; False when the
        model could not be traced and structural adjacencies were used.
    """

    merge: tuple[tuple[str, str], ...]
    standalone: tuple[str, ...]
    traced: bool = field(default=True)


def batch_norm_layout(model: nn.Module) -> BatchNormLayout:
    """Find which batch norms of ``model`` follow a convolution / linear layer (see module notes).

    Parameters
    ----------
    model
        Any PyTorch model.

    Returns
    -------
    BatchNormLayout
        The merge pairs and the standalone batch norms. Batch norms without running statistics
        (``track_running_stats=False``) are not affine at inference and appear in neither.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable (data-dependent control flow, ...): fall back
        graph = None
    merge = _structural_merge_pairs(model) if graph is None else _traced_merge_pairs(model, graph)
    traced = graph is not None
    merged = {bn for _, bn in merge}
    standalone = tuple(
        name
        for name, module in model.named_modules()
        if name and _is_linear_batch_norm(module) and name not in merged
    )
    return BatchNormLayout(tuple(merge), standalone, traced)


def _traced_merge_pairs(model: nn.Module, graph: torch.fx.Graph) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_linear_batch_norm(modules[node.target]):
            continue
        if len(node.args) != 1 or node.kwargs or calls[node.target] != 1:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        # Folding is only exact if the linear layer runs once and its output feeds this batch
        # norm alone (a skip connection reading the pre-norm output would see the merged values).
        if calls[source.target] != 1 or len(source.users) != 1:
            continue
        if _mergeable(modules[source.target], modules[node.target]):
            pairs.append((source.target, node.target))
    return pairs


def _structural_merge_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Adjacencies that hold by construction, for models ``torch.fx`` cannot trace."""
    pairs = []
    monai_blocks = monai_residual_block_types()
    monai_resnet = monai_resnet_type()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (first_name, first), (second_name, second) in zip(children, children[1:]):
                if _mergeable(first, second):
                    pairs.append((prefix + first_name, prefix + second_name))
        elif monai_blocks and isinstance(module, monai_blocks):
            for index in (1, 2, 3):
                conv = getattr(module, f"conv{index}", None)
                bn = getattr(module, f"bn{index}", None)
                if conv is not None and bn is not None and _mergeable(conv, bn):
                    pairs.append((f"{prefix}conv{index}", f"{prefix}bn{index}"))
        elif monai_resnet is not None and isinstance(module, monai_resnet):
            if _mergeable(module.conv1, module.bn1):
                pairs.append((f"{prefix}conv1", f"{prefix}bn1"))
    return pairs


# --------------------------------------------------------------------------------------------
# Batch norm following a linear layer: merge
# --------------------------------------------------------------------------------------------


class MergeFollowingBatchNorm(NamedMergeBatchNorm):
    """zennit's named batch-norm merge, made exact and tolerant of ``affine=False``.

    zennit leaves the merged batch norm with unit variance, so it still divides by
    ``sqrt(1 + eps)`` (a 5·10⁻⁶ relative change per layer that compounds through deep networks);
    here the variance is set to ``1 − eps`` so the batch norm computes the identity up to float
    rounding. Batch norms without affine parameters merge too.

    Parameters
    ----------
    name_map
        ``[((linear_name, ...), batch_norm_name), ...]`` as for zennit's ``NamedMergeBatchNorm``.
    """

    def register(self, linears: Sequence[nn.Module], batch_norm: nn.Module) -> None:
        self.linears = list(linears)
        self.batch_norm = batch_norm
        self.linear_params = [
            (linear.weight.data, getattr(linear.bias, "data", None)) for linear in self.linears
        ]
        self.batch_norm_params = {
            key: getattr(batch_norm, key).data
            for key in ("weight", "bias", "running_mean", "running_var")
            if getattr(batch_norm, key) is not None
        }
        self.merge_batch_norm(self.linears, batch_norm)

    @staticmethod
    def merge_batch_norm(modules: Sequence[nn.Module], batch_norm: nn.Module) -> None:
        scale, shift = batch_norm_affine(batch_norm)
        for module in modules:
            weight = module.weight.data
            if isinstance(module, ConvolutionTranspose):
                index = (None, slice(None), *((None,) * (weight.ndim - 2)))
            else:
                index = (slice(None), *((None,) * (weight.ndim - 1)))
            bias = module.bias.data if module.bias is not None else torch.zeros_like(scale)
            module.weight.data = weight * scale[index]
            merged_bias = bias * scale + shift
            if module.bias is None:
                # zennit's remove() sets a bias that was None back to None.
                module.bias = nn.Parameter(merged_bias, requires_grad=False)
            else:
                module.bias.data = merged_bias
        # (x - 0) / sqrt((1 - eps) + eps) * 1 + 0 == x
        batch_norm.running_mean.data = torch.zeros_like(batch_norm.running_mean)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var, 1.0 - batch_norm.eps)
        if batch_norm.weight is not None:
            batch_norm.weight.data = torch.ones_like(batch_norm.weight)
        if batch_norm.bias is not None:
            batch_norm.bias.data = torch.zeros_like(batch_norm.bias)


# --------------------------------------------------------------------------------------------
# Batch norm not following a linear layer: an explicit affine layer
# --------------------------------------------------------------------------------------------


class BatchNormAffine:
    """Mixin and type of the canonized batch norms: a depthwise 1×…×1 convolution computing an
    inference-mode batch norm exactly.

    Composites map this type to a rule of its own, ahead of their convolution rule (a layer map
    takes the first entry that matches; see the module notes).
    """

    def __init__(self, batch_norm: nn.modules.batchnorm._BatchNorm):
        n = batch_norm.num_features
        super().__init__(n, n, 1, groups=n, bias=True, device=batch_norm.running_mean.device,
                         dtype=batch_norm.running_mean.dtype)
        self._load_batch_norm(batch_norm)

    def _load_batch_norm(self, batch_norm: nn.modules.batchnorm._BatchNorm) -> None:
        scale, shift = batch_norm_affine(batch_norm)
        with torch.no_grad():
            self.weight.copy_(scale.reshape(self.weight.shape))
            self.bias.copy_(shift)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class BatchNormAffine1d(BatchNormAffine, nn.Conv1d):
    """``BatchNorm1d`` as a depthwise 1-wide convolution; accepts (N, C) and (N, C, L) inputs."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.ndim == 2:
            return super().forward(input.unsqueeze(-1)).squeeze(-1)
        return super().forward(input)


class BatchNormAffine2d(BatchNormAffine, nn.Conv2d):
    """``BatchNorm2d`` as a depthwise 1×1 convolution."""


class BatchNormAffine3d(BatchNormAffine, nn.Conv3d):
    """``BatchNorm3d`` as a depthwise 1×1×1 convolution."""


_AFFINE_TYPES: dict[type, type] = {
    nn.BatchNorm1d: BatchNormAffine1d,
    nn.BatchNorm2d: BatchNormAffine2d,
    nn.BatchNorm3d: BatchNormAffine3d,
}


def _affine_for(batch_norm: nn.Module) -> Optional[nn.Module]:
    for bn_type, affine_type in _AFFINE_TYPES.items():
        if isinstance(batch_norm, bn_type):
            return affine_type(batch_norm)
    return None


class BatchNormAsAffine(Canonizer):
    """Replace named batch norms by equivalent depthwise convolutions while registered.

    The replacements are :class:`BatchNormAffine` instances; the composites of
    :mod:`nipype_xai.attribution.propagation` give them LRP-0 (``lrp_epsilon``: the shift
    absorbs its share of relevance, so LRP-0 equals gradient × input) or ``Pass`` (the other
    composites, as zennit passes batch norms). Left to a composite's convolution rule they would
    break conservation (see the module notes).

    Parameters
    ----------
    names
        Qualified module names of the batch norms to replace.
    """

    def __init__(self, names: Sequence[str] = ()):
        super().__init__()
        self.names = tuple(names)
        self.parent: Optional[nn.Module] = None
        self.child_name: Optional[str] = None
        self.original: Optional[nn.Module] = None

    def apply(self, root_module: nn.Module) -> list["BatchNormAsAffine"]:
        instances = []
        for name in self.names:
            parent_name, _, child_name = name.rpartition(".")
            parent = root_module.get_submodule(parent_name)
            batch_norm = getattr(parent, child_name)
            if not _is_linear_batch_norm(batch_norm):
                continue
            instance = self.copy()
            instance.register(parent, child_name)
            instances.append(instance)
        return instances

    def register(self, parent: nn.Module, child_name: str) -> None:
        original = getattr(parent, child_name)
        replacement = _affine_for(original)
        if replacement is None:
            return
        self.parent, self.child_name, self.original = parent, child_name, original
        setattr(parent, child_name, replacement)

    def remove(self) -> None:
        if self.parent is not None:
            # Assigning to an existing child name keeps its position in ``_modules``.
            setattr(self.parent, self.child_name, self.original)
            self.parent = self.child_name = self.original = None

    def copy(self) -> "BatchNormAsAffine":
        return self.__class__(self.names)


# --------------------------------------------------------------------------------------------
# Automatic choice
# --------------------------------------------------------------------------------------------


def canonizers_for(model: nn.Module, *, residual: bool = True) -> list[Canonizer]:
    """The canonizers that bring ``model`` into canonical form for LRP.

    Parameters
    ----------
    model
        Any PyTorch model; the batch-norm layout is read from its data flow (see
        :func:`batch_norm_layout`).
    residual
        Include the residual-sum canonizers for MONAI ResNet blocks (switching them off is only
        useful to show what they change).

    Returns
    -------
    list of zennit.canonizers.Canonizer
        To pass as ``canonizers=`` to a zennit composite; they modify ``model`` only while the
        composite is registered.
    """
    layout = batch_norm_layout(model)
    canonizers: list[Canonizer] = []
    if layout.merge:
        canonizers.append(MergeFollowingBatchNorm([((linear,), bn) for linear, bn in layout.merge]))
    if layout.standalone:
        canonizers.append(BatchNormAsAffine(layout.standalone))
    if residual:
        present = {type(module) for module in model.modules()}
        for canonizer_type in (MonaiResNetBlockCanonizer, MonaiResNetBottleneckCanonizer):
            if canonizer_type.block_type() in present:
                canonizers.append(canonizer_type())
    return canonizers
