"""What every method needs from the model: an untouched model, the target, the target's output.

The guard follows zennit's habit of attaching state only for the duration of a call: the model
comes back exactly as it was (training flag, ``requires_grad`` of every parameter, no hooks).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

TargetLike = Union[None, int, Sequence[int], torch.Tensor]


class TargetError(ValueError):
    """The requested target does not exist for this model's output."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _hook_count(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks)
        total += len(getattr(module, "_backward_pre_hooks", {}))
    return total


@contextmanager
def model_guard(model: nn.Module) -> Iterator[torch.device]:
    """Put ``model`` in eval mode without parameter gradients for the duration of a call.

    Yields the model's device. On exit the training flag and every parameter's
    ``requires_grad`` are restored; a hook left behind by an implementation is an error.
    """
    was_training = model.training
    parameters = list(model.parameters())
    requires_grad = [p.requires_grad for p in parameters]
    hooks_before = _hook_count(model)
    model.eval()
    for parameter in parameters:
        # Gradients w.r.t. the input only: parameter gradients would cost memory and time.
        parameter.requires_grad_(False)
    try:
        yield model_device(model)
    finally:
        for parameter, flag in zip(parameters, requires_grad):
            parameter.requires_grad_(flag)
        model.train(was_training)
    hooks_after = _hook_count(model)
    if hooks_after != hooks_before:
        raise RuntimeError(
            f"attribution left {hooks_after - hooks_before} hook(s) on the model; this is a bug"
        )


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model and return its output as a (B, K) tensor (K = 1 for a single output)."""
    output = model(x)
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"model returned {type(output).__name__}; expected a tensor")
    return output.reshape(output.shape[0], -1)


def resolve_target(
    model: nn.Module, x: torch.Tensor, target: TargetLike, batch_size: int = 16
) -> Optional[torch.Tensor]:
    """Turn ``target`` into one class index per sample, or ``None`` for a single-output model.

    ``None`` means the predicted class of each sample (argmax of the output). For a model with a
    single output (regression, or a sigmoid score) the target is ignored: the output is explained.
    """
    with torch.no_grad():
        outputs = [forward(model, chunk) for chunk in x.split(batch_size)]
    output = torch.cat(outputs)
    n_samples, n_outputs = output.shape
    if n_outputs == 1:
        return None
    if target is None:
        return output.argmax(dim=1)
    if isinstance(target, int) and not isinstance(target, bool):
        indices = torch.full((n_samples,), target, dtype=torch.long)
    else:
        indices = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        if indices.numel() == 1:
            indices = indices.expand(n_samples).clone()
        elif indices.numel() != n_samples:
            raise TargetError(
                f"got {indices.numel()} targets for a batch of {n_samples} samples"
            )
    bad = (indices < 0) | (indices >= n_outputs)
    if bool(bad.any()):
        raise TargetError(
            f"target {indices[bad].tolist()} out of range for a model with {n_outputs} outputs "
            f"(valid: 0..{n_outputs - 1})"
        )
    return indices.to(x.device)


def target_output(output: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """The explained scalar per sample, y_t, from a (B, K) model output."""
    output = output.reshape(output.shape[0], -1)
    if target is None:
        return output[:, 0]
    return output.gather(1, target.reshape(-1, 1).to(output.device))[:, 0]
