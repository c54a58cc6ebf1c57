"""Model-randomisation sanity checks (Adebayo et al. 2018, *Sanity Checks for Saliency Maps*).

A map that explains the *model* must change when the model's weights are destroyed. Cascading
randomisation re-initialises the network from the output layer downwards, one more layer per
step, and compares each map with the trained model's map; a method whose maps stay highly
correlated (e.g. one that mostly reproduces the input's edges) fails the check.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from .baselines import parameter_layers, randomize_model

AttributeFunction = Callable[..., torch.Tensor]
#: ``maps_of(net, target) -> {name: maps}``: the maps a randomisation check compares.
MapsFunction = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]

#: Similarities :func:`cascading_randomization` can report, each a function of two maps.
SIMILARITIES = ("spearman", "pearson", "ssim")

MODES = ("cascade", "independent")


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Parameter layers (see :func:`~nipype_xai.metrics.baselines.parameter_layers`) in the order a
    forward pass first calls them.

    Registration order can differ from the data flow (a classifier defined before the features in
    ``__init__``); "the layers above" in a cascade must follow the data. Layers that the forward
    pass never calls cannot change a map; they are appended in registration order so that every
    parameter layer still gets its row.

    Parameters
    ----------
    model
        The model; run once in eval mode without gradients on the first sample of ``x``, then put
        back in its training mode. Its hooks are removed before returning.
    x
        An input batch (B, C, X, Y, Z).
    """
    names = parameter_layers(model)
    modules = dict(model.named_modules())
    called: list[str] = []
    handles = []

    def recorder(name: str):
        def hook(_module, _inputs):
            if name not in called:
                called.append(name)

        return hook

    was_training = model.training
    try:
        for name in names:
            handles.append(modules[name].register_forward_pre_hook(recorder(name)))
        model.eval()  # training mode would update batch-norm statistics
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return called + [name for name in names if name not in called]


def predicted_target(model: nn.Module, x: torch.Tensor) -> Optional[list[int]]:
    """The trained model's predicted class per sample (None for a single output).

    Fixed before randomising, so every randomised model explains the same class as the original.
    The engine's own resolution (:func:`~nipype_xai.attribution.model_state.resolve_target` inside
    :func:`~nipype_xai.attribution.model_state.model_guard`: eval mode, the model restored), so a
    check and a map agree on what "the predicted class" is.
    """
    # Imported here: the attribution engine is heavier than the metrics and optional for them.
    from nipype_xai.attribution.model_state import model_guard, resolve_target

    with model_guard(model):
        target = resolve_target(model, x, None)
    return None if target is None else [int(k) for k in target]


def cascade_steps(n_layers: int, max_steps: Optional[int] = None) -> list[int]:
    """Numbers of randomised layers to compute: all, or ``max_steps`` evenly spaced ones.

    The first step (output layer only) and the last (the whole model) are always included: the
    first shows how fast a map reacts, the last is the fully randomised model.
    """
    if max_steps is None or max_steps >= n_layers:
        return list(range(1, n_layers + 1))
    if max_steps < 2:
        raise ValueError(f"sanity_max_steps must be at least 2 (first and last), got {max_steps}")
    return sorted({round(float(v)) for v in np.linspace(1, n_layers, max_steps)})


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson correlation; NaN when either map is constant (no ranking to compare)."""
    u = u - u.mean()
    v = v - v.mean()
    norm = np.sqrt(np.dot(u, u) * np.dot(v, v))
    if norm == 0:
        return float("nan")
    return float(np.clip(np.dot(u, v) / norm, -1.0, 1.0))


def spearman(u: np.ndarray, v: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened; average ranks for ties).

    Equal to ``scipy.stats.spearmanr(u.ravel(), v.ravel()).statistic``, but NaN without a warning
    when a map is constant, which happens when randomisation kills every gradient.
    """
    return _pearson(
        stats.rankdata(np.ravel(u)).astype(np.float64),
        stats.rankdata(np.ravel(v)).astype(np.float64),
    )


def pearson(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson correlation of two maps (flattened)."""
    return _pearson(np.ravel(u).astype(np.float64), np.ravel(v).astype(np.float64))


def ssim(u: np.ndarray, v: np.ndarray, window: int = 7) -> float:
    """Structural similarity of two 3D maps, each min-max scaled to [0, 1] first.

    Wang et al. 2004's SSIM with a uniform ``window``^3 box, sample covariances and constants
    K1 = 0.01, K2 = 0.03 for a data range of 1 (the conventions of ``skimage.metrics
    .structural_similarity``), averaged over the voxels at least half a window from the edge. The
    window shrinks to the largest odd size that fits an axis shorter than it. Leading axes (e.g.
    channels) are treated as separate volumes and averaged.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.shape != v.shape or u.ndim < 3:
        raise ValueError(f"ssim: expected two maps of the same shape (..., X, Y, Z), got "
                         f"{u.shape} and {v.shape}")
    if u.ndim > 3:
        pairs = zip(u.reshape(-1, *u.shape[-3:]), v.reshape(-1, *v.shape[-3:]))
        return float(np.mean([ssim(a, b, window) for a, b in pairs]))

    def unit_range(a: np.ndarray) -> np.ndarray:
        # Adebayo et al. compare maps normalised to [0, 1]; a constant map becomes all zeros.
        span = a.max() - a.min()
        return (a - a.min()) / span if span > 0 else np.zeros_like(a)

    u, v = unit_range(u), unit_range(v)
    sizes = [min(window, s if s % 2 else s - 1) for s in u.shape]
    n = float(np.prod(sizes))
    cov_norm = n / (n - 1) if n > 1 else 1.0

    def mean(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=sizes, mode="reflect")

    mu_u, mu_v = mean(u), mean(v)
    var_u = cov_norm * (mean(u * u) - mu_u**2)
    var_v = cov_norm * (mean(v * v) - mu_v**2)
    cov = cov_norm * (mean(u * v) - mu_u * mu_v)
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_u * mu_v + c1) * (2 * cov + c2)) / (
        (mu_u**2 + mu_v**2 + c1) * (var_u + var_v + c2)
    )
    crop = tuple(slice((s - 1) // 2, dim - (s - 1) // 2) for s, dim in zip(sizes, u.shape))
    return float(index[crop].mean())


_SIMILARITY_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "spearman": spearman,
    "pearson": pearson,
    "ssim": ssim,
}


def sample_masks(mask: Optional[Union[np.ndarray, torch.Tensor]],
                 shape: Sequence[int]) -> np.ndarray:
    """Per-sample boolean masks ``(B, X, Y, Z)`` for maps shaped ``(B, C, X, Y, Z)``.

    ``mask`` is one ``(X, Y, Z)`` mask for every sample, ``(B, X, Y, Z)`` masks, or None (every
    voxel). A mask of another grid or an empty mask is an error, not a silent whole-grid fallback.
    """
    batch, spatial = int(shape[0]), tuple(int(n) for n in shape[2:])
    if mask is None:
        return np.ones((batch, *spatial), dtype=bool)
    values = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    values = values.astype(bool)
    if values.shape == spatial:
        values = np.broadcast_to(values, (batch, *spatial))
    if values.shape != (batch, *spatial):
        raise ValueError(f"mask of shape {values.shape} does not match maps of shape "
                         f"{tuple(shape)}: expected {spatial} or {(batch, *spatial)}")
    if not values.reshape(batch, -1).any(axis=1).all():
        raise ValueError("mask: a sample's mask is empty; nothing to compare")
    return values


def _scored(maps: torch.Tensor, score: str) -> np.ndarray:
    values = maps.detach().to("cpu", torch.float64).numpy()
    if score == "abs":
        return np.abs(values)
    if score == "pos":
        return np.maximum(values, 0.0)
    return values


def _measures(similarity: Union[str, Sequence[str]]) -> list[str]:
    measures = [similarity] if isinstance(similarity, str) else list(similarity)
    unknown = [m for m in measures if m not in _SIMILARITY_FUNCTIONS]
    if unknown or not measures:
        raise ValueError(f"similarity must be among {SIMILARITIES}, got {similarity!r}")
    return measures


def _compare(original: np.ndarray, maps: np.ndarray, inside: np.ndarray,
             measures: Sequence[str]) -> dict[str, float]:
    """Each similarity per sample (Spearman and Pearson inside the mask, SSIM on the whole grid),
    averaged over the batch."""
    values = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for measure in measures:
            function = _SIMILARITY_FUNCTIONS[measure]
            if measure == "ssim":
                pairs = zip(original, maps)
            else:
                pairs = ((o[:, m], r[:, m]) for o, r, m in zip(original, maps, inside))
            values[measure] = float(np.mean([function(o, r) for o, r in pairs]))
    return values


def randomization_similarities(
    model: nn.Module, x: torch.Tensor, maps_of: MapsFunction, target: Any = None,
    similarity: Union[str, Sequence[str]] = "spearman", score: str = "abs", *,
    mode: str = "cascade", max_steps: Optional[int] = None, randomization_seed: int = 0,
    mask: Optional[Union[np.ndarray, torch.Tensor]] = None, progress: bool = False,
) -> list[dict[str, Any]]:
    """Model randomisation (Adebayo et al. 2018) for every map ``maps_of`` returns: the one core
    behind :func:`cascading_randomization` and the benchmark's check of several methods at once.

    Parameters
    ----------
    model
        The trained model; never modified.
    x
        Input batch (B, C, X, Y, Z).
    maps_of
        ``maps_of(net, target) -> {name: maps}``, maps shaped like ``x``; called once for the
        trained model and once per randomised copy, so methods that share passes can share them.
    target
        Passed to ``maps_of``. None: the *trained* model's predicted class of each sample
        (:func:`predicted_target`), kept fixed for the randomised models.
    similarity, score, mode, randomization_seed, mask
        As for :func:`cascading_randomization`.
    max_steps
        None: one step per parameter layer; else that many evenly spaced steps
        (:func:`cascade_steps`: the first and the last always).
    progress
        A tqdm bar over the steps.

    Returns
    -------
    list of dict
        One row per step x name (names in ``maps_of``'s order): ``method`` (the name), ``layer``
        (the top-most layer randomised in that step: from the output layer down),
        ``n_randomized``, ``n_layers`` and one float per similarity.
    """
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if score not in ("abs", "pos", "raw"):
        raise ValueError(f"score must be 'abs', 'pos' or 'raw', got {score!r}")
    measures = _measures(similarity)
    if target is None:
        target = predicted_target(model, x)
    original = {name: _scored(maps, score) for name, maps in maps_of(model, target).items()}
    inside = sample_masks(mask, x.shape)
    order = forward_order(model, x)

    rows = []
    for step in tqdm(cascade_steps(len(order), max_steps), desc="sanity", unit="depth",
                     disable=not progress, leave=False):
        layer = order[len(order) - step]
        chosen = order[len(order) - step:] if mode == "cascade" else [layer]
        randomized = randomize_model(model, randomization_seed, layers=chosen)
        maps = maps_of(randomized, target)
        for name, reference in original.items():
            rows.append({"method": name, "layer": layer, "n_randomized": len(chosen),
                         "n_layers": len(order),
                         **_compare(reference, _scored(maps[name], score), inside, measures)})
    return rows


def cascading_randomization(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: Any = None,
    attribute_fn: Optional[AttributeFunction] = None,
    similarity: Union[str, Sequence[str]] = "spearman",
    score: str = "abs",
    *,
    mode: str = "cascade",
    randomization_seed: int = 0,
    mask: Optional[Union[np.ndarray, torch.Tensor]] = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Similarity between the trained model's maps and maps of weight-randomised copies.

    Parameters
    ----------
    model
        The trained model; never modified (randomised copies are made with
        :func:`~nipype_xai.metrics.baselines.randomize_model`).
    x
        Input batch (B, C, X, Y, Z).
    method
        Attribution method name, passed to ``attribute_fn``.
    target
        As for :func:`nipype_xai.attribution.attribute`. None: the *trained* model's predicted
        class of each sample, kept fixed for the randomised models.
    attribute_fn
        ``fn(model, x, method, target=..., **params) -> maps``; default
        :func:`nipype_xai.attribution.attribute`.
    similarity
        One or several of ``"spearman"`` (rank correlation, Adebayo et al.'s main measure),
        ``"pearson"`` and ``"ssim"``.
    score
        How maps are read before comparing: ``"abs"`` (|map|, the default, as the rank metrics),
        ``"pos"`` or ``"raw"`` (signed).
    mode
        ``"cascade"``: step i randomises the i top-most layers (in forward order), so the last
        row is the fully randomised model. ``"independent"``: step i randomises the i-th layer
        from the top alone.
    randomization_seed
        Seed of the weight re-initialisation (``seed`` is left to the method, through
        ``params``).
    mask
        Boolean brain mask on the input grid, ``(X, Y, Z)`` (or one per sample, ``(B, X, Y, Z)``):
        Spearman and Pearson compare only the voxels inside it, so the many background voxels
        (zero, or constant, in every map) do not inflate the correlation. SSIM, a windowed
        measure, always uses the whole grid. None: the whole grid.
    **params
        The method's parameters.

    Returns
    -------
    list of dict
        One row per parameter layer, from the output layer down: ``layer`` (its name),
        ``n_randomized`` (layers randomised in this step) and one float per similarity, each
        computed per sample on the flattened (C, X, Y, Z) maps (inside ``mask``) and averaged
        over the batch. NaN when a map is constant (then nothing is ranked).
    """
    measures = _measures(similarity)
    if attribute_fn is None:
        # Imported here: the attribution engine is heavier than the metrics and optional for them.
        from nipype_xai.attribution import attribute as attribute_fn

    def maps_of(net: nn.Module, fixed: Any) -> dict[str, torch.Tensor]:
        return {method: attribute_fn(net, x, method, target=fixed, **params)}

    rows = randomization_similarities(model, x, maps_of, target, measures, score, mode=mode,
                                      randomization_seed=randomization_seed, mask=mask)
    return [{"layer": row["layer"], "n_randomized": row["n_randomized"],
             **{measure: row[measure] for measure in measures}} for row in rows]
