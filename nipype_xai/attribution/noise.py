"""Noisy copies of an input batch, generated in a fixed order so results do not depend on batching.

Shared by the SmoothGrad family and Smooth Grad-CAM++. The noise of copy ``s`` of sample ``b`` is
the ``s``-th volume of a generator seeded with ``seed`` at the start of sample ``b``; each copy is
drawn by its own call, so the stream, and hence the maps, are bit-identical whatever
``batch_size`` is (on CPU), and a sample's maps are the same in a batch of subjects as alone
(the participant level batches subjects per model node: ``--subjects-per-job``).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch


def noise_sigma(x: torch.Tensor, noise_level: float) -> torch.Tensor:
    """σ per sample: ``noise_level · (max(x) − min(x))`` (Smilkov et al. 2017, §3)."""
    flat = x.reshape(x.shape[0], -1)
    return noise_level * (flat.max(dim=1).values - flat.min(dim=1).values)


def chunk_sizes(total: int, batch_size: int, reserved: int = 0) -> list[int]:
    """Copies per pass for ``total`` copies in passes of at most ``batch_size``, balanced.

    ``reserved`` slots of the first pass hold other inputs (e.g. the clean input whose gradient
    rides along). Uses the fewest passes that fit ``total + reserved`` inputs and spreads the
    inputs as evenly as possible over them, so no pass is nearly empty.

    >>> chunk_sizes(16, 16, reserved=1)
    [8, 8]
    >>> chunk_sizes(50, 16, reserved=1)
    [12, 13, 13, 12]
    """
    if total < 1:
        return []
    if not 0 <= reserved < batch_size:
        raise ValueError(f"reserved must be in [0, batch_size), got {reserved} of {batch_size}")
    work = total + reserved
    n_passes = -(-work // batch_size)
    sizes = [work // n_passes + (1 if i < work % n_passes else 0) for i in range(n_passes)]
    sizes[0] -= reserved
    if sizes[0] < 1:  # the reserved inputs fill a balanced first pass: give it one copy
        return [1] + chunk_sizes(total - 1, batch_size) if total > 1 else [1]
    return sizes


def noisy_batches(
    x: torch.Tensor, n_samples: int, noise_level: float, seed: int, batch_size: int,
    first_batch_size: Optional[int] = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(sample_index, noisy_chunk)`` covering ``n_samples`` noisy copies of every sample.

    ``sample_index`` (LongTensor, one entry per copy) says which sample of ``x`` each copy of
    ``noisy_chunk`` comes from; chunks hold at most ``batch_size`` copies, the first at most
    ``first_batch_size`` (default ``batch_size``), e.g. to leave room for other inputs in the first
    forward pass. The noise of each copy does not depend on either size.

    The passes are balanced (:func:`chunk_sizes`): 17 copies in batches of 16 go as 9 + 8, not
    16 + 1, the same number of passes with no nearly empty one (on a 2-core CPU at the 2 mm grid,
    9 + 8 copies cost 1.04x one pass of 16 and 16 + 1 cost 1.09x).
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
    if first_batch_size is not None and first_batch_size < 1:
        raise ValueError(f"first_batch_size must be >= 1, got {first_batch_size}")
    total = x.shape[0] * n_samples
    reserved = batch_size - min(first_batch_size or batch_size, batch_size)
    bounds = [0]
    for size in chunk_sizes(total, batch_size, reserved):
        bounds.append(bounds[-1] + size)
    view = (-1,) + (1,) * (x.ndim - 1)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index = torch.arange(start, stop, device=x.device) // n_samples
        # Each copy's noise is drawn by its own call, straight into its slot of the chunk (the
        # same stream as one tensor per call, without a copy to stack them); the stream restarts
        # at every sample's first copy.
        noise = torch.empty((stop - start, *x.shape[1:]), device=x.device, dtype=x.dtype)
        for copy, slot in enumerate(noise, start=start):
            if copy % n_samples == 0:
                generator.manual_seed(int(seed))
            torch.randn(x.shape[1:], generator=generator, out=slot)
        yield index, x[index] + noise * sigma[index].reshape(view)
