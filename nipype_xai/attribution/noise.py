"""Noisy copies of an input batch, generated in a fixed order so results do not depend on batching.

Shared by the SmoothGrad family and Smooth Grad-CAM++. The noise of copy ``s`` of sample ``b`` is
drawn as the ``(b * n_samples + s)``-th volume of one generator seeded with ``seed``; each copy is
drawn by its own call, so the stream, and hence the maps, are bit-identical whatever
``batch_size`` is (on CPU).
"""

from __future__ import annotations

from typing import Iterator

import torch


def noise_sigma(x: torch.Tensor, noise_level: float) -> torch.Tensor:
    """σ per sample: ``noise_level · (max(x) − min(x))`` (Smilkov et al. 2017, §3)."""
    flat = x.reshape(x.shape[0], -1)
    return noise_level * (flat.max(dim=1).values - flat.min(dim=1).values)


def noisy_batches(
    x: torch.Tensor, n_samples: int, noise_level: float, seed: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(sample_index, noisy_chunk)`` covering ``n_samples`` noisy copies of every sample.

    ``sample_index`` (LongTensor, one entry per copy) says which sample of ``x`` each copy of
    ``noisy_chunk`` comes from; chunks hold at most ``batch_size`` copies.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sigma = noise_sigma(x, noise_level)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(int(seed))
    total = x.shape[0] * n_samples
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(start + batch_size, total), device=x.device) // n_samples
        noise = torch.stack(
            [
                torch.randn(x.shape[1:], generator=generator, device=x.device, dtype=x.dtype)
                for _ in range(index.numel())
            ]
        )
        view = (-1,) + (1,) * (x.ndim - 1)
        yield index, x[index] + noise * sigma[index].reshape(view)
