"""Reference 3D CNNs: a tiny one for tests and demos, and SFCN for brain-age style models.

Both are written so that every attribution method works on them unchanged: ReLUs are ``nn.ReLU``
modules (not ``F.relu``), so guided backprop / deconvnet and zennit's rules can hook them, and no
operation is in-place, because captum's DeepLift and zennit's hooks need each module's input and
output as distinct tensors.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["SFCN", "MonaiResNet", "TinyCNN3D"]


class TinyCNN3D(nn.Module):
    """A small 3D CNN: ``n_blocks`` × (Conv3d 3³ → BatchNorm3d → ReLU → MaxPool3d 2) → global average
    pool → Linear.

    Big enough to learn a synthetic lesion task in seconds on a CPU, small enough (a few thousand
    parameters) to ship its weights in the package. Works on any input of at least ``2**n_blocks``
    voxels per axis (12³ and up with the default three blocks).

    Parameters
    ----------
    in_channels
        Number of input channels (1 for a T1w volume).
    n_outputs
        Number of outputs: classes (logits) or regression targets.
    width
        Channels of the first block; each later block doubles it.
    n_blocks
        Number of conv blocks.
    pooling
        Global pooling before the classifier: ``"avg"`` (the usual whole-image summary) or
        ``"max"`` (a detector: the strongest local response anywhere decides, the right prior for
        "is there a lesion", where a few lesion voxels would be averaged away among ~10^5 others)
        or ``"none"`` (the feature grid is flattened into the classifier: each place has its own
        weights, so the model can know *where* a response is, e.g. that a dark blob is expected
        at the ventricles but not in deep white matter; needs ``input_shape``).
    input_shape
        ``(X, Y, Z)`` of the inputs, for ``pooling="none"``.
    dropout
        Dropout probability before the classifier (inactive in eval mode, where attribution runs).

    Examples
    --------
    >>> model = TinyCNN3D(n_outputs=2)
    >>> model(torch.zeros(3, 1, 16, 16, 16)).shape
    torch.Size([3, 2])
    """

    def __init__(self, in_channels: int = 1, n_outputs: int = 2, width: int = 8, n_blocks: int = 3,
                 pooling: str = "avg", input_shape: Optional[Sequence[int]] = None,
                 dropout: float = 0.0):
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
        if pooling not in ("avg", "max", "none"):
            raise ValueError(f"pooling must be 'avg', 'max' or 'none', got {pooling!r}")
        if pooling == "none" and (input_shape is None or len(input_shape) != 3):
            raise ValueError("pooling='none' needs the input_shape (X, Y, Z) the model is built for")
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(n_blocks):
            out_channels = width * 2**block
            layers += [
                nn.Conv3d(channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(),
                nn.MaxPool3d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        if pooling == "none":
            # Each max-pool halves an axis (rounding down): the feature grid the classifier reads.
            grid = [int(n) // 2**n_blocks for n in input_shape]
            if min(grid) < 1:
                raise ValueError(f"input_shape {tuple(input_shape)} is too small for {n_blocks} "
                                 f"blocks (at least {2**n_blocks} voxels per axis)")
            self.pool = nn.Flatten(1)
            features = channels * grid[0] * grid[1] * grid[2]
        else:
            self.pool = nn.AdaptiveAvgPool3d(1) if pooling == "avg" else nn.AdaptiveMaxPool3d(1)
            features = channels
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, X, Y, Z) to (B, n_outputs) raw outputs (logits for a classifier)."""
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class SFCN(nn.Module):
    """Simple Fully Convolutional Network for brain MRI (Peng et al. 2021).

    Peng H, Gong W, Beckmann CF, Vedaldi A, Smith SM. "Accurate brain age prediction with
    lightweight deep neural networks." Medical Image Analysis 68:101871 (2021).

    The published layer plan, ``channel_number = [32, 64, 128, 256, 256, 64]``: blocks 1–5 are
    Conv3d 3³ (padding 1) → BatchNorm3d → MaxPool3d 2 → ReLU, block 6 is Conv3d 1³ → BatchNorm3d →
    ReLU; the classifier averages over the remaining grid, applies dropout (0.5) and a Conv3d 1³ to
    ``n_outputs`` channels. Module names follow the authors' code (``feature_extractor.conv_<i>``,
    ``classifier.conv_6``) so their released state dict (with the ``module.`` prefix of
    ``DataParallel`` removed) loads as is.

    Parameters
    ----------
    channel_number
        Output channels of each block; the last block uses a 1³ convolution and no pooling.
    n_outputs
        Output channels of the classifier: 40 one-year age bins in the paper (the default), or the
        number of classes / regression targets.
    in_channels
        Input channels (1 for a T1w volume).
    dropout
        Dropout probability before the last convolution (the paper uses 0.5); ``0`` or ``False``
        removes it. Dropout is inactive in eval mode, the mode every attribution runs in.

    Notes
    -----
    The paper averages over a fixed 5×6×5 window, the size of the feature grid for its
    160×192×160 input at 1 mm. ``AdaptiveAvgPool3d(1)`` computes exactly that on that input and also
    works on any other size, e.g. 2 mm inputs. Each of the five poolings halves the grid, so the
    input needs at least 32 voxels per axis.

    The original ``forward`` ends in ``log_softmax``. This one returns the raw outputs (logits):
    attributions are taken with respect to a class score, and explaining a log-probability would mix
    in every other class through the normaliser, which is not what gradient × input, LRP or Grad-CAM
    users expect; a softmax can always be applied afterwards (the inference interface does).

    Examples
    --------
    >>> SFCN(n_outputs=2).eval()(torch.zeros(1, 1, 32, 32, 32)).shape
    torch.Size([1, 2])
    """

    def __init__(
        self,
        channel_number: Sequence[int] = (32, 64, 128, 256, 256, 64),
        n_outputs: int = 40,
        in_channels: int = 1,
        dropout: Union[float, bool] = 0.5,
    ):
        super().__init__()
        channel_number = [int(c) for c in channel_number]
        if len(channel_number) < 2:
            raise ValueError(f"channel_number needs at least two blocks, got {channel_number}")
        self.feature_extractor = nn.Sequential()
        n_layer = len(channel_number)
        previous = in_channels
        for i, channels in enumerate(channel_number):
            last = i == n_layer - 1
            self.feature_extractor.add_module(
                f"conv_{i}", self._conv_layer(previous, channels, maxpool=not last)
            )
            previous = channels

        if dropout is True:
            dropout = 0.5
        self.classifier = nn.Sequential()
        self.classifier.add_module("average_pool", nn.AdaptiveAvgPool3d(1))
        if dropout:
            self.classifier.add_module("dropout", nn.Dropout(float(dropout)))
        self.classifier.add_module(
            f"conv_{n_layer}", nn.Conv3d(previous, n_outputs, kernel_size=1, padding=0)
        )

    @staticmethod
    def _conv_layer(in_channels: int, out_channels: int, maxpool: bool) -> nn.Sequential:
        if maxpool:
            # Pooling before the ReLU, as published; both orders give the same values (max and
            # ReLU commute) but the order fixes the module indices of the released weights.
            return nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm3d(out_channels),
                nn.MaxPool3d(2, stride=2),
                nn.ReLU(),
            )
        return nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=1, padding=0),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, X, Y, Z) to (B, n_outputs) logits (no log-softmax, see the class notes)."""
        return torch.flatten(self.classifier(self.feature_extractor(x)), 1)


class MonaiResNet(nn.Module):
    """MONAI's 3D ``ResNet`` with a choice of global pooling (average, as MONAI, or max).

    MONAI's ``ResNet`` always ends in global *average* pooling. For lesion detection that is the
    wrong prior on a CPU budget: a few lesion voxels are averaged with ~10^5 others and small
    networks stay at chance for tens of epochs (the same finding as :class:`TinyCNN3D`'s
    ``pooling="avg"``). This wrapper builds MONAI's network unchanged and, with ``pooling="max"``,
    swaps its ``avgpool`` for :class:`torch.nn.AdaptiveMaxPool3d`, which has no weights, so the state
    dict is MONAI's (under the ``net.`` prefix). Written here because MONAI has no option for it.

    Parameters
    ----------
    pooling
        ``"avg"`` (MONAI's own) or ``"max"``.
    **kwargs
        Arguments of ``monai.networks.nets.ResNet`` (``block``, ``layers``, ``block_inplanes``,
        ``spatial_dims``, ``n_input_channels``, ``conv1_t_size``, ``conv1_t_stride``,
        ``no_max_pool``, ``num_classes``, ``act``, ...). Pass ``act=("relu", {"inplace": False})``:
        hook-based methods (guided backprop, DeepLift, LRP) need each module's input and output as
        distinct tensors.

    Examples
    --------
    >>> net = MonaiResNet(pooling="max", block="basic", layers=[1, 1, 1, 1],
    ...                   block_inplanes=[2, 4, 4, 8],
    ...                   spatial_dims=3, n_input_channels=1, num_classes=2,
    ...                   act=("relu", {"inplace": False}))
    >>> net.eval()(torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 2])
    """

    def __init__(self, pooling: str = "max", **kwargs):
        super().__init__()
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        try:
            from monai.networks.nets import ResNet
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("MonaiResNet needs MONAI: pip install monai") from error
        self.net = ResNet(**kwargs)
        if pooling == "max":
            self.net.avgpool = nn.AdaptiveMaxPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, X, Y, Z) to (B, num_classes) raw outputs (logits for a classifier)."""
        return self.net(x)
