"""Model randomisation (Adebayo et al. 2018, *Sanity Checks for Saliency Maps*, NeurIPS): a copy
of the model whose weights were re-initialised, for the sanity checks and the
``random_model_<method>`` baselines. Any method run on it shows what the method produces when the
model has learned nothing.

The model-free baselines (``sobel``, ``laplace``, ``random``) are maps, not metrics: they are
registered in the attribution registry, :mod:`nipype_xai.attribution.baselines`.
"""

from __future__ import annotations

import copy
import zlib
from typing import Optional, Sequence

import torch
from torch import nn


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
