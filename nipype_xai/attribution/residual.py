"""MONAI 3D ResNet blocks canonized for LRP: the residual addition through zennit's ``Sum`` layer.

Left as a plain ``+=``, the gradient copies the full relevance into *both* branches; through
``Sum``, the composite's rule for it splits the relevance between them: zennit's ``Norm`` in
proportion to their contributions (as ``zennit.torchvision`` does for torchvision's 2D ResNets),
the z⁺ composites in proportion to their positive parts
(:class:`nipype_xai.attribution.propagation.PositiveNorm`). Part of the canonizers of
:mod:`nipype_xai.attribution.canonizers`, which chooses them (:func:`canonizers_for`); a module of
its own because it follows MONAI's classes, not the model's data flow.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer
from zennit.layer import Sum

__all__ = [
    "MonaiResNetBlockCanonizer",
    "MonaiResNetBottleneckCanonizer",
    "monai_residual_block_types",
    "monai_resnet_type",
]


def monai_residual_block_types() -> tuple[type, ...]:
    """MONAI's ``ResNetBlock`` and ``ResNetBottleneck`` classes (empty without MONAI)."""
    try:
        from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
    except ImportError:
        return ()
    return (ResNetBlock, ResNetBottleneck)


def monai_resnet_type() -> Optional[type]:
    """MONAI's ``ResNet`` class (None without MONAI)."""
    try:
        from monai.networks.nets.resnet import ResNet
    except ImportError:
        return None
    return ResNet


class _SumResidualCanonizer(AttributeCanonizer):
    """Overload ``forward`` of one block type so the residual addition is a ``Sum`` module."""

    block_type_name: str = ""
    block_forward: Callable[..., torch.Tensor]

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def block_type(cls) -> Optional[type]:
        """The MONAI block class this canonizer rewrites (None when MONAI is not installed)."""
        types = {t.__name__: t for t in monai_residual_block_types()}
        return types.get(cls.block_type_name)

    def _attribute_map(self, name: str, module: nn.Module) -> Optional[dict]:
        block_type = self.block_type()
        # Exact type: a subclass may have changed forward, which this canonizer would undo.
        if block_type is not None and type(module) is block_type:
            return {"forward": self.block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> "_SumResidualCanonizer":
        return self.__class__()


def _residual_sum(block: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The end of MONAI's block ``forward``: ``act(out + shortcut(x))``, the addition as ``Sum``
    (the shortcut is ``downsample`` when the block has one, else the identity)."""
    residual = x if block.downsample is None else block.downsample(x)
    return block.act(block.canonizer_sum(torch.stack([residual, out], dim=-1)))


class MonaiResNetBlockCanonizer(_SumResidualCanonizer):
    """``monai.networks.nets.resnet.ResNetBlock`` (basic block) with its addition as ``Sum``."""

    block_type_name = "ResNetBlock"

    @staticmethod
    def block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return _residual_sum(self, x, self.bn2(self.conv2(out)))


class MonaiResNetBottleneckCanonizer(_SumResidualCanonizer):
    """``monai.networks.nets.resnet.ResNetBottleneck`` with its addition as ``Sum``."""

    block_type_name = "ResNetBottleneck"

    @staticmethod
    def block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        return _residual_sum(self, x, self.bn3(self.conv3(out)))
