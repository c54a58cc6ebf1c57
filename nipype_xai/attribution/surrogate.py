"""Surrogate methods through captum: Shapley value sampling, KernelSHAP and LIME, one surrogate
per sample on a feature mask (a parcellation, or cubic supervoxels).

Seeding, batching and targets as in :mod:`._captum`.
"""

from __future__ import annotations

from typing import Any, Optional

# captum's own Lasso wrapper (scikit-learn), so that lime can expose its penalty.
from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
from captum.attr import KernelShap, Lime, ShapleyValueSampling
import torch
from torch import nn

from ._captum import (
    _attribute_in_chunks,
    _feature_mask_or_grid,
    _forward_function,
    _mask_rows,
    _positive_int,
)
from .feature_masks import FeatureMaskLike, GridLike, relabel_consecutive
from .model_state import forward
from .registry import register_method


# --------------------------------------------------------------------------------------------
# Shapley value sampling, KernelSHAP, LIME: one surrogate per sample on a feature mask
# --------------------------------------------------------------------------------------------


class _OneFeatureExact:
    """KernelShap, answering exactly where it cannot: captum samples coalitions of 1..n-1
    features, none when there is n = 1 feature, and fails; with one player the Shapley value is
    exactly y_t(x) - y_t(0)."""

    def __init__(self, explainer: KernelShap, model: nn.Module):
        self.explainer, self.model = explainer, model

    def attribute(self, inputs: torch.Tensor, *, target, feature_mask: torch.Tensor,
                  **arguments: Any) -> torch.Tensor:
        if int(feature_mask.max()) != 0:
            return self.explainer.attribute(inputs, target=target, feature_mask=feature_mask,
                                            **arguments)
        column = target if isinstance(target, int) else int(target[0])
        with torch.no_grad():
            full = forward(self.model, inputs)[0, column]
            empty = forward(self.model, torch.zeros_like(inputs))[0, column]
        return torch.full_like(inputs, float(full - empty))


def _per_sample_feature_attribution(
    explainer: Any,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike],
    grid: GridLike,
    n_samples: int,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    n_samples = _positive_int(n_samples, "n_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    masks = _feature_mask_or_grid(feature_mask, grid, x)

    def arguments(rows: slice) -> dict[str, Any]:
        mask = _mask_rows(masks, rows)
        if masks.shape[0] > 1:
            # captum needs labels 0..n-1 per call; a per-sample parcellation may miss some.
            mask = relabel_consecutive(mask)
        return {"feature_mask": mask, "n_samples": n_samples,
                "perturbations_per_eval": batch_size}

    # One sample at a time: captum's Lime / KernelShap fit one surrogate per call and Shapley
    # sampling would share its permutations across the batch; per sample, each seeded with the
    # same ``seed``, a sample's map does not depend on the rest of the batch.
    return _attribute_in_chunks(explainer, x, target, 1, arguments, seed=seed)


# The parameters and result every surrogate method shares, documented once ({mask}, {common}).
_FEATURE_MASK_DOC = """
    feature_mask
        Parcellation (numpy or torch, integer labels; see
        :func:`~nipype_xai.attribution.feature_masks.prepare_feature_mask` for the shapes
        accepted). ``None``: cubic supervoxels of ``grid`` voxels.
    grid
        Supervoxel edge in voxels when no ``feature_mask`` is given."""
_COMMON_DOC = """batch_size
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
        "Shapley values of the features of a mask (supervoxels or atlas parcels), estimated "
        "from n_samples random permutations, absent features set to 0 (captum "
        "ShapleyValueSampling)"
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
    grid: GridLike = 8,
    n_samples: int = 25,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Shapley value sampling on a feature mask (Castro et al., 2009), via captum.

    Every voxel of a feature gets the feature's Shapley value (not divided by its size), so the
    per-sample sum of the distinct feature values is y_t(x) - y_t(0). Costs
    ``n_samples * (n_features + 1)`` forward passes per sample.

    Parameters
    ----------
    model, x, target
        As every registered method.{mask}
    n_samples
        Number of random feature permutations.
    {common}
    """
    return _per_sample_feature_attribution(
        ShapleyValueSampling(_forward_function(model)), x, target, feature_mask=feature_mask,
        grid=grid, n_samples=n_samples, batch_size=batch_size, seed=seed)


@register_method(
    "kernel_shap",
    row=20,
    description=(
        "KernelSHAP: weighted linear regression of y_t on random feature coalitions of a mask "
        "(supervoxels or atlas parcels), absent features set to 0 (captum KernelShap)"
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
    grid: GridLike = 8,
    n_samples: int = 200,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """KernelSHAP on a feature mask (Lundberg & Lee, 2017), via captum.

    The coefficients of the surrogate linear model are given to every voxel of their feature.
    ``n_samples`` should exceed the number of features (for a 96^3 volume and the default 8^3
    grid: 1728), otherwise the regression is under-determined.

    Parameters
    ----------
    model, x, target
        As every registered method.{mask}
    n_samples
        Number of coalitions evaluated (forward passes) per sample.
    {common}
    """
    return _per_sample_feature_attribution(
        _OneFeatureExact(KernelShap(_forward_function(model)), model), x, target,
        feature_mask=feature_mask, grid=grid, n_samples=n_samples, batch_size=batch_size,
        seed=seed)


@register_method(
    "lime",
    row=21,
    description=(
        "LIME: ridge surrogate (alpha 1, as the reference LIME implementation) of y_t on random "
        "binary feature vectors of a mask, absent features set to 0, samples weighted by an "
        "exponential cosine kernel (captum Lime)"
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
    grid: GridLike = 8,
    n_samples: int = 200,
    surrogate: str = "ridge",
    alpha: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """LIME on a feature mask (Ribeiro et al., 2016), via captum's ``Lime``.

    Each feature is kept or set to 0 with probability 1/2; a linear surrogate (scikit-learn) is
    fitted to y_t, weighted by exp(-d^2 / 2) with d the cosine distance between x and the
    perturbed copy. The coefficients are given to every voxel of their feature.

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
        Number of perturbed copies evaluated per sample.
    surrogate
        ``"ridge"`` (L2 penalty) or ``"lasso"`` (L1 penalty).
    alpha
        Penalty weight of the surrogate (> 0).
    {common}
    """
    if isinstance(alpha, bool) or not float(alpha) > 0:
        raise ValueError(f"lime: alpha must be a positive number, got {alpha!r}")
    surrogates = {"ridge": SkLearnRidge, "lasso": SkLearnLasso}
    if surrogate not in surrogates:
        raise ValueError(f"lime: surrogate must be 'ridge' or 'lasso', got {surrogate!r}")
    explainer = Lime(_forward_function(model),
                     interpretable_model=surrogates[surrogate](alpha=float(alpha)))
    return _per_sample_feature_attribution(
        explainer, x, target, feature_mask=feature_mask, grid=grid, n_samples=n_samples,
        batch_size=batch_size, seed=seed)


for _function in (shapley_sampling, kernel_shap, lime):
    if _function.__doc__:  # None under python -OO
        _function.__doc__ = _function.__doc__.replace("{mask}", _FEATURE_MASK_DOC).replace(
            "{common}", _COMMON_DOC)
