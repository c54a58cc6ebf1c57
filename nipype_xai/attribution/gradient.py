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
        "gradient": {"row": 1, "description": "∂y_t/∂x", "reference": _AUTOGRAD},
        "saliency": {"row": 2, "description": "|∂y_t/∂x| (Simonyan et al. 2014)",
                     "reference": _AUTOGRAD},
        "input_x_gradient": {"row": 3, "description": "x · ∂y_t/∂x", "reference": _AUTOGRAD},
    },
)
def gradient_family(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    names: Iterable[str],
    *,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        chunk_target = None if target is None else target[start:stop]
        chunks.append(input_gradient(model, x[start:stop], chunk_target))
    return gradient_maps(x, torch.cat(chunks), names)


def gradient_maps(x: torch.Tensor, gradient: torch.Tensor, names: Iterable[str]
                  ) -> dict[str, torch.Tensor]:
    """The gradient family's maps from ∂y_t/∂x (computed here or in a shared pass)."""
    maps = {"gradient": lambda: gradient, "saliency": gradient.abs,
            "input_x_gradient": lambda: x * gradient}
    return {name: maps[name]() for name in names}


@register_family(
    "smoothgrad",
    {
        "smoothgrad": {
            "row": 4,
            "description": "mean of ∂y_t/∂x over noisy copies x + N(0, σ²) (Smilkov et al. 2017)",
            "reference": "captum NoiseTunnel(Saliency, nt_type='smoothgrad')",
        },
        "smoothgrad_sq": {
            "row": 5,
            "description": "mean of squared noisy gradients (Hooker et al. 2019)",
            "reference": "captum NoiseTunnel(Saliency, nt_type='smoothgrad_sq')",
        },
        "vargrad": {
            "row": 6,
            "description": "variance of noisy gradients (Adebayo et al. 2018)",
            "reference": "captum NoiseTunnel(Saliency, nt_type='vargrad')",
        },
    },
    stochastic=True,
    internal=("with_clean_gradient",),
)
def smoothgrad_family(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    names: Iterable[str],
    *,
    n_samples: int = 50,
    noise_level: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
    with_clean_gradient: bool = False,
) -> dict[str, torch.Tensor]:
    """The SmoothGrad family; with ``with_clean_gradient`` (the engine's fused path, used when
    the gradient family is requested too) the noise-free ∂y_t/∂x of ``x`` rides in the first
    noisy batch and comes back as ``"clean_gradient"``: one batch fewer than two separate calls,
    whose extra batch would hold only ``len(x)`` copies."""
    names = list(names)
    # float64 accumulators: VarGrad = E[g²] − E[g]² cancels badly in float32.
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total) if ("smoothgrad_sq" in names or "vargrad" in names) else None
    n_clean = x.shape[0] if with_clean_gradient else 0
    if n_clean >= batch_size:
        raise ValueError(f"with_clean_gradient needs batch_size > len(x) = {n_clean}")
    clean = None
    batches = noisy_batches(x, n_samples, noise_level, seed, batch_size,
                            first_batch_size=batch_size - n_clean)
    for index, noisy in batches:
        chunk_target = None if target is None else target[index]
        if clean is None and n_clean:
            both = None if target is None else torch.cat([target, chunk_target])
            gradient = input_gradient(model, torch.cat([x, noisy]), both)
            clean, gradient = gradient[:n_clean], gradient[n_clean:]
        else:
            gradient = input_gradient(model, noisy, chunk_target)
        gradient = gradient.to(torch.float64)
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
    out = {name: maps[name] for name in names}
    if clean is not None:
        out["clean_gradient"] = clean
    return out
