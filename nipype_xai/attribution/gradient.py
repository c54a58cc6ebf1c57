"""Gradient-based methods computed from shared passes (hand-written: this *is* the shared-pass
machinery; captum and zennit compute each method from its own passes).

- gradient family: ∂y_t/∂x, |∂y_t/∂x| (saliency; Simonyan et al. 2014) and x·∂y_t/∂x
  (input × gradient; Shrikumar et al. 2016) from one backward pass.
- SmoothGrad family: the mean (SmoothGrad; Smilkov et al. 2017), mean of squares (SmoothGrad²;
  Hooker et al. 2019, ROAR) and variance (VarGrad; Adebayo et al. 2018) of the gradients of the
  same noisy copies.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from .model_state import forward, target_output
from .noise import noisy_batches
from .registry import register_family

_AUTOGRAD = "torch.autograd"


def input_gradient(
    model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor]
) -> torch.Tensor:
    """∂y_t/∂x for one batch (one forward and one backward pass)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = target_output(forward(model, x), target)
        (gradient,) = torch.autograd.grad(y.sum(), x)
    return gradient


@register_family(
    "gradient",
    {
        "gradient": {"description": "∂y_t/∂x", "reference": _AUTOGRAD},
        "saliency": {"description": "|∂y_t/∂x| (Simonyan et al. 2014)", "reference": _AUTOGRAD},
        "input_x_gradient": {"description": "x · ∂y_t/∂x", "reference": _AUTOGRAD},
    },
    defaults={"batch_size": 16},
)
def gradient_family(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    names: Iterable[str],
    *,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        chunk_target = None if target is None else target[start:stop]
        chunks.append(input_gradient(model, x[start:stop], chunk_target))
    gradient = torch.cat(chunks)
    maps = {"gradient": gradient, "saliency": gradient.abs(), "input_x_gradient": x * gradient}
    return {name: maps[name] for name in names}


@register_family(
    "smoothgrad",
    {
        "smoothgrad": {
            "description": "mean of ∂y_t/∂x over noisy copies x + N(0, σ²) (Smilkov et al. 2017)",
            "reference": "captum NoiseTunnel(Saliency, nt_type='smoothgrad')",
        },
        "smoothgrad_sq": {
            "description": "mean of squared noisy gradients (Hooker et al. 2019)",
            "reference": "captum NoiseTunnel(Saliency, nt_type='smoothgrad_sq')",
        },
        "vargrad": {
            "description": "variance of noisy gradients (Adebayo et al. 2018)",
            "reference": "captum NoiseTunnel(Saliency, nt_type='vargrad')",
        },
    },
    defaults={"n_samples": 50, "noise_level": 0.1, "seed": 0, "batch_size": 16},
    stochastic=True,
)
def smoothgrad_family(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    names: Iterable[str],
    *,
    n_samples: int,
    noise_level: float,
    seed: int,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    names = list(names)
    # float64 accumulators: VarGrad = E[g²] − E[g]² cancels badly in float32.
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total) if ("smoothgrad_sq" in names or "vargrad" in names) else None
    for index, noisy in noisy_batches(x, n_samples, noise_level, seed, batch_size):
        chunk_target = None if target is None else target[index]
        gradient = input_gradient(model, noisy, chunk_target).to(torch.float64)
        total.index_add_(0, index, gradient)
        if total_sq is not None:
            total_sq.index_add_(0, index, gradient * gradient)
    mean = total / n_samples
    maps = {}
    if "smoothgrad" in names:
        maps["smoothgrad"] = mean.to(x.dtype)
    if total_sq is not None:
        mean_sq = total_sq / n_samples
        maps["smoothgrad_sq"] = mean_sq.to(x.dtype)
        maps["vargrad"] = (mean_sq - mean * mean).clamp_min(0).to(x.dtype)
    return {name: maps[name] for name in names}
