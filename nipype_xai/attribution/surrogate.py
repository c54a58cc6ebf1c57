"""Surrogate methods through captum: Shapley value sampling, KernelSHAP and LIME, one surrogate
per sample on a feature mask (a parcellation; by default the image's SLIC supervoxels).

Seeding, batching and targets as in :mod:`._captum`; absent features take the baseline of
:mod:`.perturbation_baseline` (a blurred copy by default).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Union

# captum's own Lasso wrapper (scikit-learn), so that lime can expose its penalty.
from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
from captum.attr import KernelShap, Lime, ShapleyValueSampling
import torch
from torch import nn

from ._captum import (
    _attribute_in_chunks,
    _feature_masks,
    _forward_function,
    _mask_rows,
    _positive_int,
)
from .feature_masks import N_SUPERVOXELS, FeatureMaskLike, GridLike, relabel_consecutive
from .model_state import forward
from .perturbation_baseline import BLUR_SIGMA_VOXELS, BaselineLike, perturbation_baseline
from .registry import register_method

#: ``n_samples="auto"``: the budget of KernelSHAP and LIME for a sample with M features.
BudgetLike = Union[int, str]


def surrogate_budget(n_features: int) -> int:
    """Samples (forward passes) a KernelSHAP or LIME surrogate of ``n_features`` features gets
    with ``n_samples="auto"``: 2 M + 2048, shap's own ``KernelExplainer`` default
    (``nsamples="auto"``). A linear surrogate of M coefficients needs more than M samples to be
    determined at all; this gives at least 2 per feature, and 12 per feature at the ~200 features
    of the default supervoxels."""
    return 2 * int(n_features) + 2048


# --------------------------------------------------------------------------------------------
# Shapley value sampling, KernelSHAP, LIME: one surrogate per sample on a feature mask
# --------------------------------------------------------------------------------------------


class _OneFeatureExact:
    """KernelShap, answering exactly where it cannot: captum samples coalitions of 1..n-1
    features, none when there is n = 1 feature, and fails; with one player the Shapley value is
    exactly y_t(x) - y_t(baseline)."""

    def __init__(self, explainer: KernelShap, model: nn.Module):
        self.explainer, self.model = explainer, model

    def attribute(self, inputs: torch.Tensor, *, target, feature_mask: torch.Tensor,
                  baselines: Union[float, torch.Tensor], **arguments: Any) -> torch.Tensor:
        if int(feature_mask.max()) != 0:
            return self.explainer.attribute(inputs, target=target, feature_mask=feature_mask,
                                            baselines=baselines, **arguments)
        column = target if isinstance(target, int) else int(target[0])
        empty = torch.zeros_like(inputs) + baselines
        with torch.no_grad():
            full = forward(self.model, inputs)[0, column]
            empty = forward(self.model, empty)[0, column]
        return torch.full_like(inputs, float(full - empty))


def binary_cosine_similarity(kernel_width: float):
    """LIME's sample weight, computed in the interpretable space: exp(-d^2 / (2 w^2)) with d the
    cosine distance between the sample's binary feature vector z and the all-ones vector of x
    itself, d = 1 - sqrt(|z| / M) (1 for the empty coalition).

    This is the reference LIME for images (``lime_image``: cosine distance of the binary
    vectors, kernel sqrt(exp(-d^2 / w^2)), the same function, w = 0.25). captum's default compares
    the perturbed *images* instead, where a removed feature weighs by its voxels' intensities.
    """
    width = float(kernel_width)
    if isinstance(kernel_width, bool) or not width > 0:
        raise ValueError(f"lime: kernel_width must be a positive number, got {kernel_width!r}")

    def similarity(_original: Any, _perturbed: Any, interpretable: torch.Tensor,
                   **_: Any) -> float:
        present = float(interpretable.float().sum())
        distance = 1.0 - math.sqrt(present / interpretable.numel())
        return math.exp(-distance ** 2 / (2.0 * width ** 2))

    return similarity


def _budget(n_samples: BudgetLike, n_features: int, method: str) -> int:
    if n_samples == "auto":
        return surrogate_budget(n_features)
    n_samples = _positive_int(n_samples, "n_samples")
    if n_samples < n_features:
        warnings.warn(
            f"{method}: n_samples={n_samples} is below the number of features ({n_features}): "
            "the surrogate regression is under-determined; n_samples='auto' gives "
            f"{surrogate_budget(n_features)}", UserWarning, stacklevel=4)
    return n_samples


def _per_sample_feature_attribution(
    explainer: Any,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    method: str,
    feature_mask: Optional[FeatureMaskLike],
    n_supervoxels: int,
    grid: Optional[GridLike],
    n_samples: BudgetLike,
    baseline: BaselineLike,
    blur_sigma: float,
    batch_size: int,
    seed: int,
    permutations: bool = False,
) -> torch.Tensor:
    if permutations:
        n_samples = _positive_int(n_samples, "n_samples")
    elif n_samples != "auto":
        _positive_int(n_samples, "n_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    masks = _feature_masks(feature_mask, grid, x, n_supervoxels)

    def arguments(rows: slice) -> dict[str, Any]:
        mask = _mask_rows(masks, rows)
        if masks.shape[0] > 1:
            # captum needs labels 0..n-1 per call; a per-sample parcellation may miss some.
            mask = relabel_consecutive(mask)
        budget = n_samples if permutations else _budget(n_samples, int(mask.max()) + 1, method)
        return {"feature_mask": mask, "n_samples": budget, "perturbations_per_eval": batch_size}

    # One sample at a time: captum's Lime / KernelShap fit one surrogate per call and Shapley
    # sampling would share its permutations across the batch; per sample, each seeded with the
    # same ``seed``, a sample's map does not depend on the rest of the batch.
    return _attribute_in_chunks(explainer, x, target, 1, arguments, seed=seed,
                                baselines=perturbation_baseline(x, baseline, sigma=blur_sigma))


# The parameters and result every surrogate method shares, documented once ({mask}, {common}).
_FEATURE_MASK_DOC = """
    feature_mask
        Parcellation (numpy or torch, integer labels; see
        :func:`~nipype_xai.attribution.feature_masks.prepare_feature_mask` for the shapes
        accepted). ``None``: the image's SLIC supervoxels, which follow tissue boundaries
        (:func:`~nipype_xai.attribution.feature_masks.image_supervoxels`), plus the background
        as one feature.
    n_supervoxels
        Supervoxels in the foreground when neither ``feature_mask`` nor ``grid`` is given.
    grid
        Cubic supervoxels of this edge in voxels instead (the old default was 8)."""
_COMMON_DOC = """baseline
        What replaces an absent feature: ``"blur"`` (a Gaussian of ``blur_sigma`` voxels, the
        default: it adds no evidence of its own), ``"zero"`` (the classic 0), a number or a
        tensor of x's shape (:mod:`~nipype_xai.attribution.perturbation_baseline`).
    blur_sigma
        Sigma of the ``"blur"`` baseline, in voxels.
    batch_size
        Largest number of perturbed copies per forward pass.
    seed
        Seed of the random draws (each sample uses the same seed).

    Returns
    -------
    torch.Tensor
        Map of x's shape, constant over each feature."""


@register_method(
    "shapley_sampling",
    row=19,
    description=(
        "Shapley values of the features of a mask (by default ~200 SLIC supervoxels of the "
        "image plus the background, or atlas parcels), estimated from n_samples = 10 random "
        "permutations, absent features replaced by a Gaussian-blurred copy of the input "
        "(sigma 2 voxels) (captum ShapleyValueSampling)"
    ),
    reference=(
        "Castro, Gómez & Tejada (2009). Polynomial calculation of the Shapley value based on "
        "sampling. Computers & Operations Research 36(5)."
    ),
    stochastic=True,
)
def shapley_sampling(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike] = None,
    n_supervoxels: int = N_SUPERVOXELS,
    grid: Optional[GridLike] = None,
    n_samples: int = 10,
    baseline: BaselineLike = "blur",
    blur_sigma: float = BLUR_SIGMA_VOXELS,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Shapley value sampling on a feature mask (Castro et al., 2009), via captum.

    Every voxel of a feature gets the feature's Shapley value (not divided by its size), so the
    per-sample sum of the distinct feature values is y_t(x) - y_t(baseline). Costs
    ``n_samples * (n_features + 1)`` forward passes per sample: every permutation evaluates every
    feature once, so the budget always exceeds the number of features. The default 10
    permutations on ~200 features are about 2,000 passes, the order of KernelSHAP's default
    budget (2 M + 2048), so the two Shapley estimators are compared at a similar cost: 1,952
    passes, 88 s per map on the bundled model (4 mm, ~195 features, one thread of a shared 2-core
    CPU).

    Parameters
    ----------
    model, x, target
        As every registered method.{mask}
    n_samples
        Number of random feature permutations.
    {common}
    """
    return _per_sample_feature_attribution(
        ShapleyValueSampling(_forward_function(model)), x, target, method="shapley_sampling",
        feature_mask=feature_mask, n_supervoxels=n_supervoxels, grid=grid, n_samples=n_samples,
        baseline=baseline, blur_sigma=blur_sigma, batch_size=batch_size, seed=seed,
        permutations=True)


@register_method(
    "kernel_shap",
    row=20,
    description=(
        "KernelSHAP: weighted linear regression of y_t on random feature coalitions of a mask "
        "(by default ~200 SLIC supervoxels of the image plus the background, or atlas parcels), "
        "2 M + 2048 coalitions for M features as shap, absent features replaced by a "
        "Gaussian-blurred copy of the input (sigma 2 voxels) (captum KernelShap)"
    ),
    reference=(
        "Lundberg & Lee (2017). A unified approach to interpreting model predictions. NeurIPS."
    ),
    stochastic=True,
)
def kernel_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike] = None,
    n_supervoxels: int = N_SUPERVOXELS,
    grid: Optional[GridLike] = None,
    n_samples: BudgetLike = "auto",
    baseline: BaselineLike = "blur",
    blur_sigma: float = BLUR_SIGMA_VOXELS,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """KernelSHAP on a feature mask (Lundberg & Lee, 2017), via captum.

    The coefficients of the surrogate linear model are given to every voxel of their feature.
    With fewer coalitions than features the regression is under-determined (the old default,
    200 samples for 324-1,728 cubic supervoxels, was): ``n_samples="auto"`` gives
    :func:`surrogate_budget` (2 M + 2048 for M features, shap's default), and a smaller
    explicit budget warns. Cost on the bundled model (4 mm, ~195 features, one thread of a shared
    2-core CPU): 2,439 passes, 122 s per map.

    Parameters
    ----------
    model, x, target
        As every registered method.{mask}
    n_samples
        Number of coalitions evaluated (forward passes) per sample, or ``"auto"``.
    {common}
    """
    return _per_sample_feature_attribution(
        _OneFeatureExact(KernelShap(_forward_function(model)), model), x, target,
        method="kernel_shap", feature_mask=feature_mask, n_supervoxels=n_supervoxels, grid=grid,
        n_samples=n_samples, baseline=baseline, blur_sigma=blur_sigma, batch_size=batch_size,
        seed=seed)


@register_method(
    "lime",
    row=21,
    description=(
        "LIME: ridge surrogate (alpha 1, as the reference LIME implementation) of y_t on random "
        "binary feature vectors of a mask (by default ~200 SLIC supervoxels of the image plus "
        "the background, or atlas parcels), 2 M + 2048 samples for M features, absent features "
        "replaced by a Gaussian-blurred copy of the input (sigma 2 voxels), samples weighted by "
        "exp(-d^2 / 2w^2), d the cosine distance of the binary vector to all-ones, w = 0.25 "
        "(captum Lime)"
    ),
    reference=(
        "Ribeiro, Singh & Guestrin (2016). \"Why should I trust you?\": Explaining the "
        "predictions of any classifier. KDD."
    ),
    stochastic=True,
)
def lime(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike] = None,
    n_supervoxels: int = N_SUPERVOXELS,
    grid: Optional[GridLike] = None,
    n_samples: BudgetLike = "auto",
    surrogate: str = "ridge",
    alpha: float = 1.0,
    kernel_width: float = 0.25,
    baseline: BaselineLike = "blur",
    blur_sigma: float = BLUR_SIGMA_VOXELS,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """LIME on a feature mask (Ribeiro et al., 2016), via captum's ``Lime``.

    Each feature is kept or replaced by the baseline with probability 1/2; a linear surrogate
    (scikit-learn) is fitted to y_t, each sample weighted by :func:`binary_cosine_similarity`:
    exp(-d^2 / (2 w^2)) with d the cosine distance between the sample's binary vector and the
    all-ones vector, as the reference ``lime_image`` does (captum's default measures the distance
    between the perturbed images instead). The coefficients are given to every voxel of their
    feature. ``n_samples="auto"`` gives :func:`surrogate_budget` (2 M + 2048 for M features); a
    smaller explicit budget warns. Cost on the bundled model (4 mm, ~195 features, one thread of a
    shared 2-core CPU): 2,439 passes, 152 s per map.

    The default surrogate is ridge regression with alpha 1, as in the reference LIME
    implementation (``lime_base``). captum's default, a Lasso with alpha 0.01, is
    ``surrogate="lasso", alpha=0.01``; its L1 penalty is in units of y_t, so a model whose
    output moves by less than about ``alpha`` when a feature is removed gets an all-zero map
    (typical of small logits on 3D volumes with many features).

    Parameters
    ----------
    model, x, target
        As every registered method.{mask}
    n_samples
        Number of perturbed copies evaluated per sample, or ``"auto"``.
    surrogate
        ``"ridge"`` (L2 penalty) or ``"lasso"`` (L1 penalty).
    alpha
        Penalty weight of the surrogate (> 0).
    kernel_width
        Width w of the similarity kernel on the binary vectors (``lime_image``'s 0.25).
    {common}
    """
    if isinstance(alpha, bool) or not float(alpha) > 0:
        raise ValueError(f"lime: alpha must be a positive number, got {alpha!r}")
    surrogates = {"ridge": SkLearnRidge, "lasso": SkLearnLasso}
    if surrogate not in surrogates:
        raise ValueError(f"lime: surrogate must be 'ridge' or 'lasso', got {surrogate!r}")
    explainer = Lime(_forward_function(model),
                     interpretable_model=surrogates[surrogate](alpha=float(alpha)),
                     similarity_func=binary_cosine_similarity(kernel_width))
    return _per_sample_feature_attribution(
        explainer, x, target, method="lime", feature_mask=feature_mask,
        n_supervoxels=n_supervoxels, grid=grid, n_samples=n_samples, baseline=baseline,
        blur_sigma=blur_sigma, batch_size=batch_size, seed=seed)


for _function in (shapley_sampling, kernel_shap, lime):
    if _function.__doc__:  # None under python -OO
        _function.__doc__ = _function.__doc__.replace("{mask}", _FEATURE_MASK_DOC).replace(
            "{common}", _COMMON_DOC)
