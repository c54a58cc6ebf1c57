"""The simulator network of Liu, Adeli, Pohl and Zhao, "Going beyond saliency maps: training deep
models to interpret deep models" (IPMI 2021): a 3D U-Net that, given an image and a class the
classifier should see in it, predicts the stationary velocity field of a smooth diffeomorphic
deformation of the image.

The U-Net is MONAI's :class:`~monai.networks.nets.BasicUNet` (four 2x downsamplings, instance
norm, LeakyReLU). The requested class enters as constant one-hot channels beside the image, so one
network serves every target. Around it, two things make the field behave by construction:

* **bounded**: ``v = max_velocity * tanh(raw / max_velocity)``, so no voxel's velocity exceeds
  ``max_velocity_voxels`` however far training pushes the network (near 0 it is the identity);
* **smooth**: the network works on the image downsampled by ``downsample`` (area averaging; 2 by
  default, as VoxelMorph's half-resolution field), its velocity is upsampled trilinearly to the
  image's grid, and before that the bounded field is filtered by a fixed Gaussian (MONAI's
  :class:`~monai.networks.layers.GaussianFilter`, ``smoothing_voxels``), whose zero padding also
  holds the field near 0 at the grid's edge, where nothing should move.

Its exponential (scaling and squaring, :func:`~nipype_xai.counterfactual.deformation.
integrate_velocity`) is then a diffeomorphism, and the exponential of ``-v`` its inverse.

BasicUNet halves the grid four times, so the input is zero-padded (the background value of a
skull-stripped, ``mask="nonzero"`` normalised input) up to a multiple of 16 (one axis at least 32, so
that instance norm at the bottom sees more than one voxel); the output is cropped back.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DEFAULT_FEATURES", "Simulator"]

#: Channels of BasicUNet's five levels and of its last up-sampling block: a small network (about
#: 250 k parameters) that trains on a CPU in minutes on the 4 mm grid (working at half its
#: resolution).
DEFAULT_FEATURES = (8, 16, 16, 32, 32, 8)


class Simulator(nn.Module):
    """Image + requested class -> stationary velocity field, voxel units.

    Parameters
    ----------
    n_classes
        Classes the classifier distinguishes (2 for a single-logit binary classifier).
    in_channels
        Image channels (the model spec's ``input.channels``).
    features
        BasicUNet features (six numbers).
    max_velocity_voxels
        Bound on the length of each velocity component, voxels.
    smoothing_voxels
        Standard deviation of the Gaussian applied to the velocity, voxels (0: none).
    """

    def __init__(self, n_classes: int = 2, in_channels: int = 1,
                 features: Sequence[int] = DEFAULT_FEATURES, max_velocity_voxels: float = 3.0,
                 smoothing_voxels: float = 1.0, downsample: int = 2):
        super().__init__()
        from monai.networks.layers import GaussianFilter
        from monai.networks.nets import BasicUNet

        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if max_velocity_voxels <= 0:
            raise ValueError(f"max_velocity_voxels must be positive, got {max_velocity_voxels}")
        if int(downsample) < 1:
            raise ValueError(f"downsample must be a positive integer, got {downsample}")
        if smoothing_voxels < 0:
            raise ValueError(f"smoothing_voxels must be >= 0, got {smoothing_voxels}")
        self.n_classes = int(n_classes)
        self.in_channels = int(in_channels)
        self.max_velocity_voxels = float(max_velocity_voxels)
        self.smoothing_voxels = float(smoothing_voxels)
        self.downsample = int(downsample)
        self.unet = BasicUNet(spatial_dims=3, in_channels=self.in_channels + self.n_classes,
                              out_channels=3, features=tuple(int(f) for f in features))
        # As VoxelMorph initialises its flow layer: a near-zero field, so training starts from
        # the identity deformation (the image itself) and the classifier's own answer.
        with torch.no_grad():
            self.unet.final_conv.weight.normal_(0.0, 1e-5)
            self.unet.final_conv.bias.zero_()
        self.smooth = (GaussianFilter(3, self.smoothing_voxels, truncated=3.0)
                       if self.smoothing_voxels > 0 else nn.Identity())

    def class_channels(self, x: torch.Tensor, target: Union[int, Sequence[int], torch.Tensor]
                       ) -> torch.Tensor:
        """The requested class of each sample as constant one-hot channels ``(B, K, X, Y, Z)``."""
        target = torch.as_tensor(target, dtype=torch.int64, device=x.device).reshape(-1)
        if target.numel() == 1:
            target = target.expand(x.shape[0])
        if target.numel() != x.shape[0]:
            raise ValueError(f"target: expected one class per sample ({x.shape[0]}), got "
                             f"{target.numel()}")
        if bool((target < 0).any()) or bool((target >= self.n_classes).any()):
            raise ValueError(f"target: classes must lie in 0..{self.n_classes - 1}, got "
                             f"{target.tolist()}")
        onehot = F.one_hot(target, self.n_classes).to(x.dtype)
        return onehot[:, :, None, None, None].expand(-1, -1, *x.shape[2:])

    def forward(self, x: torch.Tensor, target: Union[int, Sequence[int], torch.Tensor]
                ) -> torch.Tensor:
        """Velocity ``(B, 3, X, Y, Z)`` in voxel units that moves ``x`` towards ``target``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected an input of shape (B, {self.in_channels}, X, Y, Z), got "
                             f"{tuple(x.shape)}")
        inputs = torch.cat([x, self.class_channels(x, target)], dim=1)
        full = tuple(x.shape[2:])
        if self.downsample > 1:
            coarse = tuple(max(2, math.ceil(n / self.downsample)) for n in full)
            inputs = F.interpolate(inputs, size=coarse, mode="area")
        size = inputs.shape[2:]
        padded = [16 * math.ceil(n / 16) for n in size]
        if max(padded) < 32:
            padded[0] = 32  # instance norm needs more than one voxel at the bottom
        pad: list[int] = []
        for n, m in zip(reversed(size), reversed(padded)):
            pad += [0, m - n]
        raw = self.unet(F.pad(inputs, pad))[:, :, :size[0], :size[1], :size[2]]
        bounded = self.max_velocity_voxels * torch.tanh(raw / self.max_velocity_voxels)
        velocity = self.smooth(bounded)
        if self.downsample > 1:
            # The field is smooth, so a coarse grid loses nothing (VoxelMorph integrates at half
            # resolution for the same reason); its values are already in full-grid voxels.
            velocity = F.interpolate(velocity, size=full, mode="trilinear", align_corners=True)
        return velocity
