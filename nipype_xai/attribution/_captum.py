"""Shared plumbing of the methods computed through captum (:mod:`.path`, :mod:`.occlusion`,
:mod:`.surrogate`): captum's implementations, our 3D handling around them.

- ``batch_size`` bounds the rows of every forward pass: captum's ``internal_batch_size`` /
  ``perturbations_per_eval`` count copies *per sample*, so samples are processed in chunks small
  enough that chunk x copies <= batch_size.
- ``target=None`` (a single-output model) becomes captum's target 0, i.e. ``output[:, 0]``,
  exactly what :func:`~nipype_xai.attribution.model_state.target_output` explains.
- The stochastic methods draw from torch's global CPU generator (captum has no generator
  argument), so they run inside :func:`torch.random.fork_rng` seeded with ``seed``: reproducible,
  and the caller's global RNG state is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn

from .feature_masks import (
    FeatureMaskLike,
    GridLike,
    image_supervoxels,
    prepare_feature_mask,
    supervoxel_grid,
)
from .model_state import forward


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


def _forward_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    # captum selects the target column itself; giving it the (B, K) matrix (tuple outputs and
    # extra dimensions flattened by ``forward``) lets it expand targets over its copies.
    return lambda inputs: forward(model, inputs)


def _captum_target(target: Optional[torch.Tensor], rows: slice) -> Union[int, torch.Tensor]:
    # None means a single-output model: output[:, 0] is the explained score.
    return 0 if target is None else target[rows]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _chunks(n_samples: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n_samples, chunk):
        yield slice(start, min(start + chunk, n_samples))


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the duration of the block, restoring them afterwards."""
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    cuda = device.type == "cuda"
    index = None
    if cuda:
        index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        # Not torch.manual_seed: it would also reseed every CUDA device, outside the fork.
        torch.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield


def _attribute_in_chunks(
    explainer: Any,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    chunk: int,
    arguments: Callable[[slice], dict[str, Any]] = lambda rows: {},
    *,
    inputs: Callable[[torch.Tensor], torch.Tensor] = lambda chunk_x: chunk_x,
    seed: Optional[int] = None,
    baselines: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """captum's ``explainer.attribute``, ``chunk`` samples per call.

    ``arguments(rows)`` gives the call's other keyword arguments for the samples ``rows``;
    ``inputs`` prepares their slice of ``x`` (a clone where captum would otherwise write to or
    flag the caller's tensor). ``baselines``: a tensor of ``x``'s shape (its rows go with their
    samples), or None for captum's 0. With ``seed``, each call runs under :func:`_seeded`, so a
    chunk's draws do not depend on the chunks before it.
    """
    maps = []
    for rows in _chunks(x.shape[0], chunk):
        reference = 0.0 if baselines is None else baselines[rows]
        with nullcontext() if seed is None else _seeded(seed, x.device):
            maps.append(explainer.attribute(inputs(x[rows]), baselines=reference,
                                            target=_captum_target(target, rows),
                                            **arguments(rows)))
    return torch.cat(maps).detach()


def _copies_per_sample(batch_size: int, rows: slice) -> int:
    """captum's ``perturbations_per_eval`` (copies of each sample of the chunk ``rows`` per
    forward pass) keeping every pass within ``batch_size`` rows."""
    return max(1, batch_size // (rows.stop - rows.start))


def _mask_rows(masks: torch.Tensor, rows: slice) -> torch.Tensor:
    """The feature mask of the samples ``rows``: a per-sample mask's rows, or the shared one."""
    return masks[rows] if masks.shape[0] > 1 else masks


def _feature_masks(
    feature_mask: Optional[FeatureMaskLike], grid: Optional[GridLike], x: torch.Tensor,
    n_supervoxels: int,
) -> torch.Tensor:
    """The (1 or B, C, X, Y, Z) consecutive-label mask: the given parcellation; else cubes of
    ``grid`` voxels when a grid is asked for; else the image's SLIC supervoxels."""
    if feature_mask is not None:
        return prepare_feature_mask(feature_mask, x)
    if grid is not None:
        labels = supervoxel_grid(x.shape[2:], grid, device=x.device)
        return labels.expand(1, x.shape[1], *labels.shape).contiguous()
    n_supervoxels = _positive_int(n_supervoxels, "n_supervoxels")
    return prepare_feature_mask(image_supervoxels(x, n_supervoxels), x)
