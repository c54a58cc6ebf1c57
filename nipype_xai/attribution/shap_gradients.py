"""Shapley-family gradient methods with a background set: GradientSHAP (expected gradients) and
DeepLIFT-SHAP.

Both explain ``x`` against a *background*, a set of reference inputs standing for "a typical
brain" (SHAP's background distribution): training images on the model grid, or a control group
(:mod:`nipype_xai.models.background` draws one from a cohort and writes it as a file). Their
maps sum, in expectation for GradientSHAP and exactly for DeepLIFT-SHAP, to
y_t(x) − mean_b y_t(b): the prediction's difference from the background's mean prediction
(SHAP's "efficiency").

- ``gradient_shap`` (Lundberg & Lee 2017; expected gradients, Erion et al. 2021): the mean over
  draws of (x − b) · ∂y_t/∂x at b + α (x − b), b drawn uniformly from the background and
  α ~ U(0, 1): a Monte-Carlo integrated gradients whose baseline is drawn too. Written here rather
  than run through captum's ``GradientShap``, which draws from numpy's and torch's global
  generators and puts every copy of a sample into one forward pass: here the draws come from one
  generator seeded with ``seed``, in a fixed order, so the map does not depend on ``batch_size``,
  and copies are batched like SmoothGrad's (:mod:`.noise`). The computation is captum's: the
  tests feed captum our draws and compare.
- ``deeplift_shap`` (captum ``DeepLiftShap``; Lundberg & Lee 2017): the mean over background
  samples of DeepLIFT with that sample as the reference. It runs OUR DeepLIFT (:mod:`.path`: its
  max-pooling rule, its prepared copy for MONAI networks), not captum's ``DeepLiftShap``, whose
  DeepLift misses summation-to-delta on max pooling; the map then sums to
  y_t(x) − mean_b y_t(b), checked, with an
  :class:`~nipype_xai.attribution.engine.AttributionWarning` where it fails, as ``deeplift``
  does.

Without a background (``background=None``) each sample is explained against its own blurred copy
(:func:`~nipype_xai.attribution.perturbation_baseline.perturbation_baseline`, sigma
:data:`~nipype_xai.attribution.perturbation_baseline.BLUR_SIGMA_VOXELS` voxels), a one-sample
background: it needs no cohort, and of the baselines measured on the bundled lesion model it is
the one that adds least evidence of its own (see that module; 0 in z-scored space is a dark
hole the model reads as a lesion). Noisy copies of it were not added: noise is structure no brain
has, so it would add evidence of its own, and it would make the deterministic DeepLIFT-SHAP
depend on a seed. A background from the model's cohort is what SHAP assumes; the fallback makes
the methods compute with their defaults alone (SPEC §3), and the sidecar says which was used.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Optional

import torch
from torch import nn

from ._captum import _positive_int
from .engine import AttributionWarning
from .gradient import input_gradient
from .model_state import forward, target_output
from .noise import chunk_sizes
from .path import (
    _ROUNDING,
    SUMMATION_TO_DELTA_RTOL,
    deeplift_attribute,
    deeplift_explainer,
    deeplift_failure_cause,
)
from .perturbation_baseline import BLUR_SIGMA_VOXELS, perturbation_baseline
from .registry import register_method

__all__ = ["BACKGROUND_FALLBACK", "background_set", "deeplift_shap", "gradient_shap"]

#: How a sidecar describes the background of a map computed without one (the fallback).
BACKGROUND_FALLBACK: dict = {
    "Source": None,
    "N": 1,
    "Description": (f"no background given: each image explained against its own Gaussian blur "
                    f"(sigma {BLUR_SIGMA_VOXELS:g} voxels)"),
}


def background_set(x: torch.Tensor, background: Optional[torch.Tensor]) -> torch.Tensor:
    """The background of every sample, (B, N, C, X, Y, Z): the given one, shared by all samples
    (a view, no copy), or each sample's blurred copy (N = 1) when ``background`` is None.

    Parameters
    ----------
    x
        Input batch (B, C, X, Y, Z).
    background
        (N, C, X, Y, Z) reference inputs on the model grid, normalised as model inputs; or None.

    Raises
    ------
    ValueError
        ``background`` is not a tensor of shape (N, C, X, Y, Z) with x's (C, X, Y, Z), is empty,
        or holds NaN or Inf values.
    """
    if background is None:
        return perturbation_baseline(x, "blur").unsqueeze(1)
    if not isinstance(background, torch.Tensor):
        raise ValueError(f"background: expected a tensor (N, C, X, Y, Z), got "
                         f"{type(background).__name__}")
    if background.ndim != 5 or tuple(background.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(
            f"background: expected shape (N, {', '.join(str(n) for n in x.shape[1:])}) (N "
            f"samples on the input's grid), got {tuple(background.shape)}")
    if background.shape[0] < 1:
        raise ValueError("background: holds no sample (N = 0)")
    background = background.detach().to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(background).all()):
        raise ValueError("background: contains NaN or Inf values")
    return background.unsqueeze(0).expand(x.shape[0], *background.shape)


def _gradient_shap_draws(
    x: torch.Tensor, n_background: int, n_samples: int, stdevs: float, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """``(sample, background index, α, noise or None)`` of every copy, in the order sample, draw.

    One generator, seeded with ``seed`` at the start of every sample; per sample, its
    ``n_samples`` background indices, then its ``n_samples`` α (float64, as captum's numpy
    draw), then its copies' noise one volume per call (only when ``stdevs`` > 0). The stream is
    the same however the copies are batched, and a sample's draws are those of a batch of one:
    its maps do not depend on the other samples (subjects batched per model node).
    """
    generator = torch.Generator(device=x.device)
    for sample in range(x.shape[0]):
        generator.manual_seed(seed)
        index = torch.tensor(sample, device=x.device)
        chosen = torch.randint(n_background, (n_samples,), generator=generator, device=x.device)
        alphas = torch.rand((n_samples,), generator=generator, dtype=torch.float64,
                            device=x.device)
        for draw in range(n_samples):
            noise = None
            if stdevs > 0:
                noise = torch.randn(x.shape[1:], generator=generator, device=x.device,
                                    dtype=x.dtype) * stdevs
            yield index, chosen[draw], alphas[draw], noise


def _rows_target(target: Optional[torch.Tensor], samples: torch.Tensor
                 ) -> Optional[torch.Tensor]:
    return None if target is None else target[samples]


@register_method(
    "gradient_shap",
    row=29,
    description=(
        "GradientSHAP / expected gradients: mean over n_samples draws of (x - b) · ∂y_t/∂x at "
        "b + α(x - b), b from the background (default: the blurred copy of x), α ~ U(0, 1); "
        "optional input noise stdevs (captum GradientShap)"
    ),
    reference=(
        "Lundberg & Lee (2017). A unified approach to interpreting model predictions. NeurIPS; "
        "Erion et al. (2021). Improving performance of deep learning models with axiomatic "
        "attribution priors and expected gradients. Nat Mach Intell."
    ),
    stochastic=True,
)
def gradient_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    background: Optional[torch.Tensor] = None,
    n_samples: int = 50,
    stdevs: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021).

    For each sample, ``n_samples`` draws of a background sample b (uniformly, with replacement,
    as captum) and α ~ U(0, 1); the map is the mean of (x' − b) · ∂y_t/∂x at b + α (x' − b),
    where x' = x + N(0, stdevs²) (captum's ``stdevs``; 0 by default, as captum's and SHAP's
    expected gradients: x' = x). Its sum per sample estimates y_t(x') − mean_b y_t(b)
    (completeness in expectation, SHAP's efficiency); the Monte-Carlo error shrinks as
    1/sqrt(n_samples).

    Parameters
    ----------
    model, x, target
        As every registered method (see :mod:`nipype_xai.attribution.registry`).
    background
        (N, C, X, Y, Z) reference inputs on the model grid, already normalised as model inputs
        (e.g. read by :func:`nipype_xai.models.background.load_background`); None: each sample's
        blurred copy (see the module docstring).
    n_samples
        Draws per sample: ``n_samples`` forward and backward passes of one copy.
    stdevs
        Standard deviation of the Gaussian noise added to x per draw, in model-input units
        (z-scored inputs: the image's standard deviation); 0: none.
    seed
        The draws (background index, α, noise) come from one generator seeded with it, in a
        fixed order (:func:`_gradient_shap_draws`): the map does not depend on ``batch_size``.
    batch_size
        Largest number of copies per forward pass.

    Returns
    -------
    torch.Tensor
        Map of x's shape.
    """
    n_samples = _positive_int(n_samples, "n_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(stdevs, bool) or not float(stdevs) >= 0:
        raise ValueError(f"stdevs must be a number >= 0, got {stdevs!r}")
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    backgrounds = background_set(x, background)
    view = (-1,) + (1,) * (x.ndim - 1)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    draws = _gradient_shap_draws(x, backgrounds.shape[1], n_samples, float(stdevs), int(seed))
    for size in chunk_sizes(x.shape[0] * n_samples, batch_size):
        samples, chosen, alphas, noise = (torch.stack(column) if column[0] is not None else None
                                          for column in zip(*(next(draws) for _ in range(size))))
        inputs = x[samples] if noise is None else x[samples] + noise
        references = backgrounds[samples, chosen]
        difference = inputs - references
        # captum's scaling: baseline + α (input − baseline), α cast to the input's dtype.
        points = references + alphas.to(x.dtype).reshape(view) * difference
        gradient = input_gradient(model, points, _rows_target(target, samples))
        total.index_add_(0, samples, (difference * gradient).to(torch.float64))
    return (total / n_samples).to(x.dtype)


@register_method(
    "deeplift_shap",
    row=30,
    description=(
        "DeepLIFT-SHAP: mean over the background samples b (default: the blurred copy of x) of "
        "DeepLIFT (rescale rule, our max-pooling rule) with b as the reference; sums to "
        "y_t(x) - mean_b y_t(b) (captum DeepLiftShap)"
    ),
    reference=(
        "Lundberg & Lee (2017). A unified approach to interpreting model predictions. NeurIPS; "
        "Shrikumar, Greenside & Kundaje (2017). Learning important features through "
        "propagating activation differences. ICML."
    ),
)
def deeplift_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    background: Optional[torch.Tensor] = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """DeepLIFT-SHAP (captum ``DeepLiftShap``): the mean of the DeepLIFT maps of x against every
    background sample.

    Each (sample, background sample) pair is one DeepLIFT map of :func:`~.path.deeplift`'s
    implementation (rescale rule, its max-pooling rule, its prepared copy of the model), so the
    mean map of a sample sums to y_t(x) − mean_b y_t(b) (summation-to-delta, averaged) wherever
    DeepLIFT's own sums hold. Cost: N DeepLIFT maps per sample, N the background's size; the
    check two forward passes per sample and one per background sample, without gradients.

    Parameters
    ----------
    model, x, target
        As every registered method.
    background
        (N, C, X, Y, Z) reference inputs on the model grid, already normalised as model inputs;
        None: each sample's blurred copy (see the module docstring).
    batch_size
        Largest number of rows per forward pass; captum runs each pair's input and reference
        together, so chunks hold ``batch_size // 2`` pairs (at least one).

    Returns
    -------
    torch.Tensor
        Map of x's shape.

    Warns
    -----
    AttributionWarning
        A sample whose map's sum misses y_t(x) − mean_b y_t(b) by more than
        :data:`~.path.SUMMATION_TO_DELTA_RTOL` of it (float32 rounding aside); the message
        names the nonlinear modules captum has no rule for, if any.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    backgrounds = background_set(x, background)
    n_background = backgrounds.shape[1]
    explainer = deeplift_explainer(model, x[:1])
    chunk = max(1, batch_size // 2)
    n_pairs = x.shape[0] * n_background
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    mass = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, n_pairs, chunk):
        pairs = torch.arange(start, min(start + chunk, n_pairs), device=x.device)
        samples = pairs // n_background
        maps = deeplift_attribute(
            explainer, x[samples], _rows_target(target, samples), chunk,
            baselines=backgrounds[samples, pairs % n_background],
        ).to(torch.float64)
        total.index_add_(0, samples, maps)
        mass.index_add_(0, samples, maps.abs().flatten(1).sum(1))
    mean = total / n_background
    _check_efficiency(model, x, target, backgrounds, background is None, mean,
                      mass / n_background, batch_size, deeplift_failure_cause(explainer))
    return mean.to(x.dtype)


def _check_efficiency(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    backgrounds: torch.Tensor,
    per_sample: bool,
    maps: torch.Tensor,
    mass: torch.Tensor,
    batch_size: int,
    cause: str,
) -> None:
    """Warn where a DeepLIFT-SHAP map does not sum to y_t(x) − mean_b y_t(b).

    The tolerance is :data:`~.path.SUMMATION_TO_DELTA_RTOL` of that difference plus float32
    rounding of the pair maps' sums (a share of their mean absolute mass, ``mass``), as
    :func:`~.path.deeplift`'s check. The background's outputs are computed once per distinct
    volume: once in all for a shared background.
    """

    def outputs(volumes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([forward(model, part) for part in volumes.split(batch_size)])

    y_x = target_output(outputs(x), target).double()
    if per_sample:  # (B, 1, ...): one reference per sample
        y_b = target_output(outputs(backgrounds[:, 0]), target).double()
    else:
        shared = outputs(backgrounds[0]).double()  # (N, K)
        columns = (torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if target is None
                   else target.to(x.device))
        y_b = shared[:, columns].mean(0)  # (B,): each sample's target column, averaged over N
    difference = y_x - y_b
    sums = maps.flatten(1).sum(1)
    failures = [
        (i, f"sum {float(sums[i]):.6g} vs y_t(x) - mean_b y_t(b) = {float(difference[i]):.6g}")
        for i in range(x.shape[0])
        if abs(float(sums[i] - difference[i]))
        > SUMMATION_TO_DELTA_RTOL * abs(float(difference[i])) + _ROUNDING * float(mass[i])
    ]
    # One warning per sample, naming it: in a batch of subjects each map's sidecar gets its own.
    for sample, failure in failures:
        warnings.warn(AttributionWarning(
            f"summation-to-delta does not hold within {SUMMATION_TO_DELTA_RTOL:g} of "
            f"y_t(x) - mean_b y_t(b) ({AttributionWarning.SAMPLE}: {failure}): {cause}",
            samples=(sample,)),
            stacklevel=3)
