"""Baselines an attribution method must beat (SPEC §3).

Two kinds, following Adebayo et al. 2018, *Sanity Checks for Saliency Maps* (NeurIPS):

* maps that ignore the model: ``sobel`` and ``laplace`` edge filters of the input, and ``random``
  noise. They share the signature of an attribution map (a (B, C, X, Y, Z) tensor in, the same
  shape out), so they go through the metrics exactly like a method;
* a model whose weights were re-initialised (:func:`randomize_model`): any method run on it shows
  what the method produces when the model has learned nothing.
"""

from __future__ import annotations

import copy
import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

# The 3D Sobel kernel is a central difference [-1, 0, 1] times the smoothing [1, 2, 1] along each
# other axis, so a unit-slope ramp gives 2 * 4 * 4: dividing by it makes the map a gradient
# magnitude in intensity units per voxel.
_SOBEL_GAIN = 32.0


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


def sobel(x: torch.Tensor) -> torch.Tensor:
    """3D Sobel gradient magnitude of the input: an edge map that knows nothing of the model.

    Parameters
    ----------
    x
        Input batch (B, C, X, Y, Z).

    Returns
    -------
    torch.Tensor
        ``sqrt(sum_axis sobel_axis(x)^2) / 32`` per volume (scipy.ndimage.sobel, edges reflected),
        same shape, dtype and device as ``x``. The 1/32 makes a ramp of slope g map to g.
    """

    def magnitude(volume: np.ndarray) -> np.ndarray:
        squared = sum(ndimage.sobel(volume, axis=axis) ** 2 for axis in range(3))
        return np.sqrt(squared) / _SOBEL_GAIN

    return _per_volume(x, magnitude)


def laplace(x: torch.Tensor) -> torch.Tensor:
    """Discrete Laplacian of the input (scipy.ndimage.laplace, edges reflected), signed.

    Parameters
    ----------
    x
        Input batch (B, C, X, Y, Z).

    Returns
    -------
    torch.Tensor
        Sum of the second differences along the three axes, same shape, dtype and device as ``x``.
    """
    return _per_volume(x, ndimage.laplace)


def random(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Standard normal noise of the shape of ``x``: the chance level of every metric.

    Parameters
    ----------
    x
        Input batch (B, C, X, Y, Z); only its shape, dtype and device are used.
    seed
        Seed of a private CPU generator: the same seed gives the same map on every device, and the
        global torch RNG is left untouched.

    Returns
    -------
    torch.Tensor
        Noise, same shape, dtype and device as ``x``.
    """
    _check_batch(x)
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(tuple(x.shape), generator=generator, dtype=torch.float64)
    return noise.to(device=x.device, dtype=x.dtype)


#: The model-free baselines by name, each ``fn(x, **params) -> map``.
BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "sobel": sobel,
    "laplace": laplace,
    "random": random,
}


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, in registration order.

    These are the units of model randomisation. For networks built as their forward pass runs
    (``nn.Sequential``, MONAI's nets) registration order is forward order; see
    :func:`nipype_xai.metrics.sanity.forward_order` where it is not.

    Parameters
    ----------
    model
        Any module; the root module's own parameters, if any, count under the name ``""``.
    """
    return [
        name
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]


def _layer_seed(seed: int, name: str) -> int:
    # crc32, not hash(): Python salts str hashes per process, and the weights must be reproducible.
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63)


def _reinitialize(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        # The layer's own initialiser (Kaiming-uniform for Conv/Linear; batch norm back to its
        # identity affine with reset running statistics): the weights of an untrained model.
        module.reset_parameters()
        return
    with torch.no_grad():
        # No initialiser of its own (custom modules): redraw each parameter from a normal with
        # its own mean and std, which keeps its scale but destroys what was learned.
        for parameter in module.parameters(recurse=False):
            std = float(parameter.std()) if parameter.numel() > 1 else 1.0
            parameter.normal_(float(parameter.mean()), std if std > 0 else 1.0)


def randomize_model(
    model: nn.Module,
    seed: int = 0,
    cascade_from: Optional[str] = None,
    *,
    layers: Optional[Sequence[str]] = None,
) -> nn.Module:
    """A copy of ``model`` with re-initialised weights (Adebayo et al. 2018's model randomisation).

    Parameters
    ----------
    model
        The trained model; never modified.
    seed
        Each layer is re-initialised under ``torch.manual_seed`` of a seed derived from ``seed``
        and the layer's name, inside ``torch.random.fork_rng`` so the caller's RNG state is left
        as it was. A layer therefore gets the same random weights whichever other layers are
        randomised with it, so the steps of a cascade differ by one layer only.
    cascade_from
        None: randomise every layer with parameters. A layer name (see
        :func:`parameter_layers`): that layer and every layer registered after it -- cascading
        randomisation from the top of the network down to ``cascade_from``.
    layers
        Exactly these layers instead (e.g. one layer for independent randomisation, or a cascade
        in forward order). Not combined with ``cascade_from``.

    Returns
    -------
    nn.Module
        A deep copy, in the same training mode and on the same device as ``model``.

    Raises
    ------
    ValueError
        An unknown layer name, or both ``cascade_from`` and ``layers``.
    """
    names = parameter_layers(model)
    if cascade_from is not None and layers is not None:
        raise ValueError("give cascade_from or layers, not both")
    if layers is not None:
        chosen = list(layers)
    elif cascade_from is not None:
        if cascade_from not in names:
            raise ValueError(
                f"cascade_from={cascade_from!r} is not a layer with parameters; "
                f"layers: {names}"
            )
        chosen = names[names.index(cascade_from):]
    else:
        chosen = names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise ValueError(f"not layers with parameters: {unknown}; layers: {names}")

    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    cuda_devices = sorted(
        {p.device.index or 0 for p in randomized.parameters() if p.device.type == "cuda"}
    )
    for name in chosen:
        # fork_rng restores the CPU (and the model's CUDA) RNG state afterwards.
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(_layer_seed(seed, name))
            _reinitialize(modules[name])
    return randomized
