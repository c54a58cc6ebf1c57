"""Model-free baselines an attribution method must beat (SPEC §3), registered with kind
``"baseline"``.

Following Adebayo et al. 2018, *Sanity Checks for Saliency Maps* (NeurIPS), a method is compared
with maps that ignore the model: ``sobel`` and ``laplace`` edge filters of the input, and
``random`` noise. Each is ``fn(x, **params)``: a (B, C, X, Y, Z) tensor in, a map of the same
shape, dtype and device out (a ``ValueError`` for anything else), so the metrics score it exactly
like a method. The filters run per (X, Y, Z) volume with scipy.ndimage, edges reflected.

The other kind of baseline, any method run on a weight-randomised copy of the model, is named
``random_model_<method>`` (:data:`RANDOM_MODEL`; the copy comes from
:func:`nipype_xai.metrics.baselines.randomize_model`). :func:`is_baseline` knows both.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .registry import register_baseline, registered_methods

__all__ = [
    "RANDOM_MODEL",
    "available_baselines",
    "is_baseline",
    "laplace",
    "random_map",
    "sobel",
]

#: Part of the name of every map computed on a weight-randomised model (``random_model_<method>``).
RANDOM_MODEL = "random_model"

# The 3D Sobel kernel is a central difference [-1, 0, 1] times the smoothing [1, 2, 1] along each
# other axis, so a unit-slope ramp gives 2 * 4 * 4: dividing by it makes the map a gradient
# magnitude in intensity units per voxel.
_SOBEL_GAIN = 32.0
_ADEBAYO = "Adebayo et al. (2018). Sanity checks for saliency maps. NeurIPS."


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"expected a (B, C, X, Y, Z) tensor, got {shape}")


def _per_volume(x: torch.Tensor, filter_volume: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply a numpy filter to every (X, Y, Z) volume of ``x``; result on x's device and dtype."""
    _check_batch(x)
    volumes = x.detach().to("cpu", torch.float64).numpy()
    out = np.empty_like(volumes)
    for b in range(volumes.shape[0]):
        for c in range(volumes.shape[1]):
            out[b, c] = filter_volume(volumes[b, c])
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def _sobel_magnitude(volume: np.ndarray) -> np.ndarray:
    squared = sum(ndimage.sobel(volume, axis=axis) ** 2 for axis in range(3))
    return np.sqrt(squared) / _SOBEL_GAIN


@register_baseline(
    "sobel",
    row=1,
    description=(
        "3D Sobel gradient magnitude of the model input (an edge map that ignores the model)"
    ),
    reference=f"scipy.ndimage.sobel; {_ADEBAYO}",
)
def sobel(x: torch.Tensor) -> torch.Tensor:
    """3D Sobel gradient magnitude of the input, ``sqrt(sum_axis sobel_axis(x)^2) / 32``: an edge
    map that knows nothing of the model. The 1/32 makes a ramp of slope g map to g."""
    return _per_volume(x, _sobel_magnitude)


@register_baseline(
    "laplace",
    row=2,
    description="discrete Laplacian of the model input (an edge map that ignores the model)",
    reference=f"scipy.ndimage.laplace; {_ADEBAYO}",
)
def laplace(x: torch.Tensor) -> torch.Tensor:
    """Discrete Laplacian of the input, signed: the sum of the second differences along the
    three axes."""
    return _per_volume(x, ndimage.laplace)


@register_baseline(
    "random",
    row=3,
    description="standard normal noise (the chance level of every metric)",
    reference=f"torch.randn; {_ADEBAYO}",
)
def random_map(x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Standard normal noise of the shape of ``x`` (only its shape, dtype and device are used):
    the chance level of every metric.

    ``seed`` seeds a private CPU generator: the same seed gives the same map on every device, and
    the global torch RNG is left untouched.
    """
    _check_batch(x)
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(tuple(x.shape), generator=generator, dtype=torch.float64)
    return noise.to(device=x.device, dtype=x.dtype)


def available_baselines() -> list[str]:
    """Names of the model-free baselines, in the SPEC §3 order (sobel, laplace, random)."""
    return [baseline.name for baseline in registered_methods("baseline")]


def is_baseline(name: str) -> bool:
    """True for a baseline's map: a model-free baseline (:func:`available_baselines`) or a method
    run on a weight-randomised model (a name containing :data:`RANDOM_MODEL`)."""
    return name in available_baselines() or RANDOM_MODEL in name
