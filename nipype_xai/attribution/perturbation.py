"""Path, reference and perturbation methods, through captum.

integrated_gradients, deeplift, occlusion, shapley_sampling, kernel_shap, lime and
atlas_occlusion all use captum's implementations; what is ours is the 3D plumbing around them:

- ``batch_size`` bounds the rows of every forward pass: captum's ``internal_batch_size`` /
  ``perturbations_per_eval`` count copies *per sample*, so samples are processed in chunks small
  enough that chunk x copies <= batch_size.
- ``target=None`` (a single-output model) becomes captum's target 0, i.e. ``output[:, 0]``,
  exactly what :func:`~nipype_xai.attribution.model_state.target_output` explains.
- The stochastic methods draw from torch's global CPU generator (captum has no generator
  argument), so they run inside :func:`torch.random.fork_rng` seeded with ``seed``: reproducible,
  and the caller's global RNG state is left as it was.
- DeepLift runs on a private deep copy of the model prepared for captum's module hooks (see
  :func:`_deeplift_copy`); the user's model is never touched.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

# captum's own Lasso wrapper (scikit-learn), so that lime can expose its penalty.
from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
from captum.attr import (
    DeepLift,
    FeatureAblation,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    ShapleyValueSampling,
)

# The exact set of module types captum's DeepLift hooks (its rescale / maxpool / softmax rules);
# private, but it is the set whose reuse breaks DeepLift, so we must look at the same list.
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import nn

from .feature_masks import (
    FeatureMaskLike,
    GridLike,
    _label_volume,
    prepare_feature_mask,
    relabel_consecutive,
    supervoxel_grid,
)
from .model_state import forward
from .registry import register_method

WindowLike = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


def _forward_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    # captum selects the target column itself; giving it the (B, K) matrix (tuple outputs and
    # extra dimensions flattened by ``forward``) lets it expand targets over its copies.
    return lambda inputs: forward(model, inputs)


def _captum_target(target: Optional[torch.Tensor], rows: slice) -> Union[int, torch.Tensor]:
    # None means a single-output model: output[:, 0] is the explained score.
    return 0 if target is None else target[rows]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _chunks(n_samples: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n_samples, chunk):
        yield slice(start, min(start + chunk, n_samples))


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the duration of the block, restoring them afterwards."""
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    cuda = device.type == "cuda"
    index = None
    if cuda:
        index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        # Not torch.manual_seed: it would also reseed every CUDA device, outside the fork.
        torch.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield


def _feature_mask_or_grid(
    feature_mask: Optional[FeatureMaskLike], grid: GridLike, x: torch.Tensor
) -> torch.Tensor:
    """The (1 or B, C, X, Y, Z) consecutive-label mask: the given parcellation, else a grid."""
    if feature_mask is not None:
        return prepare_feature_mask(feature_mask, x)
    labels = supervoxel_grid(x.shape[2:], grid, device=x.device)
    return labels.expand(1, x.shape[1], *labels.shape).contiguous()


# --------------------------------------------------------------------------------------------
# Integrated gradients
# --------------------------------------------------------------------------------------------


@register_method(
    "integrated_gradients",
    row=7,
    description=(
        "(x - 0) times the mean gradient along the straight path from a zero baseline to x, "
        "n_steps quadrature points (captum IntegratedGradients)"
    ),
    reference="Sundararajan, Taly & Yan (2017). Axiomatic attribution for deep networks. ICML.",
)
def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    n_steps: int = 50,
    integration_method: str = "gausslegendre",
    batch_size: int = 16,
) -> torch.Tensor:
    """Integrated gradients with a zero baseline (Sundararajan et al., 2017).

    Parameters
    ----------
    model, x, target
        As every registered method (see :mod:`nipype_xai.attribution.registry`).
    n_steps
        Number of points on the path x' = a x, a in [0, 1].
    integration_method
        captum's ``method``, the quadrature: ``"gausslegendre"`` (captum's default) or
        ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``, ``"riemann_trapezoid"``.
        Renamed because ``attribute(model, x, method, ...)`` already takes ``method``.
    batch_size
        Largest number of scaled copies per forward pass. captum evaluates at least two path
        points per sample at once, so ``batch_size=1`` still runs two copies.

    Returns
    -------
    torch.Tensor
        Map of x's shape; its sum per sample approximates y_t(x) - y_t(0) (completeness).
    """
    n_steps = _positive_int(n_steps, "n_steps")
    batch_size = _positive_int(batch_size, "batch_size")
    explainer = IntegratedGradients(_forward_function(model))
    # captum's internal_batch_size puts (internal_batch_size // n_chunk_samples) path points of
    # every sample in one forward, and never fewer than 2: chunks of batch_size // 2 samples keep
    # each forward within batch_size rows.
    maps = []
    for rows in _chunks(x.shape[0], max(1, batch_size // 2)):
        maps.append(
            explainer.attribute(
                x[rows].clone(),
                baselines=0.0,
                target=_captum_target(target, rows),
                n_steps=n_steps,
                method=integration_method,
                internal_batch_size=batch_size,
            )
        )
    return torch.cat(maps).detach()


# --------------------------------------------------------------------------------------------
# DeepLIFT
# --------------------------------------------------------------------------------------------


class _PerCallCopies(nn.Module):
    """Stand-in for a nonlinearity the network calls several times per forward pass.

    captum's DeepLift stores each nonlinearity's input and output on the module itself, so a
    module called twice (MONAI's ``ResNetBlock`` applies ``self.act`` after ``conv1`` *and* after
    the residual sum) overwrites its first call and captum raises. The k-th call of a forward
    pass goes to the k-th of its own copies instead, each hooked once by captum.
    """

    def __init__(self, module: nn.Module, n_calls: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n_calls))
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls >= len(self.copies):
            raise RuntimeError(
                "deeplift: a nonlinearity was called more often than in the probe forward pass; "
                "models whose control flow depends on the input are not supported"
            )
        module = self.copies[self.calls]
        self.calls += 1
        return module(*args, **kwargs)


class _DeepLiftRoot(nn.Module):
    """Root module handed to captum: resets the per-call copies and returns a (B, K) tensor.

    captum's DeepLift hooks the root to run input and baseline in one batch and splits the output
    in halves, which needs a plain tensor (``forward`` unwraps tuple outputs).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.model.modules():
            if isinstance(module, _PerCallCopies):
                module.calls = 0
        return forward(self.model, x)


def _deeplift_copy(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` on which captum's DeepLift computes the rescale rule correctly.

    Two things are changed on the copy, never on the user's model:

    - ``inplace`` is switched off on every module that has it. captum 0.9 clones a hooked
      module's input in a forward pre-hook, so in-place ReLUs (MONAI's default) give the same
      numbers on the networks we checked (MONAI DenseNet with and without); switching them off
      keeps the stored input and output distinct tensors whatever a later captum does.
    - Nonlinearities called more than once per forward pass (module reuse, MONAI ResNet) are
      replaced by :class:`_PerCallCopies`. Calls are counted on one forward pass of ``probe``.

    Nonlinearities applied functionally (``F.relu`` inside ``forward``) are invisible to captum
    and treated as linear (plain gradient); summation-to-delta then no longer holds.
    """
    network = copy.deepcopy(model)
    for module in network.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False

    calls: Counter[int] = Counter()
    handles = [
        module.register_forward_pre_hook(lambda module, inputs: calls.update([id(module)]))
        for module in network.modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            forward(network, probe)
    finally:
        for handle in handles:
            handle.remove()

    reused = {key for key, count in calls.items() if count > 1}
    slots = [
        (parent, name, child)
        for parent in network.modules()
        for name, child in parent._modules.items()
        if child is not None and id(child) in reused
    ]
    replacements: dict[int, _PerCallCopies] = {}
    for parent, name, child in slots:
        if id(child) not in replacements:
            replacements[id(child)] = _PerCallCopies(child, calls[id(child)])
        setattr(parent, name, replacements[id(child)])
    return _DeepLiftRoot(network).eval()


@register_method(
    "deeplift",
    row=18,
    description="DeepLIFT rescale rule against a zero baseline (captum DeepLift)",
    reference=(
        "Shrikumar, Greenside & Kundaje (2017). Learning important features through propagating "
        "activation differences. ICML."
    ),
)
def deeplift(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """DeepLIFT, rescale rule, zero baseline (Shrikumar et al., 2017), via captum.

    captum's DeepLift needs nonlinearities as modules, each used once per forward pass; it runs
    here on a prepared deep copy of the model (see :func:`_deeplift_copy`), which is what makes
    MONAI's ResNet (one ReLU module applied twice per block) work. The copy costs one extra
    parameter set in memory and one probe forward pass.

    Parameters
    ----------
    model, x, target
        As every registered method.
    batch_size
        Largest number of rows per forward pass; captum runs each sample together with its
        baseline, so chunks hold ``batch_size // 2`` samples (at least one).

    Returns
    -------
    torch.Tensor
        Map of x's shape; its sum per sample equals y_t(x) - y_t(0) (summation-to-delta) when
        every nonlinearity is a supported module.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    network = _deeplift_copy(model, x[:1])
    explainer = DeepLift(network)
    maps = []
    with warnings.catch_warnings():
        # captum announces that it sets hooks; they are on our private copy.
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        for rows in _chunks(x.shape[0], max(1, batch_size // 2)):
            maps.append(
                explainer.attribute(
                    # A fresh leaf requiring grad: captum would otherwise set the flag itself
                    # and warn about it.
                    x[rows].clone().requires_grad_(True),
                    baselines=0.0,
                    target=_captum_target(target, rows),
                )
            )
    return torch.cat(maps).detach()


# --------------------------------------------------------------------------------------------
# Occlusion
# --------------------------------------------------------------------------------------------


def _triple(value: WindowLike, name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} must be an int or three ints, got {value!r}")
    return tuple(_positive_int(v, name) for v in values)  # type: ignore[return-value]


@register_method(
    "occlusion",
    row=17,
    description=(
        "drop in y_t when a 3D window (default 8^3 voxels, stride = window) is set to 0, "
        "given to every voxel of the window (captum Occlusion)"
    ),
    reference=(
        "Zeiler & Fergus (2014). Visualizing and understanding convolutional networks. ECCV."
    ),
)
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    window: WindowLike = 8,
    stride: Optional[WindowLike] = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Sliding-window occlusion with a zero baseline (Zeiler & Fergus, 2014), via captum.

    Each window position is set to 0 in all channels at once and the drop y_t(x) - y_t(x
    occluded) is given to every voxel of the window; a voxel covered by several windows
    (stride < window) gets the mean of their drops. With the default stride = window every voxel
    lies in exactly one window, so the map is piecewise constant and its sum is the window's drop
    times its voxel count, not the total drop. Windows at the far edges are cropped, so every
    voxel is covered even when the shape is not a multiple of the stride.

    Parameters
    ----------
    model, x, target
        As every registered method.
    window
        Window edge in voxels, int or one per axis; clipped to the volume's shape.
    stride
        Step between windows, int or one per axis; ``None`` means ``window``. Must not exceed the
        window (voxels would never be occluded).
    batch_size
        Largest number of occluded copies per forward pass.

    Returns
    -------
    torch.Tensor
        Map of x's shape, equal across channels.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    n_samples, channels, *spatial = x.shape
    window3 = tuple(min(w, s) for w, s in zip(_triple(window, "window"), spatial))
    stride3 = window3 if stride is None else _triple(stride, "stride")
    for w, st, s in zip(window3, stride3, spatial):
        if st > w and w < s:
            raise ValueError(
                f"occlusion: stride {stride3} larger than window {window3} would leave voxels "
                "never occluded"
            )
    explainer = Occlusion(_forward_function(model))
    chunk = min(n_samples, batch_size)
    maps = []
    for rows in _chunks(n_samples, chunk):
        maps.append(
            explainer.attribute(
                x[rows],
                sliding_window_shapes=(channels,) + window3,
                strides=(1,) + stride3,
                baselines=0.0,
                target=_captum_target(target, rows),
                perturbations_per_eval=max(1, batch_size // (rows.stop - rows.start)),
            )
        )
    return torch.cat(maps).detach()


# --------------------------------------------------------------------------------------------
# Shapley value sampling, KernelSHAP, LIME: one surrogate per sample on a feature mask
# --------------------------------------------------------------------------------------------


def _per_sample_feature_attribution(
    explainer: Any,
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike],
    grid: GridLike,
    n_samples: int,
    batch_size: int,
    seed: int,
    single_feature_exact: bool = False,
) -> torch.Tensor:
    n_samples = _positive_int(n_samples, "n_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    masks = _feature_mask_or_grid(feature_mask, grid, x)
    maps = []
    # One sample at a time: captum's Lime / KernelShap fit one surrogate per call and Shapley
    # sampling would share its permutations across the batch; per sample, each seeded with the
    # same ``seed``, a sample's map does not depend on the rest of the batch.
    for index in range(x.shape[0]):
        rows = slice(index, index + 1)
        mask = masks[rows] if masks.shape[0] > 1 else masks
        if masks.shape[0] > 1:
            # captum needs labels 0..n-1 per call; a per-sample parcellation may miss some.
            mask = relabel_consecutive(mask)
        if single_feature_exact and int(mask.max()) == 0:
            # captum's KernelShap samples coalitions of 1..n-1 features, none when n = 1, and
            # fails; with one player the Shapley value is exactly y_t(x) - y_t(0).
            column = 0 if target is None else int(target[index])
            with torch.no_grad():
                full = forward(model, x[rows])[0, column]
                empty = forward(model, torch.zeros_like(x[rows]))[0, column]
            maps.append(torch.full_like(x[rows], float(full - empty)))
            continue
        with _seeded(seed, x.device):
            maps.append(
                explainer.attribute(
                    x[rows],
                    baselines=0.0,
                    target=_captum_target(target, rows),
                    feature_mask=mask,
                    n_samples=n_samples,
                    perturbations_per_eval=batch_size,
                )
            )
    return torch.cat(maps).detach()


_FEATURE_MASK_DOC = """
    feature_mask
        Parcellation (numpy or torch, integer labels; see
        :func:`~nipype_xai.attribution.feature_masks.prepare_feature_mask` for the shapes
        accepted). ``None``: cubic supervoxels of ``grid`` voxels.
    grid
        Supervoxel edge in voxels when no ``feature_mask`` is given."""


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
    batch_size
        Largest number of perturbed copies per forward pass.
    seed
        Seed of the permutations (each sample uses the same seed).

    Returns
    -------
    torch.Tensor
        Map of x's shape, constant over each feature.
    """
    return _per_sample_feature_attribution(
        ShapleyValueSampling(_forward_function(model)),
        model,
        x,
        target,
        feature_mask=feature_mask,
        grid=grid,
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
    )


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
    batch_size
        Largest number of perturbed copies per forward pass.
    seed
        Seed of the coalitions (each sample uses the same seed).

    Returns
    -------
    torch.Tensor
        Map of x's shape, constant over each feature.
    """
    return _per_sample_feature_attribution(
        KernelShap(_forward_function(model)),
        model,
        x,
        target,
        feature_mask=feature_mask,
        grid=grid,
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
        single_feature_exact=True,
    )


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
    batch_size
        Largest number of perturbed copies per forward pass.
    seed
        Seed of the perturbations (each sample uses the same seed).

    Returns
    -------
    torch.Tensor
        Map of x's shape, constant over each feature.
    """
    if isinstance(alpha, bool) or not float(alpha) > 0:
        raise ValueError(f"lime: alpha must be a positive number, got {alpha!r}")
    surrogates = {"ridge": SkLearnRidge, "lasso": SkLearnLasso}
    if surrogate not in surrogates:
        raise ValueError(f"lime: surrogate must be 'ridge' or 'lasso', got {surrogate!r}")
    return _per_sample_feature_attribution(
        Lime(_forward_function(model),
             interpretable_model=surrogates[surrogate](alpha=float(alpha))),
        model,
        x,
        target,
        feature_mask=feature_mask,
        grid=grid,
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
    )


for _function in (shapley_sampling, kernel_shap, lime):
    if _function.__doc__:  # None under python -OO
        _function.__doc__ = _function.__doc__.replace("{mask}", _FEATURE_MASK_DOC)


# --------------------------------------------------------------------------------------------
# Atlas occlusion
# --------------------------------------------------------------------------------------------


@register_method(
    "atlas_occlusion",
    row=22,
    description=(
        "drop in y_t when one parcel of a parcellation is set to 0, given to every voxel of the "
        "parcel; supervoxel grid when no parcellation is given (captum FeatureAblation)"
    ),
    reference="Siegel et al. (2025), atlas-based occlusion of brain regions (SPEC §3).",
)
def atlas_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    feature_mask: Optional[FeatureMaskLike] = None,
    grid: GridLike = 8,
    ignore_background: bool = False,
    batch_size: int = 16,
) -> torch.Tensor:
    """Occlude one atlas parcel at a time (Siegel et al., 2025), via captum's FeatureAblation.

    For each parcel p, every voxel of p (all channels) is set to 0 and y_t(x) - y_t(x without
    p) is given to every voxel of p. One forward pass per parcel and sample.

    Parameters
    ----------
    model, x, target
        As every registered method.
    feature_mask
        The parcellation (numpy or torch integer labels, shapes as
        :func:`~nipype_xai.attribution.feature_masks.prepare_feature_mask` accepts). ``None``:
        cubic supervoxels of ``grid`` voxels, so that the method computes with its defaults alone.
    grid
        Supervoxel edge in voxels when no ``feature_mask`` is given.
    ignore_background
        Label 0 of an atlas (usually everything outside the brain) is by default a parcel like
        any other: it is occluded and gets its drop. With ``True`` its voxels get 0. Has no
        effect on the supervoxel grid, whose block 0 is not background.
    batch_size
        Largest number of occluded copies per forward pass.

    Returns
    -------
    torch.Tensor
        Map of x's shape, constant over each parcel.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    background = None
    if feature_mask is not None:
        raw = _label_volume(feature_mask, x)
        if ignore_background:
            background = raw == 0
    masks = _feature_mask_or_grid(feature_mask, grid, x)
    explainer = FeatureAblation(_forward_function(model))
    n_samples = x.shape[0]
    chunk = min(n_samples, batch_size)
    maps = []
    for rows in _chunks(n_samples, chunk):
        maps.append(
            explainer.attribute(
                x[rows],
                baselines=0.0,
                target=_captum_target(target, rows),
                feature_mask=masks[rows] if masks.shape[0] > 1 else masks,
                perturbations_per_eval=max(1, batch_size // (rows.stop - rows.start)),
            )
        )
    result = torch.cat(maps).detach()
    if background is not None:
        # The background parcel was occluded too (captum ablates every label); its drop is
        # discarded rather than relabelling, which keeps the other parcels' numbers identical.
        result = result.masked_fill(background.expand_as(result), 0.0)
    return result
