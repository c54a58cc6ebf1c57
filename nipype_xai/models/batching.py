"""How many perturbed copies of an image one forward pass can hold on a GPU (SPEC §9: "batch
size chosen to fit memory, overridable").

:func:`copy_memory_bytes` measures what one copy costs on a model (its activations, recorded by
forward hooks on a batch of one, times :data:`BACKWARD_FACTOR`); :func:`fit_batch_size` divides
the free memory by it. :func:`gpu_batch_size` puts the two together for a CUDA device, with the
free memory from :func:`torch.cuda.mem_get_info`, and says nothing (``None``) on a CPU, where the
methods keep their own defaults.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..attribution.model_state import forward, model_guard
from ..attribution.precision import PRECISIONS, autocast

__all__ = ["BACKWARD_FACTOR", "MAX_BATCH_SIZE", "SAFETY", "copy_memory_bytes", "fit_batch_size",
           "gpu_batch_size"]

#: Peak memory of one copy's forward and backward pass, as a multiple of its forward
#: activations. Measured on CPU (no GPU here) as the slope of the peak RSS over batch sizes 4 and
#: 12 of the bundled TinyCNN3D on its 48x65x48 grid, against 19.8 MB of activations per copy:
#: gradcam 0.95x, plain gradient 1.0x, lrp_epsilon 1.5x (zennit's rules recompute each layer in
#: the backward pass), guided_backprop 1.74x. 2 covers the largest with 15 % to spare.
BACKWARD_FACTOR = 2.0

#: Share of the free memory a batch may take: the rest is left to the allocator's fragmentation,
#: cuDNN's workspaces and the method's own buffers (noise, baselines, running sums).
SAFETY = 0.8

#: The largest batch chosen: every default method draws at most 50 copies per image (n_samples,
#: n_steps), so 64 runs each of them in one pass; a larger batch would only hold memory.
MAX_BATCH_SIZE = 64


def fit_batch_size(per_copy_bytes: int, free_bytes: int, *, safety: float = SAFETY,
                   cap: int = MAX_BATCH_SIZE) -> int:
    """The largest batch of copies that fits in ``safety`` x ``free_bytes``, within 1..``cap``.

    Parameters
    ----------
    per_copy_bytes
        Memory one copy takes during a forward and backward pass (:func:`copy_memory_bytes`).
    free_bytes
        Free device memory.
    safety
        Share of ``free_bytes`` that may be used, in (0, 1].
    cap
        The largest batch returned.

    Returns
    -------
    int
        At least 1: a single copy is tried even where the estimate says it does not fit (the
        estimate has headroom; an out-of-memory error then names the real problem).

    Raises
    ------
    ValueError
        ``per_copy_bytes`` not positive, ``free_bytes`` negative, ``safety`` outside (0, 1] or
        ``cap`` below 1.
    """
    if per_copy_bytes <= 0:
        raise ValueError(f"per_copy_bytes must be positive, got {per_copy_bytes}")
    if free_bytes < 0:
        raise ValueError(f"free_bytes must not be negative, got {free_bytes}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    return max(1, min(int(cap), int(safety * free_bytes) // int(per_copy_bytes)))


def copy_memory_bytes(model: nn.Module, shape: Sequence[int], *, channels: int = 1,
                      precision: str = PRECISIONS[0], factor: float = BACKWARD_FACTOR) -> int:
    """Memory (bytes) one copy of a (``channels``, *``shape``) input takes on ``model``.

    The sum of every leaf module's output bytes in one forward pass of a batch of one, on the
    model's device and in ``precision`` (bf16 / fp16 activations take half of fp32's), times
    ``factor`` for the backward pass (:data:`BACKWARD_FACTOR`), plus the input and its gradient.
    The model is left as it was (:func:`~nipype_xai.attribution.model_state.model_guard`).
    """
    total = 0

    def record(_module, _inputs, output) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    leaves = [module for module in model.modules() if not any(module.children())]
    with model_guard(model) as device:
        x = torch.zeros((1, int(channels), *(int(n) for n in shape)), device=device)
        handles = [module.register_forward_hook(record) for module in leaves]
        try:
            with torch.no_grad(), autocast(precision, device):
                forward(model, x)
        finally:
            for handle in handles:
                handle.remove()
    return int(factor * total) + 2 * x.numel() * x.element_size()


def gpu_batch_size(model: nn.Module, shape: Sequence[int], *, channels: int = 1,
                   precision: str = PRECISIONS[0],
                   device: Union[str, torch.device, None] = None) -> Optional[int]:
    """The batch of copies that fits the free memory of the model's CUDA device; ``None`` on any
    other device (the methods keep their own ``batch_size``).

    ``device`` defaults to the model's; ``shape`` and ``channels`` are the model input's.
    """
    from ..attribution.model_state import model_device

    device = torch.device(device) if device is not None else model_device(model)
    if device.type != "cuda":
        return None
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return fit_batch_size(copy_memory_bytes(model, shape, channels=channels,
                                            precision=precision), free_bytes)
